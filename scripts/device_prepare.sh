#!/usr/bin/env bash
# Prepares the GPU check (scripts/device_check.sh) here: the device build (scripts/device_build.sh,
# torch 2.11), and target/device-check/ — the first DEVICE_PHOTOS (default 150) ImageNet-sample
# photos of ../shared/data, the text detector's ONNX file (where set-up extracted it) and the CPU
# image embeddings of random ViT-B/32, ViT-L/14 and RN50 on the first 8 photos, made with the
# device build on this CPU (`cpu-ARCH.npy`), which the check compares with CUDA's. Prints what
# to carry and the command to run. SKIP_BUILD=1 keeps the device build there is.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${DEVICE_PHOTOS:-150}
DATA=../shared/data/imagenet-sample
[ -d "$DATA" ] || { echo "device_prepare: $DATA not found" >&2; exit 1; }
[ -n "${SKIP_BUILD:-}" ] || scripts/device_build.sh
C=target/device-check
rm -rf "$C"
mkdir -p "$C/photos"
mapfile -t all < <(cd "$DATA" && ls | grep -i '\.jpe\?g$' | sort)
for f in "${all[@]:0:$N}"; do cp "$DATA/$f" "$C/photos/"; done
if [ -f .cache/ocr/ch_PP-OCRv4_det_infer.onnx ]; then cp .cache/ocr/ch_PP-OCRv4_det_infer.onnx "$C/ocr.onnx"; fi
export PYTHON=${PYTHON:-.venv-device/bin/python}
export XDG_CACHE_HOME=$(mktemp -d)
mapfile -t shots < <(ls "$C"/photos/*)
first8="${shots[*]:0:8}"
for arch in ViT-B-32 ViT-L-14 RN50; do
  echo "[device-prepare] CPU embeddings of random $arch" >&2
  # shellcheck disable=SC2086
  target/device/typoclip-device embed --model "random:$arch-quickgelu" --device cpu --batch-size 8 \
    --out "$C/cpu-$arch.npy" $first8 2>/dev/null
done
rm -rf "$XDG_CACHE_HOME"
du -ch target/device/release/typoclip target/device/release/examples/forward_throughput "$C" | tail -1 >&2
cat >&2 <<MSG
[device-prepare] ready. On the GPU machine (device tool):
  carry: target/device/release/typoclip target/device/release/examples/forward_throughput target/device-check
  command: OUT=\$OUT bash scripts/device_check.sh
MSG
