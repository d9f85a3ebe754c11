#!/bin/sh
# One training step (forward + backward + AdamW) of the same ~15M-parameter Llama (seq 256, batch 8),
# shardtune (tools/bench/step_bench.cpp) vs the Python torch reference (tools/bench/step_ref.py),
# fp32 and bf16, same thread count. Prints tokens/s of each and the ratio.
#   tools/bench/step.sh [BUILD_DIR] [THREADS] [STEPS]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../../build}
threads=${2:-2}
steps=${3:-5}
bench=$build/tools/shardtune-step-bench
[ -x "$bench" ] || { echo "missing $bench: cmake --build $build --target shardtune-step-bench" >&2; exit 1; }
# OpenBLAS picks its kernels at load time; without this it may fall back to slow generic ones.
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-SkylakeX}
export OMP_NUM_THREADS=$threads
echo "threads=$threads steps=$steps batch=8 seq=256 ($(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg))"
for prec in fp32 bf16; do
  st=$("$bench" --precision "$prec" --threads "$threads" --steps "$steps")
  py=$(/usr/bin/python3 "$here/step_ref.py" --precision "$prec" --threads "$threads" --steps "$steps")
  echo "$st"
  echo "$py"
  st_tps=$(echo "$st" | sed -n 's/.*tokens\/s=\([0-9.]*\).*/\1/p')
  py_tps=$(echo "$py" | sed -n 's/.*tokens\/s=\([0-9.]*\).*/\1/p')
  echo "$prec: shardtune/python = $(awk -v a="$st_tps" -v b="$py_tps" 'BEGIN { printf "%.2fx", a / b }')"
done
