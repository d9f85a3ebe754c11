// The identity of the tokenizer a model's training data was prepared with, as manifest.json records it,
// and its file shardtune_tokenizer.json, which every folder we write carries (trainer --out, checkpoints,
// merge and checkpoint exports). Torch-free.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "shardtune/data/manifest.h"

namespace shardtune::exporter {

inline constexpr const char* kTokenizerRecordFile = "shardtune_tokenizer.json";

struct TokenizerRecord {
  std::string name, source, hash;  // Tokenizer::name ("byte", "sentencepiece", "gpt2-bpe", "hf-bpe-..."), SPEC, hash
  std::vector<data::ManifestFile> files;  // the files prep read, absolute, in hash order (empty: an older manifest)
  int64_t vocab_size = 0, bos_id = -1, eos_id = -1, pad_id = -1, unk_id = -1;
  std::string bos_token, eos_token, pad_token, unk_token;  // "" = none, or not recorded (older manifests)
  std::optional<bool> add_bos;
  std::string chat_template;  // Jinja, "" = the data used none
};

// shardtune_tokenizer.json: the record, plus what the folder holding it has in Hugging Face form.
struct TokenizerRecordFile {
  TokenizerRecord record;
  std::map<std::string, std::string> hf_files;  // file name in the folder -> its sha256
  std::string note;                             // why no Hugging Face tokenizer files are there ("" = they are)
};

TokenizerRecord record_from_manifest(const data::Manifest& m);

// Writes `dir`/shardtune_tokenizer.json (atomically).
void write_record_file(const std::filesystem::path& dir, const TokenizerRecordFile& f);

// Reads `dir`/shardtune_tokenizer.json; std::nullopt when there is none. Files of older versions (only
// name, source, hash, bos_id, eos_id) read as records without files. Throws Error naming the file when it
// is not a shardtune tokenizer record.
std::optional<TokenizerRecordFile> read_record_file(const std::filesystem::path& dir);

}  // namespace shardtune::exporter
