#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a passing test suite: installs what is missing,
# builds, runs every ctest tier (unit, dist, parity, e2e). Extra args go to ctest (e.g. -L unit).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
st_install_apt
# Optional: tests/slurm start a local single-node Slurm and skip without it.
st_install_apt slurm-wlm slurmctld slurmd slurm-client munge || echo "setup: no Slurm: the tests/slurm e2e tests will skip"
st_install_node_refs
st_install_llama_cpp
st_install_llama3_tokenizer
st_build
st_blas_env   # after the build: needs build/tools/shardtune-hw
# Shard verification records of the test runs stay in the build folder, not in ~/.cache.
export SHARDTUNE_CACHE_DIR="${SHARDTUNE_CACHE_DIR:-$BUILD_DIR/test-verify-cache}"
cd "$BUILD_DIR"
ctest --output-on-failure --timeout 900 -j "$JOBS" "$@"
