// Per-sequence log-probabilities of the target tokens (preference objectives, issue 11): for each row
// of a batch, the sum over target positions of log p(token | earlier tokens), accumulated in fp32.
#pragma once

#include <ATen/ATen.h>

#include "shardtune/model/model.h"

namespace shardtune::model {

// ids [B,T] int64, loss_mask [B,T] (uint8/bool; same convention as CausalLM::loss: mask[b,t] = 1 means
// token t is a target predicted from position t-1; column 0 is ignored). Returns [B] fp32, differentiable
// w.r.t. the model's trainable parameters when grad mode is on. Never holds more than `chunk_tokens`
// rows of [N,V] logits (0 = auto, as CausalLM::loss): backward recomputes each chunk's logits.
// `target_index` (optional, any device): the flat target indices target_index() gives for this batch, known
// on the host; then none is computed on the device (nonzero() would synchronize a GPU).
at::Tensor sequence_logps(CausalLM& m, const at::Tensor& ids, const at::Tensor& loss_mask, int64_t chunk_tokens = 0,
                          const at::Tensor& target_index = {});

// The fused, chunked op under it: out[n] = log_softmax(h[n] @ w^T)[targets[n]], h [N,C], w [V,C],
// computed in `compute_dtype` with fp32 log-softmax; differentiable w.r.t. h and w.
at::Tensor linear_target_logps(const at::Tensor& h, const at::Tensor& w, const at::Tensor& targets, int64_t chunk_tokens,
                               at::ScalarType compute_dtype);

}  // namespace shardtune::model
