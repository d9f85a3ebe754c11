// tokenizer_source_files / tokenizer_hash_from_digests: the inverse of how each loader names its source
// (Tokenizer::source) and hashes its files (hf_json.cpp, gpt2_files.cpp, data_prep/sentencepiece_tokenizer.cpp).
#include "shardtune/tokenizer/source_files.h"

#include <filesystem>

#include "shardtune/core/fs.h"

namespace shardtune {

namespace stdfs = std::filesystem;

std::vector<std::string> tokenizer_source_files(const Tokenizer& t) {
  if (t.name == "byte" || t.source.empty()) return {};
  std::vector<std::string> files;
  // Absolute but with links kept: in a Hugging Face cache tokenizer.json links to a blob, and its
  // tokenizer_config.json is beside the link, not beside the blob.
  auto add = [&](const std::string& p) { files.push_back(stdfs::absolute(p).lexically_normal().string()); };
  if (t.name == "gpt2-bpe") {  // source "encoder.json,vocab.bpe"
    const auto comma = t.source.find(',');
    add(t.source.substr(0, comma));
    if (comma != std::string::npos) add(t.source.substr(comma + 1));
    return files;
  }
  add(t.source);
  // hf_json.cpp hashes the tokenizer_config.json beside tokenizer.json (and reads its special tokens).
  if (t.name.rfind("hf-", 0) == 0) {
    const stdfs::path cfg = stdfs::path(files[0]).parent_path() / "tokenizer_config.json";
    std::error_code ec;
    if (stdfs::exists(cfg, ec)) files.push_back(cfg.string());
  }
  return files;
}

std::string tokenizer_hash_from_digests(const std::string& name, const std::vector<std::string>& digests) {
  if (name == "sentencepiece") return digests.empty() ? std::string() : digests[0];  // sha256 of the .model itself
  std::string joined;
  for (const auto& d : digests) joined += d;
  return fs::sha256_hex(joined);
}

}  // namespace shardtune
