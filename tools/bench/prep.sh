#!/usr/bin/env bash
# Benchmark: shardtune-prep (GPT-2 BPE, 1 and 2 threads) vs the npm gpt-3-encoder reference (JavaScript,
# single-threaded) on the same JSONL text, in one run. Prints a markdown table: MB/s of each as the median
# over REPS runs (range min-max) and the per-core ratio of the medians.
# Usage: [REPS=3] tools/bench/prep.sh [BUILD_DIR]     (needs ../shared/data and the node refs from tools/test.sh)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
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

REPS=${REPS:-3}
ref_times=(); ours1=(); ours2=()
for ((rep = 1; rep <= REPS; rep++)); do
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
/usr/bin/python3 - "$HERE" "$BYTES" "${ref_times[*]}" "${ours1[*]}" "${ours2[*]}" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
from benchstats import begin, end, med, met, mr, summary, table
b = int(sys.argv[2])
ref, o1, o2 = ([float(x) for x in arg.split()] for arg in sys.argv[3:6])
mb = b / 1e6
TARGET = 5.0
r1, r2 = med(ref) / med(o1), med(ref) / med(o2) / 2  # per core: the 2-thread run uses two cores
begin("prep")
print(f"Corpus {mb:.2f} MB JSONL, {len(ref)} run(s) of each; MB/s: median over runs (min–max); ratio per core = "
      "reference median time / shardtune-prep median time (÷ 2 for 2 threads).")
print()
print(table(["", "MB/s", "ratio per core vs reference", "target", "met?"], [
    ["gpt-3-encoder (node, 1 thread, encode only)", mr([mb / t for t in ref]), "1", "", ""],
    ["shardtune-prep, 1 thread (whole run, HDF5 out)", mr([mb / t for t in o1]), f"**{r1:.1f}x**", "≥ 5x", met(r1 >= TARGET)],
    ["shardtune-prep, 2 threads (whole run)", mr([mb / t for t in o2]), f"**{r2:.1f}x** ({2 * r2:.1f}x in total)", "≥ 5x",
     met(r2 >= TARGET)]]))
end("prep")
for th, r in ((1, r1), (2, r2)):
    summary(f"prep throughput vs npm `gpt-3-encoder`, {th} thread{'s' if th > 1 else ''}", "`tools/bench/prep.sh`",
            "≥ 5x per core", f"{r:.1f}x per core", r >= TARGET)
PY
