#!/bin/sh
# One training step (forward + backward + AdamW) of the same ~15M-parameter Llama (seq 256, batch 8),
# shardtune (tools/bench/step_bench.cpp) vs the Python torch reference (tools/bench/step_ref.py),
# fp32 and bf16, same thread count. Prints markdown tables (tools/bench/step_report.py): tokens/s of
# each side as the median over rounds (range min-max), the ratio of the medians and the per-round ratios.
#   tools/bench/step.sh [BUILD_DIR] [THREADS] [STEPS] [ROUNDS]
# Per run: STEPS timed steps after one warm-up step; tokens/s of a run = tokens of a step / its median
# step time. The two sides alternate ROUNDS times (which one goes first alternates too), so that other
# jobs on a shared machine disturb both sides alike. STEP_BENCH_WORK=DIR keeps every run's JSON there.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../../build}
threads=${2:-2}
steps=${3:-5}
rounds=${4:-3}
bench=$build/tools/shardtune-step-bench
[ -x "$bench" ] || { echo "missing $bench: cmake --build $build --target shardtune-step-bench" >&2; exit 1; }
# OpenBLAS core from the CPU's flags where OpenBLAS would fall back to a generic one (user's setting wins).
[ -x "$build/tools/shardtune-hw" ] && eval "$("$build/tools/shardtune-hw" --blas-env)"
export OMP_NUM_THREADS=$threads
# Idle OpenMP threads sleep instead of spinning: on a machine shared with other jobs, spinning makes
# step times swing 10x. Both sides run with the same setting; override with OMP_WAIT_POLICY=ACTIVE.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
if [ -n "${STEP_BENCH_WORK:-}" ]; then work=$STEP_BENCH_WORK; mkdir -p "$work"; rm -f "$work"/*.json
else work=$(mktemp -d); trap 'rm -rf "$work"' EXIT; fi
echo "step benchmark: threads=$threads steps=$steps rounds=$rounds OMP_WAIT_POLICY=$OMP_WAIT_POLICY batch=8 seq=256 ($(nproc) cores, load at start: $(cut -d' ' -f1-3 /proc/loadavg))"
for prec in fp32 bf16; do
  r=1
  while [ $r -le "$rounds" ]; do
    order="st py"; [ $((r % 2)) -eq 0 ] && order="py st"
    for side in $order; do
      if [ "$side" = st ]; then
        "$bench" --precision "$prec" --threads "$threads" --steps "$steps" --warmup 1 > "$work/$prec.$r.$side.json"
      else
        /usr/bin/python3 "$here/step_ref.py" --precision "$prec" --threads "$threads" --steps "$steps" --warmup 1 \
          > "$work/$prec.$r.$side.json"
      fi
    done
    echo "  $prec round $r done (load $(cut -d' ' -f1 /proc/loadavg))"
    r=$((r + 1))
  done
done
echo
/usr/bin/python3 "$here/step_report.py" "$work" --threads "$threads" --steps "$steps" --rounds "$rounds"
