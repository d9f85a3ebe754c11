// `shardtune-export merge`: a PEFT LoRA adapter merged into its base model, written as a complete Hugging
// Face folder. An HF base is streamed one tensor at a time (read, add the adapter's delta in fp32, convert,
// write), so peak memory is about the largest tensor plus the adapter, not the model; a sharded base stays
// sharded the same way with a fresh model.safetensors.index.json. Every check (adapter against base,
// options, --out) passes before anything is written; the folder is built as "<out>.partial" and renamed
// onto --out when complete.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace shardtune::exporter {

struct MergeOptions {
  std::filesystem::path model;    // HF folder (config.json + model.safetensors, or shards + index) or llama2.c .bin
  std::filesystem::path adapter;  // PEFT LoRA folder (adapter_config.json + adapter_model.safetensors)
  std::filesystem::path out;      // must be absent or empty
  std::string dtype;              // "" = each tensor's dtype in the base; "F32" | "BF16" | "F16" (any case)
  int64_t progress_every = 0;     // a progress line every N tensors; 0: about 20 lines per model
};

struct MergeResult {
  int64_t tensors = 0;  // tensors written
  int64_t merged = 0;   // of them, weights that received an adapter delta
  int64_t files = 0;    // safetensors files written
  uint64_t bytes = 0;   // tensor bytes written
};

MergeResult merge_adapter(const MergeOptions& opts);

// "f32"/"fp32"/"F32" -> "F32", likewise BF16 and F16; "" stays "". Error naming --dtype otherwise.
std::string parse_output_dtype(const std::string& dtype);

}  // namespace shardtune::exporter
