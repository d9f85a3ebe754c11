#!/usr/bin/env bash
# ctest smoke of the fuzz driver: seeds, then 1 s per target (no sanitizers in the normal build; the
# bounded ASan run is tools/fuzz/run.sh). Fails on any finding or crash.
set -euo pipefail
FUZZ="$1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$FUZZ" make-seeds "$tmp/seeds"
for t in shard manifest safetensors config record; do
  HOME="$tmp" "$FUZZ" run "$t" "$tmp/seeds/$t" "$tmp/out/$t" "${FUZZ_SMOKE_SECONDS:-1}"
done
