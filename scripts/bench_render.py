#!/usr/bin/env python3
"""Attack rendering throughput of Python PIL ImageDraw — the reference side of
scripts/bench_render.sh: "iPod" on a white paper label plus 20 "$" marks (18–30 px, random
positions) onto the same 500x375 photo with the same font file (DejaVu Sans Bold), one JSON line.
PIL's work is a subset of typoclip's: opaque sRGB drawing, no linear-light blend, no mask."""
import glob
import json
import os
import random
import sys
import time

from PIL import Image, ImageDraw, ImageFont

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def main():
    files = sorted(glob.glob(os.path.join(ROOT, "../shared/data/imagenet-sample/*.jpg")))
    photo = next((f for f in files if Image.open(f).size == (500, 375)), None)
    if photo is None:
        print("skipped: no 500x375 photo in ../shared/data/imagenet-sample", file=sys.stderr)
        return
    base = Image.open(photo).convert("RGB")
    font_path = os.path.join(ROOT, "assets/fonts/DejaVuSans-Bold.ttf")
    label_font = ImageFont.truetype(font_path, 40)
    sizes = range(18, 31)
    mark_fonts = {s: ImageFont.truetype(font_path, s) for s in sizes}
    seconds = float(os.environ.get("TYPOCLIP_BENCH_SECONDS", "4"))
    rng = random.Random(0)

    def draw_once():
        im = base.copy()
        d = ImageDraw.Draw(im)
        x0, y0, x1, y1 = d.textbbox((0, 0), "iPod", font=label_font)
        w, h = x1 - x0, y1 - y0
        pad = 12
        cx, cy = 250, 187
        d.rectangle((cx - w // 2 - pad, cy - h // 2 - pad, cx + w // 2 + pad, cy + h // 2 + pad), fill="white")
        d.text((cx - w // 2 - x0, cy - h // 2 - y0), "iPod", font=label_font, fill="black")
        for _ in range(20):
            s = rng.choice(sizes)
            d.text((rng.uniform(0, 500 - s), rng.uniform(0, 375 - s)), "$", font=mark_fonts[s], fill=(27, 94, 32))
        return im

    for _ in range(20):
        draw_once()
    start = time.perf_counter()
    n = 0
    while time.perf_counter() - start < seconds or n < 50:
        draw_once()
        n += 1
    ips = n / (time.perf_counter() - start)
    print(json.dumps({"impl": "PIL", "pillow": Image.__version__, "photo": os.path.basename(photo), "images_per_s": round(ips, 1)}), flush=True)


if __name__ == "__main__":
    main()
