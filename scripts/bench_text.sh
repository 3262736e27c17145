#!/usr/bin/env bash
# Zero-shot classifier text encoding, prompts/s: typoclip (length-sorted batches cut to their
# longest prompt) vs Python open_clip (padded to 77), same random ViT-B/32, in one run.
# Needs the Python reference in .venv (scripts/test.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
cargo bench --bench text | grep '^{' > "$out/rust.jsonl"
.venv/bin/python scripts/bench_text.py 2>/dev/null | grep '^{' > "$out/python.jsonl"
.venv/bin/python - "$out" <<'PY'
import json, sys
d = sys.argv[1]
rs = [json.loads(l) for l in open(f"{d}/rust.jsonl")]
py = json.loads(open(f"{d}/python.jsonl").readline())
for r in rs:
    extra = f"  (max abs diff vs sorted: {r['max_abs_diff_vs_sorted']})" if "max_abs_diff_vs_sorted" in r else ""
    print(f"typoclip {r['mode']:7} {r['prompts_per_s']:9.2f} prompts/s over {r['prompts']} prompts{extra}")
print(f"open_clip padded  {py['prompts_per_s']:9.2f} prompts/s over {py['prompts']} prompts ({py['threads']} threads)")
sorted_r = next(r for r in rs if r["mode"] == "sorted")
print(f"ratio typoclip sorted / open_clip: {sorted_r['prompts_per_s'] / py['prompts_per_s']:.2f}x")
PY
