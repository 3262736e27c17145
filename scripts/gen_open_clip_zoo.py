#!/usr/bin/env python3
"""Writes assets/open_clip/zoo.json: open_clip's model configs (`model_configs/*.json`) and its
pretrained table (`list_pretrained()` with each tag's `get_pretrained_cfg`), as data for
typoclip's presets, `models` listing and `fetch`. Facts about open_clip, taken from the installed
package (open-clip-torch, MIT licence: assets/open_clip/LICENSE). Run once per open_clip release:

    .venv/bin/python scripts/gen_open_clip_zoo.py

Never on the product's path: typoclip reads the JSON it writes.
"""
import glob
import json
import os
import shutil

import open_clip
from open_clip import pretrained as P

root = os.path.dirname(open_clip.__file__)
out_dir = os.path.join(os.path.dirname(__file__), "..", "assets", "open_clip")
models = {}
for path in sorted(glob.glob(os.path.join(root, "model_configs", "*.json"))):
    with open(path) as f:
        models[os.path.splitext(os.path.basename(path))[0]] = json.load(f)
pretrained = []
for arch, tag in open_clip.list_pretrained():
    cfg = dict(P.get_pretrained_cfg(arch, tag))
    entry = {"arch": arch, "tag": tag}
    for k in sorted(cfg):
        v = cfg[k]
        entry[k] = list(v) if isinstance(v, tuple) else v
    pretrained.append(entry)
doc = {
    "source": f"open-clip-torch {open_clip.__version__}: model_configs/*.json and pretrained.py",
    "models": models,
    "pretrained": pretrained,
}
with open(os.path.join(out_dir, "zoo.json"), "w") as f:
    json.dump(doc, f, indent=1, sort_keys=True)
    f.write("\n")
lic = glob.glob(os.path.join(os.path.dirname(root), "open_clip_torch-*.dist-info", "licenses", "LICENSE"))
if lic:
    shutil.copy(lic[0], os.path.join(out_dir, "LICENSE"))
print(f"{len(models)} model configs, {len(pretrained)} pretrained pairs")
