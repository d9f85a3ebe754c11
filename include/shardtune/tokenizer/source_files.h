// Which files a loaded tokenizer was read from, and its hash (Tokenizer::hash) recomputed from their
// contents: what prep records in manifest.json so that a model folder written later can carry the same
// tokenizer files and check first that they did not change (export/hf_tokenizer_files.h).
#pragma once

#include <string>
#include <vector>

#include "shardtune/tokenizer/tokenizer.h"

namespace shardtune {

// Absolute paths in hash order: a Hugging Face tokenizer.json, then the tokenizer_config.json beside it when
// there is one; GPT-2's encoder.json (vocab.json), then vocab.bpe (merges.txt); a SentencePiece .model.
// Empty for "byte", which is read from no file.
std::vector<std::string> tokenizer_source_files(const Tokenizer& t);

// Tokenizer::hash of a tokenizer of kind `name` (Tokenizer::name) from the sha256 hex digests of its files,
// in tokenizer_source_files order.
std::string tokenizer_hash_from_digests(const std::string& name, const std::vector<std::string>& digests);

}  // namespace shardtune
