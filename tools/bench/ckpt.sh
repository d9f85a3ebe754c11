#!/usr/bin/env bash
# Checkpoint save time of the trainer against writing the same bytes with dd (conv=fsync) to the same disk
# (issue 10's target: save <= 1.2x dd). Model and data: tools/bench/train.sh's (a random-init ~15.7M-parameter
# Llama, tinyshakespeare through the byte tokenizer). Each round is one 2-rank ZeRO-1 fp32 run with
# --save-every 1 (SAVES saves, each the weights, both ranks' AdamW shares and the trainer state), followed by
# one dd of each save's byte count into the same folder. Save time is the trainer's own "save_s" (metrics
# lines "type":"checkpoint": from the step boundary to the committed folder, every rank); dd's is the wall
# time of `dd if=/dev/zero bs=1M conv=fsync`. Prints median (min-max) over all saves of all rounds, and the
# ratio of the medians (tools/bench/ckpt_report.py).
#
#   tools/bench/ckpt.sh [BUILD_DIR]
# Environment: ROUNDS (5) SAVES (3) MICRO (2) SEQ (256) THREADS (1) NICE (unset)
#   CKPT_BENCH_WORK=DIR keeps the model, data, runs and metrics there (default: a temp dir, removed).
#   CKPT_BENCH_DISK=DIR where checkpoints and dd write (default: the work dir), so the disk is named.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bench_paths "$@"
if [ "$BENCH_SHIFT" = 1 ]; then shift; fi
ROUNDS=${ROUNDS:-5} SAVES=${SAVES:-3} MICRO=${MICRO:-2} SEQ=${SEQ:-256} THREADS=${THREADS:-1}
bench_env "$THREADS"
bench_workdir "${CKPT_BENCH_WORK:-}"
DISK="${CKPT_BENCH_DISK:-$WORK}"
mkdir -p "$DISK"
bench_mpirun
bench_inputs "$SEQ"
echo "model: $(cat "$WORK/model.json")"
bench_host
echo "disk: $DISK on $(df -P "$DISK" | awk 'NR==2 {print $1 " (" $6 ")"}') $(findmnt -n -o FSTYPE --target "$DISK" 2>/dev/null || true)"
echo "settings: ROUNDS=$ROUNDS SAVES=$SAVES MICRO=$MICRO SEQ=$SEQ THREADS=$THREADS, 2 ranks ZeRO-1 fp32"

rm -rf "$WORK/runs"; mkdir -p "$WORK/runs"
for ((k = 1; k <= ROUNDS; k++)); do
  d="$WORK/runs/r$k" ck="$DISK/ckpt-r$k"
  mkdir -p "$d"; rm -rf "$ck" "$d/out"
  cmd=("${MPIRUN[@]}" -np 2 "$TRAINER" --model "$WORK/model" --data "$WORK/data" --out "$d/out" --ckpt-dir "$ck"
       --steps "$SAVES" --save-every 1 --global-batch $((2 * MICRO)) --micro-batch "$MICRO" --seq-len "$SEQ" --zero 1
       --threads "$THREADS" --precision fp32 --metrics "$d/metrics.jsonl" --eval-batches 0 --log-every 1000)
  printf '%q ' "${cmd[@]}" > "$d/cmd"; echo >> "$d/cmd"
  if ! "${cmd[@]}" > "$d/log" 2>&1; then echo "round $k FAILED:" >&2; tail -20 "$d/log" >&2; exit 1; fi
  # The bytes of each save (its manifest), then dd writing as many to the same folder.
  $PY - "$ck" > "$d/bytes" <<'PYEOF'
import glob, json, sys
for m in sorted(glob.glob(sys.argv[1] + "/step-*/manifest.json")):
    print(sum(f["bytes"] for f in json.load(open(m))["files"]))
PYEOF
  rm -rf "$ck" "$d/out"
  : > "$d/dd_s"
  while read -r bytes; do
    mb=$(( (bytes + 1048575) / 1048576 ))
    sync
    t0=$(date +%s.%N)
    "${NICE_CMD[@]}" dd if=/dev/zero of="$DISK/dd.bin" bs=1M count="$mb" conv=fsync status=none
    t1=$(date +%s.%N)
    rm -f "$DISK/dd.bin"
    echo "$t0 $t1" | awk '{ printf "%.4f\n", $2 - $1 }' >> "$d/dd_s"
  done < "$d/bytes"
  echo "  round $k: save_s $(grep -o '"save_s":[0-9.e-]*' "$d/metrics.jsonl" | cut -d: -f2 | tr '\n' ' ')| dd_s $(tr '\n' ' ' < "$d/dd_s")"
done
echo
$PY "$HERE/ckpt_report.py" "$WORK/runs"
echo; echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
