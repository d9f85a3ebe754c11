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
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bench_paths "$@"
ROUNDS=${ROUNDS:-3} STEPS=${STEPS:-16} WARMUP=${WARMUP:-2} SAVE_EVERY=${SAVE_EVERY:-4} NP=${NP:-1}
THREADS=${THREADS:-1} MICRO=${MICRO:-8} SEQ=${SEQ:-256}
bench_env "$THREADS"
bench_workdir "${CKPT_BENCH_WORK:-}"
bench_mpirun
bench_inputs "$SEQ"
echo "model: $(cat "$WORK/model.json")"
bench_host
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
