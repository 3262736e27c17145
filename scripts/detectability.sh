#!/usr/bin/env bash
# The text detector's measurements (README, "Where the text is"): detectability of rendered
# attacks on 200 ImageNet-sample photos, and detection on SCAM's and Distill's photographed
# attacks, at CLIP's 224-pixel model input. Writes full reports (with example images, which
# stay out of the repository) under OUT (default /tmp/typoclip-detectability) and the tables
# into results/detectability/. Needs the model (scripts/setup.sh), ../shared/data and a build.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/typoclip-detectability}
BIN=./target/release/typoclip
export LD_LIBRARY_PATH=$PWD/.libtorch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
mkdir -p results/detectability
$BIN detect --dataset datasets/imagenet-sample.toml --limit 200 \
  --attacks attacks/sweep-size.toml --attacks attacks/sweep-font.toml \
  --attacks attacks/sweep-color.toml --attacks attacks/sweep-opacity.toml \
  --attacks attacks/sweep-rotation.toml --attacks attacks/ipod-label.toml \
  --attacks attacks/scam-postit.toml --out "$OUT/rendered"
$BIN detect --dataset datasets/scam.toml --out "$OUT/scam"
$BIN detect --dataset datasets/distill-in-the-wild.toml --out "$OUT/distill"
cp "$OUT/rendered/detectability.csv" results/detectability/rendered.csv
for d in scam distill; do
  .venv/bin/python - "$OUT/$d/detectability.json" "results/detectability/$d.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
keep = {k: d[k] for k in ("provenance", "conditions", "postit_sizes", "errors")}
open(sys.argv[2], "w").write(json.dumps(keep, indent=1) + "\n")
PY
done
echo "reports: $OUT/{rendered,scam,distill}/report.html; tables: results/detectability/"
