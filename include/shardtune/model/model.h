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

#include "shardtune/model/adapter.h"
#include "shardtune/model/config.h"

namespace shardtune::model {

namespace nf4 {
struct Quantized;
}

// One projection of the model (a Linear, or GPT-2's Conv1D whose weight is stored [in, out]): its base
// weight (dense; or NF4 when quantized, then `w` is an empty tensor), optional bias, optional LoRA pair.
struct Projection {
  std::string module;  // HF module path, e.g. "model.layers.0.self_attn.q_proj"
  at::Tensor w, b;     // registered HF parameters "<module>.weight" / ".bias" (b may be undefined)
  bool conv1d = false;
  int64_t in = 0, out = 0;  // logical features (y = x W^T: w is [out, in], or [in, out] for conv1d)
  std::shared_ptr<const nf4::Quantized> q;  // NF4 base weight (--method qlora) or null
  at::Tensor lora_a, lora_b;                // [r, in], [out, r] fp32, or undefined
};

// What quantize_base did: the weights it replaced and the heap they occupy afterwards, measured
// (mallinfo2 growth while each was quantized, before its dense copy was freed).
struct QuantStats {
  int64_t tensors = 0, params = 0;
  int64_t measured_bytes = 0;  // heap growth, summed over tensors
  int64_t storage_bytes = 0;   // what the NF4 tensors hold (nf4::Quantized::storage_bytes)
};

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
  // What loss() and hidden() would otherwise read back from the device (nonzero(), max().item(): each one
  // synchronizes a GPU), when the caller knows it from its host batch (target_index(), max_position()):
  at::Tensor target_index;    // int64 [N], any device: flat indices b*T+t predicting a target, ascending
  int64_t max_position = -1;  // the largest position of the batch (GPT-2's range check); -1: unknown
};

// From a host batch (row-major [B*T]; doc_ids empty: one document per row), the values loss() and
// sequence_logps() compute on the device: the ascending flat indices b*T+t (t < T-1) whose hidden state
// predicts a target (mask[b,t+1] set, token t+1 in the same document as t). Its size is the count.
std::vector<int64_t> target_index(const std::vector<uint8_t>& mask, const std::vector<int64_t>& doc_ids, int64_t B,
                                  int64_t T);
// The largest position hidden() gives such a batch without a KV cache: T-1, or with doc_ids the longest
// run of one document minus 1 (positions restart at each document).
int64_t max_position(const std::vector<int64_t>& doc_ids, int64_t B, int64_t T);

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

  // ---- reward model (--objective reward; HF LlamaForSequenceClassification, num_labels 1) ----
  // Turns this causal LM into a reward model: adds score.weight [1, C] ~ N(0, std) from a CPU generator
  // seeded `seed` (HF initializes it N(0, initializer_range)), and drops lm_head.weight from the
  // parameters (not trained, not saved). No-op when the model already has its head (loaded from a reward
  // model folder, or a checkpoint). Llama family and GPT-2 (its LM head is tied to wte: nothing dropped).
  // `pad_id` >= 0 (the data's padding id): config.json's pad_token_id when the model has none, so HF's
  // sequence classifier, which reads the last token that is not pad_token_id, finds the EOS ending a response.
  void add_score_head(uint64_t seed, double std, int64_t pad_id = -1);
  bool has_score_head() const { return score_.defined(); }
  // The reward of each row: score.weight . (final hidden state at position last[b]); [B] fp32.
  at::Tensor rewards(const at::Tensor& ids, const at::Tensor& last);

  // Masked next-token cross-entropy. Convention: loss_mask[b,t] = 1 means token t is a target, predicted
  // from the hidden state at t-1 (so it sees positions <= t-1); loss_mask[:,0] is ignored, and so is a
  // token that starts a new document (doc_ids[t] != doc_ids[t-1]). loss_mask undefined = every token.
  // The [N,V] logits are never materialized beyond `chunk_tokens` rows at a time (0 = auto: as many rows
  // as fit 2^24 logits, i.e. 64 MB in fp32, at least 64).
  LossResult loss(const at::Tensor& ids, const at::Tensor& loss_mask, const Packing& pack = {},
                  int64_t chunk_tokens = 0);

  KVCache make_cache(int64_t batch, int64_t capacity) const;

  // ---- LoRA / QLoRA (model/lora.cpp) ----
  // Every projection, in checkpoint order (the modules LoRA may target).
  std::vector<const Projection*> projections() const;
  // Module paths `targets` selects ("all-linear", or short names such as q_proj / c_attn matching the
  // last component of a module path, as PEFT does). Error naming a target that matches no module, with
  // the names this architecture has.
  std::vector<std::string> lora_modules(const std::vector<std::string>& targets) const;
  // Fresh adapters on the selected modules: A as cfg.init says ("true": PEFT's Kaiming-uniform a=sqrt(5),
  // i.e. U(-1/sqrt(in), 1/sqrt(in)); "gaussian": N(0, 1/r)), B = 0, from a CPU generator seeded `seed`.
  void add_lora(const AdapterConfig& cfg, uint64_t seed);
  // Adapters from a PEFT folder's contents. Checked before anything changes: every module exists and is
  // a projection, A is [r, in] and B [out, r] for it; Error naming the module and both shapes.
  void load_lora(const AdapterConfig& cfg, const AdapterWeights& w, const std::string& source);
  bool has_lora() const { return !lora_.target_modules.empty(); }
  // Off: every forward computes the base alone (no LoRA delta), as PEFT's disable_adapter(): the
  // reference model of DPO with LoRA is the same base (no second copy). See LoraDisabled.
  void set_lora_enabled(bool on) { lora_off_ = !on; }
  bool lora_enabled() const { return !lora_off_; }
  const AdapterConfig& lora_config() const { return lora_; }
  AdapterWeights lora_weights() const;  // current adapters (aliases, not copies)
  // The frozen base: no parameter of the base requires grad; its matrices (projections, embeddings,
  // head) become `dtype` (kFloat or kBFloat16; norms and biases stay fp32); q/k/v and gate/up weights
  // that stay dense are re-laid into one buffer each so the fused GEMM needs no per-step copy.
  void freeze_base(at::ScalarType dtype);
  // NF4 for the weights of every LoRA target (QLoRA): call after add_lora/load_lora, before freeze_base.
  // Error naming a weight whose size is not a multiple of the NF4 block (64).
  QuantStats quantize_base(bool double_quant);
  // QLoRA: the dtype NF4 weights are dequantized into and multiplied in (kUndefined: as autocast says).
  void set_quantized_compute_dtype(at::ScalarType t) { nf4_compute_ = t; }
  // What the trainer optimizes: the adapters' A and B (named "<module>.lora_A.weight") with LoRA, else
  // every HF parameter.
  std::vector<std::pair<std::string, at::Tensor>> trainable_parameters() const;
  // The LoRA dropout generator: one per rank (seeded from the run's seed and the rank), its state saved by
  // checkpoints so a resumed run draws the same masks.
  void seed_dropout(uint64_t seed, int rank);
  std::vector<uint8_t> dropout_rng_state() const;
  void set_dropout_rng_state(const std::vector<uint8_t>& s);
  // Parameters the base holds (logical sizes: quantized weights count their elements).
  int64_t base_param_count() const;
  // Moves every weight (HF parameters, LoRA adapters, the fused frozen groups, whose members stay views
  // of them) and the rope table to `device`, in place (set_data: aliases follow). The LoRA dropout
  // generator stays on the CPU (its masks are drawn there, the same as on CPU). Error for NF4 weights.
  void move_to(at::Device device);

  // Dtype each tensor had in the file it was loaded from ("F32", "BF16", "F16"), used by save by default.
  std::map<std::string, std::string> source_dtypes;

 private:
  struct Layer {
    at::Tensor ln1_w, ln1_b, ln2_w, ln2_b;
    Projection q, k, v, o, gate, up, down;  // Llama
    Projection c_attn, c_proj, fc, mlp_proj;  // GPT-2 (Conv1D)
    at::Tensor qkv_fused, gate_up_fused;    // frozen dense base: [q;k;v] and [gate;up] (q_w etc. view them)
  };
  at::Tensor add(const std::string& hf_name, std::vector<int64_t> shape);
  void add_proj(Projection& p, const std::string& module, int64_t in, int64_t out, bool bias, bool conv1d = false);
  // Outputs of projections that read the same x: one GEMM over their base weights (`fused` when the
  // frozen base was re-laid, else concatenated), split per projection, each plus its LoRA delta.
  std::vector<at::Tensor> project(const std::vector<const Projection*>& ps, const at::Tensor& fused, const at::Tensor& x);
  at::Tensor project1(const Projection& p, const at::Tensor& x) { return project({&p}, {}, x)[0]; }
  std::vector<Projection*> mutable_projections();

  at::Tensor attention(const Layer& L, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                       const at::Tensor& blocked, bool causal_only, KVCache* cache, int64_t layer);
  std::pair<at::Tensor, at::Tensor> rope_tables(const at::Tensor& positions) const;  // cos, sin [B,1,T,hd]

  ModelConfig cfg_;
  std::map<std::string, std::shared_ptr<torch::nn::Module>> modules_;
  std::vector<std::pair<std::string, at::Tensor>> params_;
  std::map<std::string, size_t> index_;
  at::Tensor embed_, pos_embed_, norm_w_, norm_b_, lm_head_, score_;
  std::vector<Layer> layers_;
  at::Tensor inv_freq_;  // [hd/2] fp32 (Llama)
  AdapterConfig lora_;   // target_modules empty: no LoRA
  double lora_scale_ = 0;
  uint64_t dropout_seed_ = 0;
  at::Generator dropout_gen_;
  at::ScalarType nf4_compute_ = at::ScalarType::Undefined;
  bool lora_off_ = false;
};

// Scoped: the model's forwards run without their LoRA deltas until the guard ends (also on an exception).
class LoraDisabled {
 public:
  explicit LoraDisabled(CausalLM& m) : m_(m), was_(m.lora_enabled()) { m_.set_lora_enabled(false); }
  ~LoraDisabled() { m_.set_lora_enabled(was_); }
  LoraDisabled(const LoraDisabled&) = delete;
  LoraDisabled& operator=(const LoraDisabled&) = delete;

 private:
  CausalLM& m_;
  bool was_;
};

// Positions that restart at 0 for each document: doc_ids [B,T] -> [B,T] int64.
at::Tensor positions_from_doc_ids(const at::Tensor& doc_ids);

// The fused, chunked linear + cross-entropy: sum over rows of CE(h @ w^T, targets). h [N,C], w [V,C],
// targets [N] int64. Differentiable w.r.t. h and w; computes in `compute_dtype` (kFloat or kBFloat16)
// with fp32 accumulation, never holding more than [chunk, V] logits.
at::Tensor linear_cross_entropy_sum(const at::Tensor& h, const at::Tensor& w, const at::Tensor& targets,
                                    int64_t chunk_tokens, at::ScalarType compute_dtype);

}  // namespace shardtune::model
