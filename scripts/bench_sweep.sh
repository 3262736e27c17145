#!/usr/bin/env bash
# Sweep throughput, printed as ratios from one run on this machine (issue: attack sweeps):
#  (a) typoclip sweep: the Distill suite's nine words (one position) over N ImageNet-sample images,
#      random ViT-B/32, fp32, batch 16 pairs (32 images);
#  (b) a straightforward Python open_clip + PIL script doing the same work serially;
#  (c) typoclip's bare image-encoder forward at batch 32 (the physical limit);
#  in BENCH_ROUNDS rounds (default 3) of (a), (c), (b), each ratio within a round, and the median;
#  peak RSS of (a) at N and at 1000 images; and --precision bf16: speed-up and top-1 agreement.
# Usage: scripts/bench_sweep.sh [N=100]. Needs ../shared/data and the Python reference in .venv
# (scripts/test.sh installs it). Takes ~35 minutes on 2 cores (~4 a round; the 1000-image run ~14).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100}
BIG=${BENCH_BIG:-1000}   # the larger run for the RSS comparison
BF16_N=${BENCH_BF16_N:-$N}  # images for the bf16 run (slow on CPUs without AVX512-BF16)
ROUNDS=${BENCH_ROUNDS:-3}   # rounds of (a), (c), (b), one after the other
DATA=../shared/data/imagenet-sample
[ -d "$DATA" ] || { echo "bench_sweep: $DATA not found (the benchmark needs the shared ImageNet sample)" >&2; exit 1; }
cargo build --release --quiet --example forward_throughput
BIN=target/release/typoclip
tmp=$(mktemp -d)
export XDG_CACHE_HOME="$tmp/cache"
common=(--model random:ViT-B-32-quickgelu --dataset datasets/imagenet-sample.toml --attacks attacks/distill-suite.toml
        --variant 'distill/*/pos=0' --shuffle --seed 0 --batch-size 16 --quiet)
echo "[bench] warming the text-classifier cache"
$BIN sweep "${common[@]}" --limit 1 --out "$tmp/warm" >/dev/null
run() { # name, limit, extra args...
  local name=$1 limit=$2; shift 2
  /usr/bin/time -f "%e %M" -o "$tmp/$name.time" $BIN sweep "${common[@]}" --limit "$limit" --out "$tmp/$name" "$@" \
    >/dev/null 2>"$tmp/$name.err"
  grep '^\[sweep\]' "$tmp/$name.err"
}
# The VM's speed drifts over minutes (neighbours), so (a), (c) and (b) are measured in rounds,
# one after the other, and each ratio is taken within a round.
images=$(( N * 10 ))
for r in $(seq 1 "$ROUNDS"); do
  echo "[bench] round $r/$ROUNDS: (a) typoclip sweep, $N images x 9 variants"
  run "a$r" "$N"
  echo "[bench] round $r/$ROUNDS: (c) bare forward"
  target/release/examples/forward_throughput ViT-B-32 32 "$images" > "$tmp/c$r.json"
  echo "[bench] round $r/$ROUNDS: (b) Python open_clip + PIL"
  [ -f "$tmp/paths.txt" ] || cut -d'"' -f4 "$tmp/a1/records.jsonl" | awk '!seen[$0]++' | sed "s#^#$DATA/#" > "$tmp/paths.txt"
  .venv/bin/python scripts/bench_sweep.py "$tmp/paths.txt" datasets/labels/ilsvrc-det200.tsv assets/fonts/DejaVuSerif.ttf 2>/dev/null | tail -1 > "$tmp/b$r.json"
done
echo "[bench] bf16"
run bf16 "$BF16_N" --precision bf16
echo "[bench] RSS at $BIG images"
run big "$BIG"
.venv/bin/python - "$tmp" "$N" "$ROUNDS" "$BIG" "$BF16_N" <<'PY'
import json, sys, os, platform, statistics
tmp, n, rounds, big, n16 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def t(name):
    # Seconds of the pipeline itself (read → encode → records; after model start-up and the
    # cached text classifier), as the sweep prints it, and peak RSS.
    line = next(l for l in open(f"{tmp}/{name}.err") if l.startswith("[sweep]"))
    secs = float(line.split(" in ")[1].split(" s ")[0])
    e, m = open(f"{tmp}/{name}.time").read().split()
    return secs, int(m) / 1024
def top1(name):
    return [json.loads(l)["attacked_top5"][0]["label"] for l in open(f"{tmp}/{name}/records.jsonl")]
images = n * 10
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"machine: {cpu}, {os.cpu_count()} cores; random ViT-B/32 weights (numbers are speeds, not findings)")
print(f"{images} images a run (N={n} photos x (clean + 9 words)); images/s; ratios within each round")
print("round   (a) sweep  (b) Python  (b) model  (c) forward  (a)/(c)  (a)/(b)  (c)/(b model)")
ac, ab, cb, rates, rss = [], [], [], [], []
for r in range(1, rounds + 1):
    ea, ma = t(f"a{r}")
    a = images / ea
    py = json.load(open(f"{tmp}/b{r}.json"))
    b, bm = py["images_per_s"], images / py["model_seconds"]
    c = json.load(open(f"{tmp}/c{r}.json"))["images_per_s"]
    ac.append(a / c); ab.append(a / b); cb.append(c / bm); rates.append(a); rss.append(ma)
    print(f"{r:5d}   {a:9.2f}  {b:10.2f}  {bm:9.2f}  {c:11.2f}  {a / c:7.2f}  {a / b:7.2f}  {c / bm:13.2f}")
med = statistics.median
print(f"median of {rounds}: (a)/(c) = {med(ac):.2f} (goal >= 0.90), (a)/(b) = {med(ab):.2f} (goal >= 1.15); "
      f"forward alone, typoclip / Python's model time = {med(cb):.2f}")
eb16, mb16 = t("bf16")
ebig, mbig = t("big")
print(f"peak RSS: {rss[0]:.0f} MiB at {n} images (round 1), {mbig:.0f} MiB at {big} images: ratio {mbig / rss[0]:.3f} (goal <= 1.10)")
pairs = list(zip(top1("a1"), top1("bf16")))  # the bf16 run's images are the first of run (a)
agree = sum(x == y for x, y in pairs) / len(pairs)
r16 = n16 * 10 / eb16
print(f"bf16 ({n16} images): {r16:.2f} images/s = {r16 / rates[0]:.2f}x fp32 (round 1); attacked top-1 agreement with fp32 {100 * agree:.1f}% of {len(pairs)} records")
PY
rm -rf "$tmp"
