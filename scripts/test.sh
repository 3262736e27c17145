#!/usr/bin/env bash
# typoclip's test command: set-up, the Python reference (torch + open_clip, used only to make
# parity fixtures), formatting, lints, then every test in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
TYPOCLIP_SKIP_FETCH=1 bash scripts/setup.sh
echo "[test] installing the Python reference into .venv (torch, open-clip-torch, timm, safetensors, pillow, numpy, scikit-learn, transformers, onnxruntime)"
.venv/bin/pip install -q "torch==2.13.0" "open-clip-torch==3.3.0" "timm==1.0.31" "safetensors>=0.4" "pillow==13.0.0" "numpy>=1.26" "scikit-learn==1.9.1" "transformers==4.57.1" "tokenizers==0.22.2" "ftfy==6.3.1" "onnxruntime==1.32.0"
echo "[test] cargo fmt --check"
cargo fmt --all -- --check
echo "[test] cargo clippy"
cargo clippy --release --all-targets -- -D warnings
echo "[test] cargo test --release"
cargo test --release
