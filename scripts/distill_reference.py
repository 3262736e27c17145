#!/usr/bin/env python3
"""Writes datasets/reference/distill.json: the published figures of Goh et al. (Distill 2021)
that `typoclip report --reference distill` shows beside a run, from the article's result tables
(../shared/reference/distill). Run once by a maintainer; the output is committed."""
import json
import os
import sys

src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference", "distill")
out = os.path.join(os.path.dirname(__file__), "..", "datasets", "reference", "distill.json")

small = json.load(open(os.path.join(src, "small_attacks.json")))
rows = []
for target, words in small["linear_probes"]["results"].items():
    for word, fields in words.items():
        rows.append({"target": target, "word": word, **fields})
wild = []
for rnd in (1, 2, 3):
    d = json.load(open(os.path.join(src, f"in_the_wild_{rnd}.json")))
    for obj, texts in d.items():
        for text, stats in texts.items():
            wild.append({
                "round": rnd, "object": obj, "text": text,
                "zero_shot": stats["zero_shot_statistics"],
                "linear_probe": stats["linear_probe_statistics"],
            })
doc = {
    "citation": "Goh, Cammarata, Voss, Carter, Petrov, Schubert, Radford, Olah: Multimodal Neurons in "
                "Artificial Neural Networks. Distill, 2021. https://distill.pub/2021/multimodal-neurons/",
    "note": "Published figures for the article's CLIP model (RN50-4x), not computed by typoclip.",
    "automated_attack": {
        "what": "Typographic attack on ImageNet validation images, classified by a linear probe "
                "(the article's automated-attack table)",
        "n": small["n"],
        "rows": rows,
    },
    "in_the_wild": {
        "what": "Photos with hand-written labels: zero-shot and linear-probe probabilities "
                "[probability, class] as published",
        "photos": wild,
    },
}
with open(out, "w") as f:
    json.dump(doc, f, separators=(",", ":"))
    f.write("\n")
print(f"wrote {out}: {len(rows)} attack rows, {len(wild)} photos")
