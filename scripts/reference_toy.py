#!/usr/bin/env python3
"""Reference for typoclip's toy parity test (tests/toy.rs): open_clip itself loads a toy folder
that `typoclip toy train` wrote (`open_clip.create_model_and_transforms('local-dir:DIR')`, its
own transform and tokenizer) and embeds the given images and texts.

Writes --out (safetensors): `image_features` [N, D] and `text_features` [M, D], not normalised.

Used only by tests; never on the product's path. Downloads nothing.
"""
import argparse

import open_clip
import torch
from PIL import Image
from safetensors.torch import save_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="the toy folder")
    ap.add_argument("--images", nargs="*", default=[])
    ap.add_argument("--texts", nargs="*", default=[])
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{a.model}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{a.model}")
    model.eval()
    with torch.no_grad():
        images = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in a.images])
        out = {
            "image_features": model.encode_image(images).contiguous(),
            "text_features": model.encode_text(tokenizer(a.texts)).contiguous(),
        }
    save_file(out, a.out)


if __name__ == "__main__":
    main()
