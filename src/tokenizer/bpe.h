// The BPE model: vocabulary, merge ranks, and the O(n log n) merge loop over one pre-tokenized word.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "shardtune/tokenizer/tokenizer.h"

namespace shardtune::tok {

// Open-addressing map from an id pair to (rank, merged id); the hot lookup of the merge loop.
class MergeTable {
 public:
  struct Entry {
    uint64_t key;
    uint32_t rank;
    TokenId id;
  };
  void build(const std::vector<std::pair<uint64_t, std::pair<uint32_t, TokenId>>>& items);
  const Entry* find(TokenId a, TokenId b) const {
    if (mask_ == 0) return nullptr;
    uint64_t key = pack(a, b);
    size_t h = hash(key) & mask_;
    while (true) {
      const Entry& e = slots_[h];
      if (e.key == key) return &e;
      if (e.key == kEmpty) return nullptr;
      h = (h + 1) & mask_;
    }
  }
  static uint64_t pack(TokenId a, TokenId b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

 private:
  static constexpr uint64_t kEmpty = ~0ULL;
  static size_t hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return static_cast<size_t>(k);
  }
  std::vector<Entry> slots_;
  size_t mask_ = 0;
};

// How the model splits a word into initial symbols.
enum class BpeUnits {
  Bytes,  // byte-level BPE (GPT-2, Llama 3, Qwen): symbols are bytes; vocab strings are GPT-2 byte chars
  Chars,  // SentencePiece-style BPE (Llama 2, Mistral): symbols are UTF-8 chars, optional <0xXX> fallback
};

struct BpeConfig {
  BpeUnits units = BpeUnits::Chars;
  bool byte_fallback = false;
  bool fuse_unk = false;
  bool ignore_merges = false;
  std::optional<std::string> unk_token;
};

class BpeModel {
 public:
  // vocab: (token string as written in the file, id); merges: pairs of token strings in rank order.
  // `file` names the source for error messages.
  BpeModel(const BpeConfig& cfg, const std::vector<std::pair<std::string, TokenId>>& vocab,
           const std::vector<std::pair<std::string, std::string>>& merges, const std::string& file);

  // Appends the ids of one pre-tokenized word (raw UTF-8 bytes, never byte-level chars). Uses a
  // bounded per-thread cache for short words.
  void encode_word(std::string_view word, std::vector<TokenId>& out) const;

  int32_t size() const { return static_cast<int32_t>(id_to_token_.size()); }
  const std::string& token(TokenId id) const { return id_to_token_[id]; }  // file form
  std::optional<TokenId> find(std::string_view token) const;              // file form
  BpeUnits units() const { return cfg_.units; }
  std::optional<TokenId> unk_id() const { return unk_id_; }

 private:
  static constexpr int32_t kSmallWord = 256;
  void encode_piece(std::string_view word, std::vector<TokenId>& out) const;
  void merge_word(std::string_view word, std::vector<TokenId>& out) const;
  void merge_small(std::vector<TokenId>& ids, std::vector<TokenId>& out) const;
  void initial_symbols(std::string_view word, std::vector<TokenId>& ids, std::vector<uint32_t>& lens) const;

  BpeConfig cfg_;
  uint64_t serial_;  // identifies this model in per-thread caches
  std::vector<std::string> id_to_token_;
  std::unordered_map<std::string, TokenId> token_to_id_;   // file form
  std::unordered_map<std::string, TokenId> raw_to_id_;     // Bytes units: raw byte string form
  std::unordered_map<uint32_t, TokenId> char_to_id_;       // Chars units: single code point tokens
  TokenId ascii_ids_[128];  // Chars: id of each single ASCII char (-1 if absent)
  TokenId byte_ids_[256];  // Bytes: id of each byte; Chars: id of "<0xXX>" (-1 if absent)
  std::optional<TokenId> unk_id_;
  bool split_at_marker_ = false;  // Chars: words may be cut before each "▁" run (see encode_word)
  MergeTable merges_;
};

}  // namespace shardtune::tok
