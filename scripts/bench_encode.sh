#!/usr/bin/env bash
# Image-encoder images/s: typoclip vs Python open_clip on the same machine, same random
# architectures, fp32 CPU, in one run; prints the ratio per batch size.
# Needs the Python reference in .venv (scripts/test.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
cargo bench --bench encode -- "$@" | grep '^{' > "$out/rust.jsonl"
.venv/bin/python scripts/bench_encode.py "$@" 2>/dev/null | grep '^{' > "$out/python.jsonl"
.venv/bin/python - "$out" <<'PY'
import json, sys, platform, os
d = sys.argv[1]
rs = [json.loads(l) for l in open(f"{d}/rust.jsonl")]
py = {(r["arch"], r["batch"]): r for r in map(json.loads, open(f"{d}/python.jsonl"))}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"machine: {cpu}, {os.cpu_count()} cores; fp32, random weights")
print(f"{'arch':10} {'batch':>5} {'typoclip img/s':>15} {'open_clip img/s':>16} {'ratio':>6}")
for r in rs:
    p = py[(r["arch"], r["batch"])]
    print(f"{r['arch']:10} {r['batch']:>5} {r['images_per_s']:>15.2f} {p['images_per_s']:>16.2f} {r['images_per_s'] / p['images_per_s']:>6.2f}")
PY
