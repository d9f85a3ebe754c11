// The tokenizer interface shared by prep, the trainer and the tools, and the loader for every
// tokenizer kind that does not need libsentencepiece (see data_prep/sentencepiece_tokenizer.h for
// `.model`). Conventions (BOS/EOS, add_bos, parse_special) are documented in docs/TOKENIZERS.md.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shardtune {

using TokenId = int32_t;

// A tokenizer turns UTF-8 text into ids and back. Implementations are immutable after construction
// and `encode`/`decode` are safe to call from many threads at once (caches are per thread or locked).
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Encodes text WITHOUT adding BOS/EOS. When `parse_special` is false (user content), special token
  // strings such as "<|endoftext|>" or "</s>" are treated as ordinary text; when true (trusted template
  // text) they become their ids. Added tokens that are not special are always matched, as in HF.
  virtual std::vector<TokenId> encode(std::string_view text, bool parse_special = false) const = 0;

  // Decodes ids to text; special tokens are rendered as their strings unless `skip_special`.
  virtual std::string decode(const std::vector<TokenId>& ids, bool skip_special = false) const = 0;

  virtual int32_t vocab_size() const = 0;      // number of ids, including added/special tokens
  virtual std::string token_text(TokenId id) const = 0;  // raw vocabulary string of one id (debugging)
  virtual std::optional<TokenId> token_to_id(std::string_view token) const = 0;

  // Strings that `encode(text, /*parse_special=*/true)` turns into single special ids. Prep uses this to
  // split trusted template text at special tokens while user content stays plain text. The default
  // lists BOS/EOS/PAD; tokenizers with more added special tokens override it.
  virtual std::vector<std::pair<std::string, TokenId>> special_tokens() const {
    std::vector<std::pair<std::string, TokenId>> out;
    for (const auto& id : {bos_id, eos_id, pad_id})
      if (id) out.emplace_back(token_text(*id), *id);
    return out;
  }

  std::optional<TokenId> bos_id, eos_id, pad_id;
  std::optional<TokenId> unk_id;  // the model's unknown token, where it has one (SentencePiece, HF unk_token)
  bool add_bos = false;  // convention of this tokenizer: prepend BOS to each sample (Llama yes, GPT-2 no)
  std::string name;      // e.g. "gpt2-bpe", "hf-bpe-bytelevel", "hf-bpe-sentencepiece", "sentencepiece", "byte"
  std::string source;    // the spec it was loaded from
  std::string hash;      // sha256 over the file(s) it was loaded from (or over the name for "byte")
};

// Loads a tokenizer from a SPEC:
//   "byte"                              256 byte ids, then <s>=256, </s>=257, <pad>=258; add_bos=true
//                                       (Llama-like: each sample starts with <s>)
//   path/to/tokenizer.json  (or a dir holding one)   Hugging Face BPE (byte-level or SentencePiece-style)
//   path/to/encoder.json[,path/to/vocab.bpe] or a dir holding encoder.json+vocab.bpe or vocab.json+merges.txt
// A ".model" SPEC throws an Error saying only shardtune-prep/shardtune-tokenize read SentencePiece models.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec);

// Raw bytes in GPT-2's byte-level form (bytes_to_unicode), as byte-level BPE vocabularies spell their
// tokens: " the" -> "\u0120the".
std::string byte_level_string(std::string_view raw);

}  // namespace shardtune
