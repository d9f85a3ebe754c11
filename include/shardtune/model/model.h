// Decoder-only causal LMs (Llama family, GPT-2) as LibTorch modules whose parameters carry HF names.
//
// Shapes: B batch, T tokens, S keys (cache + T), C hidden, H heads, Hkv key/value heads, hd head dim, V vocab.
// Parameters are plain registered fp32 tensors named exactly as in Hugging Face checkpoints
// ("model.layers.0.self_attn.q_proj.weight", "transformer.h.0.attn.c_attn.weight"); the trainer may
// re-point them into a flat buffer with `set_data` — the forward code only holds aliases of the same
// tensors and never assumes it owns their storage.
#pragma once

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "shardtune/model/config.h"

namespace shardtune::model {

// Keys/values of previous tokens for incremental decoding; preallocated to `capacity` tokens.
struct KVCache {
  std::vector<at::Tensor> k, v;  // per layer [B, Hkv, capacity, hd]
  int64_t length = 0;            // tokens already cached
  int64_t capacity = 0;
};

// Sum and count of the masked next-token cross-entropy; loss = sum / count (count summed over ranks).
struct LossResult {
  at::Tensor sum;    // scalar fp32, differentiable
  int64_t count = 0;
};

// Optional inputs for packed sequences. doc_ids[B,T] (int64): tokens attend only to earlier tokens of the
// same document; when `positions` is undefined they restart at 0 for each document.
struct Packing {
  at::Tensor positions;  // [B,T] int64 or undefined (0..T-1, or per-document when doc_ids is set)
  at::Tensor doc_ids;    // [B,T] int64 or undefined (one document per row)
};

class CausalLM : public torch::nn::Module {
 public:
  // Allocates every parameter (zeros) with its HF name and shape; load weights or call init_random().
  explicit CausalLM(ModelConfig config);

  const ModelConfig& config() const { return cfg_; }
  void init_random(uint64_t seed, double std = 0.02);

  // Parameters by HF name, in checkpoint order (tied lm_head is not listed: it is the embedding).
  std::vector<std::pair<std::string, at::Tensor>> hf_parameters() const;
  at::Tensor param(const std::string& hf_name) const;  // Error if unknown
  bool has_param(const std::string& hf_name) const;

  // Final hidden states [B,T,C] (after the last norm). With `cache`, ids are the next T tokens after the
  // cached ones (positions continue from cache->length unless given) and keys/values are appended.
  at::Tensor hidden(const at::Tensor& ids, const Packing& pack = {}, KVCache* cache = nullptr);
  at::Tensor logits(const at::Tensor& ids, const Packing& pack = {}, KVCache* cache = nullptr);  // [B,T,V] fp32
  at::Tensor lm_head_weight() const;  // [V,C] (the embedding when tied)

  // Masked next-token cross-entropy. Convention: loss_mask[b,t] = 1 means token t is a target, predicted
  // from the hidden state at t-1 (so it sees positions <= t-1); loss_mask[:,0] is ignored, and so is a
  // token that starts a new document (doc_ids[t] != doc_ids[t-1]). loss_mask undefined = every token.
  // The [N,V] logits are never materialized beyond `chunk_tokens` rows at a time (0 = auto: as many rows
  // as fit 2^24 logits, i.e. 64 MB in fp32, at least 64).
  LossResult loss(const at::Tensor& ids, const at::Tensor& loss_mask, const Packing& pack = {},
                  int64_t chunk_tokens = 0);

  KVCache make_cache(int64_t batch, int64_t capacity) const;

  // Dtype each tensor had in the file it was loaded from ("F32", "BF16", "F16"), used by save by default.
  std::map<std::string, std::string> source_dtypes;

 private:
  struct Layer {
    at::Tensor ln1_w, ln1_b, ln2_w, ln2_b;
    at::Tensor q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b;  // Llama
    at::Tensor c_attn_w, c_attn_b, c_proj_w, c_proj_b;  // GPT-2 attention (Conv1D: weight [in, out])
    at::Tensor gate_w, gate_b, up_w, up_b, down_w, down_b;  // Llama MLP
    at::Tensor fc_w, fc_b, mlp_proj_w, mlp_proj_b;      // GPT-2 MLP (Conv1D)
  };
  at::Tensor add(const std::string& hf_name, std::vector<int64_t> shape);
  at::Tensor attention(const Layer& L, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                       const at::Tensor& blocked, bool causal_only, KVCache* cache, int64_t layer);
  std::pair<at::Tensor, at::Tensor> rope_tables(const at::Tensor& positions) const;  // cos, sin [B,1,T,hd]

  ModelConfig cfg_;
  std::map<std::string, std::shared_ptr<torch::nn::Module>> modules_;
  std::vector<std::pair<std::string, at::Tensor>> params_;
  std::map<std::string, size_t> index_;
  at::Tensor embed_, pos_embed_, norm_w_, norm_b_, lm_head_;
  std::vector<Layer> layers_;
  at::Tensor inv_freq_;  // [hd/2] fp32 (Llama)
};

// Positions that restart at 0 for each document: doc_ids [B,T] -> [B,T] int64.
at::Tensor positions_from_doc_ids(const at::Tensor& doc_ids);

// The fused, chunked linear + cross-entropy: sum over rows of CE(h @ w^T, targets). h [N,C], w [V,C],
// targets [N] int64. Differentiable w.r.t. h and w; computes in `compute_dtype` (kFloat or kBFloat16)
// with fp32 accumulation, never holding more than [chunk, V] logits.
at::Tensor linear_cross_entropy_sum(const at::Tensor& h, const at::Tensor& w, const at::Tensor& targets,
                                    int64_t chunk_tokens, at::ScalarType compute_dtype);

}  // namespace shardtune::model
