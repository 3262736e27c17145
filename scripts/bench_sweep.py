#!/usr/bin/env python3
"""The Python side (b) of scripts/bench_sweep.sh: a straightforward open_clip + PIL script doing
the sweep's work serially — decode each image, resize/crop to the model input, draw each of the
nine Distill words on a white label at the first distill8 position, preprocess, encode in batches
of 32, zero-shot against the same label set, top-5 — with the same random ViT-B/32 architecture.
Prints one JSON line, with the seconds spent in the model (encode, zero-shot, top-5)
separately. Text features are computed before the timed loop (typoclip reads them from
its cache)."""
import json
import os
import sys
import time

import numpy as np
import open_clip
import torch
from PIL import Image, ImageDraw, ImageFont

WORDS = ["trash", "iPod", "pizza", "rifle", "radio", "library", "meow", "shark", "$$$"]
# The attack targets, added to the label set as typoclip's sweep adds them.
TARGETS = ["waste container", "iPod", "pizza", "rifle", "radio", "library", "Siamese cat",
           "great white shark", "piggy bank"]


def main():
    paths_file, labels_file, font_file = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    paths = [l.strip() for l in open(paths_file) if l.strip()]
    labels = [l.rstrip("\n").split("\t")[-1] for l in open(labels_file) if l.strip() and not l.startswith("#")]
    labels += [t for t in TARGETS if t not in labels]
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32-quickgelu", pretrained=None)
    model.eval()
    tok = open_clip.get_tokenizer("ViT-B-32")
    with torch.no_grad():
        text = model.encode_text(tok([f"a photo of a {c}." for c in labels]))
        text = text / text.norm(dim=-1, keepdim=True)
    font = ImageFont.truetype(font_file, int(0.111 * 224))
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)

    def to_tensor(img):
        a = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (a - mean) / std

    def crop224(img):
        w, h = img.size
        s = 224 / min(w, h)
        img = img.resize((max(224, round(w * s)), max(224, round(h * s))), Image.BICUBIC)
        w, h = img.size
        l, t = (w - 224) // 2, (h - 224) // 2
        return img.crop((l, t, l + 224, t + 224))

    pending, n_images, top5 = [], 0, []
    model_s = 0.0

    def flush():
        nonlocal pending, model_s
        if not pending:
            return
        t = time.time()
        with torch.no_grad():
            f = model.encode_image(torch.stack(pending))
            f = f / f.norm(dim=-1, keepdim=True)
            p = (100.0 * f @ text.T).softmax(dim=-1)
            top5.extend(p.topk(5, dim=-1).indices.tolist())
        model_s += time.time() - t
        pending = []

    t0 = time.time()
    for path in paths:
        img = Image.open(path).convert("RGB")
        base = crop224(img)
        pending.append(to_tensor(base))
        n_images += 1
        for word in WORDS:
            att = base.copy()
            d = ImageDraw.Draw(att)
            x0, y0, x1, y1 = d.textbbox((0, 0), word, font=font)
            pad = int(0.35 * (y1 - y0))
            x, y = 20, 20
            d.rectangle([x, y, x + (x1 - x0) + 2 * pad, y + (y1 - y0) + 2 * pad], fill="white")
            d.text((x + pad - x0, y + pad - y0), word, font=font, fill="black")
            pending.append(to_tensor(att))
            n_images += 1
            if len(pending) >= 32:
                flush()
    flush()
    secs = time.time() - t0
    print(json.dumps({"images": n_images, "seconds": round(secs, 3), "images_per_s": n_images / secs,
                      "model_seconds": round(model_s, 3)}))


if __name__ == "__main__":
    main()
