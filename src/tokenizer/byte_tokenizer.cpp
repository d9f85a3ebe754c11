// The "byte" tokenizer: ids 0..255 are bytes, then <s>=256 (BOS), </s>=257 (EOS), <pad>=258.
#include "loaders.h"
#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"

namespace shardtune::tok {

namespace {

const char* const kSpecial[3] = {"<s>", "</s>", "<pad>"};

class ByteTokenizer : public Tokenizer {
 public:
  ByteTokenizer() {
    name = "byte";
    source = "byte";
    hash = fs::sha256_hex("shardtune byte tokenizer v1");
    bos_id = 256;
    eos_id = 257;
    pad_id = 258;
    add_bos = true;  // Llama-like convention: every sample starts with <s>
  }

  std::vector<TokenId> encode(std::string_view text, bool parse_special) const override {
    std::vector<TokenId> out;
    out.reserve(text.size());
    for (size_t i = 0; i < text.size();) {
      if (parse_special && text[i] == '<') {
        bool hit = false;
        for (int k = 0; k < 3; ++k) {
          std::string_view s = kSpecial[k];
          if (text.compare(i, s.size(), s) == 0) {
            out.push_back(256 + k);
            i += s.size();
            hit = true;
            break;
          }
        }
        if (hit) continue;
      }
      out.push_back(static_cast<unsigned char>(text[i++]));
    }
    return out;
  }

  std::string decode(const std::vector<TokenId>& ids, bool skip_special) const override {
    std::string out;
    out.reserve(ids.size());
    for (TokenId id : ids) {
      ST_CHECK(id >= 0 && id < 259, "cannot decode id " + std::to_string(id) + " with the byte tokenizer (ids 0..258)",
               "the ids were produced with a different tokenizer");
      if (id < 256)
        out += static_cast<char>(id);
      else if (!skip_special)
        out += kSpecial[id - 256];
    }
    return out;
  }

  int32_t vocab_size() const override { return 259; }
  std::vector<std::pair<std::string, TokenId>> special_tokens() const override {
    return {{kSpecial[0], 256}, {kSpecial[1], 257}, {kSpecial[2], 258}};
  }
  std::string token_text(TokenId id) const override {
    if (id >= 0 && id < 256) return std::string(1, static_cast<char>(id));
    if (id >= 256 && id < 259) return kSpecial[id - 256];
    return {};
  }
  std::optional<TokenId> token_to_id(std::string_view token) const override {
    if (token.size() == 1) return static_cast<unsigned char>(token[0]);
    for (int k = 0; k < 3; ++k)
      if (token == kSpecial[k]) return 256 + k;
    return std::nullopt;
  }
};

}  // namespace

std::unique_ptr<Tokenizer> make_byte_tokenizer() { return std::make_unique<ByteTokenizer>(); }

}  // namespace shardtune::tok
