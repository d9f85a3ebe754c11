// Loading and saving models: Hugging Face folders (config.json + safetensors, single or sharded) and
// llama2.c legacy .bin files; safetensors <-> at::Tensor conversion.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "shardtune/model/model.h"
#include "shardtune/model/safetensors.h"

namespace shardtune::model {

// `path` is an HF model folder (or its config.json) or a llama2.c .bin file. Parameters are fp32 on CPU.
// config.json is range-checked and compared with the safetensors headers (tensor names and shapes; the
// llama2.c header with the file size) before the model is allocated; a mismatch names tensor and key.
std::shared_ptr<CausalLM> load_model(const std::string& path);
std::shared_ptr<CausalLM> load_hf(const std::filesystem::path& dir);
std::shared_ptr<CausalLM> load_llama2c(const std::filesystem::path& file);
// load_hf's check of config.json (parsed from `cfg_path`) against the safetensors headers of `files`
// (tensor names, shapes, float dtypes, layer count), for tools that stream the weights instead of loading them.
void check_hf_weights(const ModelConfig& cfg, const std::vector<std::unique_ptr<st::File>>& files,
                      const std::string& cfg_path);

struct SaveOptions {
  uint64_t max_shard_bytes = 0;  // 0: one model.safetensors; else shards + model.safetensors.index.json
  std::string dtype;             // "" = each tensor's dtype as loaded (F32 if new); or "F32" | "BF16" | "F16"
  // A checkpoint's share: with parts >= 1, `parts` writers (the ranks) write one folder at the same time
  // and this call writes part `part` (st::write_part: whole tensors, about equal bytes; part 0 also
  // config.json and the index), hashing as it writes; nothing in the folder is removed and max_shard_bytes
  // is not used. Every file written is listed in *written when given (the caller fsyncs them).
  int part = 0, parts = 0;
  std::vector<st::WrittenFile>* written = nullptr;
};
// The indices of `params` whose data save_hf(..., opts) reads: every one, or a share's (--async-save
// copies only these; the others may be placeholders of the right shape and dtype, e.g. on the meta device).
std::vector<size_t> save_hf_reads(const std::vector<std::pair<std::string, at::Tensor>>& params,
                                  const std::map<std::string, std::string>& source_dtypes, const SaveOptions& opts);
// Throws Error naming the first weight holding NaN or Inf (with how many of each), `when` saying where it
// was found (e.g. "in model/ as loaded"). The trainer checks at start and before saving; generate at load.
void check_weights_finite(const CausalLM& model, const std::string& when, const std::string& hint);

// Writes config.json and the weights in HF layout; replaces earlier model*.safetensors in `dir`.
void save_hf(const CausalLM& model, const std::filesystem::path& dir, const SaveOptions& opts = {});
// The same from a model's parts: its config, its HF parameters (e.g. copies taken earlier, as
// --async-save does) and the dtypes they were loaded in (for "as loaded").
void save_hf(const ModelConfig& config, const std::vector<std::pair<std::string, at::Tensor>>& params,
             const std::map<std::string, std::string>& source_dtypes, const std::filesystem::path& dir,
             const SaveOptions& opts = {});

// Tensor conversion. to_tensor copies into an owned tensor of the file's dtype.
at::ScalarType to_scalar_type(st::DType d);
st::DType to_st_dtype(at::ScalarType t);
at::Tensor to_tensor(const st::File& f, const st::TensorInfo& t);
std::map<std::string, at::Tensor> read_safetensors(const std::filesystem::path& path);
void write_safetensors(const std::filesystem::path& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// llama2.c stores q/k rows with RoPE pairs interleaved (Meta layout); HF uses rotate_half. These convert
// a [n_heads*hd, C] weight between the two (HF's convert_llama_weights_to_hf `permute` and its inverse).
at::Tensor interleaved_to_hf(const at::Tensor& w, int64_t n_heads);
at::Tensor hf_to_interleaved(const at::Tensor& w, int64_t n_heads);

// Merges a PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) into the weights:
// W += scale * B @ A with scale = lora_alpha / r (or / sqrt(r) with use_rslora). Returns tensors merged.
int merge_lora(CausalLM& model, const std::filesystem::path& adapter_dir);

}  // namespace shardtune::model
