#!/usr/bin/env bash
# The main job on a fresh clone, end to end with an embedded default (no cluster, no GPU, no files from
# outside the repo): install what is missing, build, make task data, prepare shards (2 MPI ranks),
# and show what they hold. Later stages (fine-tune, evaluate, generate, loss PNG) extend this script.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
st_install_apt
st_build
OUT="${DEMO_DIR:-$ROOT/demo-out}"
mkdir -p "$OUT"
echo "== demo: task data (reverse a word) in $OUT"
/usr/bin/python3 "$ROOT/tools/demo/make_task.py" "$OUT/train.jsonl" "$OUT/heldout.jsonl" 4000
rm -rf "$OUT/shards"
echo "== demo: shardtune-prep on 2 ranks (byte tokenizer, plain template, 5% validation)"
mpirun --allow-run-as-root --oversubscribe -np 2 "$BUILD_DIR/data_prep/shardtune-prep" \
  --input "$OUT/train.jsonl" --output "$OUT/shards" --tokenizer byte --template plain \
  --max-seq-len 256 --val-fraction 0.05 --threads 1
echo "== demo: shardtune-inspect"
"$BUILD_DIR/tools/shardtune-inspect" "$OUT/shards" --verify
