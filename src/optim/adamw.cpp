// AdamW on flat owned buffers (decoupled weight decay per parameter) and LR schedules.
#include "shardtune/optim/adamw.h"

#include <cmath>

#include "shardtune/core/error.h"

namespace shardtune::optim {

FlatAdamW::FlatAdamW(std::vector<OwnedRange> owned, int64_t owned_elems, const std::vector<ParamSlot>& params, AdamWConfig cfg)
    : owned_(std::move(owned)), cfg_(cfg) {
  for (const auto& r : owned_) decay_.push_back(params[r.param].decay);
  m_ = at::zeros({owned_elems}, at::kFloat);
  v_ = at::zeros({owned_elems}, at::kFloat);
}

void FlatAdamW::step(at::Tensor& p, const at::Tensor& g, double lr) {
  if (m_.device() != p.device()) {
    m_ = m_.to(p.device());
    v_ = v_.to(p.device());
  }
  ++t_;
  const double bc1 = 1.0 - std::pow(cfg_.beta1, static_cast<double>(t_));
  const double bc2 = 1.0 - std::pow(cfg_.beta2, static_cast<double>(t_));
  const double step_size = lr / bc1;
  const double bc2_sqrt = std::sqrt(bc2);
  at::NoGradGuard no_grad;
  // Moments over the whole owned buffer at once (padding has zero grads, so it stays zero).
  m_.mul_(cfg_.beta1).add_(g, 1.0 - cfg_.beta1);
  v_.mul_(cfg_.beta2).addcmul_(g, g, 1.0 - cfg_.beta2);
  if (cfg_.weight_decay != 0.0)
    for (size_t i = 0; i < owned_.size(); ++i)
      if (decay_[i]) p.narrow(0, owned_[i].shard_offset, owned_[i].length).mul_(1.0 - lr * cfg_.weight_decay);
  at::Tensor denom = v_.sqrt().div_(bc2_sqrt).add_(cfg_.eps);  // one temporary, not two
  p.addcdiv_(m_, denom, -step_size);
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
