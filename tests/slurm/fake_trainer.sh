#!/bin/bash
# A stand-in for shardtune with the same lifecycle contract, for testing the batch scripts' signal ->
# requeue -> rerun logic on its own (fast, no model): each run of a rank waits for SIGUSR1 (or SIGTERM),
# then "saves" and exits 75, until FAKE_SAVES (default 1) saves are on disk; the run after that finishes
# and exits 0. It records what happened in --out: rank<R>.log lines "start", "usr1", "term", "done", and
# its own arguments in args<R>.txt.
set -u
out=""
args=("$@")
while [ $# -gt 0 ]; do
  case "$1" in --out) out=$2; shift 2;; *) shift;; esac
done
[ -n "$out" ] || { echo "fake_trainer: --out missing" >&2; exit 2; }
rank=${OMPI_COMM_WORLD_RANK:-${PMIX_RANK:-${SLURM_PROCID:-0}}}
mkdir -p "$out"
log="$out/rank$rank.log"
printf '%s\n' "${args[@]}" > "$out/args$rank.txt"
echo start >> "$log"
saves=$(cat "$out/saves$rank" 2>/dev/null || echo 0)
if [ "$saves" -ge "${FAKE_SAVES:-1}" ]; then
  echo 'done' >> "$log"
  exit 0
fi
got=""
trap 'got=usr1' USR1
trap 'got=term' TERM
for _ in $(seq 1200); do     # at most ~2 minutes, in steps that a signal ends at once
  sleep 0.1 & wait $!
  [ -n "$got" ] && break
done
echo "${got:-nosignal}" >> "$log"
[ -n "$got" ] || exit 3
echo $((saves + 1)) > "$out/saves$rank"
exit 75
