// Trainer internals in one process (no mpirun): the autograd hooks end with the Trainer (a graph built
// while it lived, run after it is gone, reaches no freed trainer and leaves ordinary gradients), and
// AdamW in place on the flat parameters equals AdamW on an owned copy, bit for bit (what ZeRO-1/2 did
// before they dropped their fp32 master copy). Also: AdamW state born on the flat parameters' device and
// dtype, and the CUDA branch of the autocast guard (thread-local state, no GPU needed).
#include <gtest/gtest.h>

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/variable.h>

#include <limits>
#include <map>
#include <nlohmann/json.hpp>

#include "shardtune/core/error.h"
#include "shardtune/dist/communicator.h"
#include "shardtune/dist/mpi_runtime.h"
#include "shardtune/model/config.h"
#include "shardtune/model/model.h"
#include "shardtune/model/runtime.h"
#include "shardtune/optim/adamw.h"
#include "shardtune/train/trainer.h"

namespace st = shardtune;

namespace {

std::shared_ptr<st::model::CausalLM> tiny_model(uint64_t seed) {
  nlohmann::json j = {{"model_type", "llama"},      {"vocab_size", 32},         {"hidden_size", 16},
                      {"intermediate_size", 32},    {"num_hidden_layers", 2},   {"num_attention_heads", 2},
                      {"num_key_value_heads", 1},   {"max_position_embeddings", 64}};
  auto m = std::make_shared<st::model::CausalLM>(st::model::ModelConfig::from_json(j, "tiny"));
  m->init_random(seed, 0.1);
  return m;
}

std::map<std::string, at::Tensor> grads_of(const st::model::CausalLM& m) {
  std::map<std::string, at::Tensor> out;
  for (auto& [name, t] : m.hf_parameters()) out[name] = t.grad().defined() ? t.grad().clone() : at::Tensor();
  return out;
}

st::dist::MpiRuntime& runtime() {
  static int argc = 0;
  static char** argv = nullptr;
  static st::dist::MpiRuntime rt(&argc, &argv);  // not launched by mpirun: rank 0 of 1, no MPI
  return rt;
}

}  // namespace

TEST(Trainer, HooksAreRemovedWhenTheTrainerIsDestroyed) {
  st::dist::Communicator comm(runtime());
  at::manual_seed(3);
  const at::Tensor ids = at::randint(0, 32, {2, 9}, at::kLong);
  // Reference gradients: the same model, never touched by a trainer.
  auto ref = tiny_model(5);
  for (auto& [name, t] : ref->hf_parameters()) t.set_requires_grad(true);
  ref->loss(ids, at::Tensor()).sum.backward();
  const auto want = grads_of(*ref);

  for (int zero : {0, 1, 2}) {
    auto m = tiny_model(5);
    st::train::TrainConfig cfg;
    cfg.zero = zero;
    cfg.bucket_mb = 0.001;  // several buckets
    auto trainer = std::make_unique<st::train::Trainer>(cfg, m, comm);
    const at::Tensor p0 = m->hf_parameters().front().second;
    auto acc = torch::autograd::impl::grad_accumulator(p0);
    ASSERT_NE(acc, nullptr);
    ASSERT_EQ(acc->post_hooks().size(), 1u) << "ZeRO-" << zero << ": the trainer's hook is installed";
    st::model::LossResult r = m->loss(ids, at::Tensor());  // a graph built while the trainer lives
    trainer.reset();
    EXPECT_EQ(acc->post_hooks().size(), 0u) << "ZeRO-" << zero << ": hook removed with the trainer";
    for (auto& [name, t] : m->hf_parameters()) t.mutable_grad() = at::Tensor();
    r.sum.backward();  // would run the freed trainer's hooks before the fix
    const auto got = grads_of(*m);
    for (const auto& [name, g] : want) {
      ASSERT_TRUE(got.at(name).defined()) << name;
      EXPECT_TRUE(at::allclose(got.at(name), g, 1e-5, 1e-6)) << "ZeRO-" << zero << " " << name;
    }
  }
}

TEST(Trainer, RefusesNonFiniteWeightsNamingTheTensor) {
  st::dist::Communicator comm(runtime());
  auto m = tiny_model(5);
  {
    at::NoGradGuard no_grad;
    m->param("model.layers.1.mlp.up_proj.weight").view({-1})[7] = std::numeric_limits<float>::infinity();
  }
  st::train::TrainConfig cfg;
  try {
    st::train::Trainer t(cfg, m, comm);
    FAIL() << "a model with an Inf weight was accepted";
  } catch (const shardtune::Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.1.mlp.up_proj.weight"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("1 Inf"), std::string::npos) << e.what();
  }
}

TEST(FlatAdamW, InPlaceOnFlatParamsEqualsOwnedCopy) {
  namespace so = st::optim;
  std::vector<so::ParamSpec> specs = {
      {"embed", {301, 16}, true}, {"norm", {16}, false}, {"w", {16, 77}, true}, {"bias", {77}, false}};
  for (bool fused : {true, false})
    for (int world : {1, 3}) {
      so::FlatLayout L = so::plan_layout(specs, world, 2000);
      for (int rank = 0; rank < world; ++rank) {
        so::AdamWConfig cfg{0.9, 0.95, 1e-8, 0.1};
        so::FlatAdamW copy(L.owned_ranges(rank), L.shard_size(), L.params, cfg);
        so::FlatAdamW inplace(L.owned_ranges(rank), L.shard_size(), L.params, cfg);
        copy.set_fused(fused);
        inplace.set_fused(fused);
        at::manual_seed(7 + rank);
        at::Tensor flat = at::randn({L.total});
        at::Tensor shard = at::zeros({L.shard_size()});
        for (const auto& o : L.owned_ranges(rank))
          shard.narrow(0, o.shard_offset, o.length).copy_(flat.narrow(0, o.flat_offset, o.length));
        const at::Tensor before = flat.clone();
        for (int step = 0; step < 4; ++step) {
          at::Tensor g = at::randn({L.shard_size()});
          copy.step(shard, g, 1e-2 * (step + 1));
          inplace.step_in_place(flat, g, 1e-2 * (step + 1));
        }
        at::Tensor touched = at::zeros({L.total}, at::kBool);
        for (const auto& o : L.owned_ranges(rank)) {
          EXPECT_TRUE(at::equal(flat.narrow(0, o.flat_offset, o.length), shard.narrow(0, o.shard_offset, o.length)))
              << "fused " << fused << " world " << world << " rank " << rank;
          touched.narrow(0, o.flat_offset, o.length).fill_(true);
        }
        // Everything outside this rank's ranges (other ranks' slices, padding) is left alone.
        EXPECT_TRUE(at::equal(flat.masked_select(touched.logical_not()), before.masked_select(touched.logical_not())));
      }
    }
}

TEST(Trainer, OptimizerStateFollowsTheFlatParameters) {
  // AdamW's m and v are created with the flat parameters' device and dtype (on a GPU: born there, never
  // moved), for every stage; the CPU here, the same code path as CUDA.
  st::dist::Communicator comm(runtime());
  for (int zero : {0, 1, 2}) {
    auto m = tiny_model(5);
    st::train::TrainConfig cfg;
    cfg.zero = zero;
    st::train::Trainer trainer(cfg, m, comm);
    const at::Tensor p = m->trainable_parameters().front().second;
    const auto pieces = trainer.optimizer_share();
    ASSERT_FALSE(pieces.empty());
    for (const auto& piece : pieces)
      for (const at::Tensor& s : {piece.exp_avg, piece.exp_avg_sq}) {
        EXPECT_EQ(s.device(), p.device()) << "ZeRO-" << zero << " " << piece.param;
        EXPECT_EQ(s.scalar_type(), p.scalar_type()) << "ZeRO-" << zero << " " << piece.param;
      }
    EXPECT_EQ(p.scalar_type(), at::kFloat) << "trainable parameters are fp32 master weights";
  }
}

TEST(Autocast, CudaGuardSetsTheCudaAutocastStateToBf16) {
  // The CUDA branch of AutocastGuard: CUDA autocast is a thread-local flag and dtype, settable without a
  // GPU, so the API used for it (1.13: set_enabled / set_autocast_gpu_dtype; 2.4+: by device type) is
  // checked here; the CPU state is left alone, and everything is restored when the guard ends.
  namespace sm = st::model;
  ASSERT_EQ(sm::autocast_dtype(at::kCUDA), at::kFloat);
  {
    sm::AutocastGuard guard(at::Device(at::kCUDA), sm::Precision::BF16);
    EXPECT_EQ(sm::autocast_dtype(at::kCUDA), at::kBFloat16);
    EXPECT_EQ(sm::autocast_dtype(at::kCPU), at::kFloat) << "CUDA autocast must not switch the CPU's on";
  }
  EXPECT_EQ(sm::autocast_dtype(at::kCUDA), at::kFloat);
  {
    sm::AutocastGuard fp32(at::Device(at::kCUDA), sm::Precision::FP32);
    EXPECT_EQ(sm::autocast_dtype(at::kCUDA), at::kFloat);
  }
  // --precision auto on CUDA: bf16 where the GPU has it (compute capability >= 8), else fp32.
  EXPECT_EQ(sm::resolve_precision("auto", at::kCUDA, true).precision, sm::Precision::BF16);
  EXPECT_EQ(sm::resolve_precision("auto", at::kCUDA, false).precision, sm::Precision::FP32);
  EXPECT_EQ(sm::resolve_precision("fp32", at::kCUDA, true).precision, sm::Precision::FP32);
}
