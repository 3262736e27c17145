#!/usr/bin/env python3
"""Python open_clip side of scripts/bench_text.sh: encodes the 80 ImageNet templates x N
classes with a random ViT-B-32 (every prompt padded to 77 tokens, as open_clip does)."""
import json
import os
import time

import torch
import open_clip
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

classes = int(os.environ.get("TYPOCLIP_BENCH_CLASSES", "10"))
model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval()
tok = open_clip.get_tokenizer("ViT-B-32")
prompts = [t(c) for c in IMAGENET_CLASSNAMES[:classes] for t in OPENAI_IMAGENET_TEMPLATES]
with torch.no_grad():
    model.encode_text(tok(prompts[:32]))
    start = time.perf_counter()
    for i in range(0, len(prompts), 256):
        model.encode_text(tok(prompts[i:i + 256]))
    secs = time.perf_counter() - start
print(json.dumps({"impl": "open_clip", "mode": "padded", "prompts": len(prompts),
                  "prompts_per_s": round(len(prompts) / secs, 2), "threads": torch.get_num_threads()}))
