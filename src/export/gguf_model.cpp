// `shardtune-export gguf` (see shardtune/export/gguf_model.h): plan every tensor (llama.cpp name, ggml dims,
// type, the transform from the HF tensor) and every metadata key first, so that all checks pass before the
// file exists; then gguf::Writer asks each tensor for its bytes in turn, and only then is it read (from the
// mapped safetensors), merged with its LoRA delta, permuted/transposed and encoded.
#include "shardtune/export/gguf_model.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/core/hw.h"
#include "shardtune/core/json_depth.h"
#include "shardtune/core/log.h"
#include "shardtune/export/gguf.h"
#include "shardtune/export/gguf_convert.h"
#include "shardtune/export/gguf_vocab.h"
#include "shardtune/model/adapter.h"
#include "shardtune/model/config.h"
#include "shardtune/model/io.h"
#include "shardtune/model/safetensors.h"

namespace shardtune::exporter {

namespace stdfs = std::filesystem;
namespace sm = shardtune::model;
using gguf::TensorType;

namespace {

// llama.cpp's LLAMA_FTYPE values for general.file_type.
uint32_t file_type_of(TensorType t) {
  switch (t) {
    case TensorType::F32: return 0;
    case TensorType::F16: return 1;
    case TensorType::Q8_0: return 7;
    case TensorType::BF16: return 32;
  }
  return 0;
}

TensorType parse_gguf_dtype(const std::string& dtype) {
  std::string u;
  for (char c : dtype) u.push_back(char(std::tolower(static_cast<unsigned char>(c))));
  if (u == "f32" || u == "fp32" || u == "float32") return TensorType::F32;
  if (u == "f16" || u == "fp16" || u == "float16") return TensorType::F16;
  if (u == "bf16" || u == "bfloat16") return TensorType::BF16;
  if (u == "q8_0" || u == "q8") return TensorType::Q8_0;
  ST_FAIL("--dtype '" + dtype + "' is not a GGUF export type", "give f32, f16, bf16 or q8_0");
}

// The model's weights as fp32 tensors by HF name, one at a time: from the mapped safetensors of an HF
// folder (each tensor's pages released after it is copied), or from a llama2.c model loaded whole.
class WeightSource {
 public:
  explicit WeightSource(const stdfs::path& model) {
    if (stdfs::is_directory(model)) {
      const stdfs::path cfg_path = model / "config.json";
      ST_CHECK(stdfs::exists(cfg_path), model.string() + ": no config.json",
               "--model takes a Hugging Face model folder (config.json + model.safetensors) or a llama2.c .bin file");
      cfg_ = sm::ModelConfig::from_file(cfg_path.string());
      for (const auto& f : st::model_files(model)) files_.push_back(std::make_unique<st::File>(f));
      sm::check_hf_weights(cfg_, files_, cfg_path.string());  // names, shapes, float dtypes
      for (const auto& f : files_)
        for (const auto& t : f->tensors()) by_name_[canonical(t.name)] = {f.get(), &t};
    } else {
      whole_ = sm::load_model(model.string());  // llama2.c: small, converted to HF layout by the loader
      cfg_ = whole_->config();
      for (const auto& [n, t] : whole_->hf_parameters()) params_[n] = t;
    }
  }

  const sm::ModelConfig& config() const { return cfg_; }

  // Every stored tensor name (canonical HF names), for the "no llama.cpp name" check.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& kv : by_name_) out.push_back(kv.first);
    for (const auto& kv : params_) out.push_back(kv.first);
    return out;
  }
  std::vector<int64_t> shape(const std::string& name) const {
    if (auto it = by_name_.find(name); it != by_name_.end()) return it->second.second->shape;
    return params_.at(name).sizes().vec();
  }
  // A copy (fp32), the mapped pages released: for tensors that are changed on the way.
  at::Tensor get(const std::string& name) const {
    if (auto it = by_name_.find(name); it != by_name_.end()) {
      at::Tensor x = sm::to_tensor(*it->second.first, *it->second.second);
      it->second.first->release(*it->second.second);
      return x.to(at::kFloat);
    }
    return params_.at(name).detach().to(at::kFloat).clone();
  }
  // Read-only: an F32 tensor of a safetensors file viewed in place (no copy; the caller releases it once
  // written), anything else as get() makes it.
  at::Tensor view(const std::string& name) const {
    if (auto it = by_name_.find(name); it != by_name_.end()) {
      const st::TensorInfo& t = *it->second.second;
      const uint8_t* p = it->second.first->data(t);
      if (t.dtype == st::DType::F32 && reinterpret_cast<uintptr_t>(p) % alignof(float) == 0)
        return at::from_blob(const_cast<uint8_t*>(p), t.shape, at::TensorOptions().dtype(at::kFloat));
    }
    return get(name);
  }
  void release(const std::string& name) const {
    if (auto it = by_name_.find(name); it != by_name_.end()) it->second.first->release(*it->second.second);
  }

 private:
  std::string canonical(const std::string& n) const {  // GPT-2 checkpoints may omit "transformer."
    if (cfg_.arch == sm::Arch::GPT2 && n.rfind("transformer.", 0) != 0 && n.rfind("lm_head.", 0) != 0 &&
        n != "score.weight")
      return "transformer." + n;
    return n;
  }
  sm::ModelConfig cfg_;
  std::vector<std::unique_ptr<st::File>> files_;
  std::map<std::string, std::pair<const st::File*, const st::TensorInfo*>> by_name_;
  std::shared_ptr<sm::CausalLM> whole_;
  std::map<std::string, at::Tensor> params_;
};

// llama.cpp's name for one HF weight, and how the tensor must be transformed on the way.
struct Mapped {
  std::string gguf;
  int64_t permute_heads = 0;  // > 0: rows from HF's rotate-half to llama.cpp's interleaved RoPE order
  bool transpose = false;     // GPT-2 Conv1D [in, out] -> [out, in]
  bool force_f32 = false;     // norms, biases, position embeddings (as llama.cpp's converter)
};

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

// Buffers HF checkpoints carry that are not weights (recomputed by every runtime): skipped.
bool ignorable(const std::string& name) {
  return ends_with(name, ".rotary_emb.inv_freq") || ends_with(name, ".attn.bias") ||
         ends_with(name, ".attn.masked_bias");
}

// A per-layer HF name "<prefix><layer>.<module>.<weight|bias>" as "blk.<layer>.<gguf module>.<kind>" through
// `modules` (HF module -> llama.cpp name); norms and biases F32. nullopt: not a layer tensor llama.cpp names.
std::optional<Mapped> map_block(const std::string& n, const std::string& prefix,
                                const std::map<std::string, std::string>& modules) {
  if (n.rfind(prefix, 0) != 0) return std::nullopt;
  const size_t dot = n.find('.', prefix.size());
  if (dot == std::string::npos) return std::nullopt;
  const std::string layer = n.substr(prefix.size(), dot - prefix.size());
  const std::string rest = n.substr(dot + 1);
  const size_t last = rest.rfind('.');
  if (last == std::string::npos) return std::nullopt;
  const std::string module = rest.substr(0, last), kind = rest.substr(last + 1);
  auto it = modules.find(module);
  if (it == modules.end() || (kind != "weight" && kind != "bias")) return std::nullopt;
  Mapped m{"blk." + layer + "." + it->second + "." + kind};
  m.force_f32 = kind == "bias" || ends_with(it->second, "_norm");
  return m;
}

std::optional<Mapped> map_llama(const sm::ModelConfig& c, const std::string& n, bool permute) {
  if (n == "model.embed_tokens.weight") return Mapped{"token_embd.weight"};
  if (n == "model.norm.weight") return Mapped{"output_norm.weight", 0, false, true};
  if (n == "lm_head.weight") {
    if (c.tie_word_embeddings) return std::nullopt;
    return Mapped{"output.weight"};
  }
  static const std::map<std::string, std::string> kMap = {
      {"input_layernorm", "attn_norm"},     {"post_attention_layernorm", "ffn_norm"},
      {"self_attn.q_proj", "attn_q"},       {"self_attn.k_proj", "attn_k"},
      {"self_attn.v_proj", "attn_v"},       {"self_attn.o_proj", "attn_output"},
      {"mlp.gate_proj", "ffn_gate"},        {"mlp.up_proj", "ffn_up"},
      {"mlp.down_proj", "ffn_down"}};
  std::optional<Mapped> m = map_block(n, "model.layers.", kMap);
  if (!m) return m;
  if (permute && m->gguf.find(".attn_q.") != std::string::npos) m->permute_heads = c.num_heads;
  if (permute && m->gguf.find(".attn_k.") != std::string::npos) m->permute_heads = c.num_kv_heads;
  return m;
}

std::optional<Mapped> map_gpt2(const sm::ModelConfig& c, const std::string& n) {
  if (n == "transformer.wte.weight") return Mapped{"token_embd.weight"};
  if (n == "transformer.wpe.weight") return Mapped{"position_embd.weight", 0, false, true};
  if (n == "transformer.ln_f.weight") return Mapped{"output_norm.weight", 0, false, true};
  if (n == "transformer.ln_f.bias") return Mapped{"output_norm.bias", 0, false, true};
  if (n == "lm_head.weight") return std::nullopt;  // GPT-2's head is the embedding (llama.cpp falls back to it)
  (void)c;
  static const std::map<std::string, std::string> kMap = {{"ln_1", "attn_norm"},        {"ln_2", "ffn_norm"},
                                                          {"attn.c_attn", "attn_qkv"},  {"attn.c_proj", "attn_output"},
                                                          {"mlp.c_fc", "ffn_up"},       {"mlp.c_proj", "ffn_down"}};
  std::optional<Mapped> m = map_block(n, "transformer.h.", kMap);
  if (m) m->transpose = !m->force_f32;  // Conv1D weights are [in, out] (biases and norms are F32)
  return m;
}

// The GGUF architecture of a config: Llama and Mistral are llama.cpp's "llama" (interleaved RoPE: q/k rows
// permuted); Qwen2 is "qwen2" (NeoX RoPE = HF's rotate-half: no permutation); GPT-2 is "gpt2".
std::string gguf_arch(const sm::ModelConfig& c) {
  if (c.arch == sm::Arch::GPT2) return "gpt2";
  if (c.model_type == "qwen2") return "qwen2";
  ST_CHECK(c.model_type == "llama" || c.model_type == "mistral",
           "model_type '" + c.model_type + "' has no GGUF export", "supported: llama, mistral, qwen2, gpt2");
  return "llama";
}

std::optional<Mapped> map_tensor(const sm::ModelConfig& c, const std::string& arch, const std::string& n) {
  return arch == "gpt2" ? map_gpt2(c, n) : map_llama(c, n, arch == "llama");
}

// ggml order: innermost dimension first (HF's last).
std::vector<uint64_t> ggml_dims(std::vector<int64_t> shape) {
  std::vector<uint64_t> ne;
  for (auto it = shape.rbegin(); it != shape.rend(); ++it) ne.push_back(uint64_t(*it));
  return ne;
}

// One tensor of the output: where it comes from and what to do with it.
struct Planned {
  std::string hf;           // source HF weight ("" for computed tensors such as rope_freqs)
  Mapped map;
  std::vector<int64_t> shape;  // torch shape after the transform
  TensorType type = TensorType::F32;
  std::string lora_module;  // the adapter module: added to the weight (merge), or whose A/B this is (adapter file)
  char lora_part = 0;       // adapter file: 'A' or 'B'
  at::Tensor computed;      // rope_freqs
};

TensorType pick_type(const Planned& p, TensorType want, int64_t* fallbacks) {
  if (p.map.force_f32 || p.shape.size() < 2) return TensorType::F32;
  if (want == TensorType::Q8_0 && p.shape.back() % 32 != 0) {
    ++*fallbacks;  // as llama.cpp's converter: a row that is not whole Q8_0 blocks stays F16
    log::info("gguf: " + p.map.gguf + " has rows of " + std::to_string(p.shape.back()) +
              " values (not a multiple of 32): written as F16 instead of Q8_0");
    return TensorType::F16;
  }
  return want;
}

// Llama 3 RoPE scaling as llama.cpp reads it: per-frequency divisors in rope_freqs.weight [hd/2], so that
// theta / factor equals HF's scaled inverse frequency (same formula as the model's llama3 inv_freq).
at::Tensor llama3_rope_factors(const sm::ModelConfig& c) {
  const auto& rs = c.rope_scaling;
  const int64_t hd = c.head_dim;
  std::vector<float> f;
  const double low_wavelen = double(rs.original_max_position_embeddings) / rs.low_freq_factor;
  const double high_wavelen = double(rs.original_max_position_embeddings) / rs.high_freq_factor;
  for (int64_t i = 0; i < hd; i += 2) {
    const float inv = 1.0f / std::pow(float(c.rope_theta), float(i) / float(hd));
    const double wavelen = 2 * M_PI / inv;
    if (wavelen < high_wavelen) f.push_back(1.0f);
    else if (wavelen > low_wavelen) f.push_back(float(rs.factor));
    else {
      const double smooth = (double(rs.original_max_position_embeddings) / wavelen - rs.low_freq_factor) /
                            (rs.high_freq_factor - rs.low_freq_factor);
      f.push_back(float(1.0 / ((1 - smooth) / rs.factor + smooth)));
    }
  }
  return at::tensor(f, at::kFloat);
}

// Encodes a contiguous fp32 tensor as `type` into the sink a few MB at a time (whole rows, so Q8_0 blocks
// never straddle a chunk). Refuses values the type cannot hold (F16 and the Q8_0 scale overflow at 65504).
void emit(const at::Tensor& x, TensorType type, const std::string& name, const gguf::ByteSink& out) {
  const at::Tensor c = x.contiguous();
  // min and max in one pass without a temporary as large as the tensor (NaN propagates into them, Inf is one).
  double amax = 0.0;
  if (c.numel()) {
    const auto [mn, mx] = at::aminmax(c);
    const double lo = mn.item<double>(), hi = mx.item<double>();
    ST_CHECK(std::isfinite(lo) && std::isfinite(hi), "tensor '" + name + "' holds NaN or Inf",
             "the model comes from a diverged run or is damaged; use another checkpoint");
    amax = std::max(-lo, hi);
  }
  if (type == TensorType::F16 || type == TensorType::Q8_0) {
    const double limit = type == TensorType::F16 ? 65504.0 : 65504.0 * 127.0;
    ST_CHECK(amax <= limit, "tensor '" + name + "' does not fit " + gguf::type_name(type) + ": its largest magnitude " +
                                std::to_string(amax) + " exceeds " + std::to_string(limit),
             "use --dtype bf16 or f32");
  }
  const float* src = c.data_ptr<float>();
  const size_t n = size_t(c.numel());
  const size_t row = c.dim() ? size_t(c.size(c.dim() - 1)) : 1;
  const size_t rows_per_chunk = std::max<size_t>(1, (size_t(1) << 20) / std::max<size_t>(row, 1));
  const size_t chunk = rows_per_chunk * row;
  std::vector<unsigned char> buf;
  if (type == TensorType::F32) return out(src, n * sizeof(float));  // already the bytes to write
  for (size_t i = 0; i < n; i += chunk) {
    const size_t k = std::min(chunk, n - i);
    const size_t bytes = gguf::tensor_bytes(type, k);
    if (buf.size() < bytes) buf.resize(bytes);
    gguf::encode(type, src + i, k, buf.data());
    out(buf.data(), bytes);
  }
}

stdfs::path normalized(const stdfs::path& p) {
  const stdfs::path a = stdfs::absolute(p).lexically_normal();
  return a.filename().empty() ? a.parent_path() : a;
}

std::string read_chat_template(const stdfs::path& model) {
  const stdfs::path tc = model / "tokenizer_config.json";
  if (!stdfs::is_directory(model) || !stdfs::is_regular_file(tc)) return "";
  const std::string text = fs::read_file(tc);
  check_json_depth(text, tc.string());
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    ST_FAIL(tc.string() + " is not valid JSON: " + e.what(), "fix or remove the file");
  }
  return j.contains("chat_template") && j["chat_template"].is_string() ? j["chat_template"].get<std::string>() : "";
}

void set_arch_keys(gguf::Writer& w, const sm::ModelConfig& c, const std::string& arch) {
  const std::string a = arch + ".";
  auto u32 = [](int64_t v) { return uint32_t(v); };
  w.set(a + "vocab_size", u32(c.vocab_size));
  w.set(a + "context_length", u32(c.max_position_embeddings));
  w.set(a + "embedding_length", u32(c.hidden_size));
  w.set(a + "block_count", u32(c.num_layers));
  w.set(a + "feed_forward_length", u32(c.intermediate_size));
  w.set(a + "attention.head_count", u32(c.num_heads));
  if (arch == "gpt2") {
    w.set(a + "attention.layer_norm_epsilon", float(c.norm_eps));
    return;
  }
  w.set(a + "attention.head_count_kv", u32(c.num_kv_heads));
  w.set(a + "rope.dimension_count", u32(c.head_dim));
  w.set(a + "rope.freq_base", float(c.rope_theta));
  w.set(a + "attention.layer_norm_rms_epsilon", float(c.norm_eps));
  if (c.head_dim * c.num_heads != c.hidden_size) {  // explicit head_dim: llama.cpp reads it from here
    w.set(a + "attention.key_length", u32(c.head_dim));
    w.set(a + "attention.value_length", u32(c.head_dim));
  }
}

at::Tensor transform(at::Tensor x, const Mapped& m) {
  if (m.transpose) x = x.t();
  if (m.permute_heads > 0) {
    x = x.contiguous();
    const bool vec = x.dim() == 1;  // a q/k bias is permuted like the rows it is added to
    at::Tensor x2 = vec ? x.reshape({x.size(0), 1}) : x;
    x2 = sm::hf_to_interleaved(x2, m.permute_heads);
    x = vec ? x2.reshape({x.size(0)}) : x2;
  }
  return x.contiguous();
}

}  // namespace

GgufResult export_gguf(const GgufOptions& opts) {
  GgufResult r;
  const TensorType want = parse_gguf_dtype(opts.dtype);
  ST_CHECK(!opts.out.empty(), "--out is empty", "give the .gguf file to write");
  const stdfs::path out = normalized(opts.out);
  ST_CHECK(!stdfs::exists(out), "--out '" + opts.out.string() + "' already exists",
           "choose another file name; shardtune never overwrites existing files");
  ST_CHECK(stdfs::is_directory(out.parent_path()),
           "--out '" + opts.out.string() + "': the folder " + out.parent_path().string() + " does not exist",
           "create the folder first");
  ST_CHECK(stdfs::exists(opts.model), "--model '" + opts.model.string() + "': no such file or folder",
           "give a Hugging Face model folder (config.json + model.safetensors) or a llama2.c .bin file");
  ST_CHECK(!opts.adapter_only || !opts.adapter.empty(), "--adapter-gguf needs --adapter",
           "give the PEFT LoRA folder to write as a GGUF adapter file");
  ST_CHECK(opts.adapter_only || !opts.tokenizer.empty(), "--tokenizer is required for a model file",
           "give the tokenizer SPEC the model was trained with (as for shardtune-prep), e.g. tokenizer.model");
  if (auto cpus = hw::affinity().count; cpus > 0) at::set_num_threads(cpus);
  at::NoGradGuard no_grad;

  // ---- plan: every check before the file exists ----
  stdfs::path model = opts.model;
  if (!stdfs::is_directory(model) && model.filename() == "config.json") model = model.parent_path();
  const WeightSource src(model);
  const sm::ModelConfig& cfg = src.config();
  const std::string arch = gguf_arch(cfg);
  // A reward model (--objective reward): llama.cpp's llama and gpt2 architectures have no
  // sequence-classification head, so its score.weight has no GGUF tensor that llama.cpp would use.
  const char* reward_hint =
      "export the base causal LM instead (the --model the reward run started from), or score with the Hugging Face "
      "folder (shardtune-score, transformers' AutoModelForSequenceClassification)";
  ST_CHECK(cfg.num_labels != 1,
           model.string() + " is a reward model (*ForSequenceClassification, num_labels 1): GGUF cannot hold its "
               "head score.weight, since llama.cpp's '" + arch + "' architecture has no sequence-classification head",
           reward_hint);

  // Every stored tensor must have a llama.cpp name (or be a known non-weight buffer / a tied head).
  for (const std::string& n : src.names()) {
    if (ignorable(n)) continue;
    if (n == "lm_head.weight" && (cfg.tie_word_embeddings || cfg.arch == sm::Arch::GPT2)) continue;
    ST_CHECK(map_tensor(cfg, arch, n).has_value(),
             model.string() + ": tensor '" + n + "' has no llama.cpp name for architecture '" + arch + "'",
             "this layout cannot be exported to GGUF; see docs/FORMAT.md (GGUF) for the supported tensors");
  }

  sm::AdapterConfig acfg;
  sm::AdapterWeights adapter;
  std::map<std::string, std::string> module_of;  // base HF weight -> adapter module
  if (!opts.adapter.empty()) {
    ST_CHECK(stdfs::is_directory(opts.adapter), "--adapter '" + opts.adapter.string() + "': no such folder",
             "give a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors)");
    acfg = sm::read_adapter_config(opts.adapter);
    ST_CHECK(!sm::read_adapter_score(opts.adapter).defined(),
             opts.adapter.string() + " is a reward model's adapter (its head base_model.model.score.weight): GGUF cannot "
                 "hold score.weight, since llama.cpp's '" + arch + "' architecture has no sequence-classification head",
             reward_hint);
    adapter = sm::read_adapter_weights(opts.adapter, acfg);
    std::map<std::string, std::vector<int64_t>> shapes;
    for (const auto& e : cfg.expected_tensors()) shapes[e.name] = e.shape;
    for (const auto& [module, weight] : sm::match_adapter_to_base(acfg, adapter, shapes, cfg.arch == sm::Arch::GPT2,
                                                                 opts.adapter, "the base model " + model.string()))
      module_of[weight] = module;
  }

  std::vector<Planned> plan;
  if (!opts.adapter_only) {
    for (const auto& e : cfg.expected_tensors()) {
      auto m = map_tensor(cfg, arch, e.name);
      if (!m) continue;  // a tied head
      Planned p;
      p.hf = e.name;
      p.map = *m;
      p.shape = src.shape(e.name);
      if (p.map.transpose) std::reverse(p.shape.begin(), p.shape.end());
      if (auto it = module_of.find(e.name); it != module_of.end()) p.lora_module = it->second;
      p.type = pick_type(p, want, &r.fallbacks);
      plan.push_back(std::move(p));
    }
    if (arch == "llama" && cfg.rope_scaling.type == "llama3") {
      Planned p;
      p.map = Mapped{"rope_freqs.weight", 0, false, true};
      p.computed = llama3_rope_factors(cfg);
      p.shape = {p.computed.size(0)};
      plan.push_back(std::move(p));
    }
    ST_CHECK(cfg.rope_scaling.type.empty() || cfg.rope_scaling.type == "llama3",
             "rope_scaling type '" + cfg.rope_scaling.type + "' has no GGUF export", "supported: none, llama3");
  } else {
    // A GGUF LoRA adapter (llama.cpp's convert_lora_to_gguf layout): per adapted base tensor
    // "<name>.lora_a" = A [r, in] and "<name>.lora_b" = B [out, r] as stored by PEFT, B's rows permuted
    // like the base's for q/k. GPT-2's Conv1D needs nothing: A/B are already [r, in] / [out, r].
    for (const auto& e : cfg.expected_tensors()) {
      auto it = module_of.find(e.name);
      if (it == module_of.end()) continue;
      auto m = map_tensor(cfg, arch, e.name);
      ST_CHECK(m.has_value(), opts.adapter.string() + ": module '" + it->second + "' adapts '" + e.name +
                                  "', which the GGUF base does not hold (a tied head?)",
               "merge this adapter instead (leave out --adapter-gguf)");
      const sm::LoraPair& lp = adapter.at(it->second);
      for (char part : {'A', 'B'}) {
        Planned p;
        p.hf = e.name;
        p.map = *m;
        p.map.gguf += part == 'A' ? ".lora_a" : ".lora_b";
        p.map.transpose = false;
        p.map.force_f32 = false;
        if (part == 'A') p.map.permute_heads = 0;
        p.lora_module = it->second;
        p.lora_part = part;
        p.shape = (part == 'A' ? lp.A : lp.B).sizes().vec();
        p.type = pick_type(p, want, &r.fallbacks);
        plan.push_back(std::move(p));
      }
    }
  }

  gguf::Writer w;
  w.set("general.architecture", arch);
  w.set("general.type", std::string(opts.adapter_only ? "adapter" : "model"));
  std::string name = opts.name;
  if (name.empty()) {  // the folder's name ("my.model" stays whole), or a file's without its extension
    const stdfs::path from = normalized(opts.adapter_only ? opts.adapter : model);
    name = (stdfs::is_directory(from) ? from.filename() : from.stem()).string();
  }
  w.set("general.name", name);
  w.set("general.file_type", file_type_of(want));
  w.set("general.quantization_version", uint32_t{2});
  if (opts.adapter_only) {
    w.set("adapter.type", std::string("lora"));
    // llama.cpp scales by alpha / r (r = lora_b's ne[0]); rsLoRA's alpha / sqrt(r) is expressed through alpha.
    const double alpha = acfg.use_rslora ? acfg.alpha * std::sqrt(double(acfg.r)) : acfg.alpha;
    w.set("adapter.lora.alpha", float(alpha));
  } else {
    set_arch_keys(w, cfg, arch);
    gguf::VocabOptions vo;
    vo.spec = opts.tokenizer;
    vo.model_vocab = cfg.vocab_size;
    vo.chat_template = opts.chat_template.empty() ? read_chat_template(model) : opts.chat_template;
    gguf::add_tokenizer_metadata(w, vo);  // Error when the tokenizer cannot be expressed or does not fit
  }

  const double scale = opts.adapter.empty() ? 0.0 : acfg.scale();
  for (const Planned& p : plan) {
    gguf::TensorInfo t;
    t.name = p.map.gguf;
    t.ne = ggml_dims(p.shape);
    t.type = p.type;
    uint64_t n = 1;
    for (auto d : t.ne) n *= d;
    t.bytes = gguf::tensor_bytes(p.type, n);
    const Planned* pp = &p;
    t.produce = [&, pp](const gguf::ByteSink& sink) {
      at::Tensor x;
      if (pp->computed.defined()) {
        x = pp->computed;
      } else if (pp->lora_part) {
        const sm::LoraPair& lp = adapter.at(pp->lora_module);
        x = (pp->lora_part == 'A' ? lp.A : lp.B).to(at::kFloat);
      } else if (pp->lora_module.empty()) {
        x = src.view(pp->hf);  // transform() copies only where it permutes or transposes
      } else {
        x = src.get(pp->hf);
        x.add_(sm::lora_delta(adapter.at(pp->lora_module), scale, acfg.fan_in_fan_out));  // as `merge`, in fp32
        ++r.merged;
      }
      emit(transform(x, pp->map), pp->type, pp->map.gguf, sink);
      if (!pp->hf.empty()) src.release(pp->hf);
    };
    w.add_tensor(std::move(t));
  }
  r.tensors = int64_t(plan.size());

  // ---- write ----
  char what[160];
  std::snprintf(what, sizeof what, "%s %s, %zu tensors, %s", arch.c_str(), opts.adapter_only ? "LoRA adapter" : "model",
                plan.size(), gguf::type_name(want));
  log::info("gguf: writing " + out.string() + " (" + what + (module_of.empty() || opts.adapter_only ? "" : ", adapter merged") + ")");
  const size_t every = std::max<size_t>(1, (plan.size() + 9) / 10);
  r.bytes = w.write(out, false, [&](size_t i, size_t total) {
    if (i % every == 0 || i == total) log::info("gguf: " + std::to_string(i) + "/" + std::to_string(total) + " tensors");
  });
  log::info("gguf: wrote " + out.string() + ": " + std::to_string(r.tensors) + " tensors, " +
            log::human_bytes(double(r.bytes)) + (r.merged ? ", " + std::to_string(r.merged) + " merged" : "") +
            (r.fallbacks ? ", " + std::to_string(r.fallbacks) + " Q8_0 -> F16 fallbacks" : ""));
  return r;
}

}  // namespace shardtune::exporter
