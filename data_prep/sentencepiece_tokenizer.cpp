// Tokenizer over sentencepiece::SentencePieceProcessor. SentencePiece itself never parses control
// pieces (<s>, </s>) out of text, which is exactly parse_special=false; for parse_special=true we split
// the text at control/unknown piece strings first and encode the pieces between them separately.
#include "sentencepiece_tokenizer.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <filesystem>

#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"

namespace shardtune {

namespace {

class SentencePieceTokenizer : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& path) {
    ST_CHECK(std::filesystem::exists(path), "SentencePiece model " + path + " does not exist",
             "check the --tokenizer path");
    auto status = sp_.Load(path);
    ST_CHECK(status.ok(), "cannot load SentencePiece model " + path + ": " + status.ToString(),
             "the file is not a SentencePiece .model (or is truncated)");
    name = "sentencepiece";
    source = path;
    hash = fs::sha256_file(path);
    if (sp_.bos_id() >= 0) bos_id = sp_.bos_id();
    if (sp_.eos_id() >= 0) eos_id = sp_.eos_id();
    if (sp_.pad_id() >= 0) pad_id = sp_.pad_id();
    if (sp_.unk_id() >= 0) unk_id = sp_.unk_id();
    add_bos = true;
    for (int id = 0; id < sp_.GetPieceSize(); ++id)
      if (sp_.IsControl(id) || sp_.IsUnknown(id)) specials_.emplace_back(sp_.IdToPiece(id), id);
    std::stable_sort(specials_.begin(), specials_.end(),
                     [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  }

  std::vector<TokenId> encode(std::string_view text, bool parse_special) const override {
    std::vector<TokenId> out;
    if (!parse_special) {
      encode_plain(text, out);
      return out;
    }
    size_t start = 0, i = 0;
    while (i < text.size()) {
      const std::pair<std::string, TokenId>* hit = nullptr;
      for (const auto& s : specials_)
        if (!s.first.empty() && text.compare(i, s.first.size(), s.first) == 0) {
          hit = &s;
          break;
        }
      if (!hit) {
        ++i;
        continue;
      }
      encode_plain(text.substr(start, i - start), out);
      out.push_back(hit->second);
      i += hit->first.size();
      start = i;
    }
    encode_plain(text.substr(start), out);
    return out;
  }

  std::string decode(const std::vector<TokenId>& ids, bool skip_special) const override {
    std::string out;
    std::vector<int> run;
    auto flush = [&] {
      if (run.empty()) return;
      std::string piece;
      sp_.Decode(run, &piece);
      // SentencePiece drops the leading space of a run; after a special token keep it (as HF does).
      if (!out.empty() && sp_.IdToPiece(run[0]).rfind("\xE2\x96\x81", 0) == 0) out += ' ';
      out += piece;
      run.clear();
    };
    for (TokenId id : ids) {
      ST_CHECK(id >= 0 && id < sp_.GetPieceSize(),
               "cannot decode id " + std::to_string(id) + ": out of range for " + source + " (vocab size " +
                   std::to_string(sp_.GetPieceSize()) + ")",
               "the ids were produced with a different tokenizer");
      if (sp_.IsControl(id) || sp_.IsUnknown(id)) {
        flush();
        if (!skip_special) out += sp_.IdToPiece(id);
      } else {
        run.push_back(id);
      }
    }
    flush();
    return out;
  }

  int32_t vocab_size() const override { return sp_.GetPieceSize(); }
  std::string token_text(TokenId id) const override {
    return id >= 0 && id < sp_.GetPieceSize() ? sp_.IdToPiece(id) : std::string();
  }
  std::optional<TokenId> token_to_id(std::string_view token) const override {
    int id = sp_.PieceToId(std::string(token));
    if (id < 0 || sp_.IdToPiece(id) != token) return std::nullopt;
    return id;
  }
  std::vector<std::pair<std::string, TokenId>> special_tokens() const override { return specials_; }

 private:
  void encode_plain(std::string_view text, std::vector<TokenId>& out) const {
    if (text.empty()) return;
    std::vector<int> ids;
    auto status = sp_.Encode(text, &ids);
    ST_CHECK(status.ok(), "SentencePiece failed to encode text with " + source + ": " + status.ToString());
    out.insert(out.end(), ids.begin(), ids.end());
  }

  sentencepiece::SentencePieceProcessor sp_;
  std::vector<std::pair<std::string, TokenId>> specials_;
};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& model_path) {
  return std::make_unique<SentencePieceTokenizer>(model_path);
}

std::unique_ptr<Tokenizer> load_tokenizer_any(const std::string& spec) {
  if (ends_with(spec, ".model")) return load_sentencepiece(spec);
  namespace stdfs = std::filesystem;
  if (stdfs::is_directory(spec) && !stdfs::exists(stdfs::path(spec) / "tokenizer.json") &&
      stdfs::exists(stdfs::path(spec) / "tokenizer.model"))
    return load_sentencepiece((stdfs::path(spec) / "tokenizer.model").string());
  return load_tokenizer(spec);
}

}  // namespace shardtune
