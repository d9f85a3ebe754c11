// --precompute-ref: the DPO reference model's per-sequence log-probs of every pair (train and val splits),
// computed in one pass before training and kept with the run (<ckpt-dir>/reference_logps.*), so training
// holds no reference model; a resumed run (or a rerun with the same model, data and options) reuses them.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "shardtune/data/dataset.h"
#include "shardtune/model/model.h"
#include "shardtune/train/config.h"
#include "shardtune/train/loader.h"

namespace shardtune::dist {
class Communicator;
}

namespace shardtune::train {

struct ReferenceTable {
  std::shared_ptr<const std::vector<float>> train, val;  // [2 x pairs]: chosen, rejected of each pair
  bool reused = false;                                   // read from the file rather than computed
  std::filesystem::path file;
};

// Every rank: reuses `dir`/reference_logps.safetensors when its identity record matches this run (model,
// data, --seq-len, precision, method), else computes the table (each rank a share of the pairs, summed
// over ranks) with the reference the method implies (LoRA/QLoRA: `policy` with adapters disabled; full:
// --model loaded once, then freed) and rank 0 writes it (tensors first, identity record last).
ReferenceTable precompute_reference(const TrainConfig& cfg, model::CausalLM& policy, data::ShardSet& train,
                                    data::ShardSet& val, const LoaderPlan& plan, dist::Communicator& comm,
                                    const std::filesystem::path& dir);

}  // namespace shardtune::train
