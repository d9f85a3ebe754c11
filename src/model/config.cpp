// HF config.json <-> ModelConfig for the Llama family (llama, mistral, qwen2) and GPT-2.
#include "shardtune/model/config.h"

#include <cmath>

#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/core/json_depth.h"

namespace shardtune::model {

using json = nlohmann::json;

namespace {
template <class T>
T get_or(const json& j, const char* key, T fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  return it->get<T>();
}
// An integer-valued key: an integer, or a float with an integral value (some exporters write 2048.0),
// in int64 range. Anything else is an Error naming the key (never a silent or undefined conversion).
int64_t as_int(const json& v, const char* key, const std::string& source) {
  if (v.is_number_unsigned())
    ST_CHECK(v.get<uint64_t>() <= uint64_t(INT64_MAX), source + ": " + key + " is too large");
  if (v.is_number_integer()) return v.get<int64_t>();
  ST_CHECK(v.is_number_float() && std::isfinite(v.get<double>()) && std::floor(v.get<double>()) == v.get<double>() &&
               std::fabs(v.get<double>()) < 9.2e18,
           source + ": " + key + " must be an integer, found " + v.dump().substr(0, 40),
           "compare with the Hugging Face config of the same architecture");
  return static_cast<int64_t>(v.get<double>());
}
int64_t req_int(const json& j, const char* key, const std::string& source) {
  auto it = j.find(key);
  ST_CHECK(it != j.end() && !it->is_null(), source + ": missing config key '" + key + "'",
           "compare with the Hugging Face config of the same architecture (docs/MODELS.md lists the keys read)");
  return as_int(*it, key, source);
}
int64_t opt_int(const json& j, const char* key, int64_t fallback, const std::string& source) {
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? fallback : as_int(*it, key, source);
}
// 1 for a reward model (architectures "*ForSequenceClassification" with one label), else 0; a classifier
// with more labels is refused. Llama family and GPT-2 alike (GPT2ForSequenceClassification).
int64_t sequence_labels(const json& j, const std::string& source) {
  if (!(j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty() &&
        j["architectures"][0].is_string()))
    return 0;
  const std::string a = j["architectures"][0].get<std::string>();
  const std::string seq_cls = "ForSequenceClassification";
  if (a.size() <= seq_cls.size() || a.compare(a.size() - seq_cls.size(), seq_cls.size(), seq_cls) != 0) return 0;
  const int64_t n = j.contains("id2label") && j["id2label"].is_object() ? int64_t(j["id2label"].size())
                                                                          : opt_int(j, "num_labels", 2, source);
  ST_CHECK(n == 1, source + ": " + a + " with " + std::to_string(n) + " labels is not supported",
           "shardtune trains reward models (num_labels 1, --objective reward); use a causal LM or a 1-label model");
  return 1;
}
std::optional<int64_t> opt_id(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer()) return std::nullopt;  // null or a list (multi-eos): ignored
  return it->get<int64_t>();
}
}  // namespace

ModelConfig ModelConfig::from_json(const json& j, const std::string& source) {
  ST_CHECK(j.is_object(), source + ": config is not a JSON object",
           "a Hugging Face config.json is one object of keys, e.g. {\"model_type\": \"llama\", ...}");
  ModelConfig c;
  c.raw = j;
  try {  // every key read: a wrong JSON type is an Error naming the file, never a raw library message
    std::string mt = get_or<std::string>(j, "model_type", "");
    if (mt.empty() && j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty() &&
        j["architectures"][0].is_string()) {
      const std::string a = j["architectures"][0].get<std::string>();
      if (a.rfind("GPT2", 0) == 0) mt = "gpt2";
      else if (a.rfind("Llama", 0) == 0) mt = "llama";
      else if (a.rfind("Qwen2", 0) == 0) mt = "qwen2";
      else if (a.rfind("Mistral", 0) == 0) mt = "mistral";
    }
    c.model_type = mt;
    if (mt == "llama" || mt == "mistral" || mt == "qwen2") {
      c.arch = Arch::Llama;
      c.vocab_size = req_int(j, "vocab_size", source);
      c.hidden_size = req_int(j, "hidden_size", source);
      c.intermediate_size = req_int(j, "intermediate_size", source);
      c.num_layers = req_int(j, "num_hidden_layers", source);
      c.num_heads = req_int(j, "num_attention_heads", source);
      c.num_kv_heads = opt_int(j, "num_key_value_heads", c.num_heads, source);
      ST_CHECK(j.contains("head_dim") || c.num_heads <= 0 || c.hidden_size % c.num_heads == 0,
               source + ": hidden_size " + std::to_string(c.hidden_size) + " is not a multiple of num_attention_heads " +
                   std::to_string(c.num_heads) + " (and no head_dim is given)",
               "check config.json: head_dim = hidden_size / num_attention_heads must be a whole number");
      c.head_dim = opt_int(j, "head_dim", c.num_heads > 0 ? c.hidden_size / c.num_heads : 0, source);
      c.max_position_embeddings = opt_int(j, "max_position_embeddings", 2048, source);
      c.norm_eps = get_or<double>(j, "rms_norm_eps", 1e-6);
      c.rope_theta = get_or<double>(j, "rope_theta", 10000.0);
      c.tie_word_embeddings = get_or<bool>(j, "tie_word_embeddings", false);
      c.num_labels = sequence_labels(j, source);
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
            opt_int(rs, "original_max_position_embeddings", 8192, source);
      }
    } else if (mt == "gpt2") {
      c.arch = Arch::GPT2;
      c.vocab_size = req_int(j, "vocab_size", source);
      c.hidden_size = req_int(j, "n_embd", source);
      c.num_layers = req_int(j, "n_layer", source);
      c.num_heads = req_int(j, "n_head", source);
      c.num_kv_heads = c.num_heads;
      c.head_dim = c.num_heads > 0 ? c.hidden_size / c.num_heads : 0;
      const bool sane = c.hidden_size > 0 && c.hidden_size <= (int64_t(1) << 40);  // 4 x C must not overflow
      c.intermediate_size = opt_int(j, "n_inner", sane ? 4 * c.hidden_size : 0, source);
      c.max_position_embeddings = opt_int(j, "n_positions", 1024, source);
      c.norm_eps = get_or<double>(j, "layer_norm_epsilon", 1e-5);
      c.tie_word_embeddings = get_or<bool>(j, "tie_word_embeddings", true);
      c.hidden_act = get_or<std::string>(j, "activation_function", "gelu_new");
      ST_CHECK(c.hidden_act == "gelu_new" || c.hidden_act == "gelu_pytorch_tanh",
               source + ": activation_function '" + c.hidden_act + "' is not supported", "GPT-2 uses \"gelu_new\"");
      c.num_labels = sequence_labels(j, source);
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
    c.torch_dtype = get_or<std::string>(j, "torch_dtype", "float32");
    c.bos_token_id = opt_id(j, "bos_token_id");
    c.eos_token_id = opt_id(j, "eos_token_id");
  } catch (const json::exception& e) {
    ST_FAIL(source + ": bad or missing config key (" + e.what() + ")",
            "compare with the Hugging Face config of the same architecture (docs/MODELS.md lists the keys read)");
  }
  c.validate(source);
  return c;
}

ModelConfig ModelConfig::from_file(const std::string& path) {
  const std::string text = fs::read_file(path);
  check_json_depth(text, path);  // before parsing: a parsed value is copied recursively (c.raw)
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    ST_FAIL(path + ": not valid JSON (" + e.what() + ")", "re-download or re-export the model's config.json");
  }
  return from_json(j, path);
}

void ModelConfig::validate(const std::string& source) const {
  const bool gpt2 = arch == Arch::GPT2;
  const std::string hint = "check config.json against the model's Hugging Face config (docs/MODELS.md lists the keys read)";
  // Upper limits far above any released model, so that a typo cannot make us allocate terabytes.
  auto range = [&](int64_t v, const char* key, int64_t max) {
    ST_CHECK(v > 0 && v <= max, source + ": " + key + " is " + std::to_string(v) + ", expected 1.." + std::to_string(max),
             hint);
  };
  range(vocab_size, "vocab_size", int64_t(1) << 24);
  range(hidden_size, gpt2 ? "n_embd" : "hidden_size", int64_t(1) << 17);
  range(intermediate_size, gpt2 ? "n_inner" : "intermediate_size", int64_t(1) << 20);
  range(num_layers, layers_key(), 4096);
  range(num_heads, gpt2 ? "n_head" : "num_attention_heads", 4096);
  range(num_kv_heads, "num_key_value_heads", 4096);
  range(head_dim, "head_dim", 4096);
  range(max_position_embeddings, gpt2 ? "n_positions" : "max_position_embeddings", int64_t(1) << 24);
  ST_CHECK(num_heads % num_kv_heads == 0, source + ": num_attention_heads " + std::to_string(num_heads) +
                                              " is not a multiple of num_key_value_heads " + std::to_string(num_kv_heads),
           hint);
  ST_CHECK(head_dim % 2 == 0 || gpt2, source + ": head_dim must be even for RoPE, found " + std::to_string(head_dim), hint);
  if (gpt2)
    ST_CHECK(head_dim * num_heads == hidden_size, source + ": n_embd " + std::to_string(hidden_size) +
                                                      " is not a multiple of n_head " + std::to_string(num_heads), hint);
  const char* eps_key = gpt2 ? "layer_norm_epsilon" : "rms_norm_eps";
  ST_CHECK(std::isfinite(norm_eps) && norm_eps > 0 && norm_eps < 1,
           source + ": " + eps_key + " is " + std::to_string(norm_eps) + ", expected a finite value in (0, 1)", hint);
  if (!gpt2) {
    ST_CHECK(std::isfinite(rope_theta) && rope_theta > 0,
             source + ": rope_theta is " + std::to_string(rope_theta) + ", expected a finite positive value", hint);
    if (!rope_scaling.type.empty()) {
      const auto& r = rope_scaling;
      ST_CHECK(std::isfinite(r.factor) && r.factor > 0 && std::isfinite(r.low_freq_factor) && r.low_freq_factor > 0 &&
                   std::isfinite(r.high_freq_factor) && r.high_freq_factor > r.low_freq_factor &&
                   r.original_max_position_embeddings > 0,
               source + ": rope_scaling needs factor > 0, 0 < low_freq_factor < high_freq_factor and "
                        "original_max_position_embeddings > 0",
               hint);
    }
  }
}

std::vector<ExpectedTensor> ModelConfig::expected_tensors() const {
  // Mirrors CausalLM's constructor (model.cpp); model_unit_test checks the two agree.
  std::vector<ExpectedTensor> out;
  auto add = [&](std::string name, std::vector<int64_t> shape, std::vector<std::string> keys) {
    out.push_back({std::move(name), std::move(shape), std::move(keys)});
  };
  const int64_t V = vocab_size, C = hidden_size, I = intermediate_size, H = num_heads, Hkv = num_kv_heads, hd = head_dim;
  if (arch == Arch::Llama) {
    const bool qkv_b = attention_bias || qkv_bias;
    const std::string q = "num_attention_heads x head_dim", kv = "num_key_value_heads x head_dim";
    add("model.embed_tokens.weight", {V, C}, {"vocab_size", "hidden_size"});
    for (int64_t l = 0; l < num_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      add(p + "input_layernorm.weight", {C}, {"hidden_size"});
      add(p + "self_attn.q_proj.weight", {H * hd, C}, {q, "hidden_size"});
      if (qkv_b) add(p + "self_attn.q_proj.bias", {H * hd}, {q});
      add(p + "self_attn.k_proj.weight", {Hkv * hd, C}, {kv, "hidden_size"});
      if (qkv_b) add(p + "self_attn.k_proj.bias", {Hkv * hd}, {kv});
      add(p + "self_attn.v_proj.weight", {Hkv * hd, C}, {kv, "hidden_size"});
      if (qkv_b) add(p + "self_attn.v_proj.bias", {Hkv * hd}, {kv});
      add(p + "self_attn.o_proj.weight", {C, H * hd}, {"hidden_size", q});
      if (attention_bias) add(p + "self_attn.o_proj.bias", {C}, {"hidden_size"});
      add(p + "post_attention_layernorm.weight", {C}, {"hidden_size"});
      add(p + "mlp.gate_proj.weight", {I, C}, {"intermediate_size", "hidden_size"});
      if (mlp_bias) add(p + "mlp.gate_proj.bias", {I}, {"intermediate_size"});
      add(p + "mlp.up_proj.weight", {I, C}, {"intermediate_size", "hidden_size"});
      if (mlp_bias) add(p + "mlp.up_proj.bias", {I}, {"intermediate_size"});
      add(p + "mlp.down_proj.weight", {C, I}, {"hidden_size", "intermediate_size"});
      if (mlp_bias) add(p + "mlp.down_proj.bias", {C}, {"hidden_size"});
    }
    add("model.norm.weight", {C}, {"hidden_size"});
    if (num_labels == 1) add("score.weight", {1, C}, {"num_labels", "hidden_size"});
    else if (!tie_word_embeddings) add("lm_head.weight", {V, C}, {"vocab_size", "hidden_size"});
    return out;
  }
  add("transformer.wte.weight", {V, C}, {"vocab_size", "n_embd"});
  add("transformer.wpe.weight", {max_position_embeddings, C}, {"n_positions", "n_embd"});
  for (int64_t l = 0; l < num_layers; ++l) {
    const std::string p = "transformer.h." + std::to_string(l) + ".";
    add(p + "ln_1.weight", {C}, {"n_embd"});
    add(p + "ln_1.bias", {C}, {"n_embd"});
    add(p + "attn.c_attn.weight", {C, 3 * C}, {"n_embd", "3 x n_embd"});
    add(p + "attn.c_attn.bias", {3 * C}, {"3 x n_embd"});
    add(p + "attn.c_proj.weight", {C, C}, {"n_embd", "n_embd"});
    add(p + "attn.c_proj.bias", {C}, {"n_embd"});
    add(p + "ln_2.weight", {C}, {"n_embd"});
    add(p + "ln_2.bias", {C}, {"n_embd"});
    add(p + "mlp.c_fc.weight", {C, I}, {"n_embd", "n_inner"});
    add(p + "mlp.c_fc.bias", {I}, {"n_inner"});
    add(p + "mlp.c_proj.weight", {I, C}, {"n_inner", "n_embd"});
    add(p + "mlp.c_proj.bias", {C}, {"n_embd"});
  }
  add("transformer.ln_f.weight", {C}, {"n_embd"});
  add("transformer.ln_f.bias", {C}, {"n_embd"});
  if (num_labels == 1) add("score.weight", {1, C}, {"num_labels", "n_embd"});
  return out;
}

json ModelConfig::to_json() const {
  json j = raw.is_object() ? raw : json::object();
  j["vocab_size"] = vocab_size;
  j["torch_dtype"] = torch_dtype;
  j["tie_word_embeddings"] = tie_word_embeddings;
  if (bos_token_id) j["bos_token_id"] = *bos_token_id;
  if (eos_token_id) j["eos_token_id"] = *eos_token_id;
  if (num_labels == 1) {
    // As HF writes a num_labels 1 classifier. Its reward is read at the last non-pad token, and HF refuses
    // batches of more than one row without pad_token_id, so it is set (the EOS id when the model has none).
    j["num_labels"] = 1;
    j["id2label"] = {{"0", "LABEL_0"}};
    j["label2id"] = {{"LABEL_0", 0}};
    if (!j.contains("pad_token_id") || j["pad_token_id"].is_null())
      j["pad_token_id"] = eos_token_id ? json(*eos_token_id) : json(0);
  }
  if (arch == Arch::GPT2) {
    j["architectures"] = {num_labels == 1 ? "GPT2ForSequenceClassification" : "GPT2LMHeadModel"};
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
  const std::string family = mt == "qwen2" ? "Qwen2" : mt == "mistral" ? "Mistral" : "Llama";
  j["architectures"] = {family + (num_labels == 1 ? "ForSequenceClassification" : "ForCausalLM")};
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
