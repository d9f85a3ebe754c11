// Model hyper-parameters read from / written to a Hugging Face config.json (Llama family and GPT-2).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace shardtune::model {

enum class Arch { Llama, GPT2 };

struct RopeScaling {
  std::string type;  // "" (none) or "llama3"
  double factor = 1.0, low_freq_factor = 1.0, high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

// One weight a model of a config holds: HF name, shape, and per dimension the config key(s) it comes
// from (for messages such as "dim 0 = vocab_size").
struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<std::string> dim_keys;
};

struct ModelConfig {
  Arch arch = Arch::Llama;
  std::string model_type = "llama";  // "llama", "mistral", "qwen2" (Arch::Llama) or "gpt2"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;        // C
  int64_t intermediate_size = 0;  // MLP width
  int64_t num_layers = 0;
  int64_t num_heads = 0;     // H
  int64_t num_kv_heads = 0;  // grouped-query attention: H % num_kv_heads == 0
  int64_t head_dim = 0;      // hd (Llama may set it explicitly; else C / H)
  int64_t max_position_embeddings = 2048;
  double norm_eps = 1e-5;    // rms_norm_eps (Llama) / layer_norm_epsilon (GPT-2)
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  // 1: a reward model (HF *ForSequenceClassification, num_labels 1): a scalar head score.weight [1, C]
  // replaces lm_head (--objective reward); 0: a causal LM.
  int64_t num_labels = 0;
  bool attention_bias = false;  // bias on q/k/v/o (Llama `attention_bias`)
  bool qkv_bias = false;        // bias on q/k/v only (Qwen2)
  bool mlp_bias = false;        // Llama `mlp_bias`
  std::string hidden_act = "silu";  // "silu" (Llama) or "gelu_new" (GPT-2)
  std::string torch_dtype = "float32";
  std::optional<int64_t> bos_token_id, eos_token_id;
  nlohmann::json raw = nlohmann::json::object();  // the file as read; unknown keys are written back unchanged

  // Parses an HF config; `source` names the file in errors. Unknown architecture -> Error with hint.
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source);
  static ModelConfig from_file(const std::string& path);
  nlohmann::json to_json() const;  // HF keys incl. architectures/model_type
  // Ranges (sizes positive and below sanity limits, heads dividing, eps > 0 and finite, ...).
  void validate(const std::string& source) const;
  // The parameters CausalLM allocates for this config, in its order, computed without allocating.
  std::vector<ExpectedTensor> expected_tensors() const;
  // The config.json key of the layer count ("num_hidden_layers" or "n_layer").
  const char* layers_key() const { return arch == Arch::GPT2 ? "n_layer" : "num_hidden_layers"; }
};

}  // namespace shardtune::model
