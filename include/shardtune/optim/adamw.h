// AdamW over this rank's owned slice of the flat fp32 parameters (all of it for ZeRO-0), and the
// learning-rate schedules.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "shardtune/optim/layout.h"

namespace shardtune::optim {

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.0;
};

// Holds m and v for the owned elements only: memory per rank = 8 bytes x shard (1/N of the model).
class FlatAdamW {
 public:
  // `owned` lists the owned pieces (FlatLayout::owned_ranges, or one range per param for ZeRO-0).
  // `state`: device and dtype of m and v, allocated there directly: the flat parameters' options (the
  // trainer passes flat_params.options(), so on a GPU the state is born on it). step() refuses
  // parameters or gradients on another device.
  FlatAdamW(std::vector<OwnedRange> owned, int64_t owned_elems, const std::vector<ParamSlot>& params, AdamWConfig cfg,
            const at::TensorOptions& state = at::TensorOptions().dtype(at::kFloat));

  // params/grads: the rank's owned buffers, laid out as in `owned` (shard_offset indexes them).
  void step(at::Tensor& params, const at::Tensor& grads, double lr);
  // The same update on the owned pieces of the whole flat parameter buffer, in place: flat_offset
  // indexes `flat_params`, shard_offset indexes `grads` (and m, v). No copy of the parameters is kept.
  void step_in_place(at::Tensor& flat_params, const at::Tensor& grads, double lr);

  int64_t steps_taken() const { return t_; }
  at::Tensor& exp_avg() { return m_; }
  at::Tensor& exp_avg_sq() { return v_; }
  void set_steps(int64_t t) { t_ = t; }
  int64_t state_bytes() const { return (m_.numel() + v_.numel()) * static_cast<int64_t>(m_.element_size()); }
  // CPU fp32 buffers take a fused single-pass loop; off = the tensor-op form (for tests and benchmarks).
  void set_fused(bool on) { fused_ = on; }

 private:
  std::vector<OwnedRange> owned_;
  std::vector<bool> decay_;
  AdamWConfig cfg_;
  at::Tensor m_, v_;
  int64_t t_ = 0;
  bool fused_ = true;

  void update(at::Tensor& p, const at::Tensor& g, double lr, bool flat);
  void step_fused_cpu(at::Tensor& p, const at::Tensor& g, double lr, double step_size, double bc2_sqrt, bool flat);
};

enum class Schedule { Cosine, Linear, Constant };
Schedule parse_schedule(const std::string& s);

// Linear warmup from lr/warmup to lr over `warmup` steps, then decay to min_lr at `total` steps.
double lr_at(int64_t step, int64_t total, int64_t warmup, double lr, double min_lr, Schedule s);

}  // namespace shardtune::optim
