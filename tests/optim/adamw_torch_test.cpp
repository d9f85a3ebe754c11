// FlatAdamW against torch::optim::AdamW (LibTorch's own implementation) on the same parameters and
// gradients: weight decay on >= 2-D parameters only (FlatAdamW's decay flags; two param groups in torch),
// a warmup + cosine learning rate that changes every step, bias correction, tiny and large gradients;
// the whole model (1 rank) and every rank's shard of it (3 ranks, reassembled), fused loop and tensor ops.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/optim/adamw.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <tuple>
#include <string>
#include <vector>

#include "shardtune/optim/adamw.h"
#include "shardtune/optim/layout.h"

namespace so = shardtune::optim;

namespace {

constexpr double kBeta1 = 0.9, kBeta2 = 0.95, kEps = 1e-8, kDecay = 0.1;
constexpr int kSteps = 8;

// Tolerances, float32, from measurement (8 steps, parameters of magnitude up to ~4, on an AVX-512 Xeon):
// - the tensor-op form does the same float32 operations in the same order as torch's AdamW: measured
//   bit-identical parameters and moments. Asserted to 1-ulp-level bounds, not exactly, since an
//   elementwise kernel's vector body and scalar tail may round differently (FMA) on other CPUs, and the
//   flat buffer puts elements at other offsets than torch's per-parameter tensors;
// - the fused loop folds the bias corrections into float constants and evaluates in one pass: measured
//   max |param diff| 2.4e-7 (1-2 ulp), moments 1.3e-7 relative to their largest value (1 ulp). The
//   bounds leave ~4x headroom.
constexpr double kOpsParamTol = 5e-7, kOpsMomentTol = 2.5e-7;
constexpr double kFusedParamTol = 1e-6, kFusedMomentTol = 5e-7;

std::vector<so::ParamSpec> specs() {
  std::vector<so::ParamSpec> s = {{"embed", {301, 16}}, {"norm", {16}}, {"w", {16, 77}}, {"bias", {77}}, {"conv", {5, 3, 7}}};
  for (auto& p : s) p.decay = p.shape.size() >= 2;  // as the trainer decides
  return s;
}

// The gradient of step `step` for parameter `i`: the same on both sides. Step 2 is tiny (eps matters),
// step 5 large.
at::Tensor grad_for(int step, size_t i, const std::vector<int64_t>& shape) {
  at::manual_seed(1000 * step + static_cast<int64_t>(i));
  const double scale = step == 2 ? 1e-7 : step == 5 ? 30.0 : 0.5;
  return at::randn(shape) * scale;
}

double lr_for(int step) { return so::lr_at(step, kSteps, 3, 3e-2, 3e-3, so::Schedule::Cosine); }

struct Reference {
  std::vector<at::Tensor> params;
  std::unique_ptr<torch::optim::AdamW> opt;

  explicit Reference(const std::vector<at::Tensor>& init, const std::vector<so::ParamSpec>& s) {
    std::vector<at::Tensor> decay, no_decay;
    for (size_t i = 0; i < init.size(); ++i) {
      params.push_back(init[i].clone().set_requires_grad(true));
      (s[i].decay ? decay : no_decay).push_back(params.back());
    }
    auto options = [](double wd) {
      return torch::optim::AdamWOptions(1e-3).betas(std::make_tuple(kBeta1, kBeta2)).eps(kEps).weight_decay(wd).amsgrad(false);
    };
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(options(kDecay)));
    groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(options(0.0)));
    opt = std::make_unique<torch::optim::AdamW>(std::move(groups), options(kDecay));
  }

  void step(int step) {
    for (auto& g : opt->param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr_for(step));
    for (size_t i = 0; i < params.size(); ++i) params[i].mutable_grad() = grad_for(step, i, params[i].sizes().vec());
    opt->step();
  }

  const torch::optim::AdamWParamState& state(size_t i) const {
    return static_cast<const torch::optim::AdamWParamState&>(
        *opt->state().at(c10::guts::to_string(params[i].unsafeGetTensorImpl())));
  }
};

// One rank's FlatAdamW over its owned shard, with the parameters/gradients copied in and out by range.
struct Shard {
  const so::FlatLayout& layout;
  std::vector<so::OwnedRange> owned;
  so::FlatAdamW opt;
  at::Tensor p, g;

  Shard(const so::FlatLayout& L, int rank, bool fused)
      : layout(L), owned(L.owned_ranges(rank)), opt(owned, L.shard_size(), L.params, {kBeta1, kBeta2, kEps, kDecay}),
        p(at::zeros({L.shard_size()})), g(at::zeros({L.shard_size()})) {
    opt.set_fused(fused);
  }
  // flat <-> shard for the pieces this rank owns
  void load(at::Tensor& dst, const at::Tensor& flat) {
    for (const auto& o : owned) dst.narrow(0, o.shard_offset, o.length).copy_(flat.narrow(0, o.flat_offset, o.length));
  }
  void store(at::Tensor& flat, const at::Tensor& src) const {
    for (const auto& o : owned) flat.narrow(0, o.flat_offset, o.length).copy_(src.narrow(0, o.shard_offset, o.length));
  }
};

// The layout's slot of specs()[i] (plan_layout lists the parameters in reverse, the backward order).
const so::ParamSlot& slot_of(const so::FlatLayout& L, const std::string& name) {
  for (const auto& p : L.params)
    if (p.name == name) return p;
  throw std::runtime_error("test: no slot " + name);
}

// Per-parameter tensors (in specs() order) into one flat buffer of the layout, padding zero.
at::Tensor flatten_into(const so::FlatLayout& L, const std::vector<so::ParamSpec>& s, const std::vector<at::Tensor>& per_param) {
  at::Tensor flat = at::zeros({L.total});
  for (size_t i = 0; i < s.size(); ++i) {
    const auto& slot = slot_of(L, s[i].name);
    flat.narrow(0, slot.offset, slot.numel).copy_(per_param[i].reshape({-1}));
  }
  return flat;
}

double max_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }
// Largest difference relative to the reference's largest magnitude (the moments span 1e-14 to 1e3).
double rel_diff(const at::Tensor& a, const at::Tensor& ref) {
  return max_diff(a, ref) / std::max(ref.abs().max().item<double>(), 1e-30);
}

void compare_with_torch(int world, bool fused) {
  const double tol_p = fused ? kFusedParamTol : kOpsParamTol, tol_m = fused ? kFusedMomentTol : kOpsMomentTol;
  const auto s = specs();
  so::FlatLayout L = so::plan_layout(s, world, 1500);
  at::manual_seed(7);
  std::vector<at::Tensor> init;
  for (const auto& p : s) init.push_back(at::randn(p.shape));
  Reference ref(init, s);

  std::vector<Shard> shards;
  shards.reserve(world);
  const at::Tensor flat0 = flatten_into(L, s, init);
  for (int r = 0; r < world; ++r) {
    shards.emplace_back(L, r, fused);
    shards.back().load(shards.back().p, flat0);
  }

  double worst_p = 0, worst_m = 0, worst_v = 0;
  for (int step = 0; step < kSteps; ++step) {
    ref.step(step);
    std::vector<at::Tensor> grads;
    for (size_t i = 0; i < s.size(); ++i) grads.push_back(grad_for(step, i, s[i].shape));
    const at::Tensor flat_g = flatten_into(L, s, grads);
    at::Tensor flat_p = at::zeros({L.total}), flat_m = at::zeros({L.total}), flat_v = at::zeros({L.total});
    for (auto& sh : shards) {
      sh.load(sh.g, flat_g);
      sh.opt.step(sh.p, sh.g, lr_for(step));
      sh.store(flat_p, sh.p);
      sh.store(flat_m, sh.opt.exp_avg());
      sh.store(flat_v, sh.opt.exp_avg_sq());
    }
    for (size_t i = 0; i < s.size(); ++i) {
      const auto& slot = slot_of(L, s[i].name);
      const std::string where = "world " + std::to_string(world) + (fused ? " fused" : " tensor ops") + " step " +
                                std::to_string(step) + " param " + slot.name;
      auto mine = [&](const at::Tensor& flat) { return flat.narrow(0, slot.offset, slot.numel).view(slot.shape); };
      const double dp = max_diff(mine(flat_p), ref.params[i].detach());
      const double dm = rel_diff(mine(flat_m), ref.state(i).exp_avg());
      const double dv = rel_diff(mine(flat_v), ref.state(i).exp_avg_sq());
      EXPECT_LE(dp, tol_p) << where;
      EXPECT_LE(dm, tol_m) << where;
      EXPECT_LE(dv, tol_m) << where;
      EXPECT_EQ(ref.state(i).step(), step + 1) << where;
      worst_p = std::max(worst_p, dp);
      worst_m = std::max(worst_m, dm);
      worst_v = std::max(worst_v, dv);
    }
  }
  for (const auto& sh : shards) EXPECT_EQ(sh.opt.steps_taken(), kSteps);
  // The comparison has teeth: the parameters moved far more than the tolerance, and decay mattered
  // (a run with decay on every parameter would differ from torch's two groups on the 1-D ones).
  double moved = 0;
  for (size_t i = 0; i < s.size(); ++i) moved = std::max(moved, max_diff(ref.params[i].detach(), init[i]));
  EXPECT_GT(moved, 1e4 * kFusedParamTol);
  std::printf("world %d %s: max |diff| to torch: params %.3g, exp_avg %.3g (relative), exp_avg_sq %.3g (relative) (params moved up to %.3g)\n",
              world, fused ? "fused" : "tensor ops", worst_p, worst_m, worst_v, moved);
}

}  // namespace

TEST(AdamWVsTorch, WholeModelFused) { compare_with_torch(1, true); }
TEST(AdamWVsTorch, WholeModelTensorOps) { compare_with_torch(1, false); }
TEST(AdamWVsTorch, ThreeShardsFused) { compare_with_torch(3, true); }
TEST(AdamWVsTorch, ThreeShardsTensorOps) { compare_with_torch(3, false); }

// Decay on the 1-D parameters as well (one group in torch) would be caught: the same FlatAdamW run
// differs from that reference by far more than the fused tolerance on the 1-D parameters.
TEST(AdamWVsTorch, DecayFlagsMatter) {
  auto s = specs();
  so::FlatLayout L = so::plan_layout(s, 1, 1500);
  at::manual_seed(7);
  std::vector<at::Tensor> init;
  for (const auto& p : s) init.push_back(at::randn(p.shape));
  auto all_decay = s;
  for (auto& p : all_decay) p.decay = true;
  Reference ref(init, all_decay);
  Shard sh(L, 0, true);
  sh.load(sh.p, flatten_into(L, s, init));
  for (int step = 0; step < kSteps; ++step) {
    ref.step(step);
    std::vector<at::Tensor> grads;
    for (size_t i = 0; i < s.size(); ++i) grads.push_back(grad_for(step, i, s[i].shape));
    sh.load(sh.g, flatten_into(L, s, grads));
    sh.opt.step(sh.p, sh.g, lr_for(step));
  }
  at::Tensor flat = at::zeros({L.total});
  sh.store(flat, sh.p);
  const auto& norm = slot_of(L, "norm");
  ASSERT_EQ(s[1].name, "norm");
  EXPECT_GT(max_diff(flat.narrow(0, norm.offset, norm.numel), ref.params[1].detach().reshape({-1})), 100 * kFusedParamTol);
}
