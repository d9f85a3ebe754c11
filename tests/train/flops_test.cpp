// train/flops.h: model FLOPs per trained token, the count behind the trainer's mfu and its metrics'
// flops_per_token, against the formula written out from the configuration: 6 per matmul parameter
// (lookups excluded: an untied input embedding, GPT-2's positions) + 12 * L * C * T.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "shardtune/model/model.h"
#include "shardtune/train/flops.h"

namespace sm = shardtune::model;

namespace {

int64_t count(const sm::CausalLM& m) {
  int64_t n = 0;
  for (const auto& [name, t] : m.hf_parameters()) n += t.numel();
  return n;
}

nlohmann::json llama(bool tied) {
  return {{"model_type", "llama"}, {"vocab_size", 64}, {"hidden_size", 16}, {"intermediate_size", 32},
          {"num_hidden_layers", 2}, {"num_attention_heads", 2}, {"num_key_value_heads", 1},
          {"max_position_embeddings", 32}, {"rms_norm_eps", 1e-5}, {"tie_word_embeddings", tied}};
}

}  // namespace

TEST(Flops, LlamaUntiedLeavesOutTheInputEmbedding) {
  sm::CausalLM m(sm::ModelConfig::from_json(llama(false), "test config"));
  const int64_t V = 64, C = 16, I = 32, L = 2, kv = 8, T = 10;
  const int64_t layer = 2 * C * C + 2 * C * kv + 3 * C * I + 2 * C;  // q, o, k, v, gate/up/down, 2 norms
  const int64_t P = V * C + L * layer + C + V * C;                   // embedding, layers, final norm, head
  ASSERT_EQ(count(m), P);
  EXPECT_DOUBLE_EQ(shardtune::train::flops_per_token(m, P, T), 6.0 * (P - V * C) + 12.0 * L * C * T);
}

TEST(Flops, LlamaTiedCountsTheEmbeddingOnceAsTheHead) {
  sm::CausalLM m(sm::ModelConfig::from_json(llama(true), "test config"));
  const int64_t P = count(m), T = 7;
  EXPECT_DOUBLE_EQ(shardtune::train::flops_per_token(m, P, T), 6.0 * P + 12.0 * 2 * 16 * T);
}

TEST(Flops, Gpt2LeavesOutLearnedPositions) {
  nlohmann::json j = {{"model_type", "gpt2"}, {"vocab_size", 64}, {"n_embd", 16}, {"n_layer", 2},
                      {"n_head", 2}, {"n_positions", 32}};
  sm::CausalLM m(sm::ModelConfig::from_json(j, "test config"));
  const int64_t P = count(m), T = 5;
  EXPECT_DOUBLE_EQ(shardtune::train::flops_per_token(m, P, T), 6.0 * (P - 32 * 16) + 12.0 * 2 * 16 * T);
}
