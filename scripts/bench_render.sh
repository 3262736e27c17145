#!/usr/bin/env bash
# Attack rendering images/s: typoclip (criterion, benches/render.rs) vs Python PIL ImageDraw
# (scripts/bench_render.py) drawing "iPod" on a paper label + 20 "$" marks onto the same
# 500x375 photo with the same font, on this machine, in one run; prints the ratio.
# Needs ../shared/data/imagenet-sample (skips otherwise) and Pillow in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench render -- --noplot "$@" >&2
est=target/criterion/render/ipod_label_20_dollars_500x375/new/estimates.json
if [ ! -f "$est" ]; then echo "skipped: no criterion estimate (shared data absent?)"; exit 0; fi
py=$(.venv/bin/python scripts/bench_render.py | grep '^{' || true)
if [ -z "$py" ]; then echo "skipped: PIL side did not run"; exit 0; fi
.venv/bin/python - "$est" "$py" <<'PY'
import json, sys, os, platform
est = json.load(open(sys.argv[1]))
ns = est["mean"]["point_estimate"]
rs = 1e9 / ns
py = json.loads(sys.argv[2])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"machine: {cpu}, {os.cpu_count()} cores; photo {py['photo']}; Pillow {py['pillow']}")
print(f"typoclip: {rs:9.1f} images/s  ({ns / 1e3:.1f} µs/image, criterion mean, mask included)")
print(f"PIL:      {py['images_per_s']:9.1f} images/s")
print(f"ratio:    {rs / py['images_per_s']:9.2f}x  (goal: >= 2x)")
PY
