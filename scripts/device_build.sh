#!/usr/bin/env bash
# A typoclip build for the GPU machine, whose Python has torch 2.11 (CUDA 13) and no Rust:
# the same sources built against PyPI's torch 2.11.0 wheel with tch / torch-sys 0.24.0 (tch's
# release for PyTorch 2.11), in a copy of the tree (target/device-src, Cargo.toml's two pins
# changed) with its own target folder (target/device). The default build stays on 0.26 / 2.13.
# Produces target/device/release/typoclip, target/device/release/examples/forward_throughput and
# target/device/typoclip-device, a wrapper that finds libtorch through the Python torch it runs
# with (`torch/lib`).
# DEVICE_TEST="--test parity" (any cargo test arguments) then runs those tests with this build.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TORCH_VERSION=2.11.0
TCH_VERSION=0.24.0
VENV=.venv-device
say() { echo "[device-build] $*"; }
SITE=$VENV/lib/python3.11/site-packages
if [ ! -f "$SITE/torch/lib/libtorch_cpu.so" ] || ! grep -q "^Version: $TORCH_VERSION" "$SITE"/torch-*.dist-info/METADATA 2>/dev/null; then
  say "installing the libtorch $TORCH_VERSION runtime into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --no-deps "torch==$TORCH_VERSION" nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
fi
SITE=$(cd "$SITE" && pwd)
SRC=target/device-src
mkdir -p "$SRC"
say "copying the tracked tree into $SRC"
git ls-files -z -co --exclude-standard | tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$SRC"
sed -i -e "s/^tch = \"=0.26.0\"/tch = \"=$TCH_VERSION\"/" -e "s/^torch-sys = \"=0.26.0\"/torch-sys = \"=$TCH_VERSION\"/" "$SRC/Cargo.toml"
grep -q "^tch = \"=$TCH_VERSION\"" "$SRC/Cargo.toml" || { echo "[device-build] Cargo.toml: tch pin not found" >&2; exit 1; }
ln -sfn "$SITE/torch" "$SRC/.libtorch"
# The test side reads the reference, the fixtures and the extracted files of the main tree.
for p in .venv .cache tests/fixtures/generated; do
  if [ -e "$p" ]; then mkdir -p "$(dirname "$SRC/$p")"; ln -sfn "$ROOT/$p" "$SRC/$p"; fi
done
# Tests find the shared data at ../shared from the tree's root.
if [ -d ../shared ]; then ln -sfn "$(cd ../shared && pwd)" "$(dirname "$SRC")/shared"; fi
export CARGO_TARGET_DIR=$ROOT/target/device
say "cargo build --release against torch $TORCH_VERSION (tch $TCH_VERSION)"
(cd "$SRC" && cargo build --release && cargo build --release --example forward_throughput)
cat > "$CARGO_TARGET_DIR/typoclip-device" <<'SH'
#!/usr/bin/env bash
# typoclip built against torch 2.11: libtorch from the Python torch on PATH (or $PYTHON).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# find_spec locates the package without importing it (a lean runtime cannot import torch).
lib=$("${PYTHON:-python3}" -c 'import importlib.util, os; print(os.path.join(os.path.dirname(importlib.util.find_spec("torch").origin), "lib"))')
export LD_LIBRARY_PATH=$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
exec "$here/release/typoclip" "$@"
SH
chmod +x "$CARGO_TARGET_DIR/typoclip-device"
say "built $CARGO_TARGET_DIR/release/typoclip ($(du -h "$CARGO_TARGET_DIR/release/typoclip" | cut -f1)) and $CARGO_TARGET_DIR/typoclip-device"
if [ -n "${DEVICE_TEST:-}" ]; then
  say "cargo test --release $DEVICE_TEST"
  # shellcheck disable=SC2086
  (cd "$SRC" && cargo test --release $DEVICE_TEST)
fi
