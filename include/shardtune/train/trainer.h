// The data-parallel trainer: flat fp32 parameters, one gradient-synchronization object per ZeRO stage
// (bucketed communication overlapped with backward), global-norm clipping, AdamW on this rank's part of
// the parameters in place, the all-gather; non-finite loss / gradient norm detection.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "shardtune/checkpoint/checkpoint.h"
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
  // --on-nonfinite skip: the loss or gradient norm was not finite and the update was not applied.
  bool skipped = false;
  std::string nonfinite;  // what was not finite, e.g. "loss (nan)"; empty when finite
  // An Objective's metrics (e.g. "rewards/chosen"): means over the units (pairs) of the global batch.
  std::vector<std::pair<std::string, double>> metrics;
};

// A training objective other than next-token CE on sequences (train/preference.h: DPO). Its loss of one
// micro-batch is a differentiable sum over `units` (pairs); the trainer divides by the units of the whole
// global batch (summed over ranks), so any split over ranks and micro-batches gives the same loss.
class Objective {
 public:
  virtual ~Objective() = default;
  virtual int64_t units(const data::HostBatch& hb) const = 0;
  struct Result {
    at::Tensor sum;          // scalar fp32, differentiable
    // [metric_names().size()] float64 on the batch's device, detached: each metric summed over this
    // micro-batch's units. A tensor, not host doubles: the trainer reads every scalar of a step to the
    // host once (one device synchronization per step, not one per metric and micro-batch).
    at::Tensor metric_sums;
  };
  // ids/mask: the batch on the trainer's device; runs under the trainer's autocast.
  virtual Result forward(model::CausalLM& m, const at::Tensor& ids, const at::Tensor& mask,
                         const data::HostBatch& hb) = 0;
  virtual std::vector<std::string> metric_names() const = 0;
};

class Trainer {
 public:
  // Checks every weight is finite (Error naming the first tensor that is not), builds the flat buffers
  // and installs the autograd hooks on the parameters' gradient accumulators.
  Trainer(const TrainConfig& cfg, std::shared_ptr<model::CausalLM> model, dist::Communicator& comm);
  // Removes the hooks: a later backward through the model's parameters no longer reaches this trainer.
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // One optimizer step over this rank's micro-batches of the global batch. `total_steps` feeds the LR
  // schedule. Every rank must call it with the same step. A non-finite loss or gradient norm throws an
  // Error naming the step (--on-nonfinite error) or skips the update (skip; Error after
  // --max-consecutive-skips in a row); either way before the optimizer sees it.
  StepStats train_step(int64_t step, int64_t total_steps, const std::vector<data::HostBatch>& micro);

  // Mean masked loss over the given batches of every rank: (sum, count) reduced over ranks; with an
  // Objective its loss summed over its units (pairs) and their count.
  std::pair<double, int64_t> evaluate(const std::vector<data::HostBatch>& batches);
  // The Objective's metrics of the last evaluate() (means over its units, all ranks); empty for SFT.
  std::vector<std::pair<std::string, double>> eval_metrics() const;

  // Train `objective` instead of next-token CE (before the first step; the same on every rank).
  void set_objective(std::shared_ptr<Objective> objective);

  // Error naming the first parameter (HF name) holding NaN or Inf; `when` says e.g. "before saving".
  void check_weights_finite(const std::string& when) const;

  int64_t num_params() const;
  int64_t optimizer_state_bytes() const;  // this rank's AdamW m + v (the parameters themselves not counted)
  int64_t grad_buffer_bytes() const;      // this rank's persistent gradient memory
  int64_t skipped_steps() const;          // steps whose update was skipped (non-finite), in total

  // ---- checkpoints (checkpoint/checkpoint.h) ----
  // This rank's share of the AdamW state to save (each element is saved by exactly one rank: its owner
  // in the layout's partition, also under ZeRO-0), and where this rank's optimizer state is loaded into
  // (all it holds under the current partition). Views into the optimizer's buffers.
  std::vector<checkpoint::StatePiece> optimizer_share() const;
  std::vector<checkpoint::StatePiece> optimizer_targets() const;
  struct Counters {
    int64_t optimizer_steps = 0, skipped_total = 0, skipped_in_a_row = 0;
  };
  Counters counters() const;
  void set_counters(const Counters& c);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace shardtune::train
