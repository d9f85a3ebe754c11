// Reads this rank's micro-batches one optimizer step ahead on a background thread, so reading HDF5
// never stalls a step; and the fixed validation batches. The data position is the number of samples
// of the global stream consumed so far (not step x global batch), so a run resumed with another global
// batch or world size continues at the same sample.
#pragma once

#include <condition_variable>
#include <deque>
#include <memory>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "shardtune/data/dataset.h"

namespace shardtune::train {

struct LoaderPlan {
  int64_t global_batch = 0, micro_batch = 0, seq_len = 0;
  int world = 1, rank = 0;
  bool pack = false;
  int64_t pad_id = 0;
  uint64_t seed = 0;
  std::string objective = "sft";  // sft: sequences; dpo: pairs (batch sizes then count pairs)
  // --precompute-ref: this split's reference log-probs, [2 x pairs] (chosen, rejected of each pair), copied
  // into each pair batch's ref_logps; null = none.
  std::shared_ptr<const std::vector<float>> ref_logps;
  int accum() const { return static_cast<int>(global_batch / (micro_batch * world)); }
};

// Throws Error unless `set` holds what `objective` trains: sequences for sft, preference pairs for dpo
// (each folder kind names the objective that takes it). StepLoader and read_eval call it.
void require_objective_data(const data::ShardSet& set, const std::string& objective);

// This rank's micro-batches of the global batch that starts at stream position `consumed`.
std::vector<data::HostBatch> read_step(data::ShardSet& set, data::GlobalSampler& sampler, const LoaderPlan& p,
                                       int64_t consumed);

class StepLoader {
 public:
  // Reads `steps` global batches, the first at stream position `consumed` (samples consumed so far).
  StepLoader(data::ShardSet& set, LoaderPlan plan, int64_t consumed, int64_t steps);
  ~StepLoader();
  StepLoader(const StepLoader&) = delete;
  StepLoader& operator=(const StepLoader&) = delete;
  std::vector<data::HostBatch> next();  // rethrows a reading error on the caller's thread

 private:
  void run();
  data::ShardSet& set_;
  LoaderPlan plan_;
  data::GlobalSampler sampler_;
  int64_t next_consumed_, steps_left_;
  std::deque<std::vector<data::HostBatch>> ready_;
  std::exception_ptr error_;
  bool stop_ = false;
  std::mutex mu_;
  std::condition_variable cv_;
  std::thread thread_;
};

// Validation: the first min(n, batches * global_batch) samples in file order; rank r takes every
// world-th one, in micro-batches. Unpacked, so padding never changes the result.
std::vector<data::HostBatch> read_eval(data::ShardSet& set, const LoaderPlan& p, int64_t batches);

}  // namespace shardtune::train
