#!/usr/bin/env python3
"""Reference for typoclip's defense tests (the Python reference, never on the product's path).

Head ablation, written independently of typoclip's taps: zeroing head h of residual block l of
the image tower's attention is the same as zeroing columns [h*dh, (h+1)*dh) of that block's
out_proj weight (the head's output only enters the residual stream through them). Loads the
tiny-vit export made by scripts/reference.py into open_clip, encodes its reference images with
each listed set of heads ablated, and writes <out>/heads.safetensors (one tensor per case) and
<out>/heads.json (the cases).
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from open_clip.model import CLIP

sys.path.insert(0, os.path.dirname(__file__))
from reference import TINY  # noqa: E402

CASES = [[], [[0, 0]], [[1, 1]], [[0, 1], [1, 0]], [[0, 0], [0, 1], [1, 0], [1, 1]]]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--fixtures", required=True, help="folder with tiny-vit.state_dict.pt and tiny-vit.io.safetensors")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(2)
    os.makedirs(args.out, exist_ok=True)
    sd = torch.load(os.path.join(args.fixtures, "tiny-vit.state_dict.pt"), map_location="cpu")
    images = load_file(os.path.join(args.fixtures, "tiny-vit.io.safetensors"))["images"]
    out = {}
    for i, heads in enumerate(CASES):
        model = CLIP(**TINY["tiny-vit"])
        model.load_state_dict(sd)
        model.eval()
        blocks = model.visual.transformer.resblocks
        n_heads = blocks[0].attn.num_heads
        dh = blocks[0].attn.embed_dim // n_heads
        with torch.no_grad():
            for layer, head in heads:
                blocks[layer].attn.out_proj.weight[:, head * dh:(head + 1) * dh] = 0.0
            out[f"case{i}"] = model.encode_image(images).contiguous()
    save_file(out, os.path.join(args.out, "heads.safetensors"))
    with open(os.path.join(args.out, "heads.json"), "w") as f:
        json.dump(CASES, f)


if __name__ == "__main__":
    main()
