#!/usr/bin/env bash
# Reduced precision against fp32, in one run on this machine:
#  (1) the image encoder alone (examples/precision.rs): random weights of ViT-B/32, ViT-B/16 and
#      RN50 at batch 32 on 32 ImageNet-sample photos — images/s of fp32, `--precision bf16`
#      (autocast) and the whole tower in bf16, and each one's feature error against fp32;
#  (2) the sweep benchmark's sweep (the Distill suite's nine words over N photos, random
#      ViT-B/32) at fp32 and at bf16: images/s and attacked / clean top-1 agreement;
#  (3) the same agreement on the trained toy (its label attack over 300 scenes), where the
#      predictions have real margins.
# Usage: scripts/bench_precision.sh [N=100]. Needs ../shared/data and the toy (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100}
DATA=../shared/data/imagenet-sample
[ -d "$DATA" ] || { echo "bench_precision: $DATA not found" >&2; exit 1; }
TOY=${TYPOCLIP_TOY:-$HOME/.cache/typoclip/toy}
[ -f "$TOY/open_clip_config.json" ] || { echo "bench_precision: no toy at $TOY (typoclip toy train)" >&2; exit 1; }
cargo build --release --quiet --example precision
cargo build --release --quiet
BIN=target/release/typoclip
tmp=$(mktemp -d)
export XDG_CACHE_HOME="$tmp/cache"
for arch in ViT-B-32 ViT-B-16 RN50; do
  echo "[bench] encoder $arch" >&2
  target/release/examples/precision "$arch" 32 128 "$DATA" > "$tmp/enc-$arch.json"
done
common=(--model random:ViT-B-32-quickgelu --dataset datasets/imagenet-sample.toml --attacks attacks/distill-suite.toml
        --variant 'distill/*/pos=0' --shuffle --seed 0 --batch-size 16 --quiet)
$BIN sweep "${common[@]}" --limit 1 --out "$tmp/warm" >/dev/null 2>&1
for p in fp32 bf16; do
  echo "[bench] sweep $p" >&2
  $BIN sweep "${common[@]}" --limit "$N" --precision "$p" --out "$tmp/sweep-$p" >/dev/null 2>"$tmp/sweep-$p.err"
  echo "[bench] toy $p" >&2
  $BIN sweep --model "$TOY" --dataset datasets/synthetic.toml --attacks attacks/toy-labels.toml --limit 300 \
    --precision "$p" --out "$tmp/toy-$p" --quiet >/dev/null 2>&1
done
python3 - "$tmp" "$N" <<'PY'
import json, os, sys, platform
tmp, n = sys.argv[1], int(sys.argv[2])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
flags = open("/proc/cpuinfo").read()
print(f"machine: {cpu}, {os.cpu_count()} cores, AVX512-BF16: {'yes' if 'avx512_bf16' in flags else 'no'}, "
      f"AMX-BF16: {'yes' if 'amx_bf16' in flags else 'no'}; random weights except the toy (speeds and agreement, not findings)")
print("encoder (batch 32, photos)   fp32 im/s  bf16 autocast im/s (x fp32)  all-bf16 im/s (x fp32)  rel. L2 error autocast / all-bf16 (mean)")
for arch in ["ViT-B-32", "ViT-B-16", "RN50"]:
    e = json.load(open(f"{tmp}/enc-{arch}.json"))
    f, a, p = e["fp32_images_per_s"], e["bf16_autocast_images_per_s"], e["bf16_pure_images_per_s"]
    print(f"{arch:28s} {f:9.2f}  {a:9.2f} ({a / f:.2f}x)  {p:9.2f} ({p / f:.2f}x)  "
          f"{e['bf16_autocast_error']['rel_l2_mean']:.2e} / {e['bf16_pure_error']['rel_l2_mean']:.2e}")
def rate(name):
    line = next(l for l in open(f"{tmp}/{name}.err") if l.startswith("[sweep]"))
    secs = float(line.split(" in ")[1].split(" s ")[0])
    return n * 10 / secs
def agree(a, b):
    ra = [json.loads(l) for l in open(f"{tmp}/{a}/records.jsonl")]
    rb = [json.loads(l) for l in open(f"{tmp}/{b}/records.jsonl")]
    assert len(ra) == len(rb)
    top = lambda r, k: r[k][0]["label"] if r.get(k) else None
    att = sum(top(x, "attacked_top5") == top(y, "attacked_top5") for x, y in zip(ra, rb)) / len(ra)
    cl = sum(top(x, "clean_top5") == top(y, "clean_top5") for x, y in zip(ra, rb)) / len(ra)
    return att, cl, len(ra)
f, b = rate("sweep-fp32"), rate("sweep-bf16")
att, cl, k = agree("sweep-fp32", "sweep-bf16")
print(f"sweep, random ViT-B/32, {n} photos x (clean + 9 words): fp32 {f:.2f} im/s, bf16 {b:.2f} im/s ({b / f:.2f}x); "
      f"top-1 agreement over {k} cells: attacked {100 * att:.1f} %, clean {100 * cl:.1f} %")
att, cl, k = agree("toy-fp32", "toy-bf16")
print(f"trained toy, label attack: top-1 agreement over {k} cells: attacked {100 * att:.1f} %, clean {100 * cl:.1f} %")
PY
rm -rf "$tmp"
