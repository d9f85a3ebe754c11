#!/usr/bin/env bash
# Training benchmarks of the shardtune trainer (CPU, MPI), on a random-init ~15.7M-parameter Llama
# (hidden 384, 6 layers, 6 heads / 2 KV heads, intermediate 1024, vocab 8192 — the tools/bench/step.sh
# model) and tinyshakespeare through the byte tokenizer, rows of SEQ=256 tokens.
#
#   tools/bench/train.sh [BUILD_DIR] [SECTION...]      SECTION: scaling | comm | memory | mfu | all (default)
#
#   scaling  1 rank x 1 thread vs 2 ranks x 1 thread, same per-rank micro-batch, ZeRO-0/1/2: tokens/s ratio,
#            ROUNDS interleaved repetitions, median over rounds;
#            with the machine's own ceiling: 1 vs 2 concurrent matmul processes, and two independent 1-rank
#            jobs run at the same time
#   comm     the same 2-rank runs: mean comm_wait_s / step_s (steps after the first WARMUP)
#   memory   measured memory per rank, ZeRO-0/1/2 x N = 1, 2, 4 ranks: peak RSS of every rank (GNU time,
#            tools/bench/train_rss.sh) and rank 0's heap in use after each step (the trainer's metrics:
#            glibc mallinfo2) and peak RSS (getrusage); whether the sharded part falls as 1/N is judged from
#            those measurements (the optimizer state rank 0 prints is shown for reference only)
#   mfu      the trainer's mfu next to achieved model FLOP/s (the trainer's own flops_per_token) and a
#            Python torch matmul peak (train_peak.py); fp32 from the scaling rounds, bf16 MFU_ROUNDS rounds
#
# Environment: NICE (unset; e.g. -10 as root on a shared machine) BIND (none) ZEROS ("0 1 2", scaling/comm) ROUNDS (3) STEPS (8) WARMUP (2) MICRO (8) SEQ (256) MEM_STEPS (3) MEM_MICRO (2) THREADS (1) MFU_ROUNDS (1)
#   TRAIN_BENCH_WORK=DIR keeps the model, data and every run's metrics/log there (default: a temp dir).
# Prints markdown tables per section (tools/bench/train_report.py): every figure a median with its range
# over rounds, steps or ranks, never a best run; the exact mpirun command of every run is in DIR/runs/*/cmd.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bench_paths "$@"
if [ "$BENCH_SHIFT" = 1 ]; then shift; fi
SECTIONS=("$@")
[ ${#SECTIONS[@]} -eq 0 ] && SECTIONS=(all)
STEPS=${STEPS:-8} WARMUP=${WARMUP:-2} MICRO=${MICRO:-8} SEQ=${SEQ:-256}
MEM_STEPS=${MEM_STEPS:-3} MEM_MICRO=${MEM_MICRO:-2} THREADS=${THREADS:-1} ROUNDS=${ROUNDS:-3} MFU_ROUNDS=${MFU_ROUNDS:-1}
ZEROS=${ZEROS:-0 1 2}
command -v mpirun >/dev/null || { echo "mpirun not found" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time (GNU time) not found: apt-get install time" >&2; exit 1; }

bench_env "$THREADS"
bench_workdir "${TRAIN_BENCH_WORK:-}"
bench_mpirun
# ---- inputs: model + prepared data (reused when TRAIN_BENCH_WORK already holds them) ----
bench_inputs "$SEQ"
echo "model: $(cat "$WORK/model.json")"
bench_host
echo "settings: BIND=${BIND:-none} ZEROS=\"$ZEROS\" ROUNDS=$ROUNDS STEPS=$STEPS WARMUP=$WARMUP MICRO=$MICRO SEQ=$SEQ THREADS=$THREADS MEM_STEPS=$MEM_STEPS MEM_MICRO=$MEM_MICRO MFU_ROUNDS=$MFU_ROUNDS"

# run NAME NP ZERO PRECISION MICRO GLOBAL STEPS [extra trainer options...]
run() {
  local name=$1 np=$2 zero=$3 prec=$4 micro=$5 global=$6 steps=$7
  shift 7
  local d="$WORK/runs/$name"
  rm -rf "$d"; mkdir -p "$d"
  local cmd=("${MPIRUN[@]}" ${MPI_EXTRA:-} -np "$np" "$HERE/train_rss.sh" "$d/rss" "$TRAINER" --model "$WORK/model" --data "$WORK/data"
             --out "$d/out" --steps "$steps" --global-batch "$global" --micro-batch "$micro" --seq-len "$SEQ"
             --zero "$zero" --threads "$THREADS" --precision "$prec" --metrics "$d/metrics.jsonl"
             --eval-batches 0 --log-every 1000 "$@")
  bench_run_timed "$d" "${cmd[@]}" || return 1
  printf '  %-10s np=%d zero=%d %s micro=%d global=%d steps=%d  %ss wall\n' "$name" "$np" "$zero" "$prec" "$micro" \
    "$global" "$steps" "$(cat "$d/wall_s")"
}

want() { local s; for s in "${SECTIONS[@]}"; do [ "$s" = all ] || [ "$s" = "$1" ] && return 0; done; return 1; }
report() { $PY "$HERE/train_report.py" "$WORK" "$1" --warmup "$WARMUP" --seq "$SEQ" --threads "$THREADS" --rounds "$ROUNDS"; }

if want scaling || want comm; then
  echo; echo "== machine ceiling: 1 vs 2 concurrent single-thread fp32 matmul processes (train_peak.py)"
  peak=("${NICE_CMD[@]}" $PY "$HERE/train_peak.py" --threads 1 --sizes 1024 --seconds 1 --trials 3 --dtypes fp32)
  "${peak[@]}" > "$WORK/ceiling_1.jsonl"
  "${peak[@]}" > "$WORK/ceiling_2a.jsonl" & "${peak[@]}" > "$WORK/ceiling_2b.jsonl"; wait
  echo; echo "== runs: 1 rank vs 2 ranks, $THREADS thread(s) each, micro-batch $MICRO x $SEQ tokens per rank, $STEPS steps, $ROUNDS rounds"
  rm -rf "$WORK"/runs/s[12]z* "$WORK"/runs/p1z0?  # no stale rounds of an earlier invocation in the report
  # Rounds interleave the 1- and 2-rank runs (alternating which goes first), so that a slow stretch of a
  # shared machine lands on both sides; the report takes the median over rounds.
  for ((k = 1; k <= ROUNDS; k++)); do
    sfx=""; [ "$k" -gt 1 ] && sfx=".$k"
    order="1 2"; [ $((k % 2)) -eq 0 ] && order="2 1"
    for z in $ZEROS; do
      for np in $order; do run "s${np}z$z$sfx" "$np" "$z" fp32 "$MICRO" $((np * MICRO)) "$STEPS"; done
    done
  done
fi
if want scaling; then
  echo; echo "== control: two independent 1-rank ZeRO-0 jobs at the same time (the most 2 ranks could get here)"
  # (with BIND=core each job gets a core of its own: two separate mpiruns would both pick core 0)
  if [ "${BIND:-none}" = core ]; then pa="--cpu-set 0" pb="--cpu-set 1"; else pa="" pb=""; fi
  MPI_EXTRA="$pa" run p1z0a 1 0 fp32 "$MICRO" "$MICRO" "$STEPS" &
  MPI_EXTRA="$pb" run p1z0b 1 0 fp32 "$MICRO" "$MICRO" "$STEPS"
  wait
  echo; report scaling
fi
if want comm; then echo; report comm; fi
if want memory; then
  echo; echo "== runs: memory, micro-batch $MEM_MICRO, $MEM_STEPS steps, N = 1, 2, 4 ranks (4 oversubscribed)"
  rm -rf "$WORK"/runs/m[124]z*
  for n in 1 2 4; do
    for z in 0 1 2; do
      run "m${n}z$z" "$n" "$z" fp32 "$MEM_MICRO" $((n * MEM_MICRO)) "$MEM_STEPS"
    done
  done
  # ZeRO-2 with 4 MB buckets: only a bucket of full gradients should be live at a time
  run m2z2b4 2 2 fp32 "$MEM_MICRO" $((2 * MEM_MICRO)) "$MEM_STEPS" --bucket-mb 4
  echo; report memory
fi
if want mfu; then
  rm -rf "$WORK"/runs/b[12]z0*
  if ! want scaling && ! want comm; then
    echo; echo "== runs: fp32, 1 and 2 ranks, ZeRO-0"
    rm -rf "$WORK"/runs/s[12]z*  # (also the scaling rounds of an earlier invocation: the report reads what is there)
    run s1z0 1 0 fp32 "$MICRO" "$MICRO" "$STEPS"
    run s2z0 2 0 fp32 "$MICRO" $((2 * MICRO)) "$STEPS"
  fi
  echo; echo "== runs: bf16 autocast, 1 and 2 ranks, ZeRO-0, $MFU_ROUNDS round(s)"
  for ((k = 1; k <= MFU_ROUNDS; k++)); do
    sfx=""; [ "$k" -gt 1 ] && sfx=".$k"
    run "b1z0$sfx" 1 0 bf16 "$MICRO" "$MICRO" "$STEPS"
    run "b2z0$sfx" 2 0 bf16 "$MICRO" $((2 * MICRO)) "$STEPS"
  done
  echo "  python torch matmul peak (train_peak.py, $THREADS thread)"
  "${NICE_CMD[@]}" $PY "$HERE/train_peak.py" --threads "$THREADS" > "$WORK/peak.jsonl"
  echo; report mfu
fi
echo; echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg); work dir: $WORK"
