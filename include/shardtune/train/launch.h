// What the trainer resolves once at start on every rank, from the hardware it landed on: intra-op
// threads (--threads 0 = the affinity mask), the BLAS core, the precision of --precision auto.
// Rank 0 prints a summary after the configuration table and warns where a launch wastes the CPU.
#pragma once

#include <string>
#include <vector>

#include "shardtune/model/runtime.h"
#include "shardtune/train/config.h"

namespace shardtune::dist {
class MpiRuntime;
}

namespace shardtune::train {

struct Launch {
  int threads = 1;                    // this rank's resolved intra-op thread count
  model::PrecisionChoice precision;   // cfg.precision resolved ("auto" -> bf16 or fp32)
  std::vector<std::string> lines;     // summary lines (BLAS core, threads and masks, precision)
  std::vector<std::string> warnings;  // each with a "---> HINT"

  // Rank 0: log::info each line, log::warn each warning.
  void report() const;
};

// cfg.precision resolved for cfg.device: "auto" is bf16 where that device computes it natively (CPU:
// AVX512_BF16/AMX-BF16; CUDA: compute capability >= 8.0), else fp32. The trainer and resolve_launch both
// use it, so the log and the run agree.
model::PrecisionChoice run_precision(const TrainConfig& cfg);

// Collective (every rank calls it at the same point): gathers each rank's host, affinity mask, BLAS
// core and resolved precision.
Launch resolve_launch(const dist::MpiRuntime& rt, const TrainConfig& cfg);

}  // namespace shardtune::train
