// PEFT LoRA adapter folders: adapter_config.json + adapter_model.safetensors, the layout Hugging Face
// PEFT's save_pretrained writes and from_pretrained reads. Tensor keys are
// "base_model.model.<module path>.lora_A.weight" ([r, in]) and ".lora_B.weight" ([out, r]), with no
// adapter name; <module path> is the base model's module ("model.layers.0.self_attn.q_proj",
// "transformer.h.0.attn.c_attn"). The delta of a module is scale * B @ A ([out, in]); for GPT-2's
// Conv1D (fan_in_fan_out, weight stored [in, out]) it is added transposed.
#pragma once

#include <ATen/ATen.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace shardtune::model {

struct AdapterConfig {
  int64_t r = 16;
  double alpha = 32;
  double dropout = 0.0;
  bool use_rslora = false;
  bool fan_in_fan_out = false;              // true for GPT-2 (Conv1D weights [in, out])
  std::vector<std::string> target_modules;  // short names as given ("q_proj", "c_attn") or "all-linear"
  std::string base_model_name_or_path;
  std::string init = "true";                // PEFT init_lora_weights: "true" (Kaiming A, zero B) | "gaussian"

  double scale() const;  // alpha / r, or alpha / sqrt(r) with use_rslora
};

// Reads and checks adapter_config.json (peft_type LORA; r > 0; numbers finite). Error naming the file
// and key. Unknown keys written by newer PEFT versions are ignored.
AdapterConfig read_adapter_config(const std::filesystem::path& dir);
// The minimal config old and new PEFT both accept (peft_type, task_type CAUSAL_LM, r, lora_alpha,
// lora_dropout, target_modules, bias "none", fan_in_fan_out, use_rslora, base_model_name_or_path,
// init_lora_weights), written atomically.
void write_adapter_config(const std::filesystem::path& dir, const AdapterConfig& cfg);

// One module's LoRA pair, keyed in AdapterWeights by module path (no "base_model.model." prefix).
struct LoraPair {
  at::Tensor A;  // [r, in] fp32
  at::Tensor B;  // [out, r] fp32
};
using AdapterWeights = std::map<std::string, LoraPair>;

// Reads adapter_model.safetensors (any float dtype -> fp32). Checks: every lora_A has its lora_B and
// vice versa, both 2-D, A rows == B cols == cfg.r, names end in .lora_A.weight / .lora_B.weight (other
// keys, e.g. "lora_embedding_A" or a score head, are an Error naming them; except the reward head
// base_model.model.score.weight when adapter_config.json lists modules_to_save ["score"]: skipped here, read
// by train::load_score_from_adapter). Error naming file and tensor.
AdapterWeights read_adapter_weights(const std::filesystem::path& dir, const AdapterConfig& cfg);
// A reward model's head in an adapter folder (--objective reward --method lora|qlora): the fp32 tensor
// base_model.model.score.weight [1, hidden] of adapter_model.safetensors, or an undefined tensor when the
// folder holds none (a plain LoRA adapter). For the exporters (merge, gguf), which must not drop it.
at::Tensor read_adapter_score(const std::filesystem::path& dir);
// Writes adapter_model.safetensors (fp32) with PEFT keys, atomically.
void write_adapter_weights(const std::filesystem::path& dir, const AdapterWeights& w);

// scale * B @ A, oriented like the base weight: [out, in], or [in, out] when fan_in_fan_out.
at::Tensor lora_delta(const LoraPair& p, double scale, bool fan_in_fan_out);

// Matches every adapter module to the base weight it merges into, before any work: "<module>.weight"
// among `base_weights` (HF name -> shape; a GPT-2 name with or without "transformer."), whose shape must
// be the delta's ([out, in], or [in, out] for Conv1D). cfg.fan_in_fan_out must equal `conv1d_arch`
// (GPT-2). Error naming the module, both shapes and `base_what` (e.g. the base folder). Returns
// module path -> base weight name.
std::map<std::string, std::string> match_adapter_to_base(const AdapterConfig& cfg, const AdapterWeights& w,
                                                         const std::map<std::string, std::vector<int64_t>>& base_weights,
                                                         bool conv1d_arch, const std::filesystem::path& adapter_dir,
                                                         const std::string& base_what);

}  // namespace shardtune::model
