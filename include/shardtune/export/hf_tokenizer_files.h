// The tokenizer side of every Hugging Face folder we write (trainer --out, shardtune-export merge and
// checkpoint), so that AutoTokenizer / AutoModelForCausalLM.from_pretrained(folder) need nothing else:
//   - the tokenizer files the data was prepared with, byte for byte: tokenizer.json (with the
//     tokenizer_config.json and special_tokens_map.json beside it), or SentencePiece's tokenizer.model,
//     or GPT-2's vocab.json + merges.txt (from encoder.json + vocab.bpe: the same formats);
//   - tokenizer_config.json: the input's own, byte for byte, unless it lacks a special token we know or the
//     data's chat template (then only those keys are set in its text); otherwise one written as
//     transformers' save_pretrained writes it (special tokens, add_bos_token/add_eos_token,
//     model_max_length, tokenizer_class, chat_template);
//   - generation_config.json (whole models only): bos/eos/pad_token_id of the data, the base model's other
//     generation settings kept;
//   - shardtune_tokenizer.json: the record (tokenizer_record.h) and the sha256 of each file above.
// The source files must still hash to what prep recorded; when one moved or changed, or the tokenizer
// has no Hugging Face form (the byte tokenizer), only shardtune_tokenizer.json is written, with a warning
// naming the file: a finished training run is never failed for its tokenizer files. Torch-free.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "shardtune/export/tokenizer_record.h"

namespace shardtune::exporter {

struct HfFolderOptions {
  bool model = true;             // a whole model; false: a PEFT adapter folder (no generation_config.json)
  int64_t model_max_length = 0;  // the model's positions (tokenizer_config.json's model_max_length); 0: left out
  std::filesystem::path base;    // the base model's folder or "": its generation_config.json's settings are kept
};

struct HfFolderResult {
  std::vector<std::string> files;  // the Hugging Face files written (shardtune_tokenizer.json is written too)
  std::string warning;             // why no tokenizer files were written ("" = they were, or the byte tokenizer)
};

// Writes the files above into `dir` (the staging folder) from the record's source files.
HfFolderResult write_hf_tokenizer_files(const std::filesystem::path& dir, const TokenizerRecord& rec,
                                        const HfFolderOptions& o);

// A checkpoint keeps the identity only (small): shardtune_tokenizer.json without files.
void write_tokenizer_record(const std::filesystem::path& dir, const TokenizerRecord& rec);

// For a folder of ours (a LoRA --out, a checkpoint): std::nullopt when `from` holds no
// shardtune_tokenizer.json (then the caller decides). Otherwise writes `to` from the Hugging Face files
// `from` holds (each checked against its recorded sha256), or, where it holds none, from the record's
// source files as write_hf_tokenizer_files does.
std::optional<HfFolderResult> carry_hf_tokenizer_files(const std::filesystem::path& from, const std::filesystem::path& to,
                                                       const HfFolderOptions& o);

}  // namespace shardtune::exporter
