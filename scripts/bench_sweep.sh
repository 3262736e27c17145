#!/usr/bin/env bash
# Sweep throughput, printed as ratios from one run on this machine (issue: attack sweeps):
#  (a) typoclip sweep: the Distill suite's nine words (one position) over N ImageNet-sample images,
#      random ViT-B/32, fp32, batch 16 pairs (32 images);
#  (b) a straightforward Python open_clip + PIL script doing the same work serially;
#  (c) typoclip's bare image-encoder forward at batch 32 (the physical limit);
#  peak RSS of (a) at N and at 1000 images; and --precision bf16: speed-up and top-1 agreement.
# Usage: scripts/bench_sweep.sh [N=100]. Needs ../shared/data and the Python reference in .venv
# (scripts/test.sh installs it). Takes ~15 minutes on 2 cores (the 1000-image run dominates).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100}
BIG=${BENCH_BIG:-1000}   # the larger run for the RSS comparison
BF16_N=${BENCH_BF16_N:-$N}  # images for the bf16 run (slow on CPUs without AVX512-BF16)
DATA=../shared/data/imagenet-sample
[ -d "$DATA" ] || { echo "bench_sweep: $DATA not found (the benchmark needs the shared ImageNet sample)" >&2; exit 1; }
cargo build --release --quiet --example forward_throughput
BIN=target/release/typoclip
tmp=$(mktemp -d)
export XDG_CACHE_HOME="$tmp/cache"
common=(--model random:ViT-B-32 --dataset datasets/imagenet-sample.toml --attacks attacks/distill-suite.toml
        --variant 'distill/*/pos=0' --shuffle --seed 0 --batch-size 16 --quiet)
echo "[bench] warming the text-classifier cache"
$BIN sweep "${common[@]}" --limit 1 --out "$tmp/warm" >/dev/null
run() { # name, limit, extra args...
  local name=$1 limit=$2; shift 2
  /usr/bin/time -f "%e %M" -o "$tmp/$name.time" $BIN sweep "${common[@]}" --limit "$limit" --out "$tmp/$name" "$@" \
    >/dev/null 2>"$tmp/$name.err"
  grep '^\[sweep\]' "$tmp/$name.err"
}
echo "[bench] (a) typoclip sweep, $N images x 9 variants"
run a "$N"
echo "[bench] (c) bare forward"
images=$(( N * 10 ))
fwd=$(target/release/examples/forward_throughput ViT-B-32 32 "$images")
echo "[bench] (b) Python open_clip + PIL"
cut -d'"' -f4 "$tmp/a/records.jsonl" | awk '!seen[$0]++' | sed "s#^#$DATA/#" > "$tmp/paths.txt"
py=$(.venv/bin/python scripts/bench_sweep.py "$tmp/paths.txt" datasets/labels/ilsvrc-det200.tsv assets/fonts/DejaVuSerif.ttf 2>/dev/null | tail -1)
echo "[bench] bf16"
run bf16 "$BF16_N" --precision bf16
echo "[bench] RSS at $BIG images"
run big "$BIG"
.venv/bin/python - "$tmp" "$N" "$fwd" "$py" "$BIG" "$BF16_N" <<'PY'
import json, sys, os, platform
tmp, n, fwd, py, big, n16 = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
def t(name):
    # Seconds of the pipeline itself (read → encode → records; after model start-up and the
    # cached text classifier), as the sweep prints it, and peak RSS.
    line = next(l for l in open(f"{tmp}/{name}.err") if l.startswith("[sweep]"))
    secs = float(line.split(" in ")[1].split(" s ")[0])
    e, m = open(f"{tmp}/{name}.time").read().split()
    return secs, int(m) / 1024
def top1(name):
    return [json.loads(l)["attacked_top5"][0]["label"] for l in open(f"{tmp}/{name}/records.jsonl")]
(ea, ma), (eb16, mb16), (ebig, mbig) = t("a"), t("bf16"), t("big")
images = n * 10
a = images / ea
pairs = list(zip(top1("a"), top1("bf16")))  # the bf16 run's images are the first of run (a)
agree = sum(x == y for x, y in pairs) / len(pairs)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"machine: {cpu}, {os.cpu_count()} cores; random ViT-B/32 weights (numbers are speeds, not findings)")
print(f"(a) typoclip sweep      {a:7.2f} images/s  ({images} images in {ea:.1f} s after start-up)")
pm = py["model_seconds"]
print(f"(b) Python open_clip    {py['images_per_s']:7.2f} images/s  (model {pm:.1f} s = {images / pm:.2f} images/s, the rest {py['seconds'] - pm:.1f} s)")
print(f"(c) bare forward (b=32) {fwd['images_per_s']:7.2f} images/s")
print(f"(a)/(c) = {a / fwd['images_per_s']:.2f}   (goal >= 0.90)")
print(f"(a)/(b) = {a / py['images_per_s']:.2f}   (goal >= 1.15)")
print(f"forward alone, typoclip (c) / Python's model time: {fwd['images_per_s'] * pm / images:.2f}")
print(f"peak RSS: {ma:.0f} MiB at {n} images, {mbig:.0f} MiB at {big} images: ratio {mbig / ma:.3f} (goal <= 1.10)")
r16 = n16 * 10 / eb16
print(f"bf16 ({n16} images): {r16:.2f} images/s = {r16 / a:.2f}x fp32; attacked top-1 agreement with fp32 {100 * agree:.1f}% of {len(pairs)} records")
PY
rm -rf "$tmp"
