#!/usr/bin/env bash
# Step-time cost of --async-save: the train.sh model (tools/bench/train_setup.py, hidden 384, 15.7M
# parameters) trained without checkpoints, with --async-save every SAVE_EVERY steps, and with synchronous
# saves at the same cadence, ROUNDS interleaved rounds (their order rotating). Reported by
# ckpt_async_report.py: the median step time of the steps that ran while a background save was being
# written vs the median step time of the run without checkpoints (target <= 1.05x), the step loop's pause
# for the snapshot, and what a synchronous save costs at the same cadence. Median with range over rounds.
#
#   tools/bench/ckpt_async.sh [BUILD_DIR]
# Environment: ROUNDS (3) STEPS (16) WARMUP (2) SAVE_EVERY (4) NP (1 rank) THREADS (1) MICRO (8) SEQ (256)
#   NICE (unset) CKPT_BENCH_WORK=DIR keeps the files. With NP=1 x THREADS=1 on 2 cores the writer thread has
#   a core of its own; NP=2 shows the cost when every core trains.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BUILD="$(cd "${1:-$ROOT/build}" && pwd)"
SHARED="${SHARDTUNE_SHARED:-$ROOT/../shared}"
ROUNDS=${ROUNDS:-3} STEPS=${STEPS:-16} WARMUP=${WARMUP:-2} SAVE_EVERY=${SAVE_EVERY:-4} NP=${NP:-1}
THREADS=${THREADS:-1} MICRO=${MICRO:-8} SEQ=${SEQ:-256}
PY=/usr/bin/python3
TRAINER="$BUILD/src/shardtune" PREP="$BUILD/data_prep/shardtune-prep"
for x in "$TRAINER" "$PREP"; do [ -x "$x" ] || { echo "missing $x" >&2; exit 1; }; done
[ -x "$BUILD/tools/shardtune-hw" ] && eval "$("$BUILD/tools/shardtune-hw" --blas-env)"
export OMP_NUM_THREADS=$THREADS
if [ -n "${CKPT_BENCH_WORK:-}" ]; then WORK="$CKPT_BENCH_WORK"; mkdir -p "$WORK"
else WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT; fi
NICE_CMD=(); [ -n "${NICE:-}" ] && NICE_CMD=(nice -n "$NICE")
MPIRUN=("${NICE_CMD[@]}" mpirun --oversubscribe --bind-to none -x OMP_NUM_THREADS ${OPENBLAS_CORETYPE:+-x OPENBLAS_CORETYPE})
[ "$(id -u)" = 0 ] && MPIRUN+=(--allow-run-as-root)

$PY "$HERE/train_setup.py" "$ROOT" "$SHARED" "$WORK" > "$WORK/model.json"
[ -f "$WORK/data/manifest.json" ] || "$PREP" --input "$WORK/corpus.jsonl" --output "$WORK/data" --tokenizer byte \
  --format text --max-seq-len "$SEQ" --overlong split --quiet
echo "model: $(cat "$WORK/model.json")"
echo "host: $(getconf _NPROCESSORS_ONLN) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "settings: ROUNDS=$ROUNDS STEPS=$STEPS WARMUP=$WARMUP SAVE_EVERY=$SAVE_EVERY NP=$NP THREADS=$THREADS MICRO=$MICRO SEQ=$SEQ; ckpt disk: $(df -h "$WORK" | tail -1 | awk '{print $1" ("$2")"}')"

run() {  # run NAME [extra trainer options]
  local name=$1; shift
  local d="$WORK/runs/$name"
  rm -rf "$d"; mkdir -p "$d"
  local cmd=("${MPIRUN[@]}" -np "$NP" "$TRAINER" --model "$WORK/model" --data "$WORK/data" --out "$d/out"
             --steps "$STEPS" --global-batch $((NP * MICRO)) --micro-batch "$MICRO" --seq-len "$SEQ" --threads "$THREADS"
             --precision fp32 --metrics "$d/metrics.jsonl" --eval-batches 0 --log-every 1000 --save-every-minutes 0 "$@")
  printf '%q ' "${cmd[@]}" > "$d/cmd"; echo >> "$d/cmd"
  "${cmd[@]}" > "$d/log" 2>&1 || { echo "run $name FAILED:" >&2; tail -20 "$d/log" >&2; return 1; }
  rm -rf "$d/out"
  echo "  $name done"
}
for ((k = 1; k <= ROUNDS; k++)); do
  names=(none async sync)
  for ((j = 0; j < 3; j++)); do
    n=${names[$(((j + k) % 3))]}
    case $n in
      none) run "none.$k" ;;
      async) run "async.$k" --save-every "$SAVE_EVERY" --async-save --keep-last 1 ;;
      sync) run "sync.$k" --save-every "$SAVE_EVERY" --keep-last 1 ;;
    esac
  done
done
$PY "$HERE/ckpt_async_report.py" "$WORK" --rounds "$ROUNDS" --warmup "$WARMUP"
echo "commands (exact): $(cat "$WORK/runs/async.1/cmd")"
