#!/usr/bin/env bash
# Bounded fuzz run of the untrusted-input readers under AddressSanitizer + UBSan (docs/FUZZ.md).
# Builds tools/fuzz/shardtune-fuzz torch-free into build-asan/, writes seeds, fuzzes every target for
# FUZZ_SECONDS (default 60) each. Any crash, sanitizer report, hang or finding fails the script and
# keeps the reproducer under $FUZZ_OUT/<target>/ (replay: shardtune-fuzz replay TARGET FILE).
#   FUZZ_SECONDS=60 FUZZ_TARGETS="shard manifest safetensors config record" tools/fuzz/run.sh
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="${FUZZ_BUILD_DIR:-$ROOT/build-asan}"
OUT="${FUZZ_OUT:-$BUILD/fuzz-out}"
SECONDS_PER_TARGET="${FUZZ_SECONDS:-60}"
TARGETS="${FUZZ_TARGETS:-shard manifest safetensors config record}"
JOBS="${JOBS:-$(nproc)}"

export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$ROOT}"
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHARDTUNE_SANITIZE=address \
  -DSHARDTUNE_WITH_TORCH=OFF -DSHARDTUNE_BUILD_TESTS=OFF -DSHARDTUNE_BUILD_FUZZ=ON -DSHARDTUNE_WITH_CUDA=OFF >/dev/null || exit 1
cmake --build "$BUILD" -j "$JOBS" --target shardtune-fuzz || exit 1
FUZZ="$BUILD/tools/fuzz/shardtune-fuzz"

# A huge allocation is a finding too (an input must never make us ask for terabytes); libhdf5's own
# leaks after it read corrupt metadata are not ours (suppressed), ours are reported.
export ASAN_OPTIONS="halt_on_error=1:abort_on_error=0:detect_leaks=1:allocator_may_return_null=0:max_allocation_size_mb=4096:${ASAN_OPTIONS:-}"
export LSAN_OPTIONS="suppressions=$ROOT/tools/fuzz/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export HOME="$OUT/home"  # the verification cache of the readers stays inside the run

rm -rf "$OUT"
mkdir -p "$OUT/home"
"$FUZZ" make-seeds "$OUT/seeds" || exit 1
failed=0
for t in $TARGETS; do
  log="$OUT/$t.log"
  timeout $((SECONDS_PER_TARGET + 120)) "$FUZZ" run "$t" "$OUT/seeds/$t" "$OUT/$t" "$SECONDS_PER_TARGET" >"$log" 2>&1
  rc=$?
  grep '^target ' "$log" || true
  if [ $rc -ne 0 ]; then
    failed=1
    keep="$OUT/$t/crash-$(date +%s)"
    cp -L "$OUT/$t/current" "$keep" 2>/dev/null
    [ -f "$OUT/$t/manifest.json" ] && cp "$OUT/$t/manifest.json" "$keep.manifest.json"
    case $rc in
      124) why="hang (no end within $((SECONDS_PER_TARGET + 120)) s)";;
      3) why="findings (exceptions that are not shardtune errors)";;
      *) why="crash or sanitizer report (exit $rc)";;
    esac
    echo "FAILED $t: $why; reproducer $keep; log $log"
    grep -E 'ERROR: |runtime error|FINDING' "$log" | head -5
  fi
done
[ $failed -eq 0 ] && echo "fuzz: every target ran ${SECONDS_PER_TARGET}s without a crash, sanitizer report or finding"
exit $failed
