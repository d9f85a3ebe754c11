// `shardtune-export checkpoint`: a trainer checkpoint (see shardtune/checkpoint/files.h) as a model other
// tools load. Full fine-tuning (config.json + model.safetensors, fp32) -> a Hugging Face model folder in
// the dtype asked (default: the base model's dtypes, recorded in the trainer state; F32 where none is);
// LoRA / QLoRA (adapter_config.json + adapter_model.safetensors) -> a PEFT adapter folder. The checkpoint
// must verify against its manifest first; the folder is built as "<out>.partial" and renamed onto --out.
#pragma once

#include <filesystem>
#include <string>

namespace shardtune::exporter {

struct CheckpointExportOptions {
  std::filesystem::path ckpt;  // a step-N folder, or a --ckpt-dir (then the checkpoint `latest` names)
  std::filesystem::path out;   // must be absent or empty
  std::string dtype;           // "" = as the base model was loaded (full) / as saved (adapter); F32 | BF16 | F16
};

struct CheckpointExportResult {
  std::filesystem::path ckpt;  // the checkpoint folder exported
  bool adapter = false;        // a PEFT adapter (LoRA / QLoRA) rather than a whole model
  int64_t step = 0;
};

CheckpointExportResult export_checkpoint(const CheckpointExportOptions& opts);

}  // namespace shardtune::exporter
