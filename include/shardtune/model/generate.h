// Autoregressive sampling with a KV cache: greedy (temperature 0) or temperature + top-p.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "shardtune/model/model.h"

namespace shardtune::model {

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  double temperature = 0.0;  // 0: greedy (first maximum on ties)
  double top_p = 1.0;
  uint64_t seed = 0;
  std::optional<int64_t> stop_id;  // stop after emitting this id (usually EOS)
};

// Returns only the new tokens. Runs without gradients; stops at max_position_embeddings.
std::vector<int64_t> generate(CausalLM& model, const std::vector<int64_t>& prompt, const GenerateOptions& opts);

}  // namespace shardtune::model
