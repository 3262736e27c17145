#!/usr/bin/env bash
# Text-detector images/s: typoclip (criterion, benches/detect.rs: the PP-OCRv4 network on
# libtorch) vs onnxruntime (scripts/reference_ocr.py --bench) on the same prepared inputs
# (4 real photos: 2 Distill 322x322 -> 320x320, 2 SCAM 384x384) with the same thread count,
# on this machine; also typoclip's whole `detect` (resize, network, DB post-processing) against
# onnxruntime's network alone, the stricter ratio. The VM's speed drifts, so it measures both in ROUNDS rounds (default 3), one
# after the other, takes the ratio within each round and prints the median.
# THREADS=N (default 1). Needs the model (scripts/setup.sh) and ../shared/data (skips otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-3}
inputs=$(mktemp -d)
trap 'rm -rf "$inputs"' EXIT
est=target/criterion/detect/network_${THREADS}t/new/estimates.json
whole=target/criterion/detect/detect_${THREADS}t/new/estimates.json
for r in $(seq 1 "$ROUNDS"); do
  TYPOCLIP_BENCH_THREADS=$THREADS TYPOCLIP_BENCH_INPUTS=$inputs \
    cargo bench --bench detect -- --noplot "_${THREADS}t\$" >&2
  if [ ! -f "$inputs/in0.npy" ] || [ ! -f "$est" ]; then
    echo "skipped: no criterion estimate (model or shared data absent?)"; exit 0
  fi
  cp "$est" "$inputs/ours-$r.json"
  cp "$whole" "$inputs/whole-$r.json"
  .venv/bin/python scripts/reference_ocr.py .cache/ocr/ch_PP-OCRv4_det_infer.onnx "$inputs/out" \
    "$inputs"/in*.npy --threads "$THREADS" --bench 20 >&2
  cp "$inputs/out/timing.json" "$inputs/ort-$r.json"
done
.venv/bin/python - "$inputs" "$THREADS" "$ROUNDS" <<'PY'
import json, sys, os, platform, statistics, glob
d, threads, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
n = len(glob.glob(os.path.join(d, "in*.npy")))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
ratios, strict = [], []
print(f"machine: {cpu}, {os.cpu_count()} cores; {threads} thread(s); {n} photos")
print("| round | typoclip network images/s | typoclip detect images/s | onnxruntime network images/s | network ratio | detect / onnxruntime network |")
print("|---|---|---|---|---|---|")
rate = lambda f: n * 1e9 / json.load(open(f))["mean"]["point_estimate"]
for r in range(1, rounds + 1):
    ours, whole = rate(f"{d}/ours-{r}.json"), rate(f"{d}/whole-{r}.json")
    ort = json.load(open(f"{d}/ort-{r}.json"))
    theirs = 1.0 / ort["seconds_per_image"]
    ratios.append(ours / theirs)
    strict.append(whole / theirs)
    print(f"| {r} | {ours:.1f} | {whole:.1f} | {theirs:.1f} | {ours / theirs:.2f} | {whole / theirs:.2f} |")
print(f"| **median** | | | | **{statistics.median(ratios):.2f}** | **{statistics.median(strict):.2f}** |")
print(f"goal: >= 1.0; onnxruntime {ort['onnxruntime']}")
PY
