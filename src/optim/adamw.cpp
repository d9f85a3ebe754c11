// AdamW on flat owned buffers (decoupled weight decay per parameter) and LR schedules.
#include "shardtune/optim/adamw.h"

#include <ATen/Parallel.h>

#include <cmath>

#include "shardtune/core/error.h"

namespace shardtune::optim {

FlatAdamW::FlatAdamW(std::vector<OwnedRange> owned, int64_t owned_elems, const std::vector<ParamSlot>& params, AdamWConfig cfg,
                     const at::TensorOptions& state)
    : owned_(std::move(owned)), cfg_(cfg) {
  for (const auto& r : owned_) decay_.push_back(params[r.param].decay);
  // Only device and dtype count: the state is a plain buffer, never part of an autograd graph.
  const at::TensorOptions opts = at::TensorOptions().dtype(state.dtype()).device(state.device());
  m_ = at::zeros({owned_elems}, opts);
  v_ = at::zeros({owned_elems}, opts);
}

void FlatAdamW::step(at::Tensor& p, const at::Tensor& g, double lr) { update(p, g, lr, false); }

void FlatAdamW::step_in_place(at::Tensor& flat_params, const at::Tensor& g, double lr) { update(flat_params, g, lr, true); }

// `flat`: parameter element j of an owned range sits at flat_offset (the whole flat buffer), else at
// shard_offset (an owned buffer laid out like g). Gradients, m and v are always at shard_offset.
void FlatAdamW::update(at::Tensor& p, const at::Tensor& g, double lr, bool flat) {
  ST_CHECK(p.device() == m_.device() && g.device() == m_.device(),
           "internal: AdamW state is on " + m_.device().str() + " but the parameters are on " + p.device().str() +
               " and the gradients on " + g.device().str(),
           "create FlatAdamW with the flat parameters' options (its state is never moved)");
  ++t_;
  const double bc1 = 1.0 - std::pow(cfg_.beta1, static_cast<double>(t_));
  const double bc2 = 1.0 - std::pow(cfg_.beta2, static_cast<double>(t_));
  const double step_size = lr / bc1;
  const double bc2_sqrt = std::sqrt(bc2);
  at::NoGradGuard no_grad;
  const bool cpu_fp32 = p.device().is_cpu() && p.scalar_type() == at::kFloat && g.scalar_type() == at::kFloat &&
                        m_.scalar_type() == at::kFloat && p.is_contiguous() && g.is_contiguous();
  if (fused_ && cpu_fp32) {
    step_fused_cpu(p, g, lr, step_size, bc2_sqrt, flat);
    return;
  }
  // Moments over the whole owned buffer at once (padding has zero grads, so it stays zero).
  m_.mul_(cfg_.beta1).add_(g, 1.0 - cfg_.beta1);
  v_.mul_(cfg_.beta2).addcmul_(g, g, 1.0 - cfg_.beta2);
  auto param_piece = [&](const OwnedRange& r) { return p.narrow(0, flat ? r.flat_offset : r.shard_offset, r.length); };
  if (cfg_.weight_decay != 0.0)
    for (size_t i = 0; i < owned_.size(); ++i)
      if (decay_[i]) param_piece(owned_[i]).mul_(1.0 - lr * cfg_.weight_decay);
  at::Tensor denom = v_.sqrt().div_(bc2_sqrt).add_(cfg_.eps);  // one temporary, not two
  if (!flat) {
    p.addcdiv_(m_, denom, -step_size);
    return;
  }
  for (const auto& r : owned_)
    param_piece(r).addcdiv_(m_.narrow(0, r.shard_offset, r.length), denom.narrow(0, r.shard_offset, r.length), -step_size);
}

// One pass over p, g, m and v (the tensor-op form above makes about five, plus a temporary), split over
// the intra-op threads. Same operations in the same order as the tensor ops, in float; padding between
// the owned ranges is skipped (its gradient, moments and value stay zero either way).
void FlatAdamW::step_fused_cpu(at::Tensor& p, const at::Tensor& g, double lr, double step_size, double bc2_sqrt,
                               bool flat) {
  float* P0 = p.data_ptr<float>();
  const float* G = g.data_ptr<float>();
  float* M = m_.data_ptr<float>();
  float* V = v_.data_ptr<float>();
  const float b1 = static_cast<float>(cfg_.beta1), c1 = static_cast<float>(1.0 - cfg_.beta1);
  const float b2 = static_cast<float>(cfg_.beta2), c2 = static_cast<float>(1.0 - cfg_.beta2);
  const float eps = static_cast<float>(cfg_.eps), neg_step = static_cast<float>(-step_size);
  const float bc2s = static_cast<float>(bc2_sqrt);
  for (size_t i = 0; i < owned_.size(); ++i) {
    const float keep = decay_[i] ? static_cast<float>(1.0 - lr * cfg_.weight_decay) : 1.0f;
    const int64_t begin = owned_[i].shard_offset, end = begin + owned_[i].length;
    float* P = P0 + (flat ? owned_[i].flat_offset - owned_[i].shard_offset : 0);  // P[j] for shard index j
    at::parallel_for(begin, end, 1 << 15, [&](int64_t b, int64_t e) {
      for (int64_t j = b; j < e; ++j) {
        const float gj = G[j];
        const float mj = M[j] * b1 + gj * c1;
        const float vj = V[j] * b2 + gj * gj * c2;
        M[j] = mj;
        V[j] = vj;
        P[j] = P[j] * keep + neg_step * (mj / (std::sqrt(vj) / bc2s + eps));
      }
    });
  }
}

Schedule parse_schedule(const std::string& s) {
  if (s == "cosine") return Schedule::Cosine;
  if (s == "linear") return Schedule::Linear;
  if (s == "constant") return Schedule::Constant;
  ST_FAIL("unknown --schedule '" + s + "'", "use cosine, linear or constant");
}

double lr_at(int64_t step, int64_t total, int64_t warmup, double lr, double min_lr, Schedule s) {
  if (warmup > 0 && step < warmup) return lr * static_cast<double>(step + 1) / static_cast<double>(warmup);
  if (s == Schedule::Constant || total <= warmup) return lr;
  double progress = std::min(1.0, static_cast<double>(step - warmup) / static_cast<double>(std::max<int64_t>(1, total - warmup)));
  if (s == Schedule::Linear) return lr + (min_lr - lr) * progress;
  return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

}  // namespace shardtune::optim
