// KV-cached decoding: one prefill over the prompt, then one token per step.
#include "shardtune/model/generate.h"

#include <c10/core/GradMode.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "shardtune/core/error.h"

namespace shardtune::model {

namespace {
int64_t pick(const at::Tensor& logits_row, const GenerateOptions& o, std::mt19937_64& rng) {
  const at::Tensor l = logits_row.to(at::kCPU, at::kFloat).contiguous();
  const float* p = l.data_ptr<float>();
  const int64_t V = l.numel();
  if (o.temperature <= 0) return int64_t(std::max_element(p, p + V) - p);
  std::vector<double> prob(static_cast<size_t>(V));
  const double mx = *std::max_element(p, p + V);
  double z = 0;
  for (int64_t i = 0; i < V; ++i) z += (prob[size_t(i)] = std::exp((p[i] - mx) / o.temperature));
  std::vector<int64_t> order(static_cast<size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return prob[size_t(a)] > prob[size_t(b)]; });
  // Keep the smallest prefix whose mass reaches top_p (always at least one token).
  double kept = 0;
  size_t n = 0;
  while (n < order.size() && (n == 0 || kept < o.top_p * z)) kept += prob[size_t(order[n++])];
  double u = std::uniform_real_distribution<double>(0.0, kept)(rng);
  for (size_t i = 0; i < n; ++i) {
    u -= prob[size_t(order[i])];
    if (u <= 0) return order[i];
  }
  return order[n - 1];
}
}  // namespace

std::vector<int64_t> generate(CausalLM& model, const std::vector<int64_t>& prompt, const GenerateOptions& opts) {
  ST_CHECK(!prompt.empty(), "generate: empty prompt", "give at least one token (e.g. BOS)");
  const auto& cfg = model.config();
  const int64_t budget = std::min<int64_t>(int64_t(prompt.size()) + opts.max_new_tokens, cfg.max_position_embeddings);
  ST_CHECK(int64_t(prompt.size()) < cfg.max_position_embeddings,
           "prompt of " + std::to_string(prompt.size()) + " tokens does not fit max_position_embeddings " +
               std::to_string(cfg.max_position_embeddings),
           "shorten the prompt: the model has no positions beyond max_position_embeddings (config.json)");
  at::NoGradGuard no_grad;
  std::mt19937_64 rng(opts.seed);
  KVCache cache = model.make_cache(1, budget);
  const at::Tensor w = model.lm_head_weight();
  at::Tensor ids = at::tensor(prompt, at::kLong).view({1, -1});
  std::vector<int64_t> out;
  while (int64_t(prompt.size() + out.size()) < budget) {
    const at::Tensor h = model.hidden(ids, {}, &cache);  // [1,T,C]
    const at::Tensor last = at::matmul(h.select(1, h.size(1) - 1), w.t()).squeeze(0);
    const int64_t next = pick(last, opts, rng);
    out.push_back(next);
    if (opts.stop_id && next == *opts.stop_id) break;
    ids = at::full({1, 1}, next, at::kLong);
  }
  return out;
}

}  // namespace shardtune::model
