// Launch facts per rank, gathered once; rank 0 turns them into summary lines and warnings.
#include "shardtune/train/launch.h"

#include <map>

#include "shardtune/core/hw.h"
#include "shardtune/core/log.h"
#include "shardtune/core/threads.h"
#include "shardtune/dist/device.h"
#include "shardtune/dist/mpi_runtime.h"

namespace shardtune::train {
namespace {

constexpr char kSep = '\x1f';  // between the fields of one rank's record (none of them contains it)

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out(1);
  for (char c : s) {
    if (c == kSep)
      out.emplace_back();
    else
      out.back() += c;
  }
  return out;
}

// "ranks 0-3" / "rank 2" for the ranks holding one value; "" when all ranks hold it.
std::string who(const std::vector<int>& ids, size_t world) {
  if (ids.size() == world) return "";
  return (ids.size() == 1 ? "rank " : "ranks ") + hw::format_cpu_list(ids) + ": ";
}

}  // namespace

model::PrecisionChoice run_precision(const TrainConfig& cfg) {
  const bool cuda = cfg.device == "cuda";
  // The CUDA query only where it decides something (auto on CUDA).
  return model::resolve_precision(cfg.precision, cuda ? at::kCUDA : at::kCPU,
                                  cuda && cfg.precision == "auto" && dist::cuda_bf16_supported());
}

Launch resolve_launch(const dist::MpiRuntime& rt, const TrainConfig& cfg) {
  Launch L;
  const hw::Affinity mask = hw::affinity();
  const hw::BlasStatus blas = hw::blas_status();
  L.precision = run_precision(cfg);
  const std::string prec = (cfg.precision == "auto" ? "auto -> " : "") +
                           std::string(L.precision.precision == model::Precision::BF16 ? "bf16" : "fp32");
  const std::string me = hw::hostname() + kSep + std::to_string(mask.count) + kSep + mask.list + kSep + blas.core +
                         kSep + blas.warning + kSep + prec + kSep + L.precision.reason;

  std::vector<hw::RankCpus> cpus;
  std::map<std::string, std::vector<int>> cores, blas_warnings, precisions;
  const std::vector<std::string> all = rt.allgather(me);
  for (size_t r = 0; r < all.size(); ++r) {
    const auto f = split(all[r]);
    cpus.push_back({f.at(0), std::stoi(f.at(1)), f.at(2)});
    cores[f.at(3)].push_back(static_cast<int>(r));
    if (!f.at(4).empty()) blas_warnings[f.at(4)].push_back(static_cast<int>(r));
    precisions[f.at(5) + " (" + f.at(6) + ")"].push_back(static_cast<int>(r));
  }
  const hw::ThreadPlan plan = hw::plan_threads(cpus, cfg.threads);
  L.threads = plan.threads.at(static_cast<size_t>(rt.rank()));

  const size_t world = all.size();
  if (cores.size() == 1) {
    L.lines.push_back(blas.line);
  } else {
    L.lines.push_back(blas.line + " on rank 0; ranks differ:");
    for (const auto& [core, ids] : cores) L.lines.push_back("  " + who(ids, world) + (core.empty() ? "not OpenBLAS" : core));
  }
  for (const auto& [text, ids] : blas_warnings) L.warnings.push_back(who(ids, world) + text);
  const std::string how = cfg.threads > 0 ? "--threads " + std::to_string(cfg.threads)
                                          : "--threads 0 = each rank's affinity mask";
  L.lines.push_back("threads (" + how + "):" + (plan.summary.size() == 1 ? " " + plan.summary[0] : ""));
  if (plan.summary.size() > 1)
    for (const auto& s : plan.summary) L.lines.push_back("  " + s);
  L.warnings.insert(L.warnings.end(), plan.warnings.begin(), plan.warnings.end());
  for (const auto& [text, ids] : precisions) L.lines.push_back("precision: " + who(ids, world) + text);
  if (precisions.size() > 1)
    L.warnings.push_back("--precision auto resolved differently on different ranks (their CPUs differ)\n"
                         "  ---> HINT: give --precision fp32 or bf16 explicitly on mixed nodes");
  return L;
}

void Launch::report() const {
  if (log::rank() != 0) return;
  for (const auto& l : lines) log::info(l);
  for (const auto& w : warnings) log::warn(w);
}

}  // namespace shardtune::train
