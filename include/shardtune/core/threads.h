// Intra-op thread counts per rank from the ranks' affinity masks (pure; the trainer gathers the masks),
// the warnings when a requested count does not fit, and rank 0's summary lines.
#pragma once

#include <string>
#include <vector>

namespace shardtune::hw {

struct RankCpus {
  std::string host;
  int cpus = 1;      // CPUs in this rank's affinity mask
  std::string mask;  // compact list, e.g. "0-1"
};

struct ThreadPlan {
  std::vector<int> threads;           // per rank
  std::vector<std::string> summary;   // one line per group of ranks with the same threads and mask size
  std::vector<std::string> warnings;  // each with a "---> HINT" naming the launcher flags
};

// requested > 0: that many threads on every rank (warned when it exceeds a rank's mask, or when ranks
// that share one mask on a host together exceed it). requested == 0: the CPUs of each rank's mask,
// divided evenly among the ranks of the same host with the same mask (unbound ranks share all CPUs).
ThreadPlan plan_threads(const std::vector<RankCpus>& ranks, int requested);

}  // namespace shardtune::hw
