// The data-parallel trainer: flat fp32 parameters and gradients, bucketed communication overlapped with
// backward (all-reduce for ZeRO-0, reduce-scatter for ZeRO-1/2), AdamW on the owned shard, all-gather.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "shardtune/train/config.h"

namespace shardtune::dist {
class Communicator;
}
namespace shardtune::model {
class CausalLM;
}
namespace shardtune::data {
struct HostBatch;
}

namespace shardtune::train {

struct StepStats {
  int64_t step = 0;
  double loss = 0, lr = 0, grad_norm = 0;
  int64_t tokens = 0, loss_tokens = 0;  // over all ranks
  double seconds = 0, comm_wait_s = 0;
  // Where this rank's step time went (seconds): forward, backward (incl. hook-driven communication
  // starts), waiting for the last buckets after backward, optimizer (clip + AdamW), all-gather.
  double forward_s = 0, backward_s = 0, drain_s = 0, optim_s = 0, gather_s = 0;
};

class Trainer {
 public:
  Trainer(const TrainConfig& cfg, std::shared_ptr<model::CausalLM> model, dist::Communicator& comm);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // One optimizer step over this rank's micro-batches of the global batch. `total_steps` feeds the LR
  // schedule. Every rank must call it with the same step.
  StepStats train_step(int64_t step, int64_t total_steps, const std::vector<data::HostBatch>& micro);

  // Mean masked loss over the given batches of every rank: (sum, count) reduced over ranks.
  std::pair<double, int64_t> evaluate(const std::vector<data::HostBatch>& batches);

  int64_t num_params() const;
  int64_t optimizer_state_bytes() const;  // this rank's AdamW m+v (and fp32 master shard for ZeRO-1/2)
  int64_t grad_buffer_bytes() const;      // this rank's persistent gradient memory

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace shardtune::train
