#!/usr/bin/env bash
# LoRA / QLoRA benchmarks of the shardtune trainer (CPU, MPI), in one run on the same model and ranks: the
# tools/bench/train.sh model (random-init ~15.7M-parameter Llama: hidden 384, 6 layers, 6 heads / 2 KV
# heads, intermediate 1024, vocab 8192, untied) and data (tinyshakespeare, byte tokenizer, rows of SEQ=256).
#
#   tools/bench/lora.sh [BUILD_DIR]
#
# Every round runs three trainings back to back, LORA_NP ranks x THREADS thread(s), ZeRO-LORA_ZERO,
# --precision LORA_PRECISION, the same per-rank micro-batch, STEPS steps (rotating which goes first):
#   full    --method full (every parameter trainable)
#   lora    --method lora  --lora-r 16 --lora-targets all-linear (q,k,v,o,gate,up,down: the 7 module types)
#   qlora   --method qlora, the same adapters, the targeted base weights NF4 (double quant on)
# and the report (tools/bench/lora_report.py) gives, each a median with its range over rounds:
#   - step throughput LoRA / full (target >= 1.35x) and QLoRA / LoRA (target >= 0.7x), per-round ratios;
#   - optimizer + gradient memory per rank, LoRA / full (target < 2%): the trainer's own figures of rank 0
#     (metrics fields optimizer_state_bytes = AdamW m + v, grad_buffer_bytes = persistent gradient buffer),
#     next to the measured heap in use after each step and peak RSS per rank (GNU time);
#   - QLoRA base bytes per quantized parameter (target <= 0.53): the trainer's measured line (heap growth
#     while quantizing), rank 0;
#   - where a step's time goes (forward_s, backward_s, optim_s, ... from the trainer's metrics).
# LORA_WIDE=1 (default) adds one full vs lora pair (1 rank, micro-batch 1, LORA_WIDE_STEPS steps) on a wider
# random Llama (hidden 2048, intermediate 5632, 2 layers, 16 heads / 4 KV heads, vocab 8192), reported only:
# the memory ratio is the trainable-parameter ratio, which at hidden 384 is far above what a real base gives,
# and LoRA's own skinny GEMMs weigh less against the base's at that width.
#
# Environment: NICE (unset) BIND (none) LORA_NP (2) LORA_ZERO (0) LORA_PRECISION (fp32) ROUNDS (3) STEPS (8)
#   WARMUP (2) MICRO (8) SEQ (256) THREADS (1) LORA_R (16) LORA_WIDE (1) LORA_WIDE_STEPS (4) LORA_WIDE_SEQ (256)
#   LORA_BENCH_WORK=DIR keeps the models, data and every run's metrics/log there (default: a temp dir).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BUILD="$ROOT/build"
if [ $# -gt 0 ] && [ -d "$1" ]; then BUILD="$(cd "$1" && pwd)"; shift; fi
SHARED="${SHARDTUNE_SHARED:-$ROOT/../shared}"
NP=${LORA_NP:-2} ZERO=${LORA_ZERO:-0} PRECISION=${LORA_PRECISION:-fp32} ROUNDS=${ROUNDS:-3} STEPS=${STEPS:-8} WARMUP=${WARMUP:-2}
MICRO=${MICRO:-8} SEQ=${SEQ:-256} THREADS=${THREADS:-1} LORA_R=${LORA_R:-16}
WIDE=${LORA_WIDE:-1} WIDE_STEPS=${LORA_WIDE_STEPS:-4} WIDE_SEQ=${LORA_WIDE_SEQ:-256}
PY=/usr/bin/python3
TRAINER="$BUILD/src/shardtune"
PREP="$BUILD/data_prep/shardtune-prep"
for x in "$TRAINER" "$PREP"; do
  [ -x "$x" ] || { echo "missing $x: cmake --build $BUILD --target shardtune shardtune-prep" >&2; exit 1; }
done
[ -f "$SHARED/data/tinyshakespeare.txt" ] || { echo "$SHARED/data/tinyshakespeare.txt not found (SHARDTUNE_SHARED)" >&2; exit 1; }
command -v mpirun >/dev/null || { echo "mpirun not found" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time (GNU time) not found: apt-get install time" >&2; exit 1; }
[ "$WARMUP" -lt "$STEPS" ] || { echo "WARMUP ($WARMUP) must be below STEPS ($STEPS)" >&2; exit 1; }

# OpenBLAS core from the CPU's flags where OpenBLAS would fall back to a generic one (user's setting wins).
[ -x "$BUILD/tools/shardtune-hw" ] && eval "$("$BUILD/tools/shardtune-hw" --blas-env)"
export OMP_NUM_THREADS=$THREADS
if [ -n "${LORA_BENCH_WORK:-}" ]; then WORK="$LORA_BENCH_WORK"; mkdir -p "$WORK"
else WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT; fi
NICE_CMD=()
[ -n "${NICE:-}" ] && NICE_CMD=(nice -n "$NICE")
MPIRUN=("${NICE_CMD[@]}" mpirun --oversubscribe --bind-to "${BIND:-none}" ${OPENBLAS_CORETYPE:+-x OPENBLAS_CORETYPE} -x OMP_NUM_THREADS)
[ "$(id -u)" = 0 ] && MPIRUN+=(--allow-run-as-root)

# ---- inputs: the train.sh model + prepared data (reused when LORA_BENCH_WORK already holds them) ----
$PY "$HERE/train_setup.py" "$ROOT" "$SHARED" "$WORK" > "$WORK/model.json"
if [ ! -f "$WORK/data/manifest.json" ]; then
  rm -rf "$WORK/data"
  "$PREP" --input "$WORK/corpus.jsonl" --output "$WORK/data" --tokenizer byte --format text \
    --max-seq-len "$SEQ" --overlong split --quiet
fi
[ "$WIDE" = 1 ] && $PY "$HERE/lora_setup.py" "$ROOT" "$WORK/wide" > "$WORK/wide.json"
echo "model: $(cat "$WORK/model.json")"
[ "$WIDE" = 1 ] && echo "wide model (memory only): $(cat "$WORK/wide.json")"
echo "host: $(getconf _NPROCESSORS_ONLN) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "settings: NP=$NP ZERO=$ZERO PRECISION=$PRECISION BIND=${BIND:-none} ROUNDS=$ROUNDS STEPS=$STEPS WARMUP=$WARMUP MICRO=$MICRO SEQ=$SEQ THREADS=$THREADS LORA_R=$LORA_R WIDE=$WIDE WIDE_STEPS=$WIDE_STEPS WIDE_SEQ=$WIDE_SEQ"

LORA=(--lora-r "$LORA_R" --lora-alpha $((2 * LORA_R)) --lora-targets all-linear)
method_opts() {
  case $1 in
    full) echo --method full ;;
    lora) echo --method lora "${LORA[@]}" ;;
    qlora) echo --method qlora "${LORA[@]}" ;;
  esac
}

# run NAME MODEL NP MICRO SEQ STEPS [trainer options...]
run() {
  local name=$1 model=$2 np=$3 micro=$4 seq=$5 steps=$6
  shift 6
  local d="$WORK/runs/$name"
  rm -rf "$d"; mkdir -p "$d"
  local cmd=("${MPIRUN[@]}" -np "$np" "$HERE/train_rss.sh" "$d/rss" "$TRAINER" --model "$model" --data "$WORK/data"
             --out "$d/out" --steps "$steps" --global-batch $((np * micro)) --micro-batch "$micro" --seq-len "$seq"
             --zero "$ZERO" --threads "$THREADS" --precision "$PRECISION" --metrics "$d/metrics.jsonl"
             --eval-batches 0 --log-every 1000 "$@")
  printf '%q ' "${cmd[@]}" > "$d/cmd"; echo >> "$d/cmd"
  cut -d' ' -f1 /proc/loadavg > "$d/load_before"
  local t0 t1
  t0=$(date +%s.%N)
  if ! "${cmd[@]}" > "$d/log" 2>&1; then
    echo "run $name FAILED:" >&2; tail -20 "$d/log" >&2; return 1
  fi
  t1=$(date +%s.%N)
  echo "$t0 $t1" | awk '{ printf "%.1f\n", $2 - $1 }' > "$d/wall_s"
  rm -rf "$d/out"  # the saved model / adapter is not needed
  printf '  %-10s np=%d zero=%d %s micro=%d seq=%d steps=%d  %ss wall\n' "$name" "$np" "$ZERO" "$PRECISION" "$micro" \
    "$seq" "$steps" "$(cat "$d/wall_s")"
}

T0=$SECONDS
echo; echo "== runs: full vs LoRA vs QLoRA (r=$LORA_R, all-linear), $NP rank(s) x $THREADS thread(s), ZeRO-$ZERO, $PRECISION, micro-batch $MICRO x $SEQ tokens per rank, $STEPS steps, $ROUNDS rounds"
rm -rf "$WORK"/runs
# Rounds rotate the order of the three runs, so that a slow stretch of a shared machine lands on each.
METHODS=(full lora qlora)
for ((k = 1; k <= ROUNDS; k++)); do
  sfx=""; [ "$k" -gt 1 ] && sfx=".$k"
  for ((i = 0; i < 3; i++)); do
    m=${METHODS[$(((i + k - 1) % 3))]}
    # shellcheck disable=SC2046
    run "$m$sfx" "$WORK/model" "$NP" "$MICRO" "$SEQ" "$STEPS" $(method_opts "$m")
  done
done
if [ "$WIDE" = 1 ]; then
  echo; echo "== runs: wide model (supplement), 1 rank, micro-batch 1 x $WIDE_SEQ tokens, $WIDE_STEPS steps"
  for m in full lora; do
    # shellcheck disable=SC2046
    run "wide-$m" "$WORK/wide" 1 1 "$WIDE_SEQ" "$WIDE_STEPS" $(method_opts "$m")
  done
fi
echo; echo "runs took $((SECONDS - T0)) s"
echo
$PY "$HERE/lora_report.py" "$WORK" --warmup "$WARMUP" --np "$NP" --zero "$ZERO" --precision "$PRECISION" \
  --threads "$THREADS" --r "$LORA_R"
echo; echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg); work dir: $WORK"
