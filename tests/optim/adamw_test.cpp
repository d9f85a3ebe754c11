// FlatAdamW: the fused CPU loop against the tensor-op form (which mirrors torch.optim.AdamW; the trainer
// as a whole is checked against torch.optim.AdamW in tests/train, case torch_parity), and the schedules.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>

#include "shardtune/optim/adamw.h"

namespace so = shardtune::optim;

TEST(AdamW, FusedLoopMatchesTensorOps) {
  std::vector<so::ParamSpec> specs = {
      {"embed", {301, 16}, true}, {"norm", {16}, false}, {"w", {16, 77}, true}, {"bias", {77}, false}};
  for (int world : {1, 3}) {
    so::FlatLayout L = so::plan_layout(specs, world, 2000);
    for (int rank = 0; rank < world; ++rank) {
      so::AdamWConfig cfg{0.9, 0.95, 1e-8, 0.1};
      so::FlatAdamW fused(L.owned_ranges(rank), L.shard_size(), L.params, cfg);
      so::FlatAdamW ops(L.owned_ranges(rank), L.shard_size(), L.params, cfg);
      ops.set_fused(false);
      at::manual_seed(42 + rank);
      at::Tensor p0 = at::randn({L.shard_size()});
      // padding (not in any owned range) must stay untouched: zero as in the trainer
      at::Tensor real = at::zeros({L.shard_size()}, at::kBool);
      for (const auto& o : L.owned_ranges(rank)) real.narrow(0, o.shard_offset, o.length).fill_(true);
      p0.masked_fill_(real.logical_not(), 0.0);
      at::Tensor pa = p0.clone(), pb = p0.clone();
      for (int step = 0; step < 6; ++step) {
        at::Tensor g = at::randn({L.shard_size()}) * (step == 3 ? 1e-6 : 0.5);
        g.masked_fill_(real.logical_not(), 0.0);
        const double lr = 1e-2 * (step + 1);
        fused.step(pa, g, lr);
        ops.step(pb, g, lr);
        const double d = (pa - pb).abs().max().item<double>();
        EXPECT_LT(d, 2e-6) << "world " << world << " rank " << rank << " step " << step;
        EXPECT_LT((fused.exp_avg() - ops.exp_avg()).abs().max().item<double>(), 1e-7);
        EXPECT_LT((fused.exp_avg_sq() - ops.exp_avg_sq()).abs().max().item<double>(), 1e-7);
      }
      EXPECT_GT((pa - p0).abs().max().item<double>(), 1e-2) << "the parameters moved";
      EXPECT_EQ(pa.masked_select(real.logical_not()).abs().sum().item<double>(), 0.0) << "padding stays zero";
      EXPECT_EQ(fused.steps_taken(), 6);
    }
  }
}

TEST(AdamW, DecayOnlyWhereAsked) {
  // Zero gradients: only decoupled weight decay moves the parameters, and only those with decay on.
  std::vector<so::ParamSpec> specs = {{"w", {4, 4}, true}, {"norm", {4}, false}};
  so::FlatLayout L = so::plan_layout(specs, 1, 1000);
  so::FlatAdamW opt(L.owned_ranges(0), L.shard_size(), L.params, {0.9, 0.95, 1e-8, 0.5});
  at::Tensor p = at::ones({L.shard_size()});
  opt.step(p, at::zeros_like(p), 0.1);
  for (const auto& s : L.params) {
    const double expect = s.decay ? 1.0 - 0.1 * 0.5 : 1.0;
    EXPECT_NEAR(p.narrow(0, s.offset, s.numel).max().item<double>(), expect, 1e-7) << s.name;
    EXPECT_NEAR(p.narrow(0, s.offset, s.numel).min().item<double>(), expect, 1e-7) << s.name;
  }
}

TEST(Schedule, WarmupThenDecay) {
  using so::lr_at;
  using so::Schedule;
  EXPECT_DOUBLE_EQ(lr_at(0, 10, 4, 1.0, 0.1, Schedule::Cosine), 0.25);
  EXPECT_DOUBLE_EQ(lr_at(3, 10, 4, 1.0, 0.1, Schedule::Cosine), 1.0);
  EXPECT_DOUBLE_EQ(lr_at(4, 10, 4, 1.0, 0.1, Schedule::Cosine), 1.0);
  EXPECT_NEAR(lr_at(7, 10, 4, 1.0, 0.1, Schedule::Cosine), 0.1 + 0.45 * (1 + std::cos(M_PI * 0.5)), 1e-12);
  EXPECT_DOUBLE_EQ(lr_at(10, 10, 4, 1.0, 0.1, Schedule::Cosine), 0.1);
  EXPECT_DOUBLE_EQ(lr_at(7, 10, 4, 1.0, 0.1, Schedule::Linear), 0.55);
  EXPECT_DOUBLE_EQ(lr_at(9, 10, 4, 1.0, 0.1, Schedule::Constant), 1.0);
  EXPECT_THROW(so::parse_schedule("exp"), std::exception);
}

TEST(AdamW, StateIsCreatedWithTheParametersOptions) {
  // m and v are born with the device and dtype they are given (the trainer gives the flat parameters'
  // options): float64 here, so following them is visible; CUDA too where this LibTorch has a GPU.
  std::vector<so::ParamSpec> specs = {{"w", {8, 8}, true}, {"norm", {8}, false}};
  so::FlatLayout L = so::plan_layout(specs, 1, 1000);
  std::vector<at::TensorOptions> kinds = {at::TensorOptions().dtype(at::kFloat), at::TensorOptions().dtype(at::kDouble)};
  if (at::hasCUDA()) kinds.push_back(at::TensorOptions().dtype(at::kFloat).device(at::kCUDA));
  for (const auto& opts : kinds) {
    at::Tensor p = at::ones({L.shard_size()}, opts);
    so::FlatAdamW opt(L.owned_ranges(0), L.shard_size(), L.params, {0.9, 0.95, 1e-8, 0.0}, p.options());
    for (at::Tensor* s : {&opt.exp_avg(), &opt.exp_avg_sq()}) {
      EXPECT_EQ(s->device(), p.device());
      EXPECT_EQ(s->scalar_type(), p.scalar_type());
      EXPECT_EQ(s->numel(), L.shard_size());
    }
    EXPECT_EQ(opt.state_bytes(), 2 * L.shard_size() * int64_t(p.element_size()));
    opt.step(p, at::full_like(p, 0.5), 0.1);
    EXPECT_EQ(opt.exp_avg().device(), p.device()) << "the state stays where it was created";
    EXPECT_NEAR(opt.exp_avg().max().item<double>(), 0.05, 1e-7);  // (1 - beta1) x 0.5
    EXPECT_NEAR(p.max().item<double>(), 1.0 - 0.1, 1e-6);        // first step: -lr x sign
  }
}

TEST(AdamW, RefusesParametersOnAnotherDevice) {
  // The state is never moved after the fact: parameters elsewhere are an internal error, said so.
  std::vector<so::ParamSpec> specs = {{"w", {4}, true}};
  so::FlatLayout L = so::plan_layout(specs, 1, 1000);
  so::FlatAdamW opt(L.owned_ranges(0), L.shard_size(), L.params, {}, at::TensorOptions().dtype(at::kFloat).device(at::kMeta));
  at::Tensor p = at::zeros({L.shard_size()});
  try {
    opt.step(p, at::zeros_like(p), 0.1);
    FAIL() << "parameters on another device than the state were accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("AdamW state is on meta"), std::string::npos) << e.what();
  }
}
