// Thread plan per rank from the gathered affinity masks: resolved counts, warnings, summary lines.
#include "shardtune/core/threads.h"

#include <algorithm>
#include <map>
#include <tuple>

#include "shardtune/core/hw.h"

namespace shardtune::hw {
namespace {

std::string plural(int n, const char* word) { return std::to_string(n) + " " + word + (n == 1 ? "" : "s"); }

std::string rank_label(const std::vector<int>& ids, size_t world) {
  if (ids.size() == world) return world == 1 ? "1 rank" : "all " + std::to_string(world) + " ranks";
  return (ids.size() == 1 ? "rank " : "ranks ") + format_cpu_list(ids);
}

}  // namespace

ThreadPlan plan_threads(const std::vector<RankCpus>& ranks, int requested) {
  ThreadPlan plan;
  const size_t world = ranks.size();
  std::vector<int> sharers(world, 0);
  for (size_t i = 0; i < world; ++i)
    for (size_t j = 0; j < world; ++j)
      if (ranks[i].host == ranks[j].host && ranks[i].mask == ranks[j].mask) ++sharers[i];
  for (size_t i = 0; i < world; ++i)
    plan.threads.push_back(requested > 0 ? requested : std::max(1, ranks[i].cpus / sharers[i]));

  // Summary: one line per (threads, mask size, sharers) group, in rank order of first appearance.
  std::map<std::tuple<int, int, int>, std::vector<int>> groups;
  std::vector<std::tuple<int, int, int>> order;
  for (size_t i = 0; i < world; ++i) {
    auto key = std::make_tuple(plan.threads[i], ranks[i].cpus, sharers[i]);
    if (!groups.count(key)) order.push_back(key);
    groups[key].push_back(static_cast<int>(i));
  }
  for (const auto& key : order) {
    const auto& ids = groups[key];
    const auto [t, cpus, share] = key;
    bool same_mask = true;
    for (int r : ids) same_mask = same_mask && ranks[r].mask == ranks[ids[0]].mask;
    std::string masks;
    if (same_mask) {
      masks = ranks[ids[0]].mask;
    } else {
      for (size_t k = 0; k < ids.size() && k < 4; ++k)
        masks += (k ? "; rank " : "rank ") + std::to_string(ids[k]) + ": " + ranks[ids[k]].mask;
      if (ids.size() > 4) masks += "; ...";
    }
    std::string line = rank_label(ids, world) + ": " + plural(t, "thread") + ", affinity mask of " +
                       plural(cpus, "CPU") + " (" + masks + ")";
    if (share > 1) line += ", the same mask shared by " + std::to_string(share) + " ranks on one host";
    plan.summary.push_back(line);
  }
  if (requested <= 0) return plan;

  // Warnings: a count larger than the mask, or ranks sharing one mask that together overcommit it.
  std::vector<int> over, shared;
  for (size_t i = 0; i < world; ++i) {
    if (requested > ranks[i].cpus)
      over.push_back(static_cast<int>(i));
    else if (requested * sharers[i] > ranks[i].cpus)
      shared.push_back(static_cast<int>(i));
  }
  const std::string n = std::to_string(requested);
  const std::string fix = "mpirun --bind-to none (one rank per node) or mpirun --map-by slot:PE=" + n +
                          "; srun --cpus-per-task=" + n + "; or --threads 0 (the CPUs of each rank's mask)";
  if (!over.empty()) {
    int min_cpus = ranks[over[0]].cpus;
    for (int r : over) min_cpus = std::min(min_cpus, ranks[r].cpus);
    const std::string who = world == 1 ? "" : rank_label(over, world) + ": ";
    plan.warnings.push_back(who + "--threads " + n + " but the rank's affinity mask holds only " +
                            plural(min_cpus, "CPU") + " (rank " + std::to_string(over[0]) + ": " +
                            ranks[over[0]].mask + "): " + n + " threads share " + plural(min_cpus, "CPU") +
                            ", which is slower than fewer threads\n  ---> HINT: give each rank " + n +
                            " CPUs: " + fix);
  }
  if (!shared.empty())
    plan.warnings.push_back(rank_label(shared, world) + ": ranks on one host share the same " +
                            plural(ranks[shared[0]].cpus, "CPU") + " (" + ranks[shared[0]].mask + "), and " +
                            std::to_string(sharers[shared[0]]) + " ranks x --threads " + n +
                            " overcommit them\n  ---> HINT: bind each rank to CPUs of its own (mpirun --map-by slot:PE=N, "
                            "srun --cpus-per-task=N) or use --threads 0 (shares the mask evenly)");
  return plan;
}

}  // namespace shardtune::hw
