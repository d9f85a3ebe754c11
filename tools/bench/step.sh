#!/bin/sh
# One training step (forward + backward + AdamW) of the same ~15M-parameter Llama (seq 256, batch 8),
# shardtune (tools/bench/step_bench.cpp) vs the Python torch reference (tools/bench/step_ref.py),
# fp32 and bf16, same thread count. Prints tokens/s of each and the ratio.
#   tools/bench/step.sh [BUILD_DIR] [THREADS] [STEPS] [ROUNDS]
# Each side reports its fastest step; the two alternate ROUNDS times and the best round counts, so
# that other jobs on a shared machine disturb both sides alike.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../../build}
threads=${2:-2}
steps=${3:-4}
rounds=${4:-2}
bench=$build/tools/shardtune-step-bench
[ -x "$bench" ] || { echo "missing $bench: cmake --build $build --target shardtune-step-bench" >&2; exit 1; }
# OpenBLAS core from the CPU's flags where OpenBLAS would fall back to a generic one (user's setting wins).
[ -x "$build/tools/shardtune-hw" ] && eval "$("$build/tools/shardtune-hw" --blas-env)"
export OMP_NUM_THREADS=$threads
# Idle OpenMP threads sleep instead of spinning: on a machine shared with other jobs, spinning makes
# step times swing 10x. Both sides run with the same setting; override with OMP_WAIT_POLICY=ACTIVE.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
tps() { echo "$1" | sed -n 's/.*tokens\/s=\([0-9.]*\).*/\1/p'; }
max() { awk -v a="$1" -v b="$2" 'BEGIN { print (a > b ? a : b) }'; }
echo "threads=$threads steps=$steps rounds=$rounds OMP_WAIT_POLICY=$OMP_WAIT_POLICY batch=8 seq=256 ($(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg))"
for prec in fp32 bf16; do
  best_st=0; best_py=0
  r=0
  while [ $r -lt "$rounds" ]; do
    st=$("$bench" --precision "$prec" --threads "$threads" --steps "$steps" --warmup 1)
    py=$(/usr/bin/python3 "$here/step_ref.py" --precision "$prec" --threads "$threads" --steps "$steps" --warmup 1)
    echo "  $st"
    echo "  $py"
    best_st=$(max "$best_st" "$(tps "$st")"); best_py=$(max "$best_py" "$(tps "$py")")
    r=$((r + 1))
  done
  echo "$prec: shardtune $best_st tokens/s, python $best_py tokens/s, ratio $(awk -v a="$best_st" -v b="$best_py" 'BEGIN { printf "%.2fx", a / b }')"
done
