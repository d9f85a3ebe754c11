#!/usr/bin/env bash
# LoRA / QLoRA benchmarks of the shardtune trainer (CPU, MPI): full fine-tuning vs LoRA vs QLoRA in one run,
# the same data (tinyshakespeare, byte tokenizer, rows of 256 tokens) and ranks for every run, on two
# random-init Llamas:
#   h1024  the judged model (tools/bench/lora_setup.py): hidden 1024, 4 layers, 16 heads / 4 KV heads,
#          intermediate 2816, vocab 8192, untied, 61.9M parameters: full, lora, qlora;
#   h384   the tools/bench/train.sh model (train_setup.py): hidden 384, 6 layers, 15.7M parameters: full,
#          lora, shown beside it (LoRA's own skinny GEMMs weigh ~1/hidden against the base's work).
#
#   tools/bench/lora.sh [BUILD_DIR]
#
# For each precision in LORA_PRECISIONS, LORA_ROUNDS rounds; a round runs every (model, method) once, back
# to back, the order of the methods rotating from round to round; LORA_NP ranks x THREADS thread(s),
# ZeRO-LORA_ZERO, one micro-step per step, LORA_STEPS steps. LoRA/QLoRA: --lora-r LORA_R --lora-alpha 2r
# --lora-targets all-linear (q, k, v, o, gate, up, down); QLoRA with its defaults (double quantization).
# The report (tools/bench/lora_report.py) gives, each a median with its range over rounds:
#   - step throughput LoRA / full (target >= 1.35x) and QLoRA / LoRA (target >= 0.7x), per-round ratios;
#   - optimizer + gradient memory per rank, LoRA / full (target < 2%): the trainer's own figures of rank 0
#     (metrics fields optimizer_state_bytes = AdamW m + v, grad_buffer_bytes = persistent gradient buffer),
#     next to the measured heap in use after each step and peak RSS per rank (GNU time);
#   - QLoRA base bytes per quantized parameter (target <= 0.53): the trainer's measured line (heap growth
#     while quantizing), rank 0;
#   - where a step's time goes (forward_s, backward_s, optim_s, ... from the trainer's metrics).
#
# Environment: NICE (unset; e.g. -10 as root on a shared machine) BIND (none) LORA_PRECISIONS ("auto":
#   the trainer's default, bf16 where the CPU has native bf16; e.g. "auto fp32") LORA_NP (2) LORA_ZERO (0)
#   LORA_ROUNDS (3) LORA_STEPS (6) LORA_WARMUP (2) LORA_MICRO (4, h1024) MICRO (8, h384) SEQ (256)
#   THREADS (1) LORA_R (16)
#   LORA_BENCH_WORK=DIR keeps the models, data and every run's metrics/log there (default: a temp dir).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bench_paths "$@"
if [ "$BENCH_SHIFT" = 1 ]; then shift; fi
NP=${LORA_NP:-2} ZERO=${LORA_ZERO:-0} PRECISIONS=${LORA_PRECISIONS:-auto} ROUNDS=${LORA_ROUNDS:-3}
STEPS=${LORA_STEPS:-6} WARMUP=${LORA_WARMUP:-2} MICRO_BIG=${LORA_MICRO:-4} MICRO=${MICRO:-8} SEQ=${SEQ:-256}
THREADS=${THREADS:-1} LORA_R=${LORA_R:-16}
command -v mpirun >/dev/null || { echo "mpirun not found" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time (GNU time) not found: apt-get install time" >&2; exit 1; }
[ "$WARMUP" -lt "$STEPS" ] || { echo "WARMUP ($WARMUP) must be below STEPS ($STEPS)" >&2; exit 1; }

bench_env "$THREADS"
bench_workdir "${LORA_BENCH_WORK:-}"
bench_mpirun
# ---- inputs: the two models + the train.sh data (reused when LORA_BENCH_WORK already holds them) ----
bench_inputs "$SEQ"
$PY "$HERE/lora_setup.py" "$ROOT" "$WORK/h1024" > "$WORK/h1024.json"
cp "$WORK/model.json" "$WORK/h384.json"  # train_setup.py writes the h384 model to $WORK/model
echo "model h1024 (judged): $(cat "$WORK/h1024.json")"
echo "model h384 (tools/bench/train.sh's): $(cat "$WORK/h384.json")"
bench_host
echo "settings: LORA_PRECISIONS=\"$PRECISIONS\" LORA_NP=$NP LORA_ZERO=$ZERO BIND=${BIND:-none} NICE=${NICE:-} LORA_ROUNDS=$ROUNDS LORA_STEPS=$STEPS LORA_WARMUP=$WARMUP LORA_MICRO=$MICRO_BIG MICRO=$MICRO SEQ=$SEQ THREADS=$THREADS LORA_R=$LORA_R"

LORA=(--lora-r "$LORA_R" --lora-alpha $((2 * LORA_R)) --lora-targets all-linear)
method_opts() {
  case $1 in
    full) echo --method full ;;
    lora) echo --method lora "${LORA[@]}" ;;
    qlora) echo --method qlora "${LORA[@]}" ;;
  esac
}

# run NAME MODEL PRECISION MICRO [trainer options...]
run() {
  local name=$1 model=$2 prec=$3 micro=$4 np=$NP seq=$SEQ steps=$STEPS
  shift 4
  local d="$WORK/runs/$name"
  rm -rf "$d"; mkdir -p "$d"
  local cmd=("${MPIRUN[@]}" -np "$np" "$HERE/train_rss.sh" "$d/rss" "$TRAINER" --model "$model" --data "$WORK/data"
             --out "$d/out" --steps "$steps" --global-batch $((np * micro)) --micro-batch "$micro" --seq-len "$seq"
             --zero "$ZERO" --threads "$THREADS" --precision "$prec" --metrics "$d/metrics.jsonl"
             --eval-batches 0 --log-every 1000 "$@")
  bench_run_timed "$d" "${cmd[@]}" || return 1
  printf '  %-20s np=%d zero=%d %s micro=%d seq=%d steps=%d  %ss wall\n' "$name" "$np" "$ZERO" "$prec" "$micro" \
    "$seq" "$steps" "$(cat "$d/wall_s")"
}

T0=$SECONDS
rm -rf "$WORK"/runs
for prec in $PRECISIONS; do
  echo; echo "== runs: --precision $prec, full vs LoRA vs QLoRA (r=$LORA_R, all-linear), $NP rank(s) x $THREADS thread(s), ZeRO-$ZERO, $STEPS steps, $ROUNDS rounds; h1024 micro-batch $MICRO_BIG, h384 micro-batch $MICRO (x $SEQ tokens per rank)"
  # Rounds rotate the order of the methods, so that a slow stretch of a shared machine lands on each.
  for ((k = 1; k <= ROUNDS; k++)); do
    sfx=""; [ "$k" -gt 1 ] && sfx=".$k"
    for spec in "h1024 $MICRO_BIG full lora qlora" "h384 $MICRO full lora"; do
      set -- $spec
      model=$1 micro=$2; shift 2
      methods=("$@") n=$#
      for ((i = 0; i < n; i++)); do
        m=${methods[$(((i + k - 1) % n))]}
        # shellcheck disable=SC2046
        run "$prec-$model-$m$sfx" "$WORK/$([ "$model" = h384 ] && echo model || echo "$model")" "$prec" "$micro" $(method_opts "$m")
      done
    done
  done
done
echo; echo "runs took $((SECONDS - T0)) s"
echo
$PY "$HERE/lora_report.py" "$WORK" --precisions "$PRECISIONS" --warmup "$WARMUP" --np "$NP" --zero "$ZERO" \
  --threads "$THREADS" --r "$LORA_R"
echo; echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg); work dir: $WORK"
