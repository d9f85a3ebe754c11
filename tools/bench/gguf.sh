#!/usr/bin/env bash
# GGUF export time against copying the same bytes to the same disk. The model: a random-init Llama (Llama-2
# vocabulary, hidden 1024, 12 layers, untied: ~217M parameters, fp32 safetensors, ~870 MB) written once by Python. Each round exports it with
# `shardtune-export gguf` for each DTYPE (wall time of the whole process: load, read, convert, write, fsync,
# rename), then writes the GGUF's byte count with `dd if=/dev/zero bs=1M conv=fsync` and copies the source
# model.safetensors with `cp` + `sync FILE` into the same folder. Prints median (min-max) over the rounds and
# the ratio export / dd of the medians (tools/bench/gguf_report.py). The fixed cost of one export (process start
# with LibTorch, config/header checks, the 32000-token tokenizer metadata) is measured on a tiny model of the
# same vocabulary (hidden 64, 2 layers) and shown on its own line.
#
#   tools/bench/gguf.sh [BUILD_DIR]
# Environment: ROUNDS (5) DTYPES ("f32 f16 q8_0") HIDDEN (1024) LAYERS (12) NICE (unset)
#   GGUF_BENCH_WORK=DIR keeps the model and timings there (default: a temp dir, removed).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
HERE="$BENCH_LIB"
ROOT="$(cd "$HERE/../.." && pwd)"
BUILD="$ROOT/build"
if [ $# -gt 0 ] && [ -d "$1" ]; then BUILD="$(cd "$1" && pwd)"; fi
SHARED="${SHARDTUNE_SHARED:-$ROOT/../shared}"
PY=/usr/bin/python3
EXPORT="$BUILD/tools/shardtune-export"
TOK="$SHARED/tokenizers/llama2-tokenizer.model"
[ -x "$EXPORT" ] || { echo "missing $EXPORT: cmake --build $BUILD --target shardtune-export" >&2; exit 1; }
[ -f "$TOK" ] || { echo "$TOK not found (SHARDTUNE_SHARED)" >&2; exit 1; }
ROUNDS=${ROUNDS:-5} DTYPES=${DTYPES:-"f32 f16 q8_0"} HIDDEN=${HIDDEN:-1024} LAYERS=${LAYERS:-12}
NICE_CMD=()
[ -n "${NICE:-}" ] && NICE_CMD=(nice -n "$NICE")
bench_env 0
unset OMP_NUM_THREADS  # the exporter uses the CPUs of its affinity mask, as a user's run would
bench_workdir "${GGUF_BENCH_WORK:-}"
bench_host
echo "disk: $WORK on $(df -P "$WORK" | awk 'NR==2 {print $1 " (" $6 ")"}') $(findmnt -n -o FSTYPE --target "$WORK" 2>/dev/null || true)"

if [ ! -f "$WORK/model/model.safetensors" ]; then
  $PY - "$ROOT" "$WORK/model" "$HIDDEN" "$LAYERS" <<'PYEOF'
import sys
sys.path.insert(0, sys.argv[1] + "/tests/model")
import reference as R
C, L = int(sys.argv[3]), int(sys.argv[4])
cfg = R.llama_cfg(vocab_size=32000, hidden_size=C, intermediate_size=C * 11 // 4, num_hidden_layers=L,
                  num_attention_heads=C // 64, num_key_value_heads=C // 128, max_position_embeddings=2048)
R.save_hf(cfg, R.random_weights(cfg, seed=1, std=0.02), sys.argv[2])
tiny = R.llama_cfg(vocab_size=32000, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)
R.save_hf(tiny, R.random_weights(tiny, seed=1, std=0.02), sys.argv[2] + "-tiny")
PYEOF
fi
src_bytes=$(stat -c %s "$WORK/model/model.safetensors")
echo "model: Llama hidden $HIDDEN, $LAYERS layers, vocab 32000, model.safetensors $src_bytes bytes (fp32)"
echo "settings: ROUNDS=$ROUNDS DTYPES=\"$DTYPES\""

now() { date +%s.%N; }
: > "$WORK/times"
for ((k = 1; k <= ROUNDS; k++)); do
  line="  round $k:"
  for dt in $DTYPES; do
    out="$WORK/out.$dt.gguf"
    rm -f "$out"
    sync
    t0=$(now)
    "${NICE_CMD[@]}" "$EXPORT" gguf --model "$WORK/model" --tokenizer "$TOK" --dtype "$dt" --out "$out" > "$WORK/log" 2>&1 \
      || { echo "export $dt FAILED:" >&2; tail -20 "$WORK/log" >&2; exit 1; }
    t1=$(now)
    bytes=$(stat -c %s "$out")
    rm -f "$out"
    sync
    mb=$(( (bytes + 1048575) / 1048576 ))
    t2=$(now)
    "${NICE_CMD[@]}" dd if=/dev/zero of="$WORK/dd.bin" bs=1M count="$mb" conv=fsync status=none
    t3=$(now)
    rm -f "$WORK/dd.bin"
    echo "$dt $bytes $t0 $t1 $t2 $t3" | awk '{ printf "%s %s %.4f %.4f\n", $1, $2, $4 - $3, $6 - $5 }' >> "$WORK/times"
    line+=" $dt $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s (dd $(awk -v a="$t2" -v b="$t3" 'BEGIN { printf "%.2f", b - a }') s)"
  done
  rm -f "$WORK/tiny.gguf"
  t0=$(now)
  "${NICE_CMD[@]}" "$EXPORT" gguf --model "$WORK/model-tiny" --tokenizer "$TOK" --dtype f32 --out "$WORK/tiny.gguf" > "$WORK/log" 2>&1
  t1=$(now)
  echo "tiny $(stat -c %s "$WORK/tiny.gguf") $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }') 0" >> "$WORK/times"
  line+=" | tiny model $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s"
  rm -f "$WORK/tiny.gguf"
  sync
  t0=$(now)
  "${NICE_CMD[@]}" cp "$WORK/model/model.safetensors" "$WORK/copy.bin"
  sync "$WORK/copy.bin"
  t1=$(now)
  rm -f "$WORK/copy.bin"
  echo "cp $src_bytes 0 $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }')" >> "$WORK/times"
  echo "$line | cp+sync $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s"
done
echo
$PY "$HERE/gguf_report.py" "$WORK/times"
echo; echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
