// --method full | lora | qlora: what the trainer trains. For LoRA/QLoRA this turns the loaded base model
// into a frozen base with adapters (new ones, or a PEFT folder's with --adapter), NF4-quantizes the
// targeted weights for QLoRA, and says what it did in the PEFT-style line users know.
#pragma once

#include <cstdint>
#include <string>

#include "shardtune/model/model.h"
#include "shardtune/model/runtime.h"
#include "shardtune/train/config.h"

namespace shardtune::train {

struct MethodSummary {
  int64_t trainable = 0, total = 0;  // parameters (total = base + adapters; quantized ones counted whole)
  model::QuantStats quant;           // QLoRA only
  std::string line;                  // "trainable params: X || all params: Y || trainable%: Z"
  std::string detail;                // r, alpha, modules, base dtype; NF4 bytes per parameter
};

// The targets --lora-targets names, or the architecture's default (PEFT: llama q_proj,v_proj; gpt2 c_attn).
std::vector<std::string> lora_targets(const TrainConfig& cfg, const model::ModelConfig& mc);

// Checks and applies cfg.method to a freshly loaded model (no-op for full but the summary). Errors
// (targets, adapter shapes, NF4 block) come before the model changes.
MethodSummary apply_method(model::CausalLM& m, const TrainConfig& cfg, model::Precision precision);

}  // namespace shardtune::train
