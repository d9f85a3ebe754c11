#!/usr/bin/env bash
# DPO benchmarks of the shardtune trainer (CPU, MPI): the three reference-model options side by side, on the
# same model, data and ranks (tools/bench/train.sh's random-init Llama, tools/bench/train_setup.py: hidden
# 384, 6 layers, 15.7M parameters; byte tokenizer):
#   lora  --method lora (r DPO_LORA_R, all-linear): the reference is the same base with the adapters disabled;
#   full  --method full: the reference is a frozen full copy of the model per rank;
#   pre   --method full --precompute-ref: reference log-probs computed in one pass before training (its time
#         is reported separately), no reference held while training;
#   fullbf16 (only with DPO_BF16_REF=1) --method full --ref-dtype bf16: the frozen copy held in bf16.
# Pairs (tools/bench/dpo_setup.py): prompt ~112 bytes of tinyshakespeare, chosen = the 112 bytes that follow,
# rejected = 112 bytes from elsewhere; DPO_STEPS x the global batch of them (one pass), prepared with
# shardtune-prep --format preference --max-seq-len SEQ.
#
#   tools/bench/dpo.sh [BUILD_DIR]
#
# ROUNDS rounds; a round runs lora, full, pre once each, back to back, the order rotating from round to round;
# DPO_NP ranks x THREADS thread(s), ZeRO-DPO_ZERO, fp32, --micro-batch MICRO pairs per rank, one micro-step per
# step, DPO_STEPS steps. The report (tools/bench/dpo_report.py) gives, each a median with its range over
# rounds (per run: the median over its steps after the first WARMUP): pairs/s and tokens/s of a step (the
# trainer's metrics: global-batch pairs or tokens / step_s), peak RSS per rank (GNU time), the heap in use
# after each step (heap_bytes, rank 0), the precompute pass time (the trainer's log line), and ratios full/lora
# and pre/full.
#
# Environment: NICE (unset) BIND (none) DPO_NP (2) DPO_ZERO (1) ROUNDS (3) DPO_STEPS (6) WARMUP (2) MICRO (4)
#   SEQ (256) THREADS (1) DPO_LORA_R (16) DPO_BETA (0.1) DPO_BF16_REF (0; 1 adds the fullbf16 run to each round)
#   DPO_BENCH_WORK=DIR keeps the model, data and every run's metrics/log there (default: a temp dir).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bench_paths "$@"
if [ "$BENCH_SHIFT" = 1 ]; then shift; fi
NP=${DPO_NP:-2} ZERO=${DPO_ZERO:-1} ROUNDS=${ROUNDS:-3} STEPS=${DPO_STEPS:-6} WARMUP=${WARMUP:-2}
MICRO=${MICRO:-4} SEQ=${SEQ:-256} THREADS=${THREADS:-1} LORA_R=${DPO_LORA_R:-16} BETA=${DPO_BETA:-0.1}
BF16_REF=${DPO_BF16_REF:-0}
command -v mpirun >/dev/null || { echo "mpirun not found" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time (GNU time) not found: apt-get install time" >&2; exit 1; }
[ "$WARMUP" -lt "$STEPS" ] || { echo "WARMUP ($WARMUP) must be below STEPS ($STEPS)" >&2; exit 1; }
GB=$((NP * MICRO))

bench_env "$THREADS"
bench_workdir "${DPO_BENCH_WORK:-}"
bench_mpirun
# ---- inputs: train.sh's model, and STEPS x GB preference pairs (reused when DPO_BENCH_WORK holds them) ----
$PY "$HERE/train_setup.py" "$ROOT" "$SHARED" "$WORK" > "$WORK/model.json"
if [ ! -f "$WORK/pairs/manifest.json" ]; then
  rm -rf "$WORK/pairs"
  $PY "$HERE/dpo_setup.py" "$SHARED" "$WORK/pairs.jsonl" $((STEPS * GB))
  "$PREP" --input "$WORK/pairs.jsonl" --output "$WORK/pairs" --tokenizer byte --format preference \
    --max-seq-len "$SEQ" --val-fraction 0 --quiet
fi
echo "model (tools/bench/train.sh's): $(cat "$WORK/model.json")"
bench_host
echo "settings: DPO_NP=$NP DPO_ZERO=$ZERO BIND=${BIND:-none} NICE=${NICE:-} ROUNDS=$ROUNDS DPO_STEPS=$STEPS WARMUP=$WARMUP MICRO=$MICRO SEQ=$SEQ THREADS=$THREADS DPO_LORA_R=$LORA_R DPO_BETA=$BETA DPO_BF16_REF=$BF16_REF"

method_opts() {
  case $1 in
    lora) echo --method lora --lora-r "$LORA_R" --lora-alpha $((2 * LORA_R)) --lora-targets all-linear ;;
    full) echo --method full ;;
    pre) echo --method full --precompute-ref ;;
    fullbf16) echo --method full --ref-dtype bf16 ;;
  esac
}

# run NAME [trainer options...]
run() {
  local name=$1
  shift
  local d="$WORK/runs/$name"
  rm -rf "$d"; mkdir -p "$d"
  local cmd=("${MPIRUN[@]}" -np "$NP" "$HERE/train_rss.sh" "$d/rss" "$TRAINER" --model "$WORK/model" --data "$WORK/pairs"
             --out "$d/out" --objective dpo --beta "$BETA" --steps "$STEPS" --global-batch "$GB" --micro-batch "$MICRO"
             --seq-len "$SEQ" --zero "$ZERO" --threads "$THREADS" --precision fp32 --metrics "$d/metrics.jsonl"
             --eval-batches 0 --log-every 1000 "$@")
  bench_run_timed "$d" "${cmd[@]}" || return 1
  printf '  %-10s np=%d zero=%d fp32 micro=%d pairs seq=%d steps=%d  %ss wall\n' "$name" "$NP" "$ZERO" "$MICRO" "$SEQ" \
    "$STEPS" "$(cat "$d/wall_s")"
}

T0=$SECONDS
rm -rf "$WORK"/runs
echo; echo "== runs: DPO (sigmoid, beta $BETA), lora vs full vs pre$([ "$BF16_REF" = 1 ] && echo " vs fullbf16"), $NP rank(s) x $THREADS thread(s), ZeRO-$ZERO, fp32, $STEPS steps, $ROUNDS rounds; $MICRO pairs (x 2 rows x $SEQ tokens) per rank per step"
METHODS=(lora full pre)
[ "$BF16_REF" = 1 ] && METHODS+=(fullbf16)
NM=${#METHODS[@]}
for ((k = 1; k <= ROUNDS; k++)); do
  sfx=""; [ "$k" -gt 1 ] && sfx=".$k"
  for ((i = 0; i < NM; i++)); do
    m=${METHODS[$(((i + k - 1) % NM))]}
    # shellcheck disable=SC2046
    run "$m$sfx" $(method_opts "$m")
  done
done
echo; echo "runs took $((SECONDS - T0)) s"
echo
$PY "$HERE/dpo_report.py" "$WORK" --rounds "$ROUNDS" --warmup "$WARMUP" --np "$NP"
echo; echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg); work dir: $WORK"
