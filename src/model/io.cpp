// HF folder and llama2.c import/export over the torch-free safetensors layer; LoRA adapter merge (via model/adapter.h).
#include "shardtune/model/io.h"

#include <c10/core/GradMode.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <tuple>

#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/core/json_depth.h"
#include "shardtune/core/log.h"
#include "shardtune/model/adapter.h"

namespace shardtune::model {

namespace stdfs = std::filesystem;

namespace {

std::string shape_str(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Tensors some HF checkpoints carry that are buffers, not parameters.
bool ignorable(const std::string& name) {
  return ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias") ||
         ends_with(name, "rotary_emb.inv_freq");
}

std::string shape_str(const std::vector<int64_t>& s) { return shape_str(at::IntArrayRef(s)); }

// The HF name a weight of `t` is known by (GPT-2 checkpoints may omit the "transformer." prefix).
std::string canonical_name(const ModelConfig& cfg, const std::string& name) {
  // score.weight: GPT2ForSequenceClassification's head sits beside "transformer.", not in it.
  if (cfg.arch == Arch::GPT2 && name.rfind("transformer.", 0) != 0 && name.rfind("lm_head.", 0) != 0 &&
      name != "score.weight")
    return "transformer." + name;
  return name;
}

// Checks config.json against the safetensors headers (names, shapes, dtypes) before anything is
// allocated: a config that does not describe these weights fails here, naming tensor and config key,
// instead of allocating what the config claims (num_hidden_layers: 100000 would be ~24 GB).
void check_weights(const ModelConfig& cfg, const std::vector<std::unique_ptr<st::File>>& files,
                   const std::string& cfg_path) {
  std::map<std::string, std::pair<const st::File*, const st::TensorInfo*>> found;
  const std::string layer_prefix = cfg.arch == Arch::GPT2 ? "transformer.h." : "model.layers.";
  int64_t layers_in_files = 0;
  for (const auto& f : files)
    for (const auto& t : f->tensors()) {
      const std::string name = canonical_name(cfg, t.name);
      ST_CHECK(!found.count(name), f->path().string() + ": tensor '" + t.name + "' also appears in " +
                                       found[name].first->path().string(), "the checkpoint is inconsistent");
      found[name] = {f.get(), &t};
      if (name.rfind(layer_prefix, 0) == 0) {
        const size_t a = layer_prefix.size(), b = name.find('.', a);
        const std::string idx = name.substr(a, b == std::string::npos ? std::string::npos : b - a);
        if (!idx.empty() && idx.size() < 7 && idx.find_first_not_of("0123456789") == std::string::npos)
          layers_in_files = std::max<int64_t>(layers_in_files, std::stoll(idx) + 1);
      }
    }
  const std::string what = cfg_path + " does not describe these weights";
  std::string files_str;
  for (const auto& f : files) files_str += (files_str.empty() ? "" : ", ") + f->path().string();
  const std::string hint = "check that config.json belongs to these safetensors files (and the download is complete)";
  ST_CHECK(layers_in_files == cfg.num_layers,
           what + ": " + cfg.layers_key() + " is " + std::to_string(cfg.num_layers) + " but the weights hold " +
               std::to_string(layers_in_files) + " layer(s) (" + layer_prefix + "N.*)", hint);
  for (const ExpectedTensor& e : cfg.expected_tensors()) {
    auto it = found.find(e.name);
    std::string keys;
    for (size_t d = 0; d < e.shape.size(); ++d) keys += (d ? ", " : "") + e.dim_keys[d];
    ST_CHECK(it != found.end(), what + ": tensor '" + e.name + "' (expected shape " + shape_str(e.shape) + " from " +
                                    keys + ") is missing from " + files_str, hint);
    const st::TensorInfo& t = *it->second.second;
    const std::string file = it->second.first->path().string();
    if (t.shape != e.shape) {
      std::string why = t.shape.size() != e.shape.size() ? "a different number of dimensions" : "";
      for (size_t d = 0; why.empty() && d < e.shape.size(); ++d)
        if (t.shape[d] != e.shape[d])
          why = "dim " + std::to_string(d) + " is " + std::to_string(t.shape[d]) + ", config key " + e.dim_keys[d] +
                " gives " + std::to_string(e.shape[d]);
      ST_FAIL(file + ": tensor '" + t.name + "' has shape " + shape_str(t.shape) + ", expected " + shape_str(e.shape) +
                  " from " + cfg_path + " (" + why + ")", hint);
    }
    ST_CHECK(t.dtype == st::DType::F32 || t.dtype == st::DType::BF16 || t.dtype == st::DType::F16,
             file + ": tensor '" + t.name + "' has dtype " + st::dtype_name(t.dtype) + ", expected F32, BF16 or F16",
             "model weights must be floating point; re-export the model with transformers' save_pretrained "
             "(quantized checkpoints are not read)");
  }
}

}  // namespace

void check_hf_weights(const ModelConfig& cfg, const std::vector<std::unique_ptr<st::File>>& files,
                      const std::string& cfg_path) {
  check_weights(cfg, files, cfg_path);
}

at::ScalarType to_scalar_type(st::DType d) {
  switch (d) {
    case st::DType::F64: return at::kDouble;
    case st::DType::F32: return at::kFloat;
    case st::DType::F16: return at::kHalf;
    case st::DType::BF16: return at::kBFloat16;
    case st::DType::I64: return at::kLong;
    case st::DType::I32: return at::kInt;
    case st::DType::I16: return at::kShort;
    case st::DType::I8: return at::kChar;
    case st::DType::U8: return at::kByte;
    case st::DType::BOOL: return at::kBool;
  }
  return at::kFloat;
}

st::DType to_st_dtype(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return st::DType::F64;
    case at::kFloat: return st::DType::F32;
    case at::kHalf: return st::DType::F16;
    case at::kBFloat16: return st::DType::BF16;
    case at::kLong: return st::DType::I64;
    case at::kInt: return st::DType::I32;
    case at::kShort: return st::DType::I16;
    case at::kChar: return st::DType::I8;
    case at::kByte: return st::DType::U8;
    case at::kBool: return st::DType::BOOL;
    default: ST_FAIL(std::string("cannot store dtype ") + c10::toString(t) + " in safetensors");
  }
}

at::Tensor to_tensor(const st::File& f, const st::TensorInfo& t) {
  at::Tensor out = at::empty(t.shape, at::TensorOptions().dtype(to_scalar_type(t.dtype)));
  if (t.nbytes()) std::memcpy(out.data_ptr(), f.data(t), t.nbytes());  // also fixes any misalignment
  return out;
}

std::map<std::string, at::Tensor> read_safetensors(const stdfs::path& path) {
  st::File f(path);
  std::map<std::string, at::Tensor> out;
  for (const auto& t : f.tensors()) out[t.name] = to_tensor(f, t);
  return out;
}

void write_safetensors(const stdfs::path& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<at::Tensor> keep;
  std::vector<st::TensorRef> refs;
  for (const auto& [name, t] : tensors) {
    keep.push_back(t.detach().to(at::kCPU).contiguous());
    const at::Tensor& c = keep.back();
    refs.push_back({name, to_st_dtype(c.scalar_type()), c.sizes().vec(), c.data_ptr(), uint64_t(c.nbytes())});
  }
  st::write_file(path, refs, metadata);
}

at::Tensor interleaved_to_hf(const at::Tensor& w, int64_t n_heads) {
  const int64_t d1 = w.size(0), d2 = w.size(1);
  return w.reshape({n_heads, d1 / n_heads / 2, 2, d2}).transpose(1, 2).reshape({d1, d2});
}

at::Tensor hf_to_interleaved(const at::Tensor& w, int64_t n_heads) {
  const int64_t d1 = w.size(0), d2 = w.size(1);
  return w.reshape({n_heads, 2, d1 / n_heads / 2, d2}).transpose(1, 2).reshape({d1, d2});
}

std::shared_ptr<CausalLM> load_hf(const stdfs::path& dir) {
  const stdfs::path cfg_path = dir / "config.json";
  ST_CHECK(stdfs::exists(cfg_path), dir.string() + ": no config.json",
           "point --model at a Hugging Face model folder (config.json + model.safetensors) or a llama2.c .bin file");
  const ModelConfig config = ModelConfig::from_file(cfg_path.string());
  std::vector<std::unique_ptr<st::File>> files;  // headers parsed and validated; data only mapped
  for (const auto& p : st::model_files(dir)) files.push_back(std::make_unique<st::File>(p));
  check_weights(config, files, cfg_path.string());  // before the model is allocated
  auto model = std::make_shared<CausalLM>(config);
  const ModelConfig& cfg = model->config();

  // HF name on disk -> (file, tensor); GPT-2 checkpoints may omit the "transformer." prefix.
  std::map<std::string, std::pair<const st::File*, const st::TensorInfo*>> found;
  std::vector<std::string> unexpected;
  for (const auto& f : files) {
    for (const auto& t : f->tensors()) {
      const std::string name = canonical_name(cfg, t.name);
      if (model->has_param(name)) {
        ST_CHECK(!found.count(name), f->path().string() + ": tensor '" + t.name + "' also appears in " +
                                         found[name].first->path().string(), "the checkpoint is inconsistent");
        found[name] = {f.get(), &t};
      } else if (!(name == "lm_head.weight" && cfg.tie_word_embeddings) && !ignorable(name)) {
        unexpected.push_back(f->path().filename().string() + ":" + t.name);
      }
    }
  }
  std::string files_str;
  for (const auto& f : files) files_str += (files_str.empty() ? "" : ", ") + f->path().string();
  at::NoGradGuard no_grad;
  for (auto& [name, p] : model->hf_parameters()) {
    auto it = found.find(name);
    ST_CHECK(it != found.end(),
             files_str + ": tensor '" + name + "' (expected shape " + shape_str(p.sizes()) + ") is missing",
             "the weights do not match config.json (model_type '" + cfg.model_type +
                 "'): check the download is complete and the config belongs to these weights");
    const auto& [f, t] = it->second;
    ST_CHECK(at::IntArrayRef(t->shape) == p.sizes(),
             f->path().string() + ": tensor '" + t->name + "' has shape " + shape_str(t->shape) + ", expected " +
                 shape_str(p.sizes()),
             "config.json does not describe these weights (hidden size, heads, vocab?)");
    ST_CHECK(t->dtype == st::DType::F32 || t->dtype == st::DType::BF16 || t->dtype == st::DType::F16,
             f->path().string() + ": tensor '" + t->name + "' has dtype " + st::dtype_name(t->dtype) +
                 ", expected F32, BF16 or F16");
    p.copy_(to_tensor(*f, *t));
    model->source_dtypes[name] = st::dtype_name(t->dtype);
  }
  if (!unexpected.empty()) {
    std::string list;
    for (size_t i = 0; i < unexpected.size() && i < 5; ++i) list += " " + unexpected[i];
    log::warn("ignoring " + std::to_string(unexpected.size()) + " tensor(s) the model does not use:" + list +
              (unexpected.size() > 5 ? " ..." : ""));
  }
  return model;
}

std::shared_ptr<CausalLM> load_llama2c(const stdfs::path& file) {
  const std::string fname = file.string();
  const std::string hint = "expected llama2.c's legacy export (version 0): 7 int32 header + fp32 weights";
  std::ifstream in(file, std::ios::binary);
  ST_CHECK(in.good(), fname + ": cannot open", "check the path");
  const uint64_t size = stdfs::file_size(file);
  int32_t h[7];
  ST_CHECK(size >= sizeof h, fname + ": too short for a llama2.c header", hint);
  in.read(reinterpret_cast<char*>(h), sizeof h);
  const int64_t dim = h[0], hidden = h[1], n_layers = h[2], n_heads = h[3], n_kv = h[4], seq_len = h[6];
  const bool shared = h[5] > 0;
  const int64_t vocab = std::abs(int64_t(h[5]));
  for (int i = 0; i < 7; ++i)
    ST_CHECK(h[i] != 0 && (i == 5 || (h[i] > 0 && h[i] < (1 << 24))),
             fname + ": implausible header value " + std::to_string(h[i]) + " at position " + std::to_string(i), hint);
  ST_CHECK(dim % n_heads == 0 && n_heads % n_kv == 0, fname + ": dim/n_heads/n_kv_heads are inconsistent", hint);
  nlohmann::json j = {{"architectures", {"LlamaForCausalLM"}},
                      {"model_type", "llama"},
                      {"vocab_size", vocab},
                      {"hidden_size", dim},
                      {"intermediate_size", hidden},
                      {"num_hidden_layers", n_layers},
                      {"num_attention_heads", n_heads},
                      {"num_key_value_heads", n_kv},
                      {"max_position_embeddings", seq_len},
                      {"rms_norm_eps", 1e-5},
                      {"rope_theta", 10000.0},
                      {"tie_word_embeddings", shared},
                      {"hidden_act", "silu"},
                      {"torch_dtype", "float32"},
                      {"bos_token_id", 1},
                      {"eos_token_id", 2}};
  // Ranges first (bounded sizes cannot overflow below), then the header against the file size, and only
  // then the allocation.
  const ModelConfig config = ModelConfig::from_json(j, fname);
  const int64_t hd = dim / n_heads, kv_dim = n_kv * hd;
  const int64_t L = n_layers;
  const int64_t n_floats = vocab * dim + L * dim + L * dim * dim + 2 * L * kv_dim * dim + L * dim * dim + L * dim +
                           3 * L * hidden * dim + dim + seq_len * hd + (shared ? 0 : vocab * dim);
  const uint64_t expect = sizeof h + uint64_t(n_floats) * 4;
  ST_CHECK(size == expect, fname + ": " + std::to_string(size) + " bytes, expected " + std::to_string(expect) +
                               " for dim " + std::to_string(dim) + ", " + std::to_string(L) + " layers, vocab " +
                               std::to_string(vocab) + (shared ? " (shared classifier)" : " (separate classifier)"),
           hint + "; a truncated download or a newer (v1/v2) export?");
  at::Tensor all = at::empty({n_floats}, at::kFloat);
  in.read(reinterpret_cast<char*>(all.data_ptr<float>()), n_floats * 4);
  ST_CHECK(in.good(), fname + ": read failed", hint);

  auto model = std::make_shared<CausalLM>(config);
  int64_t off = 0;
  auto take = [&](std::vector<int64_t> shape) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    at::Tensor t = all.narrow(0, off, n).view(shape);
    off += n;
    return t;
  };
  at::NoGradGuard no_grad;
  auto set = [&](const std::string& name, const at::Tensor& t) { model->param(name).copy_(t); };
  auto lp = [](int64_t l) { return "model.layers." + std::to_string(l) + "."; };
  set("model.embed_tokens.weight", take({vocab, dim}));
  const at::Tensor rms_att = take({L, dim}), wq = take({L, dim, dim}), wk = take({L, kv_dim, dim}),
                   wv = take({L, kv_dim, dim}), wo = take({L, dim, dim}), rms_ffn = take({L, dim}),
                   w1 = take({L, hidden, dim}), w2 = take({L, dim, hidden}), w3 = take({L, hidden, dim});
  for (int64_t l = 0; l < L; ++l) {
    set(lp(l) + "input_layernorm.weight", rms_att[l]);
    set(lp(l) + "self_attn.q_proj.weight", interleaved_to_hf(wq[l], n_heads));
    set(lp(l) + "self_attn.k_proj.weight", interleaved_to_hf(wk[l], n_kv));
    set(lp(l) + "self_attn.v_proj.weight", wv[l]);
    set(lp(l) + "self_attn.o_proj.weight", wo[l]);
    set(lp(l) + "post_attention_layernorm.weight", rms_ffn[l]);
    set(lp(l) + "mlp.gate_proj.weight", w1[l]);
    set(lp(l) + "mlp.down_proj.weight", w2[l]);
    set(lp(l) + "mlp.up_proj.weight", w3[l]);
  }
  set("model.norm.weight", take({dim}));
  take({seq_len, hd});  // freq_cis real/imag: recomputed from rope_theta
  if (!shared) set("lm_head.weight", take({vocab, dim}));
  ST_CHECK(off == n_floats, fname + ": internal size mismatch");
  return model;
}

std::shared_ptr<CausalLM> load_model(const std::string& path_str) {
  stdfs::path path(path_str);
  ST_CHECK(stdfs::exists(path), path_str + ": no such file or folder",
           "--model takes a Hugging Face model folder or a llama2.c .bin file");
  if (stdfs::is_directory(path)) return load_hf(path);
  const std::string name = path.filename().string();
  if (name == "config.json" || ends_with(name, ".safetensors") || ends_with(name, ".safetensors.index.json"))
    return load_hf(path.has_parent_path() ? path.parent_path() : stdfs::path("."));
  // Refuse pickle/zip checkpoints (PyTorch .bin/.pt) with a clear message instead of misreading them.
  std::ifstream in(path, std::ios::binary);
  unsigned char magic[2] = {0, 0};
  in.read(reinterpret_cast<char*>(magic), 2);
  ST_CHECK(!(magic[0] == 0x80 || (magic[0] == 'P' && magic[1] == 'K')),
           path_str + ": looks like a PyTorch pickle/zip checkpoint, which shardtune never reads",
           "convert it with transformers: model.save_pretrained(dir, safe_serialization=True)");
  return load_llama2c(path);
}

void check_weights_finite(const CausalLM& model, const std::string& when, const std::string& hint) {
  at::NoGradGuard no_grad;
  auto tensors = model.hf_parameters();
  if (model.has_lora())
    for (auto& nt : model.trainable_parameters()) tensors.push_back(nt);  // the adapters' A and B
  for (const auto& [name, t] : tensors) {
    if (!t.is_floating_point() || at::isfinite(t).all().item<bool>()) continue;
    const int64_t nan = at::isnan(t).sum().item<int64_t>();
    const int64_t bad = t.numel() - at::isfinite(t).sum().item<int64_t>();
    ST_FAIL("weight '" + name + "' is not finite " + when + ": " + std::to_string(nan) + " NaN and " +
                std::to_string(bad - nan) + " Inf of " + std::to_string(t.numel()) + " values",
            hint);
  }
}

void save_hf(const CausalLM& model, const stdfs::path& dir, const SaveOptions& opts) {
  save_hf(model.config(), model.hf_parameters(), model.source_dtypes, dir, opts);
}

namespace {
// The dtype each parameter is saved in (opts.dtype, else as loaded, F32 if new).
std::vector<std::string> save_dtypes(const std::vector<std::pair<std::string, at::Tensor>>& params,
                                     const std::map<std::string, std::string>& source_dtypes, const SaveOptions& opts) {
  std::vector<std::string> out;
  for (const auto& [name, p] : params) {
    std::string dt = opts.dtype;
    if (dt.empty()) {
      auto it = source_dtypes.find(name);
      dt = it == source_dtypes.end() ? "F32" : it->second;
    }
    out.push_back(dt);
  }
  return out;
}
}  // namespace

std::vector<size_t> save_hf_reads(const std::vector<std::pair<std::string, at::Tensor>>& params,
                                  const std::map<std::string, std::string>& source_dtypes, const SaveOptions& opts) {
  size_t first = 0, last = params.size();
  if (opts.parts >= 1) {
    const auto dts = save_dtypes(params, source_dtypes, opts);
    std::vector<uint64_t> nbytes;
    for (size_t i = 0; i < params.size(); ++i)
      nbytes.push_back(uint64_t(params[i].second.numel()) * st::dtype_size(st::parse_dtype(dts[i], "save dtype")));
    std::tie(first, last) = st::part_range(nbytes, opts.part, opts.parts);
  }
  std::vector<size_t> out;
  for (size_t i = first; i < last; ++i) out.push_back(i);
  return out;
}

void save_hf(const ModelConfig& config, const std::vector<std::pair<std::string, at::Tensor>>& params,
             const std::map<std::string, std::string>& source_dtypes, const stdfs::path& dir, const SaveOptions& opts) {
  const bool share = opts.parts >= 1;
  stdfs::create_directories(dir);
  if (!share)
    for (const auto& e : stdfs::directory_iterator(dir)) {
      const std::string n = e.path().filename().string();
      if (n == "model.safetensors" || n == "model.safetensors.index.json" ||
          (n.rfind("model-", 0) == 0 && ends_with(n, ".safetensors")))
        stdfs::remove(e.path());
    }
  const auto dts = save_dtypes(params, source_dtypes, opts);
  const auto reads = save_hf_reads(params, source_dtypes, opts);
  std::vector<at::Tensor> keep;
  std::vector<st::TensorRef> refs;
  std::map<std::string, int> dtype_count;
  size_t r = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& [name, p] = params[i];
    const std::string& dt = dts[i];
    const st::DType d = st::parse_dtype(dt, "save dtype");
    dtype_count[dt]++;
    if (r == reads.size() || reads[r] != i) {  // another writer's tensor: its name and size only
      refs.push_back({name, d, p.sizes().vec(), nullptr, uint64_t(p.numel()) * st::dtype_size(d)});
      continue;
    }
    ++r;
    // No copy when the tensor already is contiguous on the CPU in this dtype (checkpoints: fp32 weights).
    keep.push_back(p.detach().to(at::kCPU, to_scalar_type(d)).contiguous());
    const at::Tensor& c = keep.back();
    // A narrower dtype overflows to Inf silently (F16 holds at most 65504): never save a model that
    // was finite in memory as a file that is not.
    if (d != st::DType::F32 && !at::isfinite(c).all().item<bool>() && at::isfinite(p.detach()).all().item<bool>())
      ST_FAIL("weight '" + name + "' does not fit " + dt + ": its largest magnitude " +
                  std::to_string(p.detach().abs().max().item<double>()) + " becomes Inf",
              "save with --save-dtype BF16 or F32 (F16's largest value is 65504)");
    refs.push_back({name, d, c.sizes().vec(), c.data_ptr(), uint64_t(c.nbytes())});
  }
  ModelConfig cfg = config;
  std::string major = "F32";
  for (const auto& [d, n] : dtype_count)
    if (n > dtype_count[major]) major = d;
  cfg.torch_dtype = major == "BF16" ? "bfloat16" : major == "F16" ? "float16" : "float32";
  if (!share) {
    fs::write_file_atomic(dir / "config.json", cfg.to_json().dump(2) + "\n");
    st::write_sharded(dir, "model", refs, opts.max_shard_bytes, {{"format", "pt"}});
    return;
  }
  std::vector<st::WrittenFile> files = st::write_part(dir, "model", refs, opts.part, opts.parts, {{"format", "pt"}});
  if (opts.part == 0) {
    const std::string text = cfg.to_json().dump(2) + "\n";
    fs::write_file_atomic(dir / "config.json", text);
    files.push_back({"config.json", text.size(), fs::sha256_hex(text)});
  }
  if (opts.written) opts.written->insert(opts.written->end(), files.begin(), files.end());
}

int merge_lora(CausalLM& model, const stdfs::path& adapter_dir) {
  // One implementation of the adapter format and the delta (model/adapter.h); shardtune-export's
  // streaming merge uses the same three calls.
  const AdapterConfig cfg = read_adapter_config(adapter_dir);
  const AdapterWeights w = read_adapter_weights(adapter_dir, cfg);
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& [name, p] : model.hf_parameters()) shapes[name] = p.sizes().vec();
  const auto targets = match_adapter_to_base(cfg, w, shapes, model.config().arch == Arch::GPT2, adapter_dir,
                                             "the model (" + model.config().model_type + ")");
  at::NoGradGuard no_grad;
  for (const auto& [module, weight] : targets) {
    at::Tensor W = model.param(weight);
    W.add_(lora_delta(w.at(module), cfg.scale(), cfg.fan_in_fan_out).to(W.scalar_type()));
  }
  return int(targets.size());
}

}  // namespace shardtune::model
