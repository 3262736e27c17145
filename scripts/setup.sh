#!/usr/bin/env bash
# typoclip set-up (idempotent; safe to re-run; prints what it does).
#  1. a project-local .venv with the lean libtorch runtime from PyPI's torch wheel (no Python
#     torch import needed: only the shared libraries), linked as .libtorch for tch;
#  2. the built-in default images, extracted from the scikit-image wheel (public domain / CC0);
#  3. PaddleOCR's PP-OCRv4 text detector (Apache-2.0), extracted from the rapidocr-onnxruntime
#     wheel into .cache/ocr/ (the mask defense's source=ocr and `typoclip detect` read it);
#  4. cargo build --release.
#  5. typoclip fetch ViT-B-32 (continues when offline).
#  6. Debian's chromium, used only by the test that renders a report in a real browser
#     (continues without it; that test then skips and says so).
#  7. Debian's Slurm and MUNGE (slurmctld slurmd munge slurm-client), used only by the test
#     that runs a plan's array script on a real single-node Slurm (tests/slurm.rs; continues
#     without them; that test then skips and says so).
# Environment: TYPOCLIP_SKIP_BUILD=1 skips steps 4-5, TYPOCLIP_SKIP_FETCH=1 skips step 5,
# TYPOCLIP_SKIP_CHROMIUM=1 skips step 6, TYPOCLIP_SKIP_SLURM=1 skips step 7.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TORCH_VERSION=2.13.0   # what tch 0.26.0 expects
SKIMAGE_VERSION=0.26.0
RAPIDOCR_VERSION=1.4.4
OCR_SHA256=d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9
say() { echo "[setup] $*"; }

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3 python3-venv)
command -v c++ >/dev/null || need_apt+=(g++)
command -v unzip >/dev/null || need_apt+=(unzip)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  say "installing Debian packages: ${need_apt[*]}"
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
fi
if ! command -v cargo >/dev/null; then
  echo "[setup] cargo not found: install the Rust toolchain (https://rustup.rs) and re-run" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
fi
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ ! -f "$SITE/torch/lib/libtorch_cpu.so" ] || ! grep -q "^Version: $TORCH_VERSION" "$SITE"/torch-*.dist-info/METADATA 2>/dev/null; then
  say "installing the libtorch runtime (torch==$TORCH_VERSION wheel, lean: ~1.2 GB)"
  .venv/bin/pip install -q --no-deps "torch==$TORCH_VERSION" nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
else
  say "libtorch runtime present (torch $TORCH_VERSION)"
fi
ln -sfn "$SITE/torch" .libtorch
say ".libtorch -> $SITE/torch"

BUILTIN=.cache/builtin
if [ ! -f "$BUILTIN/.done" ]; then
  say "extracting built-in images from scikit-image $SKIMAGE_VERSION (public domain / CC0, see datasets/builtin.toml)"
  tmp=$(mktemp -d)
  .venv/bin/pip download -q --no-deps --only-binary=:all: -d "$tmp" "scikit-image==$SKIMAGE_VERSION"
  mkdir -p "$BUILTIN"
  unzip -q -o -j "$tmp"/scikit_image-*.whl 'skimage/data/chelsea.png' 'skimage/data/coffee.png' \
    'skimage/data/rocket.jpg' 'skimage/data/astronaut.png' -d "$BUILTIN"
  rm -rf "$tmp"
  touch "$BUILTIN/.done"
else
  say "built-in images present in $BUILTIN"
fi

OCR=.cache/ocr/ch_PP-OCRv4_det_infer.onnx
if [ ! -f "$OCR" ] || ! echo "$OCR_SHA256  $OCR" | sha256sum -c --status; then
  say "extracting PP-OCRv4's text detector from rapidocr-onnxruntime $RAPIDOCR_VERSION (Apache-2.0)"
  tmp=$(mktemp -d)
  .venv/bin/pip download -q --no-deps --only-binary=:all: -d "$tmp" "rapidocr-onnxruntime==$RAPIDOCR_VERSION"
  mkdir -p .cache/ocr
  unzip -q -o -j "$tmp"/rapidocr_onnxruntime-*.whl 'rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx' -d .cache/ocr
  rm -rf "$tmp"
  echo "$OCR_SHA256  $OCR" | sha256sum -c --status || { echo "[setup] $OCR: sha256 mismatch" >&2; exit 1; }
else
  say "text detector present in $OCR"
fi

if [ "${TYPOCLIP_SKIP_BUILD:-0}" != 1 ]; then
  say "cargo build --release"
  cargo build --release
  if [ "${TYPOCLIP_SKIP_FETCH:-0}" != 1 ]; then
    say "trying to fetch the default checkpoint (ViT-B-32) into the cache"
    ./target/release/typoclip fetch ViT-B-32 --quiet \
      || say "could not fetch ViT-B-32 (offline?): the default run will use the toy CLIP and say so"
  fi
  if [ "${TYPOCLIP_SKIP_TOY:-0}" != 1 ]; then
    # The positive control (a no-op when it is already in the cache): the first command's
    # fallback when no checkpoint is cached, and what tests/toy.rs measures.
    say "training the positive-control toy CLIP into the cache (about 3-5 minutes on 2 cores)"
    ./target/release/typoclip toy train --quiet
  fi
fi
if [ "${TYPOCLIP_SKIP_CHROMIUM:-0}" != 1 ] && ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing Debian's chromium (for the report browser test)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || say "could not install chromium: the browser test will skip"
  else
    say "chromium not installed and not root: the report browser test will skip"
  fi
fi
if [ "${TYPOCLIP_SKIP_SLURM:-0}" != 1 ] && ! command -v slurmctld >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing Debian's Slurm and MUNGE (for the Slurm test)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      slurmctld slurmd munge slurm-client >/dev/null) \
      || say "could not install Slurm: the Slurm test will skip"
  else
    say "Slurm not installed and not root: the Slurm test will skip"
  fi
fi
say "done"
