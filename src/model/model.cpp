// Llama-family and GPT-2 forward passes over HF-named parameters (see model.h for shapes).
#include "shardtune/model/model.h"

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>

#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "shardtune/core/error.h"
#include "shardtune/model/runtime.h"

// LibTorch >= 2.1 has fused scaled_dot_product_attention (flash/memory-efficient kernels on CUDA, a
// flash kernel on CPU for the causal case); 1.13 uses the explicit softmax(q k^T) v below.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
#define ST_HAVE_SDPA 1
#else
#define ST_HAVE_SDPA 0
#endif

namespace shardtune::model {

namespace {

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  // HF LlamaRMSNorm: normalize in fp32, scale by the weight.
  const at::Tensor xf = x.to(at::kFloat);
  const at::Tensor var = xf.pow(2).mean(-1, /*keepdim=*/true);
  return w * (xf * at::rsqrt(var + eps)).to(x.scalar_type());
}

at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}


at::Tensor llama_inv_freq(const ModelConfig& c) {
  // Same float32 arithmetic as HF's _compute_default_rope_parameters / _compute_llama3_parameters.
  const int64_t hd = c.head_dim;
  at::Tensor inv = 1.0 / at::pow(c.rope_theta, at::arange(0, hd, 2, at::kLong).to(at::kFloat) / double(hd));
  if (c.rope_scaling.type == "llama3") {
    const auto& rs = c.rope_scaling;
    const double old_ctx = double(rs.original_max_position_embeddings);
    const double low_wavelen = old_ctx / rs.low_freq_factor;
    const double high_wavelen = old_ctx / rs.high_freq_factor;
    const at::Tensor wavelen = 2 * M_PI / inv;
    at::Tensor scaled = at::where(wavelen > low_wavelen, inv / rs.factor, inv);
    const at::Tensor smooth = (old_ctx / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
    const at::Tensor smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled;
    const at::Tensor medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
    scaled = at::where(medium, smoothed, scaled);
    inv = scaled;
  }
  return inv.contiguous();
}

std::string layer_prefix(const ModelConfig& c, int64_t l) {
  return (c.arch == Arch::GPT2 ? "transformer.h." : "model.layers.") + std::to_string(l) + ".";
}

}  // namespace

at::Tensor positions_from_doc_ids(const at::Tensor& doc_ids) {
  // Position of token t = t - (index of the first token of its document).
  ST_CHECK(doc_ids.dim() == 2, "doc_ids must be [B,T]");
  const int64_t T = doc_ids.size(1);
  const at::Tensor idx = at::arange(T, doc_ids.options().dtype(at::kLong)).unsqueeze(0).expand(doc_ids.sizes());
  at::Tensor starts = at::ones(doc_ids.sizes(), doc_ids.options().dtype(at::kBool));
  if (T > 1) starts.narrow(1, 1, T - 1).copy_(doc_ids.narrow(1, 1, T - 1) != doc_ids.narrow(1, 0, T - 1));
  const at::Tensor start_idx = std::get<0>(at::where(starts, idx, at::zeros_like(idx)).cummax(1));
  return idx - start_idx;
}

std::vector<int64_t> target_index(const std::vector<uint8_t>& mask, const std::vector<int64_t>& doc_ids, int64_t B,
                                  int64_t T) {
  ST_CHECK(int64_t(mask.size()) == B * T && (doc_ids.empty() || int64_t(doc_ids.size()) == B * T),
           "internal: target_index needs mask (and doc_ids) of B x T = " + std::to_string(B * T) + " values");
  std::vector<int64_t> idx;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t + 1 < T; ++t) {
      const size_t i = size_t(b * T + t);
      if (mask[i + 1] && (doc_ids.empty() || doc_ids[i + 1] == doc_ids[i])) idx.push_back(b * T + t);
    }
  return idx;
}

int64_t max_position(const std::vector<int64_t>& doc_ids, int64_t B, int64_t T) {
  if (doc_ids.empty() || T == 0) return T - 1;
  int64_t longest = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0, run = 0; t < T; ++t) {
      run = t > 0 && doc_ids[size_t(b * T + t)] == doc_ids[size_t(b * T + t - 1)] ? run + 1 : 0;
      longest = std::max(longest, run);
    }
  return longest;
}

CausalLM::CausalLM(ModelConfig config) : torch::nn::Module("CausalLM"), cfg_(std::move(config)) {
  cfg_.validate("model config");
  const auto& c = cfg_;
  const int64_t C = c.hidden_size, V = c.vocab_size, hd = c.head_dim, H = c.num_heads, Hkv = c.num_kv_heads,
                I = c.intermediate_size;
  layers_.resize(size_t(c.num_layers));
  if (c.arch == Arch::Llama) {
    embed_ = add("model.embed_tokens.weight", {V, C});
    const bool qkv_b = c.attention_bias || c.qkv_bias;
    for (int64_t l = 0; l < c.num_layers; ++l) {
      Layer& L = layers_[size_t(l)];
      const std::string p = layer_prefix(c, l);
      L.ln1_w = add(p + "input_layernorm.weight", {C});
      add_proj(L.q, p + "self_attn.q_proj", C, H * hd, qkv_b);
      add_proj(L.k, p + "self_attn.k_proj", C, Hkv * hd, qkv_b);
      add_proj(L.v, p + "self_attn.v_proj", C, Hkv * hd, qkv_b);
      add_proj(L.o, p + "self_attn.o_proj", H * hd, C, c.attention_bias);
      L.ln2_w = add(p + "post_attention_layernorm.weight", {C});
      add_proj(L.gate, p + "mlp.gate_proj", C, I, c.mlp_bias);
      add_proj(L.up, p + "mlp.up_proj", C, I, c.mlp_bias);
      add_proj(L.down, p + "mlp.down_proj", I, C, c.mlp_bias);
    }
    norm_w_ = add("model.norm.weight", {C});
    if (c.num_labels == 1) {  // a reward model: its scalar head instead of the LM head
      score_ = add("score.weight", {1, C});
      if (c.tie_word_embeddings) lm_head_ = embed_;
    } else {
      lm_head_ = c.tie_word_embeddings ? embed_ : add("lm_head.weight", {V, C});
    }
    inv_freq_ = llama_inv_freq(c);
  } else {
    embed_ = add("transformer.wte.weight", {V, C});
    pos_embed_ = add("transformer.wpe.weight", {c.max_position_embeddings, C});
    for (int64_t l = 0; l < c.num_layers; ++l) {
      Layer& L = layers_[size_t(l)];
      const std::string p = layer_prefix(c, l);
      L.ln1_w = add(p + "ln_1.weight", {C});
      L.ln1_b = add(p + "ln_1.bias", {C});
      add_proj(L.c_attn, p + "attn.c_attn", C, 3 * C, true, true);
      add_proj(L.c_proj, p + "attn.c_proj", C, C, true, true);
      L.ln2_w = add(p + "ln_2.weight", {C});
      L.ln2_b = add(p + "ln_2.bias", {C});
      add_proj(L.fc, p + "mlp.c_fc", C, I, true, true);
      add_proj(L.mlp_proj, p + "mlp.c_proj", I, C, true, true);
    }
    norm_w_ = add("transformer.ln_f.weight", {C});
    norm_b_ = add("transformer.ln_f.bias", {C});
    lm_head_ = embed_;                                        // tied: no tensor of its own
    if (c.num_labels == 1) score_ = add("score.weight", {1, C});  // GPT2ForSequenceClassification
  }
}

void CausalLM::add_proj(Projection& p, const std::string& module, int64_t in, int64_t out, bool bias, bool conv1d) {
  p.module = module;
  p.in = in;
  p.out = out;
  p.conv1d = conv1d;
  p.w = conv1d ? add(module + ".weight", {in, out}) : add(module + ".weight", {out, in});
  if (bias) p.b = add(module + ".bias", {out});
}

at::Tensor CausalLM::add(const std::string& hf_name, std::vector<int64_t> shape) {
  // Walk/create one plain Module per dotted component so named_parameters() yields the HF name.
  const size_t last = hf_name.rfind('.');
  torch::nn::Module* parent = this;
  std::string path;
  size_t start = 0;
  while (start < last) {
    const size_t dot = hf_name.find('.', start);
    const std::string part = hf_name.substr(start, dot - start);
    path += (path.empty() ? "" : ".") + part;
    auto it = modules_.find(path);
    if (it == modules_.end()) {
      auto m = std::make_shared<torch::nn::Module>(part);
      parent->register_module(part, m);
      it = modules_.emplace(path, m).first;
    }
    parent = it->second.get();
    start = dot + 1;
  }
  // Norm weights start at one, everything else at zero, until loaded or init_random().
  const bool is_norm = shape.size() == 1 && hf_name.size() > 7 && hf_name.compare(hf_name.size() - 7, 7, ".weight") == 0;
  at::Tensor t = is_norm ? at::ones(shape, at::kFloat) : at::zeros(shape, at::kFloat);
  at::Tensor& reg = parent->register_parameter(hf_name.substr(last + 1), t);
  index_[hf_name] = params_.size();
  params_.emplace_back(hf_name, reg);
  return reg;
}

void CausalLM::move_to(at::Device device) {
  at::NoGradGuard no_grad;
  for (const Projection* p : projections())
    ST_CHECK(!p->q, "--device " + device.str() + ": the NF4 (QLoRA) weight of " + p->module + " cannot be moved there yet",
             "use --method lora (a bf16 or fp32 frozen base) on the GPU, or --device cpu for QLoRA");
  auto move = [&](at::Tensor& t) {
    if (t.defined() && t.device() != device) t.set_data(t.to(device));
  };
  // The fused groups first: their members are views of them and must stay views of the moved buffer.
  auto move_fused = [&](std::vector<Projection*> ps, at::Tensor& fused) {
    if (!fused.defined()) return;
    fused = fused.to(device);
    int64_t row = 0;
    for (Projection* p : ps) {
      p->w.set_data(fused.narrow(0, row, p->out));
      row += p->out;
    }
  };
  for (Layer& L : layers_) {
    move_fused({&L.q, &L.k, &L.v}, L.qkv_fused);
    move_fused({&L.gate, &L.up}, L.gate_up_fused);
  }
  for (auto& [name, t] : params_) move(t);
  for (Projection* p : mutable_projections()) {
    move(p->lora_a);
    move(p->lora_b);
  }
  if (inv_freq_.defined()) inv_freq_ = inv_freq_.to(device);
}

void CausalLM::init_random(uint64_t seed, double std) {
  at::NoGradGuard no_grad;
  auto gen = at::detail::createCPUGenerator(seed);
  for (auto& [name, p] : params_) {
    const bool bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    if (bias) p.zero_();
    else if (p.dim() == 1) p.fill_(1.0);
    else {
      at::Tensor r = at::empty(p.sizes(), at::kFloat).normal_(0.0, std, gen);
      p.copy_(r);
    }
  }
}

std::vector<std::pair<std::string, at::Tensor>> CausalLM::hf_parameters() const { return params_; }

bool CausalLM::has_param(const std::string& hf_name) const { return index_.count(hf_name) != 0; }

at::Tensor CausalLM::param(const std::string& hf_name) const {
  auto it = index_.find(hf_name);
  ST_CHECK(it != index_.end(), "model has no parameter '" + hf_name + "'",
           "names follow Hugging Face (e.g. model.layers.0.self_attn.q_proj.weight)");
  return params_[it->second].second;
}

at::Tensor CausalLM::lm_head_weight() const {
  ST_CHECK(lm_head_.defined(), "this model is a reward model (score.weight, no lm_head.weight): it has no LM head",
           "use it with --objective reward or shardtune-score; generate and SFT need a causal LM");
  return lm_head_;
}

void CausalLM::add_score_head(uint64_t seed, double std, int64_t pad_id) {
  if (score_.defined()) return;
  if (pad_id >= 0 && cfg_.raw.is_object() && (!cfg_.raw.contains("pad_token_id") || cfg_.raw["pad_token_id"].is_null()))
    cfg_.raw["pad_token_id"] = pad_id;
  at::NoGradGuard no_grad;  // GPT-2's head is tied to wte (no lm_head.weight): only the score head is added
  if (auto it = index_.find("lm_head.weight"); it != index_.end()) {
    params_.erase(params_.begin() + std::ptrdiff_t(it->second));
    index_.clear();
    for (size_t i = 0; i < params_.size(); ++i) index_[params_[i].first] = i;
    source_dtypes.erase("lm_head.weight");
    unregister_module("lm_head");  // frees its [V, C] weight
    modules_.erase("lm_head");
    lm_head_ = at::Tensor();
  }
  cfg_.num_labels = 1;
  score_ = add("score.weight", {1, cfg_.hidden_size});
  auto gen = at::detail::createCPUGenerator(seed);
  score_.copy_(at::empty({1, cfg_.hidden_size}, at::kFloat).normal_(0.0, std, gen));
}

at::Tensor CausalLM::rewards(const at::Tensor& ids, const at::Tensor& last) {
  ST_CHECK(score_.defined(), "internal: rewards() on a model without score.weight");
  const at::Tensor h = hidden(ids);  // [B,T,C] after the final norm
  const at::Tensor idx = last.to(at::kLong).view({-1, 1, 1}).expand({h.size(0), 1, h.size(2)});
  const at::Tensor hl = h.gather(1, idx).squeeze(1).to(at::kFloat);  // [B,C]
  return at::matmul(hl, score_.to(at::kFloat).t()).squeeze(1);
}

KVCache CausalLM::make_cache(int64_t batch, int64_t capacity) const {
  KVCache c;
  c.capacity = capacity;
  const auto opts = embed_.options().requires_grad(false);
  for (int64_t l = 0; l < cfg_.num_layers; ++l) {
    c.k.push_back(at::zeros({batch, cfg_.num_kv_heads, capacity, cfg_.head_dim}, opts));
    c.v.push_back(at::zeros({batch, cfg_.num_kv_heads, capacity, cfg_.head_dim}, opts));
  }
  return c;
}

std::pair<at::Tensor, at::Tensor> CausalLM::rope_tables(const at::Tensor& positions) const {
  const at::Tensor inv = inv_freq_.to(positions.device());
  const at::Tensor freqs = positions.to(at::kFloat).unsqueeze(-1) * inv;  // [B,T,hd/2]
  const at::Tensor emb = at::cat({freqs, freqs}, -1).unsqueeze(1);        // [B,1,T,hd]
  return {emb.cos(), emb.sin()};
}

at::Tensor CausalLM::attention(const Layer& L, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                               const at::Tensor& blocked, bool causal_only, KVCache* cache, int64_t layer) {
  const int64_t B = x.size(0), T = x.size(1), H = cfg_.num_heads, Hkv = cfg_.num_kv_heads, hd = cfg_.head_dim;
  at::Tensor q, k, v;
  if (cfg_.arch == Arch::Llama) {
    // One GEMM for q, k and v: wider matrices keep BLAS efficient (k/v are narrow under GQA). The weights
    // stay separate HF parameters; cat/narrow (or the frozen base's fused buffer) route the gradients.
    const auto parts = project({&L.q, &L.k, &L.v}, L.qkv_fused, x);
    q = parts[0].view({B, T, H, hd}).transpose(1, 2);
    k = parts[1].view({B, T, Hkv, hd}).transpose(1, 2);
    v = parts[2].view({B, T, Hkv, hd}).transpose(1, 2);
    // As HF: the rotation runs in the activations' dtype (bf16 under autocast).
    const at::Tensor c = cos.to(q.scalar_type()), s = sin.to(q.scalar_type());
    q = q * c + rotate_half(q) * s;
    k = k * c + rotate_half(k) * s;
  } else {
    const at::Tensor qkv = project1(L.c_attn, x);  // [B,T,3C]
    const int64_t C = cfg_.hidden_size;
    q = qkv.narrow(2, 0, C).view({B, T, H, hd}).transpose(1, 2);
    k = qkv.narrow(2, C, C).view({B, T, H, hd}).transpose(1, 2);
    v = qkv.narrow(2, 2 * C, C).view({B, T, H, hd}).transpose(1, 2);
  }
  if (cache) {
    const int64_t off = cache->length;
    cache->k[size_t(layer)].narrow(2, off, T).copy_(k);
    cache->v[size_t(layer)].narrow(2, off, T).copy_(v);
    k = cache->k[size_t(layer)].narrow(2, 0, off + T).to(q.scalar_type());
    v = cache->v[size_t(layer)].narrow(2, 0, off + T).to(q.scalar_type());
  }
  const int64_t S = k.size(2);
  if (Hkv != H) {  // head h reads kv head h / (H / Hkv), as HF repeat_kv
    k = k.unsqueeze(2).expand({B, Hkv, H / Hkv, S, hd}).reshape({B, H, S, hd});
    v = v.unsqueeze(2).expand({B, Hkv, H / Hkv, S, hd}).reshape({B, H, S, hd});
  }
  const double scale = 1.0 / std::sqrt(double(hd));
#if ST_HAVE_SDPA
  // is_causal is top-left aligned, so only use it when queries and keys are the same tokens.
  const bool causal = blocked.defined() && causal_only && S == T;
  const at::Tensor y4 = at::scaled_dot_product_attention(
      q, k, v, (blocked.defined() && !causal) ? c10::optional<at::Tensor>(blocked.logical_not()) : c10::nullopt, 0.0,
      causal, scale);
  const at::Tensor y = y4.transpose(1, 2).reshape({B, T, H * hd});
#else
  (void)causal_only;
  // scores = bias + scale * q k^T in one batched GEMM, bias = 0 / -inf for visible / blocked keys. [B,H,T,S]
  at::Tensor scores;
  if (blocked.defined()) {
    const at::Tensor bias = at::zeros(blocked.sizes(), q.options()).masked_fill_(blocked, -INFINITY);
    // One mask for all rows broadcasts without a copy; per-row document masks are expanded per head.
    const at::Tensor bias3 = bias.size(0) == 1 ? bias.view({1, T, S}) : bias.expand({B, H, T, S}).reshape({B * H, T, S});
    scores = at::baddbmm(bias3, q.reshape({B * H, T, hd}),
                         k.reshape({B * H, S, hd}).transpose(1, 2), 1.0, scale)
                 .view({B, H, T, S});
  } else {
    scores = at::matmul(q, k.transpose(-2, -1)) * scale;
  }
  const at::Tensor p = at::softmax(scores, -1, at::kFloat).to(v.scalar_type());
  const at::Tensor y = at::matmul(p, v).transpose(1, 2).reshape({B, T, H * hd});
#endif
  return project1(cfg_.arch == Arch::Llama ? L.o : L.c_proj, y);
}

at::Tensor CausalLM::hidden(const at::Tensor& ids_in, const Packing& pack, KVCache* cache) {
  ST_CHECK(ids_in.dim() == 2, "input ids must be [B,T], got " + std::to_string(ids_in.dim()) + " dims");
  const at::Tensor ids = ids_in.to(embed_.device(), at::kLong);
  const int64_t B = ids.size(0), T = ids.size(1);
  const int64_t off = cache ? cache->length : 0;
  ST_CHECK(!cache || off + T <= cache->capacity, "KV cache full: " + std::to_string(off + T) + " tokens > capacity " +
                                                      std::to_string(cache->capacity));
  ST_CHECK(!(cache && pack.doc_ids.defined()), "doc_ids with a KV cache is not supported");
  const auto lopts = ids.options();
  at::Tensor doc = pack.doc_ids.defined() ? pack.doc_ids.to(ids.device(), at::kLong) : at::Tensor();
  if (doc.defined()) ST_CHECK(doc.sizes() == ids.sizes(), "doc_ids must have the shape of ids [B,T]");
  at::Tensor pos;
  if (pack.positions.defined()) pos = pack.positions.to(ids.device(), at::kLong);
  else if (doc.defined()) pos = positions_from_doc_ids(doc);
  else pos = at::arange(off, off + T, lopts).unsqueeze(0).expand({B, T});
  ST_CHECK(pos.sizes() == ids.sizes(), "positions must have the shape of ids [B,T]");

  // blocked[b,0,i,j] = key j is invisible to query i (future, or another document).
  at::Tensor blocked;
  const int64_t S = off + T;
  if (T > 1 || doc.defined()) {
    const at::Tensor qi = at::arange(off, off + T, lopts).unsqueeze(1);
    const at::Tensor kj = at::arange(0, S, lopts).unsqueeze(0);
    blocked = (kj > qi).view({1, 1, T, S});
    if (doc.defined()) blocked = blocked.logical_or((doc.unsqueeze(2) != doc.unsqueeze(1)).unsqueeze(1));
  }
  const bool causal_only = !doc.defined() && off == 0;

  at::Tensor x = at::embedding(embed_, ids).to(at::kFloat);  // [B,T,C]; fp32 also for a bf16 frozen base
  at::Tensor cos, sin;
  if (cfg_.arch == Arch::GPT2) {
    // Read from the device only when the host does not know it (it synchronizes a GPU).
    const int64_t max_pos = !pack.positions.defined() && !doc.defined() ? off + T - 1
                            : pack.max_position >= 0 && !pack.positions.defined() ? pack.max_position
                                                                                : pos.max().item<int64_t>();
    ST_CHECK(max_pos < cfg_.max_position_embeddings,
             "position " + std::to_string(max_pos) + " is beyond n_positions " +
                 std::to_string(cfg_.max_position_embeddings),
             "GPT-2 has learned positions: use shorter sequences");
    x = x + at::embedding(pos_embed_, pos).to(at::kFloat);
  } else {
    std::tie(cos, sin) = rope_tables(pos);
  }
  const double eps = cfg_.norm_eps;
  for (int64_t l = 0; l < cfg_.num_layers; ++l) {
    const Layer& L = layers_[size_t(l)];
    if (cfg_.arch == Arch::Llama) {
      x = x + attention(L, rms_norm(x, L.ln1_w, eps), cos, sin, blocked, causal_only, cache, l);
      // gate and up as one GEMM (see attention()).
      const auto g_u = project({&L.gate, &L.up}, L.gate_up_fused, rms_norm(x, L.ln2_w, eps));
      x = x + project1(L.down, at::silu(g_u[0]) * g_u[1]);
    } else {
      x = x + attention(L, at::layer_norm(x, {cfg_.hidden_size}, L.ln1_w, L.ln1_b, eps), cos, sin, blocked, causal_only, cache, l);
      const at::Tensor h = at::layer_norm(x, {cfg_.hidden_size}, L.ln2_w, L.ln2_b, eps);
      x = x + project1(L.mlp_proj, at::gelu(project1(L.fc, h), "tanh"));
    }
  }
  if (cache) cache->length += T;
  if (cfg_.arch == Arch::Llama) return rms_norm(x, norm_w_, eps);
  return at::layer_norm(x, {cfg_.hidden_size}, norm_w_, norm_b_, eps);
}

at::Tensor CausalLM::logits(const at::Tensor& ids, const Packing& pack, KVCache* cache) {
  const at::Tensor h = hidden(ids, pack, cache);
  return at::matmul(h, lm_head_weight().t().to(h.scalar_type())).to(at::kFloat);
}

LossResult CausalLM::loss(const at::Tensor& ids_in, const at::Tensor& loss_mask, const Packing& pack,
                          int64_t chunk_tokens) {
  const at::Tensor ids = ids_in.to(embed_.device(), at::kLong);
  ST_CHECK(ids.dim() == 2 && ids.size(1) >= 2, "loss needs ids [B,T] with T >= 2");
  const int64_t B = ids.size(0), T = ids.size(1);
  at::Tensor target = loss_mask.defined() ? loss_mask.to(ids.device()).to(at::kBool)
                                          : at::ones({B, T}, ids.options().dtype(at::kBool));
  ST_CHECK(target.sizes() == ids.sizes(), "loss_mask must have the shape of ids [B,T]");
  at::Tensor idx;
  if (pack.target_index.defined()) {  // known on the host: no nonzero() (a device-to-host read on a GPU)
    ST_CHECK(pack.target_index.dim() == 1 && pack.target_index.scalar_type() == at::kLong,
             "internal: Packing::target_index must be 1-D int64");
    idx = pack.target_index.device() == ids.device() ? pack.target_index
                                                     : host_to_device(pack.target_index.contiguous(), ids.device());
  } else {
    // valid[b,t]: hidden state t predicts token t+1.
    at::Tensor valid = at::zeros({B, T}, target.options());
    at::Tensor next = target.narrow(1, 1, T - 1);
    if (pack.doc_ids.defined()) {
      const at::Tensor d = pack.doc_ids.to(ids.device(), at::kLong);
      next = next.logical_and(d.narrow(1, 1, T - 1) == d.narrow(1, 0, T - 1));
    }
    valid.narrow(1, 0, T - 1).copy_(next);
    idx = valid.reshape({-1}).nonzero().reshape({-1});
  }
  const at::Tensor h = hidden(ids, pack);
  LossResult r;
  r.count = idx.numel();
  if (r.count == 0) {
    r.sum = h.sum() * 0.0;  // keeps the graph so backward still runs on every rank
    return r;
  }
  const at::Tensor hsel = h.reshape({B * T, h.size(2)}).index_select(0, idx);
  const at::Tensor tsel = ids.reshape({-1}).index_select(0, idx + 1);
  if (chunk_tokens <= 0) chunk_tokens = std::max<int64_t>(64, (int64_t(1) << 24) / cfg_.vocab_size);
  r.sum = linear_cross_entropy_sum(hsel, lm_head_weight(), tsel, chunk_tokens, autocast_dtype(ids.device().type()));
  return r;
}

}  // namespace shardtune::model
