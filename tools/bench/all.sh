#!/usr/bin/env bash
# Every benchmark behind docs/PERFORMANCE.md and the README's target table, in one run, printing the
# markdown blocks to paste (tools/bench/paste.py does it): the machine (CPU model, cores, AVX2/AVX-512/AMX),
# prep (prep.sh), one training step (step.sh), the trainer (train.sh: scaling, comm, memory, mfu), LoRA /
# QLoRA vs full fine-tuning (lora.sh) and the summary of targets met / not met. Every figure is a median
# with its range, never a best run.
#
#   tools/bench/all.sh [BUILD_DIR] > report.txt          then: tools/bench/paste.py report.txt
#
# Run it on a quiet machine: nothing else should be running. Settings (environment; defaults sized so that
# the whole run took 445 s on the 2-core development VM):
#   PREP_REPS (3)     prep.sh runs of each side (PREP=0 skips prep)
#   STEP_THREADS (2) STEP_STEPS (5) STEP_ROUNDS (3)   step.sh: timed steps per run, alternating rounds
#   ROUNDS (3) STEPS (8) WARMUP (2) MFU_ROUNDS (2) MEM_STEPS (3) and the other train.sh knobs
#   LORA (1; 0 skips lora.sh) and lora.sh's knobs (LORA_PRECISIONS, LORA_ROUNDS, LORA_STEPS, LORA_NP, ...)
#   BENCH_WORK=DIR    keep every run's files under DIR (default: a temp dir, removed at the end)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BUILD="$(cd "${1:-$ROOT/build}" && pwd)"
PREP_REPS=${PREP_REPS:-3} STEP_THREADS=${STEP_THREADS:-2} STEP_STEPS=${STEP_STEPS:-5} STEP_ROUNDS=${STEP_ROUNDS:-3}
export ROUNDS=${ROUNDS:-3} STEPS=${STEPS:-8} WARMUP=${WARMUP:-2} MFU_ROUNDS=${MFU_ROUNDS:-2} MEM_STEPS=${MEM_STEPS:-3}
if [ -n "${BENCH_WORK:-}" ]; then WORK="$BENCH_WORK"; mkdir -p "$WORK"
else WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT; fi
export BENCH_SUMMARY="$WORK/summary.jsonl"
rm -f "$BENCH_SUMMARY"
t_start=$(date +%s)

echo "== building the benchmark targets (no-op when up to date)" >&2
cmake --build "$BUILD" --target shardtune shardtune-prep shardtune-step-bench shardtune-hw >&2

# ---- the machine ----
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
has() { case "$flags" in *" $1 "*) echo yes ;; *) echo no ;; esac; }
avx512=$(echo "$flags" | tr ' ' '\n' | grep '^avx512' | sort | tr '\n' ' ' | sed 's/ $//')
amx=$(echo "$flags" | tr ' ' '\n' | grep '^amx' | sort | tr '\n' ' ' | sed 's/ $//')
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
echo "<!-- bench:machine begin -->"
echo "Run of $DATE, commit $commit, \`tools/bench/all.sh\` (settings below)."
echo
echo "| | |"
echo "|---|---|"
lsv() { lscpu | sed -n "s/^$1: *//p" | head -1; }
echo "| CPU | $cpu ($(lsv 'Vendor ID'), family $(lsv 'CPU family') model $(lsv 'Model') stepping $(lsv 'Stepping')$( [ -n "$(lsv 'Hypervisor vendor')" ] && echo ", virtual machine: $(lsv 'Hypervisor vendor')")) |"
echo "| cores | $(nproc) online ($(lsv 'Core(s) per socket') core(s) per socket, $(lsv 'Thread(s) per core') thread(s) per core, $(lsv 'Socket(s)') socket(s)) |"
echo "| AVX2 / AVX-512 / AMX | $(has avx2) / ${avx512:-no} / ${amx:-no} |"
echo "| memory | $(free -g | awk '/^Mem:/ { print $2 " GiB" }') |"
echo "| software | LibTorch $(/usr/bin/python3 -c 'import torch; print(torch.__version__)' 2>/dev/null || echo '?') (Python side), $(mpirun --version 2>/dev/null | head -1) |"
hwv() { "$BUILD/tools/shardtune-hw" 2>/dev/null | sed -n "s/^$1  *//p" | head -1; }
if [ -x "$BUILD/tools/shardtune-hw" ]; then
  echo "| OpenBLAS core (shardtune-hw) | $(hwv openblas); user setting: $(hwv 'user setting'); chosen: $(hwv 'chosen core') |"
  echo "| native bf16 | $(hwv 'native bf16') |"
fi
echo "| load average at start | $(cut -d' ' -f1-3 /proc/loadavg) |"
echo "| settings | PREP_REPS=$PREP_REPS; step.sh threads $STEP_THREADS, $STEP_STEPS steps, $STEP_ROUNDS rounds; train.sh ROUNDS=$ROUNDS STEPS=$STEPS WARMUP=$WARMUP MFU_ROUNDS=$MFU_ROUNDS MEM_STEPS=$MEM_STEPS; lora.sh $([ "${LORA:-1}" = 0 ] && echo skipped || echo "LORA_PRECISIONS=\"${LORA_PRECISIONS:-auto}\" LORA_ROUNDS=${LORA_ROUNDS:-3} LORA_STEPS=${LORA_STEPS:-6}") |"
echo "<!-- bench:machine end -->"
echo "$DATE|$cpu|$commit" > "$WORK/run_id"

# ---- the benchmarks ----
echo; echo "== prep"
if [ "${PREP:-1}" = 0 ]; then echo "skipped (PREP=0)"
elif [ ! -d "$BUILD/node_refs/node_modules/gpt-3-encoder" ]; then
  echo "skipped: npm references missing in $BUILD/node_refs (run tools/test.sh once)"
else
  REPS=$PREP_REPS "$HERE/prep.sh" "$BUILD"
fi
t_prep=$(date +%s)
echo; echo "== one training step"
STEP_BENCH_WORK="$WORK/step" sh "$HERE/step.sh" "$BUILD" "$STEP_THREADS" "$STEP_STEPS" "$STEP_ROUNDS"
t_step=$(date +%s)
echo; echo "== trainer"
TRAIN_BENCH_WORK="$WORK/train" "$HERE/train.sh" "$BUILD" all
t_train=$(date +%s)
echo; echo "== LoRA / QLoRA vs full fine-tuning"
if [ "${LORA:-1}" = 0 ]; then echo "skipped (LORA=0)"
else LORA_BENCH_WORK="$WORK/lora" "$HERE/lora.sh" "$BUILD"; fi
t_lora=$(date +%s)

echo
/usr/bin/python3 "$HERE/summary.py" "$BENCH_SUMMARY" "$WORK/run_id"
echo
echo "time: prep $((t_prep - t_start)) s (incl. build check), step $((t_step - t_prep)) s, trainer $((t_train - t_step)) s, LoRA $((t_lora - t_train)) s, total $((t_lora - t_start)) s"
