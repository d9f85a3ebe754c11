#!/usr/bin/env bash
# Every GPU check of shardtune in one go, on a machine with an NVIDIA GPU and no network (issue 13): builds
# shardtune with CUDA against the PyTorch wheel's LibTorch and the Debian .debs that tools/gpu-debs.sh
# put into build/gpu-carry (unpacked with dpkg -x into a prefix), then runs
#   1. nccl      NCCL collectives against the MPI backend on the same buffers (tests/dist/nccl_check.cpp;
#                every op, odd sizes, fp32/bf16/int64; one rank per GPU)
#   2. loss      a 1-GPU fine-tune of the tiny Llama (stories260K): per-step loss of --device cuda
#                --precision bf16 against the CPU fp32 run of the same config, with a tolerance measured
#                from the CPU's own bf16 run; and --device cuda --precision fp32 against CPU fp32
#   2b. dpo-full DPO, --method full (a frozen reference copy on the GPU) live and --precompute-ref, 3 steps
#                bf16 on the GPU against the CPU fp32 runs (the CPU half also runs dry)
#   2c. ckpt-resume  on the GPU: --save-every 2, stopped after step 2 (SHARDTUNE_TEST_FAIL) and resumed with
#                --resume auto = the uninterrupted (--async-save) run's losses; shardtune-inspect --verify
#   3. interop   transformers loads our fine-tuned folder (logits equal ours, fp32, <= 1e-4), peft loads
#                our LoRA adapter (logits equal our adapter model's), AutoTokenizer loads the tokenizer;
#                and our logits equal tests/model/reference.py's forward (interop-ref; also runs here)
#   4. bench     ~1.1B-parameter Llama, full fine-tune, ZeRO-1, bf16, seq 2048: tokens/s and MFU against
#                the GPU's dense bf16 peak (target 45%)
# each with PASS/FAIL/SKIP and its numbers, into $OUT/gpu-check.log and $OUT/gpu-check.json (the device
# tool's $OUT; else build-gpucheck/out). Budget: 10 minutes on 16 cores, the build included.
#
#   tools/gpu-check.sh                 on the GPU machine (the device tool's `run`; docs/GPU.md)
#   GPU_CHECK_DRY=prefix ...           the same, but built against the carried debs (the prefix, the
#                                      relocated Open MPI) as on the GPU machine: that half of it checked here
#   GPU_CHECK_DRY=1 tools/gpu-check.sh here: system packages instead of the debs, no GPU; builds, runs the
#                                      CPU halves (check 2's and dpo-full's CPU runs, ckpt-resume on the CPU, check 1's program skipping,
#                                      check 3 on CPU-trained outputs against reference.py, py_compile
#                                      of the Python scripts) and prints the plan
# Environment: GPU_CHECK_ONLY="nccl loss dpo-full ckpt-resume interop bench" (a subset), GPU_CHECK_BUDGET_S (570: seconds for
# everything; later checks are skipped, not cut, when too little is left), JOBS, GPU_CARRY, GPU_CHECK_BUILD,
# GPU_CHECK_WORK, BENCH_STEPS (10), BENCH_MICRO (8), BENCH_GLOBAL (32; out of memory: retried at 4 / 16),
# CKPT_PRECISION (fp32: ckpt-resume's precision).
set -uo pipefail
START=$SECONDS
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY="${GPU_CHECK_DRY:-0}"
CARRY="${GPU_CARRY:-$ROOT/build/gpu-carry}"
if [ "$DRY" = prefix ]; then BUILD="${GPU_CHECK_BUILD:-$ROOT/build-gpucheck-prefix}"; else BUILD="${GPU_CHECK_BUILD:-$ROOT/build-gpucheck}"; fi
OUTDIR="${OUT:-$BUILD/out}"
WORK="${GPU_CHECK_WORK:-$BUILD/work}"
JOBS="${JOBS:-$(nproc)}"
ONLY=" ${GPU_CHECK_ONLY:-nccl loss dpo-full ckpt-resume interop bench} "
BUDGET="${GPU_CHECK_BUDGET_S:-570}"
TOOLS="$ROOT/tools/gpu-check"
mkdir -p "$OUTDIR" "$WORK"
LOG="$OUTDIR/gpu-check.log"
RESULTS="$WORK/results.jsonl"
: > "$LOG"
: > "$RESULTS"
exec > >(tee -a "$LOG") 2>&1

# The image's own Python (torch, transformers, peft) never sees the prefix's libraries.
pyrun() { env -u LD_LIBRARY_PATH "$PY" "$@"; }
say() { printf '[gpu-check %4ds] %s\n' "$((SECONDS - START))" "$*"; }
left() { echo $((BUDGET - (SECONDS - START))); }
# record NAME STATUS SUMMARY [JSON]: one result; gpu-check.json is rewritten after each one (a run cut
# short by the device tool's limit still returns what was done).
record() {
  local name=$1 status=$2 summary=$3 json=${4:-"{}"}
  say "RESULT $name: $status  $summary"
  NAME="$name" STATUS="$status" SUMMARY="$summary" DATA="$json" $SYSPY - "$RESULTS" <<'EOF'
import json, os, sys
try:
    data = json.loads(os.environ["DATA"])
except ValueError:
    data = {"raw": os.environ["DATA"]}
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"check": os.environ["NAME"], "status": os.environ["STATUS"],
                        "summary": os.environ["SUMMARY"], "data": data}) + "\n")
EOF
  write_json
}
write_json() {
  $SYSPY - "$RESULTS" "$OUTDIR/gpu-check.json" "$DRY" "$((SECONDS - START))" "${GPU_NAME:-none}" <<'EOF'
import json, sys, time
results = [json.loads(l) for l in open(sys.argv[1])]
json.dump({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "dry": sys.argv[3] != "0",
           "seconds": int(sys.argv[4]), "gpu": sys.argv[5], "results": results,
           "pass": all(r["status"] in ("PASS", "SKIP", "INFO") for r in results),
           "complete": all(r["status"] != "SKIP" for r in results)},
          open(sys.argv[2], "w"), indent=1)
EOF
}
# need SECONDS NAME: true when at least SECONDS of the budget are left, else records NAME as skipped.
need() {
  if [ "$(left)" -lt "$1" ]; then
    record "$2" SKIP "not started: $(left) s of the ${BUDGET} s budget left, it needs about $1 s (rerun with GPU_CHECK_ONLY=\"$2\")"
    return 1
  fi
}
wants() { [[ "$ONLY" == *" $1 "* ]]; }
die() { say "FATAL: $*"; record setup FAIL "$*"; exit 1; }

# ---- 0. what this machine has ----------------------------------------------------------------------
SYSPY=/usr/bin/python3; [ -x "$SYSPY" ] || SYSPY=python3   # JSON bookkeeping only
if [ "$DRY" != 0 ]; then PY=/usr/bin/python3; else PY=python3; fi   # the Python with torch
case "$DRY" in
  0) MODE=GPU ;;
  prefix) MODE="DRY with the carried debs (no GPU)" ;;
  *) MODE="DRY (system packages, no GPU)" ;;
esac
say "mode: $MODE, root=$ROOT build=$BUILD out=$OUTDIR jobs=$JOBS budget=${BUDGET}s checks:$ONLY"
say "machine: $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME"), $(uname -m), kernel $(uname -r), $(nproc) CPUs, glibc $(ldd --version 2>/dev/null | head -1 | awk '{print $NF}')"
for t in cmake ninja g++ "$PY"; do
  command -v "$t" >/dev/null || die "'$t' not found on PATH (the build needs CMake, ninja, g++ and $PY with torch)"
done
say "tools: $(cmake --version | head -1), ninja $(ninja --version), $(g++ --version | head -1)"
GPU_NAME=none
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  GPU_NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
  GPUS="$(nvidia-smi -L | wc -l)"
  nvidia-smi --query-gpu=index,name,memory.total,driver_version,clocks.max.sm --format=csv | sed 's/^/  /'
else
  GPUS=0
fi
say "GPUs: $GPUS ($GPU_NAME); nvcc: $(command -v nvcc >/dev/null && nvcc --version | tail -2 | head -1 || echo none)"
TORCH_INFO="$($PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.utils.cmake_prefix_path, torch.cuda.is_available())' 2>&1)" ||
  die "$PY cannot import torch: $TORCH_INFO"
read -r TORCH_VER TORCH_CUDA TORCH_PREFIX TORCH_GPU <<< "$TORCH_INFO"
say "torch $TORCH_VER (CUDA $TORCH_CUDA, sees a GPU: $TORCH_GPU), CMake prefix $TORCH_PREFIX"
if [ "$DRY" = 0 ]; then
  [ "$GPUS" -gt 0 ] || die "no NVIDIA GPU visible (nvidia-smi -L): this script's GPU mode needs one; GPU_CHECK_DRY=1 runs the CPU half"
  [ "$TORCH_CUDA" != None ] || die "torch $TORCH_VER is a CPU build: the GPU build needs a CUDA LibTorch (the PyTorch wheel with CUDA)"
fi
write_json

# ---- 1. the prefix: Debian 12 .debs, unpacked -------------------------------------------------------
PREFIX="$WORK/prefix"
ARCH_LIB="$PREFIX/usr/lib/x86_64-linux-gnu"
CMAKE_ARGS=()
# deb_x DEB DIR: dpkg -x, or (an image without dpkg) binutils' ar and tar on the .deb's data member.
deb_x() {
  if command -v dpkg >/dev/null; then dpkg -x "$1" "$2"; return; fi
  local m
  m="$(ar t "$1" | grep '^data\.tar')" || return 1
  case "$m" in
    *.xz) ar p "$1" "$m" | tar -xJ -C "$2" ;;
    *.zst) ar p "$1" "$m" | zstd -dc | tar -x -C "$2" ;;
    *.gz) ar p "$1" "$m" | tar -xz -C "$2" ;;
    *) ar p "$1" "$m" | tar -x -C "$2" ;;
  esac
}
unpack_prefix() {
  [ -d "$CARRY/debs" ] || die "$CARRY/debs not found: run tools/gpu-debs.sh on a Debian 12 machine with network and carry build/gpu-carry"
  local glibc need=2.36
  glibc="$(ldd --version | head -1 | awk '{print $NF}')"
  if [ "$(printf '%s\n%s\n' "$need" "$glibc" | sort -V | head -1)" != "$need" ]; then
    die "this machine's glibc is $glibc, older than Debian 12's $need that the carried .debs were built against: make the carry from packages of this machine's distribution"
  fi
  if [ ! -f "$PREFIX/.unpacked" ]; then
    rm -rf "$PREFIX" "$WORK/fallback"
    mkdir -p "$PREFIX" "$WORK/fallback"
    local f
    for f in "$CARRY"/debs/*.deb; do deb_x "$f" "$PREFIX" || die "unpacking $f failed"; done
    for f in "$CARRY"/debs-fallback/*.deb; do deb_x "$f" "$WORK/fallback" || die "unpacking $f failed"; done
    touch "$PREFIX/.unpacked"
  fi
  say "prefix: $(ls "$CARRY"/debs/*.deb | wc -l) core .debs in $PREFIX, $(ls "$CARRY"/debs-fallback/*.deb | wc -l) fallback .debs aside"
  # A library missing on this machine (a dangling .so link in the prefix, or `ldd` "not found"): from the
  # system when it has one under the same soname, else from the fallback .debs; never replacing one it has.
  local pass link target so cand found missing
  for pass in 1 2 3; do
    missing=0
    while IFS= read -r link; do
      target="$(basename "$(readlink "$link")")"
      found=""
      for cand in "$target" "${target%.*}" "${target%.*.*}" "${target%.*.*.*}"; do
        [[ "$cand" == *.so.* ]] || continue
        found="$(ldconfig -p | awk -v n="$cand" '$1 == n {print $NF; exit}')"
        [ -n "$found" ] || found="$(find "$WORK/fallback" -name "$cand" \( -type f -o -type l \) | head -1)"
        [ -n "$found" ] && break
      done
      if [ -n "$found" ]; then ln -sf "$found" "$link"; else say "prefix: $link -> $target: no such library here or in the fallback"; fi
    done < <(find "$PREFIX/usr/lib" -xtype l -name '*.so*')
    while IFS= read -r so; do
      found="$(find "$WORK/fallback" -name "$so" \( -type f -o -type l \) | head -1)"
      if [ -n "$found" ]; then cp -aL "$found" "$ARCH_LIB/$so"; say "prefix: $so from the fallback .debs"; missing=1
      else say "prefix: WARNING: $so is needed but neither this machine nor the carry has it"; fi
    done < <(find "$PREFIX/usr/lib" "$PREFIX/usr/bin" -type f \( -name '*.so*' -o -perm -u+x \) -print0 2>/dev/null |
             xargs -0 env LD_LIBRARY_PATH="$LDPATH" ldd 2>/dev/null | awk '/not found/ {print $1}' | sort -u)
    [ "$missing" = 0 ] && break
  done
}
if [ "$DRY" = 0 ] || [ "$DRY" = prefix ]; then
  LDPATH="$ARCH_LIB:$ARCH_LIB/openmpi/lib:$ARCH_LIB/pmix2/lib:$ARCH_LIB/hdf5/serial"
  unpack_prefix
  # Open MPI and PMIx from a relocated prefix: their compiled-in /usr paths, moved.
  export OPAL_PREFIX="$PREFIX/usr" OPAL_SYSCONFDIR="$PREFIX/etc/openmpi" OPAL_LIBDIR="$ARCH_LIB/openmpi/lib"
  export PMIX_INSTALL_PREFIX="$ARCH_LIB/pmix2" PMIX_PREFIX="$ARCH_LIB/pmix2" PMIX_LIBDIR="$ARCH_LIB/pmix2/lib" \
         PMIX_PKGLIBDIR="$ARCH_LIB/pmix2/lib/pmix"
  export PKG_CONFIG_LIBDIR="$ARCH_LIB/pkgconfig:$PREFIX/usr/share/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$PREFIX"
  export LD_LIBRARY_PATH="$LDPATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  # One node: Open MPI's own shared-memory and TCP transports only (no UCX/libfabric probing of absent
  # fabrics; no cross-memory attach, which containers often forbid); PMIx's plain hash store.
  export OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader,tcp OMPI_MCA_mtl='^ofi,psm2' OMPI_MCA_osc='^ucx' \
         OMPI_MCA_btl_vader_single_copy_mechanism=none PMIX_MCA_gds=hash
  MPIRUN="$PREFIX/usr/bin/mpirun.openmpi"
  # NCCL: the PyTorch wheel's own (libtorch_cuda uses it; a second copy in one process would clash), else the system's.
  NCCL_DIR="$($PY -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__) if nvidia.nccl.__file__ else list(nvidia.nccl.__path__)[0])' 2>/dev/null)"
  if [ -n "$NCCL_DIR" ] && [ -f "$NCCL_DIR/include/nccl.h" ]; then
    NCCL_LIB="$(ls "$NCCL_DIR"/lib/libnccl.so* | head -1)"
  else
    NCCL_DIR=""; NCCL_LIB="$(ldconfig -p | awk '$1 ~ /^libnccl\.so/ {print $NF; exit}')"
  fi
  NCCL_INC="${NCCL_DIR:+$NCCL_DIR/include}"
  if [ -z "$NCCL_INC" ]; then   # NCCL's own header (not LibTorch's torch/csrc/cuda/nccl.h wrapper)
    for d in "$(dirname "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")/../include" /usr/local/cuda/include /usr/include; do
      [ -f "$d/nccl.h" ] && grep -q "NCCL_MAJOR" "$d/nccl.h" && { NCCL_INC="$(cd "$d" && pwd)"; break; }
    done
  fi
  [ -f "$NCCL_INC/nccl.h" ] && [ -n "$NCCL_LIB" ] || die "NCCL not found (neither the wheel's nvidia/nccl nor a system libnccl + nccl.h)"
  say "NCCL: $NCCL_INC/nccl.h, $NCCL_LIB ($(grep -m1 '#define NCCL_VERSION_CODE' "$NCCL_INC/nccl.h" | awk '{print $2"="$3}'))"
  CUDA_ROOT="$(dirname "$(dirname "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")")"
  CUDA_ARCH="${GPU_CHECK_CUDA_ARCH:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ')}"
  # cuDNN from the wheel, for a LibTorch CMake config that asks for it (harmless where it does not).
  CUDNN_DIR="$($PY -c 'import nvidia.cudnn as n; print(list(n.__path__)[0])' 2>/dev/null)"
  [ -n "$CUDNN_DIR" ] && export CUDNN_ROOT="$CUDNN_DIR" CUDNN_INCLUDE_DIR="$CUDNN_DIR/include" CUDNN_LIB_DIR="$CUDNN_DIR/lib"
  export CMAKE_POLICY_VERSION_MINIMUM=3.5   # CMake 4 refuses older policy floors in third-party config files
  CMAKE_ARGS+=(
    "-DCMAKE_PREFIX_PATH=$TORCH_PREFIX;$PREFIX/usr"
    "-DMPI_C_COMPILER=$PREFIX/usr/bin/mpicc.openmpi" "-DMPI_CXX_COMPILER=$PREFIX/usr/bin/mpicxx.openmpi"
    "-DMPIEXEC_EXECUTABLE=$MPIRUN"
    "-DPKG_CONFIG_EXECUTABLE=$PREFIX/usr/bin/pkgconf"
    # HDF5 without its h5cc wrapper (not carried: it hard-codes /usr): FindHDF5's own cache entries.
    "-DHDF5_ROOT=$ARCH_LIB" "-DHDF5_C_COMPILER_EXECUTABLE=HDF5_C_COMPILER_EXECUTABLE-NOTFOUND"
    "-DHDF5_C_INCLUDE_DIR=$PREFIX/usr/include/hdf5/serial" "-DHDF5_CXX_INCLUDE_DIR=$PREFIX/usr/include/hdf5/serial"
    "-DHDF5_hdf5_LIBRARY_RELEASE=$ARCH_LIB/hdf5/serial/libhdf5.so" "-DHDF5_hdf5_cpp_LIBRARY_RELEASE=$ARCH_LIB/hdf5/serial/libhdf5_cpp.so"
    "-DOPENSSL_ROOT_DIR=$PREFIX/usr" "-DBoost_ROOT=$PREFIX/usr" "-DBoost_NO_SYSTEM_PATHS=ON"
    "-DNCCL_INCLUDE_DIR=$NCCL_INC" "-DNCCL_LIBRARY=$NCCL_LIB"
    "-DCUDAToolkit_ROOT=$CUDA_ROOT" "-DCMAKE_CUDA_COMPILER=$CUDA_ROOT/bin/nvcc" "-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-90}"
    "-DTORCH_CUDA_ARCH_LIST=$(echo "${CUDA_ARCH:-90}" | sed 's/\(.\)$/.\1/')"
    ${CUDNN_DIR:+"-DCUDNN_ROOT=$CUDNN_DIR"}
    "-DSHARDTUNE_WITH_CUDA=ON"
  )
else
  MPIRUN="$(command -v mpirun)"
  # Here: the system packages and Debian's CPU LibTorch; CUDA/NCCL as installed (compile and link only).
  CMAKE_ARGS+=("-DSHARDTUNE_WITH_CUDA=ON")
fi
[ "$DRY" != 0 ] && export CCACHE_BASEDIR="$ROOT"   # build/ and build-gpucheck*/ of one checkout share ccache entries
MPI=("$MPIRUN" --allow-run-as-root --oversubscribe)

# ---- 2. build ------------------------------------------------------------------------------------------
TARGETS=(shardtune shardtune-prep shardtune-generate shardtune-inspect dist_nccl_check)
BUILT=0
build() {
  say "configure: cmake -S $ROOT -B $BUILD -G Ninja ${CMAKE_ARGS[*]}"
  if ! cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSHARDTUNE_BUILD_FUZZ=OFF \
       -DSHARDTUNE_BUILD_TESTS=ON "-DSHARDTUNE_SHARED_DIR=$CARRY/shared" "${CMAKE_ARGS[@]}" > "$OUTDIR/build.log" 2>&1; then
    grep -E "CMake Error|Could NOT|not found|error" "$OUTDIR/build.log" | head -20
    record build FAIL "cmake configure failed (build.log)"; return 1
  fi
  grep -E "shardtune: LibTorch|Found (MPI|HDF5|Boost|OpenSSL|CLI11|GTest|Torch)|Found .*CUDA" "$OUTDIR/build.log" | sed 's/^/  /'
  if ! grep -q "NCCL backend=ON" "$OUTDIR/build.log"; then record build FAIL "configured without the NCCL backend"; return 1; fi
  local t0=$SECONDS
  if ! nice cmake --build "$BUILD" -j "$JOBS" --target "${TARGETS[@]}" >> "$OUTDIR/build.log" 2>&1; then
    grep -E "error|Error" "$OUTDIR/build.log" | head -20
    record build FAIL "ninja failed after $((SECONDS - t0)) s (build.log)"; return 1
  fi
  local bin missing=""
  for bin in src/shardtune data_prep/shardtune-prep tools/shardtune-generate tools/shardtune-inspect tests/dist/dist_nccl_check; do
    missing+="$(ldd "$BUILD/$bin" | awk -v b="$bin" '/not found/ {printf " %s:%s", b, $1}')"
  done
  [ -z "$missing" ] || { record build FAIL "built, but libraries are not found at run time:$missing"; return 1; }
  record build PASS "${#TARGETS[@]} targets in $((SECONDS - t0)) s (configure + build $((SECONDS - START)) s since start)" \
    "{\"seconds\": $((SECONDS - t0)), \"torch\": \"$TORCH_VER\", \"cuda\": \"$TORCH_CUDA\"}"
  BUILT=1
}
build || { say "build failed: no check can run"; write_json; exit 1; }
TRAIN="$BUILD/src/shardtune"; PREP="$BUILD/data_prep/shardtune-prep"; GEN="$BUILD/tools/shardtune-generate"
NCCL_CHECK="$BUILD/tests/dist/dist_nccl_check"
SHARED="$CARRY/shared"; [ -d "$SHARED/models" ] || SHARED="$ROOT/../shared"

# ---- check 1: NCCL against MPI ----------------------------------------------------------------------------
if wants nccl && need 30 nccl; then
  n=$((GPUS > 0 ? GPUS : 1))
  say "check nccl: mpirun -np $n dist_nccl_check"
  timeout 240 "${MPI[@]}" -np "$n" "$NCCL_CHECK" > "$WORK/nccl.txt" 2>&1; rc=$?
  cat "$WORK/nccl.txt"
  line="$(grep -m1 '^nccl_check:' "$WORK/nccl.txt")"
  if [ $rc = 77 ] || [[ "$line" == *SKIP* ]]; then record nccl SKIP "${line:-exit 77}: no CUDA device"
  elif [ $rc = 0 ] && [[ "$line" == *PASS* ]]; then
    record nccl PASS "$line" "{\"ranks\": $n, \"line\": \"$line\"}"
  else record nccl FAIL "exit $rc: ${line:-$(tail -3 "$WORK/nccl.txt" | tr '\n' ' ')}"
  fi
fi

# ---- check 2: 1-GPU bf16 loss against the CPU fp32 run ------------------------------------------------------
# stories260K (llama2.c .bin) on the byte-tokenized synthetic task of tests/train; 20 steps.
LOSS_ARGS=(--steps 20 --global-batch 16 --micro-batch 4 --seq-len 128 --lr 3e-3 --warmup-steps 3
           --weight-decay 0.1 --grad-clip 1.0 --eval-every 0 --seed 5)
# DIR SECONDS ARRAY NAME ARGS...: one trainer run of stories260K on DIR/data into DIR/NAME (+ .jsonl metrics,
# .txt log), with the options of the array named ARRAY, then ARGS.
stories_run() {
  local dir=$1 secs=$2 name=$4
  local -n opts=$3
  shift 4
  rm -rf "$dir/$name" "$dir/$name.jsonl"
  timeout "$secs" "$TRAIN" --model "$SHARED/models/stories260K.bin" --data "$dir/data" --out "$dir/$name" \
    "${opts[@]}" --metrics "$dir/$name.jsonl" "$@" > "$dir/$name.txt" 2>&1
  local rc=$?
  [ $rc = 0 ] || { say "$name: exit $rc"; tail -5 "$dir/$name.txt"; }
  return $rc
}
train_run() { stories_run "$WORK/loss" 300 LOSS_ARGS "$@"; }  # NAME ARGS...
loss_data() {  # the byte-tokenized synthetic task in $WORK/loss/data (check 2's and ckpt-resume's)
  mkdir -p "$WORK/loss"
  [ -f "$WORK/loss/data/manifest.json" ] && return 0
  $SYSPY "$ROOT/tools/demo/make_task.py" "$WORK/loss/task.jsonl" "$WORK/loss/held.jsonl" 600 > /dev/null &&
    "$PREP" --input "$WORK/loss/task.jsonl" --output "$WORK/loss/data" --tokenizer byte --template plain \
      --val-fraction 0.1 --max-seq-len 128 --quiet
}
if wants loss && need 60 loss; then
  mkdir -p "$WORK/loss"
  loss_data || record loss FAIL "data preparation failed"
  T="$(nproc)"
  if train_run cpu-fp32 --device cpu --precision fp32 --threads "$T" && train_run cpu-bf16 --device cpu --precision bf16 --threads "$T"; then
    cpu="$($SYSPY "$TOOLS/compare_losses.py" "$WORK/loss/cpu-fp32.jsonl" "$WORK/loss/cpu-bf16.jsonl" cpu-bf16 | tail -1)"
    cpu_rel="$(echo "$cpu" | $SYSPY -c 'import json,sys; print(json.load(sys.stdin)["max_rel"])')"
    # The tolerance: 3x what bf16 autocast alone moves the loss on the CPU (same model, data, steps), at least 1e-2.
    tol="$($SYSPY -c "print(max(3 * $cpu_rel, 1e-2))")"
    say "check loss: CPU bf16 vs CPU fp32: max rel $cpu_rel over 20 steps -> tolerance for the GPU bf16 run: $tol"
    cp "$WORK/loss/cpu-fp32.jsonl" "$OUTDIR/loss-cpu-fp32.jsonl"
    if [ "$GPUS" -gt 0 ]; then
      if train_run gpu-bf16 --device cuda --precision bf16 --threads 4; then
        $SYSPY "$TOOLS/compare_losses.py" "$WORK/loss/cpu-fp32.jsonl" "$WORK/loss/gpu-bf16.jsonl" gpu-bf16 | tee "$WORK/loss/cmp-bf16.txt"
        cp "$WORK/loss/gpu-bf16.jsonl" "$OUTDIR/loss-gpu-bf16.jsonl"
        g="$(tail -1 "$WORK/loss/cmp-bf16.txt")"
        rel="$(echo "$g" | $SYSPY -c 'import json,sys; print(json.load(sys.stdin)["max_rel"])')"
        if $SYSPY -c "import sys; sys.exit(0 if $rel <= $tol else 1)"; then st=PASS; else st=FAIL; fi
        record loss-bf16 "$st" "GPU bf16 vs CPU fp32: max rel loss diff $rel per step (threshold $tol = max(3 x CPU bf16's $cpu_rel, 1e-2))" \
          "{\"gpu_bf16\": $g, \"cpu_bf16\": $cpu, \"threshold\": $tol}"
      else record loss-bf16 FAIL "the --device cuda --precision bf16 run failed: $(tail -1 "$WORK/loss/gpu-bf16.txt")"
      fi
      if train_run gpu-fp32 --device cuda --precision fp32 --threads 4; then
        g="$($SYSPY "$TOOLS/compare_losses.py" "$WORK/loss/cpu-fp32.jsonl" "$WORK/loss/gpu-fp32.jsonl" gpu-fp32 | tail -1)"
        rel="$(echo "$g" | $SYSPY -c 'import json,sys; print(json.load(sys.stdin)["max_rel"])')"
        if $SYSPY -c "import sys; sys.exit(0 if $rel <= 1e-4 else 1)"; then st=PASS; else st=FAIL; fi
        record loss-fp32 "$st" "GPU fp32 vs CPU fp32: max rel loss diff $rel per step (threshold 1e-4: only summation order differs)" "$g"
      else record loss-fp32 FAIL "the --device cuda --precision fp32 run failed: $(tail -1 "$WORK/loss/gpu-fp32.txt")"
      fi
    else
      record loss INFO "CPU half only (no GPU): CPU bf16 vs fp32 max rel $cpu_rel -> the GPU bf16 threshold would be $tol; GPU runs not started" "$cpu"
    fi
  else
    record loss FAIL "a CPU reference run failed (see the log above)"
  fi
fi

# ---- checks 2b, 2c: DPO with a frozen reference on the GPU; checkpoint and resume on the GPU ------------------
# Both are small (stories260K, a few steps each; seconds of GPU). While the bench is wanted they start only when
# its 150 s stay free after them, so that they never push the bench out.
BENCH_RESERVE=0; wants bench && BENCH_RESERVE=150
need_small() {  # SECONDS NAME: need(), with the bench's share kept free
  if [ "$BENCH_RESERVE" -gt 0 ] && [ "$(left)" -lt $(($1 + BENCH_RESERVE)) ] && [ "$(left)" -ge "$1" ]; then
    record "$2" SKIP "not started: $(left) s left, it needs about $1 s and the bench's $BENCH_RESERVE s stay free (rerun with GPU_CHECK_ONLY=\"$2\")"
    return 1
  fi
  need "$1" "$2"
}
jget() { $SYSPY -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }   # JSON KEY
le() { $SYSPY -c "import sys; sys.exit(0 if $1 <= $2 else 1)"; }                                 # A <= B
cmp_losses() { $SYSPY "$TOOLS/compare_losses.py" "$@" | tail -1; }                                # REF OTHER LABEL
# dpo-full: --objective dpo --method full (the reference a frozen copy of the model on the training device),
# live and --precompute-ref, 3 steps on the byte-tokenized pairs of tests/train/dpo_test.py. lr 5e-4: at 2e-3 step 2
# moves so far that CPU bf16 differs from fp32 by 4e-2 (5e-4: 1.9e-3, measured on 2026-12-01).
DPO_ARGS=(--objective dpo --dpo-loss sigmoid --beta 0.1 --method full --steps 3 --global-batch 8 --micro-batch 4
          --seq-len 64 --lr 5e-4 --min-lr 1e-4 --warmup-steps 1 --schedule cosine --weight-decay 0.1 --grad-clip 1.0
          --eval-batches 0 --seed 5)
dpo_run() { stories_run "$WORK/dpo" 120 DPO_ARGS "$@"; }  # NAME ARGS...: one DPO run
if wants dpo-full && need_small 40 dpo-full; then
  D="$WORK/dpo"; mkdir -p "$D"; T="$(nproc)"
  $SYSPY - "$D/pairs.jsonl" <<'EOF'
import json, sys
pairs = [("Q: 2+2?\nA:", " 4", " 5, I think"), ("Name a color:", " blue", " seven"), ("Say hi.", " Hi there!", " no"),
         ("Capital of France?", " Paris", " Lyon or so"), ("Count to 3:", " 1 2 3", " 1 2"),
         ("Opposite of hot:", " cold", " warm-ish"), ("Spell cat:", " c-a-t", " k-a-t"), ("Is ice cold?", " Yes.", " Maybe not")]
with open(sys.argv[1], "w") as f:
    for p, c, r in pairs:
        f.write(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n")
EOF
  rm -rf "$D/data"
  if ! "$PREP" --input "$D/pairs.jsonl" --output "$D/data" --tokenizer byte --format preference --val-fraction 0 \
         --max-seq-len 64 --quiet; then
    record dpo-full FAIL "shardtune-prep --format preference failed"
  elif dpo_run cpu-live --device cpu --precision fp32 --threads "$T" && dpo_run cpu-pre --device cpu --precision fp32 --threads "$T" --precompute-ref &&
       dpo_run cpu-bf16 --device cpu --precision bf16 --threads "$T"; then
    c_pre="$(cmp_losses "$D/cpu-live.jsonl" "$D/cpu-pre.jsonl" cpu-pre)"; c_b16="$(cmp_losses "$D/cpu-live.jsonl" "$D/cpu-bf16.jsonl" cpu-bf16)"
    c_pre_rel="$(jget "$c_pre" max_rel)"; c_b16_rel="$(jget "$c_b16" max_rel)"
    # The tolerance: the loss-bf16 check's (measured in this call; 1e-2 when it did not run), or 3x what bf16
    # autocast alone moves this DPO loss on the CPU, whichever is larger.
    dtol="$($SYSPY -c "print(max(${tol:-1e-2}, 3 * $c_b16_rel))")"
    say "check dpo-full: CPU fp32 --precompute-ref vs live: max rel $c_pre_rel; CPU bf16 vs fp32: $c_b16_rel -> tolerance $dtol"
    cp "$D/cpu-live.jsonl" "$OUTDIR/dpo-cpu-fp32.jsonl"
    cpu_ok=1; le "$c_pre_rel" 1e-5 || cpu_ok=0
    grep -q "reference log-probs computed into" "$D/cpu-pre.txt" || cpu_ok=0
    cpu_json="{\"cpu_pre_vs_live\": $c_pre, \"cpu_bf16_vs_fp32\": $c_b16, \"threshold\": $dtol}"
    if [ $cpu_ok = 0 ]; then
      record dpo-full FAIL "CPU fp32: --precompute-ref vs the live reference max rel $c_pre_rel (> 1e-5, or no precompute pass logged)" "$cpu_json"
    elif [ "$GPUS" -gt 0 ]; then
      if dpo_run gpu-live --device cuda --precision bf16 --threads 4 && dpo_run gpu-pre --device cuda --precision bf16 --threads 4 --precompute-ref; then
        g_live="$(cmp_losses "$D/cpu-live.jsonl" "$D/gpu-live.jsonl" gpu-live)"; g_pre="$(cmp_losses "$D/cpu-live.jsonl" "$D/gpu-pre.jsonl" gpu-pre)"
        g_pl="$(cmp_losses "$D/gpu-live.jsonl" "$D/gpu-pre.jsonl" gpu-pre-vs-live)"
        r1="$(jget "$g_live" max_rel)"; r2="$(jget "$g_pre" max_rel)"; r3="$(jget "$g_pl" max_rel)"
        cp "$D/gpu-live.jsonl" "$OUTDIR/dpo-gpu-bf16.jsonl"; cp "$D/gpu-pre.jsonl" "$OUTDIR/dpo-gpu-bf16-precompute.jsonl"
        st=PASS; for r in "$r1" "$r2" "$r3"; do le "$r" "$dtol" || st=FAIL; done
        grep -q "reference log-probs computed into" "$D/gpu-pre.txt" || st=FAIL
        record dpo-full "$st" "GPU bf16 vs CPU fp32, max rel loss diff over 3 steps: live reference $r1, --precompute-ref $r2; precompute vs live on the GPU $r3 (threshold $dtol)" \
          "{\"gpu_live\": $g_live, \"gpu_pre\": $g_pre, \"gpu_pre_vs_live\": $g_pl, \"cpu_pre_vs_live\": $c_pre, \"cpu_bf16_vs_fp32\": $c_b16, \"threshold\": $dtol}"
      else record dpo-full FAIL "a --device cuda DPO run failed (see the log above)"
      fi
    else
      record dpo-full INFO "CPU half only (no GPU): CPU fp32 --precompute-ref = live within $c_pre_rel; CPU bf16 vs fp32 $c_b16_rel -> the GPU threshold would be $dtol" "$cpu_json"
    fi
  else record dpo-full FAIL "a CPU DPO reference run failed (see the log above)"
  fi
fi

# ckpt-resume: --save-every 2, stopped at step 3's start (SHARDTUNE_TEST_FAIL="0:2", after step 2's checkpoint),
# resumed with --resume auto: the per-step losses of the uninterrupted run, which writes with --async-save;
# every checkpoint left verifies with shardtune-inspect --verify. fp32 by default (CKPT_PRECISION): bf16 casts
# of the master weights would turn nondeterministic fp32 sums into loss differences unrelated to checkpointing.
INSPECT="$BUILD/tools/shardtune-inspect"
CK_PREC="${CKPT_PRECISION:-fp32}"
ck_run() {  # NAME ARGS...: into $WORK/ckpt/NAME; the metrics file is appended to (a resumed run continues it)
  local name=$1; shift
  timeout 120 "$TRAIN" --model "$SHARED/models/stories260K.bin" --data "$WORK/loss/data" --out "$WORK/ckpt/$name" \
    --steps 4 --global-batch 16 --micro-batch 4 --seq-len 128 --lr 3e-3 --warmup-steps 1 --eval-every 0 --seed 5 \
    --save-every 2 --keep-last 0 --metrics "$WORK/ckpt/$name.jsonl" "$@" >> "$WORK/ckpt/$name.txt" 2>&1
}
if wants ckpt-resume && need_small 40 ckpt-resume; then
  C="$WORK/ckpt"; rm -rf "$C"; mkdir -p "$C"
  if [ "$GPUS" -gt 0 ]; then CDEV=(--device cuda --precision "$CK_PREC" --threads 4); else CDEV=(--device cpu --precision "$CK_PREC" --threads "$(nproc)"); fi
  say "check ckpt-resume: ${CDEV[*]}, 4 steps, --save-every 2: uninterrupted (--async-save) vs stopped after step 2 and resumed"
  loss_data
  ok=1; why=""
  [ -f "$WORK/loss/data/manifest.json" ] || { ok=0; why="no data"; }
  [ $ok = 1 ] && { ck_run whole "${CDEV[@]}" --async-save || { ok=0; why="the uninterrupted --async-save run failed"; tail -5 "$C/whole.txt"; }; }
  if [ $ok = 1 ]; then
    SHARDTUNE_TEST_FAIL="0:2" ck_run cut "${CDEV[@]}"; rc=$?
    [ $rc != 0 ] && grep -q "injected failure" "$C/cut.txt" || { ok=0; why="the run to stop at step 3 did not stop there (exit $rc)"; tail -5 "$C/cut.txt"; }
  fi
  [ $ok = 1 ] && { ck_run cut "${CDEV[@]}" --resume auto || { ok=0; why="the resumed run failed"; tail -5 "$C/cut.txt"; }; }
  [ $ok = 1 ] && ! grep -q "resuming from" "$C/cut.txt" && { ok=0; why="the second run did not resume (no 'resuming from' line)"; }
  if [ $ok = 1 ]; then
    c="$($SYSPY "$TOOLS/compare_losses.py" "$C/whole.jsonl" "$C/cut.jsonl" resumed | tee "$C/cmp.txt" | tail -1)"
    grep '^  step' "$C/cmp.txt"
    rel="$(jget "$c" max_rel 2>/dev/null || echo 1)"
    verified=""; vfail=""
    for d in "$C"/whole/checkpoints/step-* "$C"/cut/checkpoints/step-*; do
      if "$INSPECT" "$d" --verify > "$C/verify.txt" 2>&1; then verified+=" ${d#"$C"/}"
      else vfail+=" ${d#"$C"/}"; tail -3 "$C/verify.txt"; fi
    done
    exact="$($SYSPY -c "print('true' if $rel == 0 else 'false')")"
    st=PASS; le "$rel" 1e-6 || st=FAIL; [ -z "$vfail" ] && [ -n "$verified" ] || st=FAIL
    [ "$GPUS" -gt 0 ] || { [ $st = PASS ] && st=INFO; }   # a CPU stand-in proves the script, not the GPU
    record ckpt-resume "$st" "${CDEV[*]}: resumed vs uninterrupted max rel loss diff $rel (threshold 1e-6; bit-identical: $exact); --verify passed:${verified:- none}${vfail:+; FAILED:$vfail}$([ "$GPUS" -gt 0 ] || echo ' (CPU stand-in, no GPU)')" \
      "{\"compare\": $c, \"exact\": $exact, \"precision\": \"$CK_PREC\", \"verified\": \"${verified# }\", \"verify_failed\": \"${vfail# }\"}"
  else record ckpt-resume FAIL "$why"
  fi
fi

# ---- check 3: transformers / peft load our output -------------------------------------------------------
if wants interop && need 90 interop; then
  I="$WORK/interop"; mkdir -p "$I"
  if [ "$GPUS" -gt 0 ]; then DEV=(--device cuda --precision bf16); else DEV=(--device cpu --precision fp32); fi
  ok=1
  pyrun "$TOOLS/make_models.py" "$ROOT" interop "$I/base" || ok=0
  if [ $ok = 1 ] && [ ! -f "$I/data/manifest.json" ]; then
    $SYSPY "$ROOT/tools/demo/make_task.py" "$I/task.jsonl" "$I/held.jsonl" 300 > /dev/null &&
      "$PREP" --input "$I/task.jsonl" --output "$I/data" --tokenizer "$SHARED/tokenizers/llama2-tokenizer.model" \
        --val-fraction 0.1 --max-seq-len 128 --quiet || ok=0
  fi
  common=(--model "$I/base" --data "$I/data" --steps 6 --global-batch 8 --micro-batch 4 --seq-len 128
          --warmup-steps 1 "${DEV[@]}" --threads 4 --eval-every 0)
  rm -rf "$I/full" "$I/lora"
  say "check interop: full and LoRA fine-tunes (${DEV[*]}) of a random Llama with the Llama 2 tokenizer"
  [ $ok = 1 ] && { timeout 240 "$TRAIN" "${common[@]}" --lr 5e-3 --out "$I/full" > "$I/full.txt" 2>&1 || { tail -5 "$I/full.txt"; ok=0; }; }
  [ $ok = 1 ] && { timeout 240 "$TRAIN" "${common[@]}" --out "$I/lora" --method lora --lora-r 8 --lora-alpha 16 --lr 2e-2 \
                     > "$I/lora.txt" 2>&1 || { tail -5 "$I/lora.txt"; ok=0; }; }
  ids="1 9038 2501 263 931 29892 727 471 263 2217 7826"   # "<s> Once upon a time, there was a little girl" (Llama 2 ids)
  [ $ok = 1 ] && { "$GEN" --model "$I/full" --prompt-ids "$ids" --print-logits > "$I/ours-full.json" 2> "$I/gen.txt" || ok=0; }
  [ $ok = 1 ] && { "$GEN" --model "$I/base" --adapter "$I/lora" --prompt-ids "$ids" --print-logits > "$I/ours-lora.json" 2>> "$I/gen.txt" || ok=0; }
  if [ $ok = 1 ]; then
    # Our logits against tests/model/reference.py's independent forward (no transformers needed).
    pyrun "$TOOLS/ref_logits.py" "$ROOT" "$I/full" "$I/ours-full.json" "$I/base" "$I/lora" "$I/ours-lora.json" 1e-4 > "$I/ref.txt" 2>&1; rc=$?
    grep -v '^{' "$I/ref.txt"; j="$(tail -1 "$I/ref.txt")"
    if [ $rc = 0 ]; then record interop-ref PASS "our --print-logits = reference.py's forward within 1e-4 (full and LoRA)" "$j"
    else record interop-ref FAIL "ref_logits.py exit $rc" "$j"
    fi
    if pyrun -c 'import transformers, peft' 2> /dev/null; then
      pyrun "$TOOLS/hf_interop.py" "$I/full" "$I/ours-full.json" "$I/base" "$I/lora" "$I/ours-lora.json" 1e-4 > "$I/hf.txt" 2>&1; rc=$?
      grep -v '^{' "$I/hf.txt"; j="$(tail -1 "$I/hf.txt")"
      if [ $rc = 0 ]; then record interop PASS "transformers + peft + AutoTokenizer load our outputs; logits within 1e-4" "$j"
      else record interop FAIL "see the lines above (hf_interop.py exit $rc)" "$j"
      fi
    elif pyrun -m py_compile "$TOOLS"/*.py; then
      rm -rf "$TOOLS/__pycache__"
      record interop SKIP "$PY has no transformers/peft (the GPU machine's has); tools/gpu-check/*.py compile"
    else record interop FAIL "py_compile failed for tools/gpu-check/*.py"
    fi
  else record interop FAIL "setting up the interop runs failed (see the log above)"
  fi
fi

# ---- check 4: throughput, ~1.1B Llama, ZeRO-1, bf16, seq 2048 -------------------------------------------------
if wants bench && need 150 bench; then
  B="$WORK/bench"; mkdir -p "$B"
  if [ "$GPUS" = 0 ]; then
    say "check bench (plan): make_models.py bench (~1.1B, TinyLlama shape); prep tinyshakespeare (byte, --overlong split,"
    say "  2048-token rows); shardtune --device cuda --precision bf16 --zero 1 --seq-len 2048 --steps ${BENCH_STEPS:-10}"
    say "  --micro-batch ${BENCH_MICRO:-8} --global-batch ${BENCH_GLOBAL:-32}; bench_report.py: median tokens/s, MFU vs the bf16 peak"
    record bench SKIP "needs a GPU (plan printed above)"
  else
    ok=1
    pyrun "$TOOLS/make_models.py" "$ROOT" bench "$B/model" | tee "$B/model.json" || ok=0
    if [ $ok = 1 ] && [ ! -f "$B/data/manifest.json" ]; then
      $SYSPY - "$SHARED/data/tinyshakespeare.txt" "$B/corpus.jsonl" <<'EOF' || ok=0
import json, sys
text = open(sys.argv[1], encoding="utf-8").read()
with open(sys.argv[2], "w") as f:
    for i in range(0, len(text), 4096):
        f.write(json.dumps({"text": text[i:i + 4096]}) + "\n")
EOF
      "$PREP" --input "$B/corpus.jsonl" --output "$B/data" --tokenizer byte --format text --max-seq-len 2048 \
        --overlong split --val-fraction 0 --quiet || ok=0
    fi
    bench_train() {  # MICRO GLOBAL
      rm -rf "$B/out" "$B/m.jsonl"
      say "check bench: shardtune --device cuda --precision bf16 --zero 1 --seq-len 2048 --micro-batch $1 --global-batch $2 (1.1B)"
      timeout $(( $(left) > 60 ? $(left) - 20 : 40 )) "$TRAIN" --model "$B/model" --data "$B/data" --out "$B/out" \
        --device cuda --precision bf16 --zero 1 --seq-len 2048 --steps "${BENCH_STEPS:-10}" --micro-batch "$1" \
        --global-batch "$2" --lr 1e-4 --warmup-steps 2 --eval-batches 0 --threads 8 --save-dtype BF16 --log-every 1 \
        --metrics "$B/m.jsonl" > "$B/train.txt" 2>&1
    }
    if [ $ok = 1 ]; then
      bench_train "${BENCH_MICRO:-8}" "${BENCH_GLOBAL:-32}"; rc=$?
      if [ $rc != 0 ] && grep -qi "out of memory" "$B/train.txt" && [ "$(left)" -gt 90 ]; then
        say "check bench: out of memory at micro-batch ${BENCH_MICRO:-8}: again at 4 / 16"
        bench_train 4 16; rc=$?
      fi
      grep -E "^step|error|Error|HINT" "$B/train.txt" | tail -15
      cp "$B/m.jsonl" "$OUTDIR/bench-metrics.jsonl" 2>/dev/null
      if [ -s "$B/m.jsonl" ] && $SYSPY "$TOOLS/bench_report.py" "$B/m.jsonl" "$GPU_NAME" 3 0.45 > "$B/report.txt"; then
        grep -v '^{' "$B/report.txt"; j="$(tail -1 "$B/report.txt")"
        mfu="$(echo "$j" | $SYSPY -c 'import json,sys; d=json.load(sys.stdin); print(d["mfu"] if d["mfu"] is not None else -1)')"
        st="$($SYSPY -c "print('PASS' if $mfu >= 0.45 else 'FAIL')")"
        [ $rc = 0 ] || st=FAIL
        record bench "$st" "$(grep -m1 tokens/s "$B/report.txt" | sed 's/^ *//'); $(grep -m1 MFU "$B/report.txt" | sed 's/^ *//') (trainer exit $rc)" "$j"
      else record bench FAIL "trainer exit $rc, no steady steps measured: $(tail -2 "$B/train.txt" | tr '\n' ' ')"
      fi
    else record bench FAIL "making the 1.1B model or its data failed"
    fi
  fi
fi

# ---- summary ----------------------------------------------------------------------------------------------
write_json
say "summary ($((SECONDS - START)) s; $OUTDIR/gpu-check.json):"
$SYSPY -c 'import json,sys; [print("  %-10s %-5s %s" % (r["check"], r["status"], r["summary"])) for r in json.load(open(sys.argv[1]))["results"]]' "$OUTDIR/gpu-check.json"
$SYSPY -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["pass"] else 1)' "$OUTDIR/gpu-check.json"
