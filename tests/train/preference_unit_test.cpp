// DPO building blocks in one process: the LoRA-disabled forward equals a separately built base exactly,
// the chunked per-sequence log-probs and their gradients match plain autograd, the loss formulas by hand.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "shardtune/model/logps.h"
#include "shardtune/model/model.h"
#include "shardtune/train/preference.h"

namespace sm = shardtune::model;
namespace st = shardtune::train;

namespace {

sm::ModelConfig tiny_llama() {
  nlohmann::json j = {{"model_type", "llama"},    {"vocab_size", 32},       {"hidden_size", 16},
                      {"intermediate_size", 24},  {"num_hidden_layers", 2}, {"num_attention_heads", 4},
                      {"num_key_value_heads", 2}, {"rms_norm_eps", 1e-5},   {"max_position_embeddings", 64}};
  return sm::ModelConfig::from_json(j, "test config");
}

at::Tensor batch_ids() { return at::randint(0, 32, {4, 9}, at::TensorOptions().dtype(at::kLong)); }

at::Tensor batch_mask() {
  at::Tensor m = at::zeros({4, 9}, at::kByte);
  m.narrow(1, 3, 6).fill_(1);
  m[2].narrow(0, 7, 2).fill_(0);  // a shorter row (padding)
  return m;
}

}  // namespace

TEST(preference_unit, LoraDisabledEqualsSeparateBaseExactly) {
  at::manual_seed(3);
  sm::CausalLM policy(tiny_llama()), base(tiny_llama());
  policy.init_random(5);
  {
    torch::NoGradGuard g;
    for (const auto& [name, t] : policy.hf_parameters()) base.param(name).copy_(t);
  }
  sm::AdapterConfig ac;
  ac.r = 4;
  ac.alpha = 8;
  ac.target_modules = {"all-linear"};
  policy.add_lora(ac, 7);
  {
    torch::NoGradGuard g;  // B != 0, so the adapters change the output
    for (auto& [module, p] : policy.lora_weights()) p.B.normal_(0, 0.2);
  }
  policy.freeze_base(at::kFloat);  // q/k/v and gate/up re-laid into fused buffers
  const at::Tensor ids = batch_ids(), mask = batch_mask();
  torch::NoGradGuard g;
  const at::Tensor ref = sm::sequence_logps(base, ids, mask);
  at::Tensor off;
  {
    sm::LoraDisabled d(policy);
    off = sm::sequence_logps(policy, ids, mask);
  }
  EXPECT_TRUE(policy.lora_enabled());
  EXPECT_TRUE(at::equal(off, ref)) << off << ref;
  const at::Tensor on = sm::sequence_logps(policy, ids, mask);
  EXPECT_GT((on - ref).abs().max().item<double>(), 1e-4);  // the adapters are on again
}

TEST(preference_unit, SequenceLogpsMatchAutograd) {
  at::manual_seed(4);
  sm::CausalLM m(tiny_llama());
  m.init_random(9, 0.3);
  const at::Tensor ids = batch_ids(), mask = batch_mask();
  const at::Tensor weights = at::randn({4});
  // Ours, with chunks of 5 rows (several chunks and a ragged last one).
  at::Tensor got = sm::sequence_logps(m, ids, mask, 5);
  (got * weights).sum().backward();
  std::vector<at::Tensor> ours;
  for (auto& [name, t] : m.hf_parameters()) {
    ours.push_back(t.grad().clone());
    t.mutable_grad().zero_();
  }
  // Plain autograd: logits, log_softmax, gather, masked row sum.
  const at::Tensor logits = m.logits(ids);
  const at::Tensor lp = at::log_softmax(logits.narrow(1, 0, 8), 2).gather(2, ids.narrow(1, 1, 8).unsqueeze(2)).squeeze(2);
  const at::Tensor want = (lp * mask.narrow(1, 1, 8).to(at::kFloat)).sum(1);
  EXPECT_TRUE(at::allclose(got, want, 1e-5, 1e-5)) << got << want;
  (want * weights).sum().backward();
  size_t i = 0;
  for (auto& [name, t] : m.hf_parameters()) {
    // fp32 rounding: the two paths sum the same products in other orders
    const double d = (ours[i] - t.grad()).abs().max().item<double>(), g = t.grad().abs().max().item<double>();
    EXPECT_LE(d, 1e-5 * g + 1e-7) << name << ": max |diff| " << d << " of max |g| " << g;
    ++i;
  }
}

TEST(preference_unit, LossFormulas) {
  const at::Tensor pc = at::tensor({-3.0f, -5.0f}), pr = at::tensor({-4.0f, -2.0f});
  const at::Tensor rc = at::tensor({-3.5f, -4.0f}), rr = at::tensor({-3.0f, -3.0f});
  const double l0 = (-3.0 + 4.0) - (-3.5 + 3.0), l1 = (-5.0 + 2.0) - (-4.0 + 3.0);  // 1.5, -2
  auto logsig = [](double x) { return -std::log1p(std::exp(-x)); };
  const double b = 0.5, ls = 0.2;
  auto check = [&](const std::string& loss, double smoothing, auto f) {
    const at::Tensor got = st::dpo_losses({loss, b, smoothing}, pc, pr, rc, rr);
    EXPECT_NEAR(got[0].item<double>(), f(l0), 1e-6) << loss;
    EXPECT_NEAR(got[1].item<double>(), f(l1), 1e-6) << loss;
  };
  check("sigmoid", 0.0, [&](double l) { return -logsig(b * l); });
  check("sigmoid", ls, [&](double l) { return -(1 - ls) * logsig(b * l) - ls * logsig(-b * l); });
  check("robust", ls, [&](double l) { return (-(1 - ls) * logsig(b * l) + ls * logsig(-b * l)) / (1 - 2 * ls); });
  check("hinge", 0.0, [&](double l) { return std::max(0.0, 1 - b * l); });
  check("ipo", 0.0, [&](double l) { return (l - 1 / (2 * b)) * (l - 1 / (2 * b)); });
  // Reference-free: on the policy's (averaged) log-probs alone; rc, rr are not read.
  const double g = 0.3;
  const at::Tensor qc = at::tensor({-0.5f, -1.5f}), qr = at::tensor({-1.0f, -0.8f});
  const at::Tensor simpo = st::dpo_losses({"simpo", b, ls, g}, qc, qr, at::Tensor(), at::Tensor());
  const at::Tensor orpo = st::dpo_losses({"orpo", b, 0.0, g}, qc, qr, at::Tensor(), at::Tensor());
  const double c[2] = {-0.5, -1.5}, r[2] = {-1.0, -0.8};
  for (int i = 0; i < 2; ++i) {
    const double z = b * (c[i] - r[i]) - g;
    EXPECT_NEAR(simpo[i].item<double>(), -(1 - ls) * logsig(z) - ls * logsig(-z), 1e-6);
    const double odds = (c[i] - std::log1p(-std::exp(c[i]))) - (r[i] - std::log1p(-std::exp(r[i])));
    EXPECT_NEAR(orpo[i].item<double>(), -c[i] - b * logsig(odds), 1e-6);
  }
}
