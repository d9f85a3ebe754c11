// manifest.json of a prep folder, read with every field checked: a missing or mistyped field is an
// Error naming manifest.json and the field, and shard paths must stay inside the folder.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace shardtune::data {

// What a folder's samples are. Sequence: one token sequence per sample (today's SFT data). Preference
// (issue 11): one (chosen, rejected) pair per sample, stored as two consecutive sequences (docs/FORMAT.md).
enum class DataKind { Sequence, Preference };
const char* kind_name(DataKind k);  // "sequence" | "preference"

struct ManifestShard {
  std::string file;  // relative to the folder; never absolute, never with a ".." component
  std::string path;  // folder / file
  std::string split;
  DataKind kind = DataKind::Sequence;  // the manifest's kind
  int64_t samples = 0, tokens = 0, loss_tokens = 0;  // samples: pairs for preference data
  int64_t sequences = 0;  // sequences stored in the shard: samples, or 2 x samples for preference data
  std::string sha256;  // "" when the manifest has none (then content verification refuses the shard)
};

struct ManifestFile {
  std::string path, sha256;
};

struct Manifest {
  std::string path;  // .../manifest.json, for messages
  DataKind kind = DataKind::Sequence;  // "kind" (absent in manifests older than issue 11: sequence)
  std::string tokenizer_name, tokenizer_hash, tokenizer_source;
  int64_t vocab_size = 0, bos_id = -1, eos_id = -1, pad_id = -1;
  std::vector<ManifestShard> shards;  // in manifest order
  // Optional fields (absent in manifests of older preps: empty / -1 / nullopt), what a model folder needs to
  // carry the tokenizer in Hugging Face form (export/hf_tokenizer_files.h).
  std::optional<bool> add_bos;
  int64_t unk_id = -1;
  std::string bos_token, eos_token, pad_token, unk_token;  // the special tokens' strings; "" = none
  std::vector<ManifestFile> tokenizer_files;               // what prep read (absolute paths), in hash order
  std::string template_name, chat_template;                // chat_template: Jinja, "" = none
};

// Reads `dir`/manifest.json (nesting depth bounded first). Throws Error naming the file and field.
Manifest read_manifest(const std::string& dir);

// Throws unless `file` is a plain relative path (no "..", not absolute, not empty); `where` names it.
void check_relative_path(const std::string& file, const std::string& where);

}  // namespace shardtune::data
