#!/usr/bin/env bash
# Benchmark: shardtune-prep (GPT-2 BPE, 1 and 2 threads) vs the npm gpt-3-encoder reference (JavaScript,
# single-threaded) on the same JSONL text, in one run. Prints MB/s of each and the per-core ratio.
# Usage: tools/bench/prep.sh [BUILD_DIR]     (needs ../shared/data and the node refs from tools/test.sh)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="${1:-$ROOT/build}"
SHARED="${SHARDTUNE_SHARED:-$ROOT/../shared}"
REFS="$BUILD/node_refs/node_modules"
ENC="$REFS/gpt-3-encoder"
[ -x "$BUILD/data_prep/shardtune-prep" ] || { echo "build first: tools/test.sh (or cmake --build $BUILD)"; exit 1; }
[ -d "$ENC" ] || { echo "npm references missing in $REFS: run tools/test.sh once"; exit 1; }
[ -f "$SHARED/data/tinyshakespeare.txt" ] || { echo "$SHARED/data not found"; exit 1; }
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT

# Same text for both: Shakespeare paragraphs and every Alpaca field, one {"text": ...} per line.
/usr/bin/python3 - "$SHARED" "$WORK/corpus.jsonl" <<'PY'
import json, sys
shared, out = sys.argv[1], sys.argv[2]
with open(out, "w") as f:
    for rep in range(3):  # ~10 MB, so start-up (vocabulary loading) is a small part of either run
        for para in open(f"{shared}/data/tinyshakespeare.txt").read().split("\n\n"):
            f.write(json.dumps({"text": para}) + "\n")
        for r in json.load(open(f"{shared}/data/alpaca_5000.json")):
            for k in ("instruction", "input", "output"):
                if r.get(k):
                    f.write(json.dumps({"text": r[k]}, ensure_ascii=False) + "\n")
PY
BYTES=$(stat -c %s "$WORK/corpus.jsonl")

cat > "$WORK/ref.js" <<'JS'
const { encode } = require('gpt-3-encoder');
const lines = require('fs').readFileSync(process.argv[2], 'utf8').split('\n');
const t0 = process.hrtime.bigint();
let n = 0;
for (const l of lines) if (l.trim()) n += encode(JSON.parse(l).text).length;
const s = Number(process.hrtime.bigint() - t0) / 1e9;
console.log(JSON.stringify({ seconds: s, tokens: n }));
JS

best() { sort -g | head -1; }
ref_times=(); ours1=(); ours2=()
for rep in 1 2 3; do
  ref_times+=("$(NODE_PATH="$REFS" node "$WORK/ref.js" "$WORK/corpus.jsonl" | /usr/bin/python3 -c 'import json,sys;print(json.load(sys.stdin)["seconds"])')")
  for th in 1 2; do
    rm -rf "$WORK/out$th"
    t0=$(date +%s.%N)
    "$BUILD/data_prep/shardtune-prep" --input "$WORK/corpus.jsonl" --output "$WORK/out$th" --format text \
      --tokenizer "$ENC/encoder.json,$ENC/vocab.bpe" --threads $th --quiet --max-seq-len 100000
    t1=$(date +%s.%N)
    if [ $th = 1 ]; then ours1+=("$(/usr/bin/python3 -c "print($t1 - $t0)")"); else ours2+=("$(/usr/bin/python3 -c "print($t1 - $t0)")"); fi
  done
done
R=$(printf '%s\n' "${ref_times[@]}" | best); O1=$(printf '%s\n' "${ours1[@]}" | best); O2=$(printf '%s\n' "${ours2[@]}" | best)
/usr/bin/python3 - "$BYTES" "$R" "$O1" "$O2" <<'PY'
import sys
b, r, o1, o2 = int(sys.argv[1]), *map(float, sys.argv[2:])
mb = b / 1e6
print(f"corpus: {mb:.2f} MB JSONL, best of 3 runs each")
print(f"gpt-3-encoder (node, 1 thread, encode only): {mb / r:8.2f} MB/s")
print(f"shardtune-prep 1 thread (whole run, HDF5 out): {mb / o1:8.2f} MB/s   ratio {r / o1:5.1f}x per core")
print(f"shardtune-prep 2 threads (whole run):          {mb / o2:8.2f} MB/s   ratio {r / o2 / 2:5.1f}x per core ({r / o2:.1f}x total)")
PY
