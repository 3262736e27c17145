#!/usr/bin/env python3
"""The Python side (b) of scripts/bench_sweep.sh: a straightforward open_clip + PIL script doing
the sweep's work serially — decode each image, resize/crop to the model input, draw each of the
nine Distill words on a white label at the first distill8 position, preprocess, encode in batches
of 32, zero-shot against the same label set, top-5 — with the same random ViT-B/32 architecture.
Prints one JSON line, with the seconds spent in the model (encode, zero-shot, top-5)
separately. Text features are computed before the timed loop (typoclip reads them from
its cache).

BENCH_DEVICE (default cpu) and BENCH_BATCH (default 32) set the device and batch. Where open_clip
is not installed (the GPU machine's bare Python torch), the same OpenAI ViT-B/32 image tower is
built here in plain torch (random weights; text features random unit vectors): the timed work is
the same."""
import json
import os
import sys
import time

import torch
from PIL import Image, ImageDraw, ImageFont

try:
    import open_clip
except ImportError:
    open_clip = None


class QuickGELU(torch.nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class Block(torch.nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.ln_1 = torch.nn.LayerNorm(width)
        self.attn = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = torch.nn.LayerNorm(width)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, 4 * width), QuickGELU(),
                                       torch.nn.Linear(4 * width, width))

    def forward(self, x):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class PlainViT(torch.nn.Module):
    """OpenAI's ViT-B/32 image tower (open_clip's VisionTransformer with QuickGELU)."""

    def __init__(self, width=768, layers=12, heads=12, patch=32, res=224, out=512):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, width, patch, patch, bias=False)
        scale = width ** -0.5
        self.class_embedding = torch.nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = torch.nn.Parameter(scale * torch.randn((res // patch) ** 2 + 1, width))
        self.ln_pre = torch.nn.LayerNorm(width)
        self.blocks = torch.nn.Sequential(*[Block(width, heads) for _ in range(layers)])
        self.ln_post = torch.nn.LayerNorm(width)
        self.proj = torch.nn.Parameter(scale * torch.randn(width, out))

    def encode_image(self, x):
        x = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.blocks(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj

WORDS = ["trash", "iPod", "pizza", "rifle", "radio", "library", "meow", "shark", "$$$"]
# The attack targets, added to the label set as typoclip's sweep adds them.
TARGETS = ["waste container", "iPod", "pizza", "rifle", "radio", "library", "Siamese cat",
           "great white shark", "piggy bank"]


def main():
    paths_file, labels_file, font_file = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    device = torch.device(os.environ.get("BENCH_DEVICE", "cpu"))
    batch = int(os.environ.get("BENCH_BATCH", "32"))
    paths = [l.strip() for l in open(paths_file) if l.strip()]
    labels = [l.rstrip("\n").split("\t")[-1] for l in open(labels_file) if l.strip() and not l.startswith("#")]
    labels += [t for t in TARGETS if t not in labels]
    torch.manual_seed(0)
    if open_clip is not None:
        model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32-quickgelu", pretrained=None)
        model.eval()
        tok = open_clip.get_tokenizer("ViT-B-32")
        with torch.no_grad():
            text = model.encode_text(tok([f"a photo of a {c}." for c in labels]))
    else:
        model = PlainViT().eval()
        text = torch.randn(len(labels), 512)
    model = model.to(device)
    text = (text / text.norm(dim=-1, keepdim=True)).to(device)
    font = ImageFont.truetype(font_file, int(0.111 * 224))
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)

    def to_tensor(img):
        w, h = img.size
        a = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(h, w, 3)
        a = a.permute(2, 0, 1).float() / 255.0
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
            f = model.encode_image(torch.stack(pending).to(device))
            f = f / f.norm(dim=-1, keepdim=True)
            p = (100.0 * f @ text.T).softmax(dim=-1)
            top5.extend(p.topk(5, dim=-1).indices.tolist())  # (synchronises the device)
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
            if len(pending) >= batch:
                flush()
    flush()
    secs = time.time() - t0
    print(json.dumps({"images": n_images, "seconds": round(secs, 3), "images_per_s": n_images / secs,
                      "model_seconds": round(model_s, 3), "device": str(device), "batch": batch,
                      "model": "open_clip" if open_clip is not None else "plain torch"}))


if __name__ == "__main__":
    main()
