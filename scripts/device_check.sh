#!/usr/bin/env bash
# The GPU check, one script: run on the GPU machine (torch 2.11 / CUDA in its Python, no Rust)
# from the repository root with what scripts/device_prepare.sh made here carried along
# (`target/device/release/typoclip`, `target/device/release/examples/forward_throughput`,
# `target/device-check/`). Writes $OUT/device-check.json (and the raw outputs beside it):
#  - versions and the device;
#  - CUDA against CPU: image embeddings of random ViT-B/32, ViT-L/14 and RN50 (weights drawn on
#    the CPU from the same seed) on 8 photos, against the CPU embeddings made here with the same
#    build (carried .npy) and against this machine's own CPU (goal: max abs diff <= 1e-4 of the
#    largest magnitude);
#  - the Distill-suite sweep (9 words at one position over the carried photos, random ViT-B/32,
#    batch 256 pairs) at fp32, bf16 and fp16 on CUDA: images/s and top-1 agreement with fp32
#    (goal >= 99 %);
#  - the sweep's images/s against the bare forward at batch 256 (goal >= 90 %) and against the
#    same work in this machine's Python torch + PIL (scripts/bench_sweep.py, plain torch);
#  - the bare forward of ViT-B/16, ViT-L/14 and RN50 at batch 256 (per-model throughput);
#  - the sweep with `--defense mask:source=ocr` (the text detector on the device) against the
#    sweep without it (goal: at least half its images/s), and `typoclip detect`'s throughput on
#    the device and on the CPU.
# Budget: well under 8 minutes on one H200 with 16 cores. CPU-only machines: DEVICE=cpu runs the
# same steps on the CPU (to check the script itself), PHOTOS=N on the first N carried photos,
# CARRY is the prepared folder (default target/device-check), FWD_BATCH / FWD_IMAGES size
# the larger towers' forward runs, BENCH_PYTHON is the Python with torch and PIL for the
# Python side (default: $PYTHON), TYPOCLIP_BIN / FORWARD_BIN the binaries.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device-check}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
CARRY=${CARRY:-target/device-check}
BIN=${TYPOCLIP_BIN:-target/device/release/typoclip}
FWD=${FORWARD_BIN:-target/device/release/examples/forward_throughput}
mkdir -p "$OUT/photos"
log() { echo "[device-check $(date +%H:%M:%S)] $*" >&2; }
# libtorch from the Python torch here (the binaries were built against torch 2.11).
lib=$("$PY" -c 'import importlib.util, os; print(os.path.join(os.path.dirname(importlib.util.find_spec("torch").origin), "lib"))')
export LD_LIBRARY_PATH=$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export XDG_CACHE_HOME="$OUT/cache"
[ -x "$BIN" ] || { echo "device_check: $BIN not found (scripts/device_prepare.sh builds it)" >&2; exit 1; }
[ -d "$CARRY/photos" ] || { echo "device_check: $CARRY/photos not found (scripts/device_prepare.sh)" >&2; exit 1; }
t0=$(date +%s)
# The sweeps' photos: all carried ones, or the first $PHOTOS.
ls "$CARRY"/photos/* | head -n "${PHOTOS:-100000}" | while read -r f; do ln -sf "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$OUT/photos/"; done

log "versions"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"; } > "$OUT/gpu.txt"
"$PY" -c 'import torch, json; print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(), "threads": torch.get_num_threads()}))' > "$OUT/torch.json" 2>&1
"$BIN" --version > "$OUT/typoclip-version.txt" 2>&1

log "parity: CUDA against the carried CPU embeddings and this machine's CPU"
photos=$(ls "$CARRY"/photos/* | head -8)
for arch in ViT-B-32 ViT-L-14 RN50; do
  # shellcheck disable=SC2086
  "$BIN" embed --model "random:$arch-quickgelu" --device "$DEVICE" --batch-size 8 --out "$OUT/$DEVICE-$arch.npy" $photos 2> "$OUT/embed-$arch.err"
  # shellcheck disable=SC2086
  "$BIN" embed --model "random:$arch-quickgelu" --device cpu --batch-size 8 --out "$OUT/here-cpu-$arch.npy" $photos 2>> "$OUT/embed-$arch.err"
done

common=(--model random:ViT-B-32-quickgelu --dataset "$OUT/photos" --attacks attacks/distill-suite.toml
        --variant 'distill/*/pos=0' --batch-size 128 --workers "$(nproc)" --device "$DEVICE" --quiet)
log "warming the text classifier"
"$BIN" sweep "${common[@]}" --limit 2 --out "$OUT/warm" > /dev/null 2> "$OUT/warm.err"
for p in fp32 bf16 fp16; do
  log "sweep $p"
  "$BIN" sweep "${common[@]}" --precision "$p" --out "$OUT/sweep-$p" > /dev/null 2> "$OUT/sweep-$p.err"
done
if [ -f "$CARRY/ocr.onnx" ]; then
  log "sweep fp32 with --defense mask:source=ocr,device=$DEVICE"
  TYPOCLIP_OCR_MODEL="$CARRY/ocr.onnx" "$BIN" sweep "${common[@]}" --defense "mask:source=ocr,device=$DEVICE" \
    --out "$OUT/sweep-ocr" > /dev/null 2> "$OUT/sweep-ocr.err"
fi
images=$(( $(ls "$OUT"/photos | wc -l) * 10 ))
log "bare forward, batch 256"
"$FWD" ViT-B-32 256 "$images" "$DEVICE" > "$OUT/forward.json" 2> "$OUT/forward.err"
# Per-model throughput for sizing plans (README, Scaling out): the bare forward of larger towers.
for arch in ViT-B-16 ViT-L-14 RN50; do
  log "bare forward $arch, batch ${FWD_BATCH:-256}"
  "$FWD" "$arch" "${FWD_BATCH:-256}" "${FWD_IMAGES:-2560}" "$DEVICE" > "$OUT/forward-$arch.json" 2>> "$OUT/forward.err"
done
log "Python torch + PIL, batch 256"
ls "$OUT"/photos/* > "$OUT/paths.txt"
BENCH_DEVICE=$DEVICE BENCH_BATCH=256 BENCH_THREADS=$(nproc) "${BENCH_PYTHON:-$PY}" scripts/bench_sweep.py "$OUT/paths.txt" \
  datasets/labels/ilsvrc-det200.tsv assets/fonts/DejaVuSerif.ttf > "$OUT/python.json" 2> "$OUT/python.err"
if [ -f "$CARRY/ocr.onnx" ]; then
  for d in "$DEVICE" cpu; do
    log "text detector on $d"
    start=$(date +%s.%N)
    TYPOCLIP_OCR_MODEL="$CARRY/ocr.onnx" "$BIN" detect --device "$d" "$OUT"/photos/* > /dev/null 2> "$OUT/detect-$d.err" \
      && "$PY" -c "print($(date +%s.%N) - $start)" > "$OUT/detect-$d.time"
  done
fi

log "summary"
"$PY" - "$OUT" "$CARRY" "$DEVICE" "$t0" <<'PY'
import json, os, struct, sys, time
out, carry, device, t0 = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def npy(path):
    # float32 [N, D] .npy without numpy (the machine's Python may not have it).
    with open(path, "rb") as f:
        assert f.read(6) == b"\x93NUMPY"
        major = f.read(2)[0]
        hlen = struct.unpack("<H" if major == 1 else "<I", f.read(2 if major == 1 else 4))[0]
        header = f.read(hlen).decode()
        assert "'<f4'" in header and "False" in header, header
        data = f.read()
    return struct.unpack(f"<{len(data) // 4}f", data)
def diff(a, b):
    if not (os.path.exists(a) and os.path.exists(b)):
        return None
    x, y = npy(a), npy(b)
    if len(x) != len(y):
        return {"error": f"{len(x)} vs {len(y)} values"}
    scale = max(abs(v) for v in y)
    d = max(abs(p - q) for p, q in zip(x, y))
    return {"max_abs_diff": d, "max_abs": scale, "relative": d / scale, "ok": d <= 1e-4 * scale}
def read(path):
    try:
        return open(path).read().strip()
    except OSError:
        return None
def jload(path):
    try:
        return json.loads(read(path).splitlines()[-1])
    except Exception as e:
        return {"error": f"{path}: {e}"}
r = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "device": device,
     "gpu": read(f"{out}/gpu.txt"), "torch": jload(f"{out}/torch.json"),
     "typoclip": read(f"{out}/typoclip-version.txt"),
     "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), None),
     "cores": os.cpu_count(), "note": "random weights: speeds, agreement and parity, not findings"}
r["parity"] = {arch: {"vs_carried_cpu": diff(f"{out}/{device}-{arch}.npy", f"{carry}/cpu-{arch}.npy"),
                      "vs_this_cpu": diff(f"{out}/{device}-{arch}.npy", f"{out}/here-cpu-{arch}.npy"),
                      "this_cpu_vs_carried_cpu": diff(f"{out}/here-cpu-{arch}.npy", f"{carry}/cpu-{arch}.npy")}
               for arch in ["ViT-B-32", "ViT-L-14", "RN50"]}
def rate(name):
    try:
        line = next(l for l in open(f"{out}/{name}.err") if l.startswith("[sweep]"))
        secs = float(line.split(" in ")[1].split(" s ")[0])
        return {"line": line.strip(), "seconds": secs}
    except Exception as e:
        return {"error": str(e)}
def top1(name):
    try:
        return [(json.loads(l).get("attacked_top5") or [{}])[0].get("label") for l in open(f"{out}/{name}/records.jsonl")]
    except OSError:
        return None
sweeps = {p: rate(f"sweep-{p}") for p in ["fp32", "bf16", "fp16", "ocr"]}
ref = top1("sweep-fp32")
for p in ["bf16", "fp16"]:
    t = top1(f"sweep-{p}")
    if ref and t and len(t) == len(ref):
        sweeps[p]["top1_agreement_with_fp32"] = sum(a == b for a, b in zip(ref, t)) / len(ref)
photos = len(os.listdir(f"{out}/photos"))
images = photos * 10
for p, s in sweeps.items():
    if "seconds" in s:
        s["images_per_s"] = images / s["seconds"]
r["sweeps"] = sweeps
r["forward"] = jload(f"{out}/forward.json")
r["python"] = jload(f"{out}/python.json")
r["forward_by_arch"] = {a: jload(f"{out}/forward-{a}.json") for a in ["ViT-B-16", "ViT-L-14", "RN50"]}
fwd, py, sw = r["forward"].get("images_per_s"), r["python"].get("images_per_s"), sweeps["fp32"].get("images_per_s")
ocr = sweeps["ocr"].get("images_per_s")
r["ratios"] = {"sweep_over_forward": sw / fwd if sw and fwd else None,
               "sweep_over_python": sw / py if sw and py else None,
               "ocr_mask_sweep_over_sweep": ocr / sw if ocr and sw else None}
for d in [device, "cpu"]:
    t = read(f"{out}/detect-{d}.time")
    if t:
        r[f"detect_{d}_images_per_s"] = photos / float(t.splitlines()[-1])
r["wall_seconds"] = int(time.time()) - t0
json.dump(r, open(f"{out}/device-check.json", "w"), indent=1)
print(json.dumps(r, indent=1))
PY
