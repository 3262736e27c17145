#!/usr/bin/env bash
# Text-detector images/s: typoclip (criterion, benches/detect.rs: the PP-OCRv4 network on
# libtorch) vs onnxruntime (scripts/reference_ocr.py --bench) on the same prepared inputs
# (4 real photos: 2 Distill 322x322 -> 320x320, 2 SCAM 384x384) with the same thread count,
# on this machine, in one run; prints the ratio. THREADS=N (default 1).
# Needs the model (scripts/setup.sh) and ../shared/data (skips otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-1}
inputs=$(mktemp -d)
trap 'rm -rf "$inputs"' EXIT
TYPOCLIP_BENCH_THREADS=$THREADS TYPOCLIP_BENCH_INPUTS=$inputs \
  cargo bench --bench detect -- --noplot "network_${THREADS}t" >&2
est=target/criterion/detect/network_${THREADS}t/new/estimates.json
if [ ! -f "$inputs/in0.npy" ] || [ ! -f "$est" ]; then
  echo "skipped: no criterion estimate (model or shared data absent?)"; exit 0
fi
.venv/bin/python scripts/reference_ocr.py .cache/ocr/ch_PP-OCRv4_det_infer.onnx "$inputs/out" \
  "$inputs"/in*.npy --threads "$THREADS" --bench 20 >&2
.venv/bin/python - "$est" "$inputs/out/timing.json" "$THREADS" "$(ls "$inputs"/in*.npy | wc -l)" <<'PY'
import json, sys, os, platform
est = json.load(open(sys.argv[1]))
ort = json.load(open(sys.argv[2]))
threads, n = int(sys.argv[3]), int(sys.argv[4])
ours = n * 1e9 / est["mean"]["point_estimate"]
theirs = 1.0 / ort["seconds_per_image"]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"machine: {cpu}, {os.cpu_count()} cores; {threads} thread(s); onnxruntime {ort['onnxruntime']}")
print(f"typoclip:    {ours:7.1f} images/s  (criterion mean over {n} photos)")
print(f"onnxruntime: {theirs:7.1f} images/s")
print(f"ratio:       {ours / theirs:7.2f}x  (goal: >= 1.0x)")
PY
