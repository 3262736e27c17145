#!/usr/bin/env python3
"""Image-encoder throughput of Python open_clip (random weights, fp32, CPU), one JSON line per
(architecture, batch size) — the reference side of scripts/bench_encode.sh."""
import json
import os
import sys
import time

import torch
import open_clip


def main():
    archs = sys.argv[1:] or ["ViT-B-32", "RN50"]
    seconds = float(os.environ.get("TYPOCLIP_BENCH_SECONDS", "4"))
    torch.manual_seed(0)
    with torch.no_grad():
        for arch in archs:
            # OpenAI's QuickGELU variant where open_clip has one (as benches/encode.rs).
            name = arch + "-quickgelu" if arch + "-quickgelu" in open_clip.list_models() else arch
            model = open_clip.create_model(name, pretrained=None).eval()
            r = model.visual.image_size
            r = r[0] if isinstance(r, (tuple, list)) else r
            for batch in (1, 8, 32):
                images = torch.randn(batch, 3, r, r)
                for _ in range(2):
                    model.encode_image(images)
                start = time.perf_counter()
                n = 0
                while time.perf_counter() - start < seconds or n < 3:
                    model.encode_image(images)
                    n += 1
                ips = n * batch / (time.perf_counter() - start)
                print(json.dumps({"impl": "open_clip", "arch": arch, "batch": batch,
                                  "images_per_s": round(ips, 2), "threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
