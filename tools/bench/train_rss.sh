#!/bin/sh
# mpirun wrapper for tools/bench/train.sh: runs one rank under GNU time and writes that rank's peak
# resident set size (KiB, getrusage ru_maxrss of the rank process), user and system CPU seconds and wall
# seconds ("%M %U %S %e") to PREFIX.<rank>.
#   mpirun -np N tools/bench/train_rss.sh PREFIX build/src/shardtune ...
prefix=$1
shift
rank=${OMPI_COMM_WORLD_RANK:-${PMIX_RANK:-${PMI_RANK:-0}}}
exec /usr/bin/time -f "%M %U %S %e" -o "$prefix.$rank" "$@"
