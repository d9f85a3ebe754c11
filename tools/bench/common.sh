# shellcheck shell=bash disable=SC2034  # sourced; its variables are used by the scripts that source it
# Shared set-up of the trainer benchmarks (train.sh, lora.sh, ckpt.sh, ckpt_async.sh); sourced, not run.
#   bench_paths "$@"        HERE ROOT BUILD (the first argument when it is a folder: then BENCH_SHIFT=1),
#                           SHARED PY TRAINER PREP; exits naming a missing binary or ../shared file
#   bench_env THREADS       OpenBLAS core from the CPU's flags where OpenBLAS would fall back to a generic one
#                           (the user's setting wins); OMP_NUM_THREADS
#   bench_workdir KEEP_DIR  WORK: KEEP_DIR when given (kept), else a temp dir removed at exit
#   bench_mpirun            MPIRUN array: NICE, BIND (none), the BLAS core and OMP threads forwarded
#   bench_inputs SEQ        train.sh's model (train_setup.py -> WORK/model, WORK/model.json) and data (WORK/data)
#   bench_host              the "host:" line (cores, CPU model, load)
BENCH_LIB="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

bench_paths() {
  HERE="$BENCH_LIB"
  ROOT="$(cd "$HERE/../.." && pwd)"
  BUILD="$ROOT/build"
  BENCH_SHIFT=0
  if [ $# -gt 0 ] && [ -d "$1" ]; then BUILD="$(cd "$1" && pwd)"; BENCH_SHIFT=1; fi
  SHARED="${SHARDTUNE_SHARED:-$ROOT/../shared}"
  PY=/usr/bin/python3
  TRAINER="$BUILD/src/shardtune"
  PREP="$BUILD/data_prep/shardtune-prep"
  local x
  for x in "$TRAINER" "$PREP"; do
    [ -x "$x" ] || { echo "missing $x: cmake --build $BUILD --target shardtune shardtune-prep" >&2; exit 1; }
  done
  [ -f "$SHARED/data/tinyshakespeare.txt" ] || { echo "$SHARED/data/tinyshakespeare.txt not found (SHARDTUNE_SHARED)" >&2; exit 1; }
}

bench_env() {
  [ -x "$BUILD/tools/shardtune-hw" ] && eval "$("$BUILD/tools/shardtune-hw" --blas-env)"
  export OMP_NUM_THREADS=$1
}

bench_workdir() {
  if [ -n "${1:-}" ]; then WORK="$1"; mkdir -p "$WORK"
  else WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT; fi
}

bench_mpirun() {
  # NICE=-10 (root) runs every benchmark process at a higher priority, so that other jobs on a shared
  # machine disturb the measurement less; BIND=core pins every rank to a core of its own.
  NICE_CMD=()
  [ -n "${NICE:-}" ] && NICE_CMD=(nice -n "$NICE")
  MPIRUN=("${NICE_CMD[@]}" mpirun --oversubscribe --bind-to "${BIND:-none}" ${OPENBLAS_CORETYPE:+-x OPENBLAS_CORETYPE} -x OMP_NUM_THREADS)
  [ "$(id -u)" = 0 ] && MPIRUN+=(--allow-run-as-root)
  return 0
}

bench_inputs() {
  $PY "$HERE/train_setup.py" "$ROOT" "$SHARED" "$WORK" > "$WORK/model.json"
  if [ ! -f "$WORK/data/manifest.json" ]; then
    rm -rf "$WORK/data"
    "$PREP" --input "$WORK/corpus.jsonl" --output "$WORK/data" --tokenizer byte --format text \
      --max-seq-len "$1" --overlong split --quiet
  fi
}

bench_host() {
  echo "host: $(getconf _NPROCESSORS_ONLN) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
}

# bench_run_timed DIR CMD...: one measured trainer run. Records the command (DIR/cmd), the load average before
# and after (DIR/load_before, DIR/load_after) and the wall time (DIR/wall_s); its output goes to DIR/log, and
# a failure prints the log's tail and returns 1. The saved DIR/out (model / adapter) is removed afterwards.
bench_run_timed() {
  local d=$1
  shift
  printf '%q ' "$@" > "$d/cmd"; echo >> "$d/cmd"
  cut -d' ' -f1 /proc/loadavg > "$d/load_before"
  local t0 t1
  t0=$(date +%s.%N)
  if ! "$@" > "$d/log" 2>&1; then
    echo "run $(basename "$d") FAILED:" >&2; tail -20 "$d/log" >&2; return 1
  fi
  t1=$(date +%s.%N)
  cut -d' ' -f1 /proc/loadavg > "$d/load_after"
  echo "$t0 $t1" | awk '{ printf "%.1f\n", $2 - $1 }' > "$d/wall_s"
  rm -rf "$d/out"
}
