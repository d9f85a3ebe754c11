// BPE merge loop with the same semantics as Hugging Face tokenizers' Word::merge_all: repeatedly merge
// the adjacent pair of lowest rank (leftmost first). Short words use a rank array; long ones a heap of
// candidates over a linked list of symbols, so a whole SentencePiece-style text costs O(n log n).
#include "bpe.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <functional>
#include <memory>

#include "shardtune/core/error.h"
#include "unicode.h"

namespace shardtune::tok {

void MergeTable::build(const std::vector<std::pair<uint64_t, std::pair<uint32_t, TokenId>>>& items) {
  size_t cap = 16;
  while (cap < items.size() * 2 + 1) cap <<= 1;
  slots_.assign(cap, Entry{kEmpty, 0, 0});
  mask_ = cap - 1;
  for (const auto& [key, v] : items) {
    size_t h = hash(key) & mask_;
    while (slots_[h].key != kEmpty && slots_[h].key != key) h = (h + 1) & mask_;
    if (slots_[h].key == key) continue;  // duplicate merge: the first (lowest rank) wins, as in HF
    slots_[h] = Entry{key, v.first, v.second};
  }
}

namespace {
std::atomic<uint64_t> g_serial{1};

// A direct-mapped cache of word -> ids, one per (thread, model). Bounded by construction.
struct WordCache {
  static constexpr size_t kSlots = 1 << 16;
  static constexpr size_t kMaxWord = 48;
  struct Slot {
    std::string key;
    std::vector<TokenId> ids;
    bool used = false;
  };
  std::vector<Slot> slots{kSlots};
};

WordCache& cache_for(uint64_t serial) {
  // A few models per thread are enough; older ones are dropped (their memory is reclaimed).
  thread_local std::vector<std::pair<uint64_t, std::unique_ptr<WordCache>>> caches;
  for (auto& [s, c] : caches)
    if (s == serial) return *c;
  if (caches.size() >= 4) caches.erase(caches.begin());
  caches.emplace_back(serial, std::make_unique<WordCache>());
  return *caches.back().second;
}
}  // namespace

BpeModel::BpeModel(const BpeConfig& cfg, const std::vector<std::pair<std::string, TokenId>>& vocab,
                   const std::vector<std::pair<std::string, std::string>>& merges, const std::string& file)
    : cfg_(cfg), serial_(g_serial.fetch_add(1)) {
  TokenId max_id = -1;
  for (const auto& [tok, id] : vocab) {
    ST_CHECK(id >= 0, file + ": vocabulary id " + std::to_string(id) + " of token '" + tok + "' is negative",
             "ids must be 0..N-1");
    max_id = std::max(max_id, id);
  }
  ST_CHECK(max_id < (1 << 30), file + ": vocabulary id " + std::to_string(max_id) + " is implausibly large");
  id_to_token_.assign(static_cast<size_t>(max_id + 1), std::string());
  token_to_id_.reserve(vocab.size() * 2);
  for (const auto& [tok, id] : vocab) {
    id_to_token_[id] = tok;
    token_to_id_.emplace(tok, id);
  }
  std::fill(std::begin(byte_ids_), std::end(byte_ids_), -1);
  std::string raw;
  if (cfg_.units == BpeUnits::Bytes) {
    raw_to_id_.reserve(vocab.size() * 2);
    for (const auto& [tok, id] : vocab)
      if (byte_level_decode(tok, raw)) {
        raw_to_id_.emplace(raw, id);
        if (raw.size() == 1) byte_ids_[static_cast<unsigned char>(raw[0])] = id;
      }
  } else {
    std::fill(std::begin(ascii_ids_), std::end(ascii_ids_), -1);
    for (const auto& [tok, id] : vocab) {
      if (tok.empty()) continue;
      size_t i = 0;
      uint32_t cp = utf8_next(tok, i);
      if (i != tok.size()) continue;
      char_to_id_.emplace(cp, id);
      if (cp < 128 && ascii_ids_[cp] < 0) ascii_ids_[cp] = id;
    }
    if (cfg_.byte_fallback)
      for (int b = 0; b < 256; ++b) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", b);
        auto it = token_to_id_.find(name);
        if (it != token_to_id_.end()) byte_ids_[b] = it->second;
      }
  }
  if (cfg_.units == BpeUnits::Chars && token_to_id_.count("\xE2\x96\x81")) {
    // SentencePiece-style vocabularies use U+2581 for spaces and only at the start of a token.
    const std::string marker = "\xE2\x96\x81";
    split_at_marker_ = true;
    for (const auto& [tok, id] : vocab) {
      size_t lead = 0;
      while (tok.compare(lead, marker.size(), marker) == 0) lead += marker.size();
      if (tok.find(marker, lead) != std::string::npos) {
        split_at_marker_ = false;
        break;
      }
    }
  }
  if (cfg_.unk_token) {
    auto it = token_to_id_.find(*cfg_.unk_token);
    ST_CHECK(it != token_to_id_.end(), file + ": unk_token '" + *cfg_.unk_token + "' is not in the vocabulary",
             "fix model.unk_token or add the token to model.vocab");
    unk_id_ = it->second;
  }

  std::vector<std::pair<uint64_t, std::pair<uint32_t, TokenId>>> items;
  items.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    auto ia = token_to_id_.find(a), ib = token_to_id_.find(b), im = token_to_id_.find(a + b);
    if (ia == token_to_id_.end() || ib == token_to_id_.end() || im == token_to_id_.end())
      ST_FAIL(file + ": merge #" + std::to_string(rank) + " '" + a + " " + b +
                  "' uses a token that is not in the vocabulary",
              "the vocabulary and merges come from different tokenizers, or the file is truncated");
    items.push_back({MergeTable::pack(ia->second, ib->second), {static_cast<uint32_t>(rank), im->second}});
  }
  merges_.build(items);
}

std::optional<TokenId> BpeModel::find(std::string_view token) const {
  auto it = token_to_id_.find(std::string(token));
  if (it == token_to_id_.end()) return std::nullopt;
  return it->second;
}

void BpeModel::initial_symbols(std::string_view word, std::vector<TokenId>& ids,
                               std::vector<uint32_t>& lens) const {
  if (cfg_.units == BpeUnits::Bytes) {
    for (unsigned char c : word) {
      TokenId id = byte_ids_[c];
      if (id >= 0) {
        ids.push_back(id);
        lens.push_back(1);
      } else if (unk_id_) {  // a byte-level vocab missing a byte: unk, or dropped as HF does without unk
        if (cfg_.fuse_unk && !ids.empty() && ids.back() == *unk_id_) {
          lens.back() += 1;
        } else {
          ids.push_back(*unk_id_);
          lens.push_back(1);
        }
      }
    }
    return;
  }
  // Chars: HF BPE::merge_word. A pending unk run is flushed before the next known symbol.
  bool pending_unk = false;
  uint32_t unk_len = 0;
  size_t i = 0;
  while (i < word.size()) {
    size_t start = i;
    uint32_t cp = utf8_next(word, i);
    uint32_t len = static_cast<uint32_t>(i - start);
    TokenId known = -1;
    if (cp < 128) {
      known = ascii_ids_[cp];
    } else {
      auto it = char_to_id_.find(cp);
      if (it != char_to_id_.end()) known = it->second;
    }
    if (known >= 0) {
      if (pending_unk) {
        ids.push_back(*unk_id_);
        lens.push_back(unk_len);
        pending_unk = false;
      }
      ids.push_back(known);
      lens.push_back(len);
      continue;
    }
    if (cfg_.byte_fallback) {
      bool all = true;
      for (size_t k = start; k < i; ++k) all = all && byte_ids_[static_cast<unsigned char>(word[k])] >= 0;
      if (all) {
        // HF adds byte tokens without flushing a pending unk first; keep that order.
        for (size_t k = start; k < i; ++k) {
          ids.push_back(byte_ids_[static_cast<unsigned char>(word[k])]);
          lens.push_back(1);
        }
        continue;
      }
    }
    if (unk_id_) {
      if (pending_unk && cfg_.fuse_unk) {
        unk_len += len;
      } else {
        if (pending_unk) {
          ids.push_back(*unk_id_);
          lens.push_back(unk_len);
        }
        pending_unk = true;
        unk_len = len;
      }
    }
  }
  if (pending_unk) {
    ids.push_back(*unk_id_);
    lens.push_back(unk_len);
  }
}

// Short words (most byte-level pieces): keep the rank of every adjacent pair in an array and merge the
// leftmost lowest-ranked pair until none is left; only the two neighbours of a merge are looked up
// again. Same result as the heap loop below, without its bookkeeping.
void BpeModel::merge_small(std::vector<TokenId>& ids, std::vector<TokenId>& out) const {
  constexpr uint32_t kNone = ~0u;
  uint32_t rank[kSmallWord];
  TokenId merged[kSmallWord];
  size_t n = ids.size();
  auto lookup = [&](size_t i) {
    if (const auto* m = merges_.find(ids[i], ids[i + 1])) {
      rank[i] = m->rank;
      merged[i] = m->id;
    } else {
      rank[i] = kNone;
    }
  };
  for (size_t i = 0; i + 1 < n; ++i) lookup(i);
  while (n > 1) {
    size_t best = 0;
    for (size_t i = 1; i + 1 < n; ++i)
      if (rank[i] < rank[best]) best = i;
    if (rank[best] == kNone) break;
    ids[best] = merged[best];
    for (size_t i = best + 1; i + 1 < n; ++i) {
      ids[i] = ids[i + 1];
      rank[i] = rank[i + 1];
      merged[i] = merged[i + 1];
    }
    --n;
    if (best + 1 < n) lookup(best);
    if (best > 0) lookup(best - 1);
  }
  out.insert(out.end(), ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(n));
}

void BpeModel::merge_word(std::string_view word, std::vector<TokenId>& out) const {
  if (cfg_.ignore_merges) {
    if (cfg_.units == BpeUnits::Bytes) {
      auto it = raw_to_id_.find(std::string(word));
      if (it != raw_to_id_.end()) {
        out.push_back(it->second);
        return;
      }
    } else if (auto id = find(word)) {
      out.push_back(*id);
      return;
    }
  }
  struct Symbol {
    TokenId id;
    int32_t prev, next;
    bool alive;
  };
  // A candidate merge is (rank << 32 | position): the heap pops the lowest rank, leftmost first. A
  // popped candidate is stale when the pair now at its position has another rank (ranks are unique).
  thread_local std::vector<TokenId> ids;
  thread_local std::vector<uint32_t> lens;
  thread_local std::vector<Symbol> sym;
  thread_local std::vector<uint64_t> heap;
  ids.clear();
  lens.clear();
  initial_symbols(word, ids, lens);
  const int32_t n = static_cast<int32_t>(ids.size());
  if (n <= 1) {
    out.insert(out.end(), ids.begin(), ids.end());
    return;
  }
  if (n <= kSmallWord) {
    merge_small(ids, out);
    return;
  }
  auto cand = [](uint32_t rank, int32_t pos) { return (static_cast<uint64_t>(rank) << 32) | static_cast<uint32_t>(pos); };
  sym.resize(n);
  heap.clear();
  for (int32_t i = 0; i < n; ++i) sym[i] = Symbol{ids[i], i - 1, i + 1 < n ? i + 1 : -1, true};
  for (int32_t i = 0; i + 1 < n; ++i)
    if (const auto* m = merges_.find(ids[i], ids[i + 1])) heap.push_back(cand(m->rank, i));
  auto cmp = std::greater<uint64_t>();
  std::make_heap(heap.begin(), heap.end(), cmp);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), cmp);
    const uint64_t top = heap.back();
    heap.pop_back();
    const auto rank = static_cast<uint32_t>(top >> 32);
    const auto pos = static_cast<int32_t>(top & 0xFFFFFFFFu);
    Symbol& left = sym[pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = sym[left.next];
    const auto* m = merges_.find(left.id, right.id);
    if (!m || m->rank != rank) continue;  // stale candidate
    left.id = m->id;
    right.alive = false;
    left.next = right.next;
    if (left.next >= 0) sym[left.next].prev = pos;
    if (left.prev >= 0)
      if (const auto* pm = merges_.find(sym[left.prev].id, left.id)) {
        heap.push_back(cand(pm->rank, left.prev));
        std::push_heap(heap.begin(), heap.end(), cmp);
      }
    if (left.next >= 0)
      if (const auto* nm = merges_.find(left.id, sym[left.next].id)) {
        heap.push_back(cand(nm->rank, pos));
        std::push_heap(heap.begin(), heap.end(), cmp);
      }
  }
  for (int32_t i = 0; i >= 0; i = sym[i].next) out.push_back(sym[i].id);
}

void BpeModel::encode_word(std::string_view word, std::vector<TokenId>& out) const {
  if (!split_at_marker_ || word.size() <= WordCache::kMaxWord) {
    encode_piece(word, out);
    return;
  }
  // No token joins a non-marker char to a following marker, so no merge crosses such a boundary and
  // the pieces between boundaries can be merged (and cached) on their own with the same result.
  static constexpr std::string_view kMarker = "\xE2\x96\x81";
  size_t start = 0;
  for (size_t p = word.find(kMarker, 1); p != std::string_view::npos; p = word.find(kMarker, p + kMarker.size())) {
    if (p >= start + kMarker.size() && word.compare(p - kMarker.size(), kMarker.size(), kMarker) == 0) continue;
    if (p > start) {
      encode_piece(word.substr(start, p - start), out);
      start = p;
    }
  }
  encode_piece(word.substr(start), out);
}

void BpeModel::encode_piece(std::string_view word, std::vector<TokenId>& out) const {
  if (word.empty()) return;
  if (word.size() > WordCache::kMaxWord) {
    merge_word(word, out);
    return;
  }
  WordCache& cache = cache_for(serial_);
  size_t h = std::hash<std::string_view>()(word) & (WordCache::kSlots - 1);
  auto& slot = cache.slots[h];
  if (slot.used && slot.key == word) {
    out.insert(out.end(), slot.ids.begin(), slot.ids.end());
    return;
  }
  size_t before = out.size();
  merge_word(word, out);
  slot.key.assign(word.data(), word.size());
  slot.ids.assign(out.begin() + static_cast<std::ptrdiff_t>(before), out.end());
  slot.used = true;
}

}  // namespace shardtune::tok
