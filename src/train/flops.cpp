// Model FLOPs per trained token (see train/flops.h): the formula behind the trainer's mfu.
#include "shardtune/train/flops.h"

namespace shardtune::train {

double flops_per_token(const model::CausalLM& model, int64_t trained_params, int64_t row_len) {
  const auto& mc = model.config();
  double lookup_params = 0;
  for (const auto& [name, t] : model.hf_parameters())
    if ((!mc.tie_word_embeddings && (name == "model.embed_tokens.weight" || name == "transformer.wte.weight")) ||
        name == "transformer.wpe.weight")
      lookup_params += static_cast<double>(t.numel());
  const double attention = 12.0 * mc.num_layers * mc.hidden_size * static_cast<double>(row_len);
  if (!model.has_lora()) return 6.0 * (static_cast<double>(trained_params) - lookup_params) + attention;
  // LoRA: the frozen base's matmuls run forward (2) and backward for the input gradient only (2); the
  // adapters as any trained weight (6).
  return 4.0 * (static_cast<double>(model.base_param_count()) - lookup_params) + 6.0 * static_cast<double>(trained_params) +
         attention;
}

}  // namespace shardtune::train
