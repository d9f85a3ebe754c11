// `shardtune-export gguf`: a model (Hugging Face folder or llama2.c .bin), optionally with a PEFT LoRA adapter
// merged on the way, written as one GGUF file llama.cpp / Ollama / LM Studio load; or the adapter alone as a
// GGUF LoRA adapter file (`llama-cli -m base.gguf --lora adapter.gguf`). Tensors are read, converted and written
// one at a time (peak memory ~ the largest tensor). Every check (architecture, tensor names, dtypes, tokenizer
// against the vocabulary) passes before the file is created; it is written as "<out>.partial" and renamed.
// Name mapping, RoPE row permutation and metadata keys: docs/FORMAT.md "GGUF".
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace shardtune::exporter {

struct GgufOptions {
  std::filesystem::path model;    // HF folder (config.json + safetensors) or llama2.c .bin
  std::filesystem::path adapter;  // optional PEFT LoRA folder
  bool adapter_only = false;      // write `adapter` as a GGUF LoRA adapter file instead of merging it
  std::string tokenizer;          // tokenizer SPEC (required for a model file, unused for an adapter file)
  std::filesystem::path out;      // FILE.gguf; must not exist
  std::string dtype = "f16";      // f32 | f16 | bf16 | q8_0 (1-D tensors are always F32)
  std::string name;               // general.name; default: the model folder's (or file's) name
  std::string chat_template;      // "" = the model folder's tokenizer_config.json chat_template, if any
};

struct GgufResult {
  int64_t tensors = 0;
  int64_t merged = 0;      // base weights that received an adapter delta (merge mode)
  int64_t fallbacks = 0;   // q8_0 tensors whose rows are not a multiple of 32, written as F16 instead
  uint64_t bytes = 0;      // file size
};

GgufResult export_gguf(const GgufOptions& opts);

}  // namespace shardtune::exporter
