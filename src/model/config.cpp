// HF config.json <-> ModelConfig for the Llama family (llama, mistral, qwen2) and GPT-2.
#include "shardtune/model/config.h"

#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"

namespace shardtune::model {

using json = nlohmann::json;

namespace {
template <class T>
T get_or(const json& j, const char* key, T fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  return it->get<T>();
}
std::optional<int64_t> opt_id(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer()) return std::nullopt;  // null or a list (multi-eos): ignored
  return it->get<int64_t>();
}
}  // namespace

ModelConfig ModelConfig::from_json(const json& j, const std::string& source) {
  ST_CHECK(j.is_object(), source + ": config is not a JSON object");
  ModelConfig c;
  c.raw = j;
  std::string mt = get_or<std::string>(j, "model_type", "");
  if (mt.empty() && j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty()) {
    const std::string a = j["architectures"][0].get<std::string>();
    if (a.rfind("GPT2", 0) == 0) mt = "gpt2";
    else if (a.rfind("Llama", 0) == 0) mt = "llama";
    else if (a.rfind("Qwen2", 0) == 0) mt = "qwen2";
    else if (a.rfind("Mistral", 0) == 0) mt = "mistral";
  }
  c.model_type = mt;
  try {
    if (mt == "llama" || mt == "mistral" || mt == "qwen2") {
      c.arch = Arch::Llama;
      c.vocab_size = j.at("vocab_size").get<int64_t>();
      c.hidden_size = j.at("hidden_size").get<int64_t>();
      c.intermediate_size = j.at("intermediate_size").get<int64_t>();
      c.num_layers = j.at("num_hidden_layers").get<int64_t>();
      c.num_heads = j.at("num_attention_heads").get<int64_t>();
      c.num_kv_heads = get_or<int64_t>(j, "num_key_value_heads", c.num_heads);
      c.head_dim = get_or<int64_t>(j, "head_dim", c.num_heads ? c.hidden_size / c.num_heads : 0);
      c.max_position_embeddings = get_or<int64_t>(j, "max_position_embeddings", 2048);
      c.norm_eps = get_or<double>(j, "rms_norm_eps", 1e-6);
      c.rope_theta = get_or<double>(j, "rope_theta", 10000.0);
      c.tie_word_embeddings = get_or<bool>(j, "tie_word_embeddings", false);
      c.attention_bias = get_or<bool>(j, "attention_bias", false);
      c.mlp_bias = get_or<bool>(j, "mlp_bias", false);
      c.qkv_bias = (mt == "qwen2");
      c.hidden_act = get_or<std::string>(j, "hidden_act", "silu");
      ST_CHECK(c.hidden_act == "silu", source + ": hidden_act '" + c.hidden_act + "' is not supported",
               "Llama-family models use \"silu\"");
      if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
        const json& rs = j["rope_scaling"];
        std::string type = get_or<std::string>(rs, "rope_type", get_or<std::string>(rs, "type", ""));
        if (type == "default") type.clear();
        ST_CHECK(type.empty() || type == "llama3",
                 source + ": rope_scaling type '" + type + "' is not supported",
                 "supported: none/default and \"llama3\" (linear, dynamic, yarn, longrope are not implemented)");
        c.rope_scaling.type = type;
        c.rope_scaling.factor = get_or<double>(rs, "factor", 1.0);
        c.rope_scaling.low_freq_factor = get_or<double>(rs, "low_freq_factor", 1.0);
        c.rope_scaling.high_freq_factor = get_or<double>(rs, "high_freq_factor", 4.0);
        c.rope_scaling.original_max_position_embeddings =
            get_or<int64_t>(rs, "original_max_position_embeddings", 8192);
      }
    } else if (mt == "gpt2") {
      c.arch = Arch::GPT2;
      c.vocab_size = j.at("vocab_size").get<int64_t>();
      c.hidden_size = j.at("n_embd").get<int64_t>();
      c.num_layers = j.at("n_layer").get<int64_t>();
      c.num_heads = j.at("n_head").get<int64_t>();
      c.num_kv_heads = c.num_heads;
      c.head_dim = c.num_heads ? c.hidden_size / c.num_heads : 0;
      c.intermediate_size = get_or<int64_t>(j, "n_inner", 4 * c.hidden_size);
      c.max_position_embeddings = get_or<int64_t>(j, "n_positions", 1024);
      c.norm_eps = get_or<double>(j, "layer_norm_epsilon", 1e-5);
      c.tie_word_embeddings = get_or<bool>(j, "tie_word_embeddings", true);
      c.hidden_act = get_or<std::string>(j, "activation_function", "gelu_new");
      ST_CHECK(c.hidden_act == "gelu_new" || c.hidden_act == "gelu_pytorch_tanh",
               source + ": activation_function '" + c.hidden_act + "' is not supported", "GPT-2 uses \"gelu_new\"");
      ST_CHECK(c.tie_word_embeddings, source + ": untied GPT-2 lm_head is not supported",
               "GPT-2 ties lm_head to wte (tie_word_embeddings: true)");
      ST_CHECK(get_or<bool>(j, "scale_attn_weights", true) && !get_or<bool>(j, "scale_attn_by_inverse_layer_idx", false) &&
                   !get_or<bool>(j, "reorder_and_upcast_attn", false),
               source + ": non-default GPT-2 attention scaling options are not supported");
    } else {
      std::string archs = j.contains("architectures") ? j["architectures"].dump() : "(none)";
      ST_FAIL(source + ": unknown architecture (model_type '" + mt + "', architectures " + archs + ")",
              "supported model_type values: llama, mistral, qwen2, gpt2 (see docs/MODELS.md)");
    }
  } catch (const json::exception& e) {
    ST_FAIL(source + ": bad or missing config key (" + e.what() + ")",
            "compare with the Hugging Face config of the same architecture (docs/MODELS.md lists the keys read)");
  }
  c.torch_dtype = get_or<std::string>(j, "torch_dtype", "float32");
  c.bos_token_id = opt_id(j, "bos_token_id");
  c.eos_token_id = opt_id(j, "eos_token_id");
  c.validate(source);
  return c;
}

ModelConfig ModelConfig::from_file(const std::string& path) {
  json j;
  try {
    j = json::parse(fs::read_file(path));
  } catch (const json::exception& e) {
    ST_FAIL(path + ": not valid JSON (" + e.what() + ")", "re-download or re-export the model's config.json");
  }
  return from_json(j, path);
}

void ModelConfig::validate(const std::string& source) const {
  auto pos = [&](int64_t v, const char* what) {
    ST_CHECK(v > 0, source + ": " + what + " must be positive, found " + std::to_string(v));
  };
  pos(vocab_size, "vocab_size");
  pos(hidden_size, "hidden size");
  pos(intermediate_size, "intermediate size");
  pos(num_layers, "number of layers");
  pos(num_heads, "number of heads");
  pos(num_kv_heads, "number of key/value heads");
  pos(head_dim, "head_dim");
  ST_CHECK(num_heads % num_kv_heads == 0, source + ": num_attention_heads " + std::to_string(num_heads) +
                                              " is not a multiple of num_key_value_heads " + std::to_string(num_kv_heads));
  ST_CHECK(head_dim % 2 == 0 || arch == Arch::GPT2, source + ": head_dim must be even for RoPE");
  if (arch == Arch::GPT2)
    ST_CHECK(head_dim * num_heads == hidden_size, source + ": n_embd is not a multiple of n_head");
}

json ModelConfig::to_json() const {
  json j = raw.is_object() ? raw : json::object();
  j["vocab_size"] = vocab_size;
  j["torch_dtype"] = torch_dtype;
  j["tie_word_embeddings"] = tie_word_embeddings;
  if (bos_token_id) j["bos_token_id"] = *bos_token_id;
  if (eos_token_id) j["eos_token_id"] = *eos_token_id;
  if (arch == Arch::GPT2) {
    j["architectures"] = {"GPT2LMHeadModel"};
    j["model_type"] = "gpt2";
    j["n_embd"] = hidden_size;
    j["n_layer"] = num_layers;
    j["n_head"] = num_heads;
    j["n_inner"] = intermediate_size == 4 * hidden_size ? json(nullptr) : json(intermediate_size);
    j["n_positions"] = max_position_embeddings;
    if (!j.contains("n_ctx")) j["n_ctx"] = max_position_embeddings;
    j["layer_norm_epsilon"] = norm_eps;
    j["activation_function"] = hidden_act;
    return j;
  }
  const std::string mt = model_type.empty() ? "llama" : model_type;
  j["model_type"] = mt;
  j["architectures"] = {mt == "qwen2" ? "Qwen2ForCausalLM" : mt == "mistral" ? "MistralForCausalLM" : "LlamaForCausalLM"};
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_layers;
  j["num_attention_heads"] = num_heads;
  j["num_key_value_heads"] = num_kv_heads;
  if (head_dim != hidden_size / num_heads || j.contains("head_dim")) j["head_dim"] = head_dim;
  j["max_position_embeddings"] = max_position_embeddings;
  j["rms_norm_eps"] = norm_eps;
  j["rope_theta"] = rope_theta;
  j["hidden_act"] = hidden_act;
  if (mt != "qwen2") j["attention_bias"] = attention_bias;
  if (mlp_bias || j.contains("mlp_bias")) j["mlp_bias"] = mlp_bias;
  if (rope_scaling.type.empty()) {
    j["rope_scaling"] = nullptr;
  } else {
    j["rope_scaling"] = {{"rope_type", rope_scaling.type},
                         {"factor", rope_scaling.factor},
                         {"low_freq_factor", rope_scaling.low_freq_factor},
                         {"high_freq_factor", rope_scaling.high_freq_factor},
                         {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings}};
  }
  return j;
}

}  // namespace shardtune::model
