// The Hugging Face-style tokenization pipeline used by every BPE tokenizer we read: added-token
// splitting -> normalizers -> pre-tokenizers -> BPE model, and decoders for the way back.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "bpe.h"
#include "regex.h"
#include "shardtune/tokenizer/tokenizer.h"

namespace shardtune::tok {

// Strings created by pre-tokenizers (e.g. Metaspace replacing ' ') live here for one encode call.
using Arena = std::vector<std::unique_ptr<std::string>>;

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void apply(std::string& s) const = 0;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces `pieces` by their splits. `segment_index` counts the segments of the input after
  // added-token extraction (0 = the first), for Metaspace's prepend_scheme "first".
  virtual void split(std::vector<std::string_view>& pieces, Arena& arena, size_t segment_index) const = 0;
  virtual bool is_byte_level() const { return false; }
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

// ---- components (constructed by the tokenizer.json reader) ----

struct PrependNormalizer : Normalizer {
  std::string prefix;
  void apply(std::string& s) const override {
    if (!s.empty()) s.insert(0, prefix);
  }
};

struct NfcNormalizer : Normalizer {
  void apply(std::string& s) const override;
};

struct ReplaceNormalizer : Normalizer {
  std::unique_ptr<Regex> pattern;
  std::string content;
  void apply(std::string& s) const override;
};

// How a Split pre-tokenizer treats the matched delimiters.
enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

struct SplitPreTokenizer : PreTokenizer {
  std::unique_ptr<Regex> pattern;
  SplitBehavior behavior = SplitBehavior::Isolated;
  bool invert = false;
  void split(std::vector<std::string_view>& pieces, Arena& arena, size_t segment_index) const override;
};

struct ByteLevelPreTokenizer : PreTokenizer {
  bool add_prefix_space = false;
  std::unique_ptr<Regex> pattern;  // null when use_regex is false
  void split(std::vector<std::string_view>& pieces, Arena& arena, size_t segment_index) const override;
  bool is_byte_level() const override { return true; }
};

enum class PrependScheme { Always, First, Never };

struct MetaspacePreTokenizer : PreTokenizer {
  std::string replacement = "\xE2\x96\x81";  // U+2581
  PrependScheme prepend = PrependScheme::Always;
  bool split_words = true;
  void split(std::vector<std::string_view>& pieces, Arena& arena, size_t segment_index) const override;
};

// Digits, Whitespace, WhitespaceSplit are all "split by a regex with a behavior".
std::unique_ptr<SplitPreTokenizer> make_digits(bool individual, const std::string& ctx);
std::unique_ptr<SplitPreTokenizer> make_whitespace(const std::string& ctx);
std::unique_ptr<SplitPreTokenizer> make_whitespace_split(const std::string& ctx);

struct ByteLevelDecoder : Decoder {
  void decode_chain(std::vector<std::string>& tokens) const override;
};
struct ReplaceDecoder : Decoder {
  std::unique_ptr<Regex> pattern;
  std::string content;
  void decode_chain(std::vector<std::string>& tokens) const override;
};
struct ByteFallbackDecoder : Decoder {
  void decode_chain(std::vector<std::string>& tokens) const override;
};
struct FuseDecoder : Decoder {
  void decode_chain(std::vector<std::string>& tokens) const override;
};
struct StripDecoder : Decoder {
  std::string content = " ";
  size_t start = 0, stop = 0;
  void decode_chain(std::vector<std::string>& tokens) const override;
};
struct MetaspaceDecoder : Decoder {
  std::string replacement = "\xE2\x96\x81";
  bool strip_first = true;
  void decode_chain(std::vector<std::string>& tokens) const override;
};

struct AddedToken {
  std::string content;
  TokenId id = 0;
  bool special = false;
  bool lstrip = false, rstrip = false;
};

// A complete BPE tokenizer built from parts.
class PipelineTokenizer : public Tokenizer {
 public:
  std::unique_ptr<BpeModel> model;
  std::vector<std::unique_ptr<Normalizer>> normalizers;      // applied in order
  std::vector<std::unique_ptr<PreTokenizer>> pre_tokenizers;  // applied in order
  std::vector<std::unique_ptr<Decoder>> decoders;             // applied in order
  bool has_decoder = false;                                   // false: decode joins tokens with ' '

  // Call after filling the fields above.
  void set_added_tokens(std::vector<AddedToken> tokens);
  const std::vector<AddedToken>& added_tokens() const { return added_; }

  std::vector<TokenId> encode(std::string_view text, bool parse_special = false) const override;
  std::string decode(const std::vector<TokenId>& ids, bool skip_special = false) const override;
  int32_t vocab_size() const override { return vocab_size_; }
  std::string token_text(TokenId id) const override;
  std::optional<TokenId> token_to_id(std::string_view token) const override;
  std::vector<std::pair<std::string, TokenId>> special_tokens() const override;

 private:
  struct Segment {
    size_t start, end;
    TokenId added;  // -1: ordinary text
  };
  void split_added(std::string_view text, bool parse_special, std::vector<Segment>& out) const;
  void encode_text(std::string_view text, size_t segment_index, std::vector<TokenId>& out) const;

  std::vector<AddedToken> added_;
  std::unordered_map<TokenId, size_t> added_by_id_;
  std::unordered_map<std::string, size_t> added_by_text_;
  // Added tokens bucketed by first byte, longest first, separately for "all" and "non-special only".
  std::vector<size_t> by_first_all_[256], by_first_plain_[256];
  bool any_plain_ = false, any_added_ = false;
  int32_t vocab_size_ = 0;
};

}  // namespace shardtune::tok
