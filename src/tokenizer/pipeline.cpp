// Encode/decode of PipelineTokenizer and the normalizer, pre-tokenizer and decoder components. The
// semantics follow Hugging Face tokenizers (Rust); comments note where they are subtle.
#include "pipeline.h"

#include <algorithm>
#include <cctype>

#include "shardtune/core/error.h"
#include "nfc.h"
#include "unicode.h"

namespace shardtune::tok {

namespace {

struct Span {
  size_t start, end;
  bool match;
};

// Turns the matches of a delimiter pattern into pieces, as HF NormalizedString::split does.
void apply_behavior(std::string_view piece, const std::vector<std::pair<size_t, size_t>>& matches,
                    SplitBehavior behavior, bool invert, std::vector<std::string_view>& out) {
  std::vector<Span> spans;
  spans.reserve(matches.size() * 2 + 1);
  size_t pos = 0;
  for (const auto& [s, e] : matches) {
    if (s > pos) spans.push_back({pos, s, invert});
    spans.push_back({s, e, !invert});
    pos = e;
  }
  if (pos < piece.size()) spans.push_back({pos, piece.size(), invert});

  std::vector<std::pair<size_t, size_t>> ranges;
  ranges.reserve(spans.size());
  switch (behavior) {
    case SplitBehavior::Removed:
      for (const auto& sp : spans)
        if (!sp.match) ranges.emplace_back(sp.start, sp.end);
      break;
    case SplitBehavior::Isolated:
      for (const auto& sp : spans) ranges.emplace_back(sp.start, sp.end);
      break;
    case SplitBehavior::MergedWithPrevious: {
      bool prev_match = false;
      for (const auto& sp : spans) {
        if (sp.match && !prev_match && !ranges.empty())
          ranges.back().second = sp.end;
        else
          ranges.emplace_back(sp.start, sp.end);
        prev_match = sp.match;
      }
      break;
    }
    case SplitBehavior::MergedWithNext: {
      bool prev_match = false;  // "previous" in the right-to-left walk, i.e. the span to the right
      for (size_t k = spans.size(); k-- > 0;) {
        const auto& sp = spans[k];
        if (sp.match && !prev_match && !ranges.empty())
          ranges.back().first = sp.start;
        else
          ranges.emplace_back(sp.start, sp.end);
        prev_match = sp.match;
      }
      std::reverse(ranges.begin(), ranges.end());
      break;
    }
    case SplitBehavior::Contiguous: {
      bool prev_match = false;
      for (const auto& sp : spans) {
        if (sp.match == prev_match && !ranges.empty())
          ranges.back().second = sp.end;
        else
          ranges.emplace_back(sp.start, sp.end);
        prev_match = sp.match;
      }
      break;
    }
  }
  for (const auto& [s, e] : ranges)
    if (e > s) out.push_back(piece.substr(s, e - s));
}

std::string replace_all(std::string_view s, const Regex& pattern, const std::string& content) {
  std::string out;
  size_t pos = 0;
  pattern.for_each(s, [&](size_t a, size_t b) {
    out.append(s.data() + pos, a - pos);
    out += content;
    pos = b;
  });
  out.append(s.data() + pos, s.size() - pos);
  return out;
}

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

}  // namespace

void NfcNormalizer::apply(std::string& s) const {
  if (!nfc_quick_yes(s)) s = nfc(s);
}

void ReplaceNormalizer::apply(std::string& s) const { s = replace_all(s, *pattern, content); }

void SplitPreTokenizer::split(std::vector<std::string_view>& pieces, Arena&, size_t) const {
  std::vector<std::string_view> out;
  out.reserve(pieces.size() * 4);
  std::vector<std::pair<size_t, size_t>> matches;
  for (auto piece : pieces) {
    matches.clear();
    pattern->find_all(piece, matches);
    apply_behavior(piece, matches, behavior, invert, out);
  }
  pieces.swap(out);
}

void ByteLevelPreTokenizer::split(std::vector<std::string_view>& pieces, Arena& arena, size_t) const {
  std::vector<std::string_view> out;
  out.reserve(pieces.size() * 8);
  for (auto piece : pieces) {
    if (add_prefix_space && !starts_with(piece, " ")) {
      arena.push_back(std::make_unique<std::string>(" "));
      arena.back()->append(piece);
      piece = *arena.back();
    }
    if (!pattern) {
      out.push_back(piece);
      continue;
    }
    pattern->for_each(piece, [&](size_t s, size_t e) { out.push_back(piece.substr(s, e - s)); });
  }
  pieces.swap(out);
}

void MetaspacePreTokenizer::split(std::vector<std::string_view>& pieces, Arena& arena,
                                  size_t segment_index) const {
  std::vector<std::string_view> out;
  for (auto piece : pieces) {
    auto s = std::make_unique<std::string>();
    s->reserve(piece.size() + 8);
    for (char c : piece) {
      if (c == ' ')
        *s += replacement;
      else
        *s += c;
    }
    bool prepend_here = prepend == PrependScheme::Always || (prepend == PrependScheme::First && segment_index == 0);
    if (prepend_here && !starts_with(*s, replacement)) s->insert(0, replacement);
    arena.push_back(std::move(s));
    std::string_view v = *arena.back();
    if (!split_words) {
      out.push_back(v);
      continue;
    }
    std::vector<std::pair<size_t, size_t>> matches;
    for (size_t p = v.find(replacement); p != std::string_view::npos; p = v.find(replacement, p + replacement.size()))
      matches.emplace_back(p, p + replacement.size());
    apply_behavior(v, matches, SplitBehavior::MergedWithNext, false, out);
  }
  pieces.swap(out);
}

std::unique_ptr<SplitPreTokenizer> make_digits(bool individual, const std::string& ctx) {
  auto p = std::make_unique<SplitPreTokenizer>();
  p->pattern = std::make_unique<Regex>(individual ? "[0-9]" : "[0-9]+", ctx);
  p->behavior = SplitBehavior::Isolated;
  return p;
}

std::unique_ptr<SplitPreTokenizer> make_whitespace(const std::string& ctx) {
  auto p = std::make_unique<SplitPreTokenizer>();
  p->pattern = std::make_unique<Regex>(R"(\w+|[^\w\s]+)", ctx);
  p->behavior = SplitBehavior::Removed;
  p->invert = true;
  return p;
}

std::unique_ptr<SplitPreTokenizer> make_whitespace_split(const std::string& ctx) {
  auto p = std::make_unique<SplitPreTokenizer>();
  p->pattern = std::make_unique<Regex>(R"(\s+)", ctx);
  p->behavior = SplitBehavior::Removed;
  return p;
}

// ---- decoders ----

void ByteLevelDecoder::decode_chain(std::vector<std::string>& tokens) const {
  std::string bytes, raw;
  for (const auto& t : tokens) {
    if (byte_level_decode(t, raw))
      bytes += raw;
    else
      bytes += t;  // e.g. an added token with chars outside the byte alphabet: kept as is (as HF)
  }
  tokens.assign(1, utf8_valid(bytes) ? bytes : utf8_sanitize(bytes));
}

void ReplaceDecoder::decode_chain(std::vector<std::string>& tokens) const {
  for (auto& t : tokens) t = replace_all(t, *pattern, content);
}

void ByteFallbackDecoder::decode_chain(std::vector<std::string>& tokens) const {
  std::vector<std::string> out;
  std::string bytes;
  size_t count = 0;
  auto flush = [&] {
    if (count == 0) return;
    if (utf8_valid(bytes)) {
      out.push_back(bytes);
    } else {
      std::string rep;
      for (size_t k = 0; k < count; ++k) rep += "\xEF\xBF\xBD";
      out.push_back(rep);
    }
    bytes.clear();
    count = 0;
  };
  auto hexval = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  for (auto& t : tokens) {
    if (t.size() == 6 && starts_with(t, "<0x") && t[5] == '>' && hexval(t[3]) >= 0 && hexval(t[4]) >= 0) {
      bytes += static_cast<char>(hexval(t[3]) * 16 + hexval(t[4]));
      ++count;
    } else {
      flush();
      out.push_back(std::move(t));
    }
  }
  flush();
  tokens.swap(out);
}

void FuseDecoder::decode_chain(std::vector<std::string>& tokens) const {
  std::string all;
  for (const auto& t : tokens) all += t;
  tokens.assign(1, all);
}

void StripDecoder::decode_chain(std::vector<std::string>& tokens) const {
  for (auto& t : tokens) {
    size_t b = 0, e = t.size();
    for (size_t k = 0; k < start && starts_with(std::string_view(t).substr(b), content); ++k) b += content.size();
    for (size_t k = 0; k < stop && e >= b + content.size() && t.compare(e - content.size(), content.size(), content) == 0; ++k)
      e -= content.size();
    t = t.substr(b, e - b);
  }
}

void MetaspaceDecoder::decode_chain(std::vector<std::string>& tokens) const {
  // As HF: every replacement char becomes ' ', except in the first token, where they are dropped.
  for (size_t i = 0; i < tokens.size(); ++i) {
    std::string out;
    const std::string& t = tokens[i];
    for (size_t p = 0; p < t.size();) {
      if (t.compare(p, replacement.size(), replacement) == 0) {
        if (!(i == 0 && strip_first)) out += ' ';
        p += replacement.size();
      } else {
        out += t[p++];
      }
    }
    tokens[i] = std::move(out);
  }
}

// ---- the tokenizer ----

void PipelineTokenizer::set_added_tokens(std::vector<AddedToken> tokens) {
  added_ = std::move(tokens);
  added_by_id_.clear();
  added_by_text_.clear();
  for (auto& b : by_first_all_) b.clear();
  for (auto& b : by_first_plain_) b.clear();
  any_plain_ = any_added_ = false;
  vocab_size_ = model ? model->size() : 0;
  for (size_t i = 0; i < added_.size(); ++i) {
    const auto& t = added_[i];
    added_by_id_[t.id] = i;
    added_by_text_[t.content] = i;
    vocab_size_ = std::max(vocab_size_, t.id + 1);
    if (t.content.empty()) continue;
    unsigned char first = static_cast<unsigned char>(t.content[0]);
    by_first_all_[first].push_back(i);
    any_added_ = true;
    if (!t.special) {
      by_first_plain_[first].push_back(i);
      any_plain_ = true;
    }
  }
  auto longest_first = [&](size_t a, size_t b) { return added_[a].content.size() > added_[b].content.size(); };
  for (auto& b : by_first_all_) std::stable_sort(b.begin(), b.end(), longest_first);
  for (auto& b : by_first_plain_) std::stable_sort(b.begin(), b.end(), longest_first);
}

void PipelineTokenizer::split_added(std::string_view text, bool parse_special, std::vector<Segment>& out) const {
  const auto* buckets = parse_special ? by_first_all_ : by_first_plain_;
  size_t seg_start = 0, i = 0;
  while (i < text.size()) {
    const auto& bucket = buckets[static_cast<unsigned char>(text[i])];
    const AddedToken* hit = nullptr;
    for (size_t k : bucket) {
      const auto& c = added_[k].content;
      if (text.compare(i, c.size(), c) == 0) {
        hit = &added_[k];
        break;  // longest first: leftmost-longest match
      }
    }
    if (!hit) {
      ++i;
      continue;
    }
    size_t text_end = i;
    if (hit->lstrip)
      while (text_end > seg_start && std::isspace(static_cast<unsigned char>(text[text_end - 1]))) --text_end;
    if (text_end > seg_start) out.push_back({seg_start, text_end, -1});
    out.push_back({i, i + hit->content.size(), hit->id});
    i += hit->content.size();
    if (hit->rstrip)
      while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
    seg_start = i;
  }
  if (seg_start < text.size()) out.push_back({seg_start, text.size(), -1});
}

void PipelineTokenizer::encode_text(std::string_view text, size_t segment_index, std::vector<TokenId>& out) const {
  std::string norm;
  if (!normalizers.empty()) {
    norm.assign(text.data(), text.size());
    for (const auto& n : normalizers) n->apply(norm);
    text = norm;
  }
  if (text.empty()) return;
  if (pre_tokenizers.empty()) {
    model->encode_word(text, out);
    return;
  }
  Arena arena;
  std::vector<std::string_view> pieces{text};
  for (const auto& p : pre_tokenizers) p->split(pieces, arena, segment_index);
  for (auto piece : pieces) model->encode_word(piece, out);
}

std::vector<TokenId> PipelineTokenizer::encode(std::string_view text, bool parse_special) const {
  std::string clean;
  if (!utf8_valid(text)) {
    clean = utf8_sanitize(text);
    text = clean;
  }
  std::vector<TokenId> out;
  out.reserve(text.size() / 3 + 4);
  if (!any_added_ || (!parse_special && !any_plain_)) {
    encode_text(text, 0, out);
    return out;
  }
  std::vector<Segment> segments;
  split_added(text, parse_special, segments);
  for (size_t i = 0; i < segments.size(); ++i) {
    const auto& s = segments[i];
    if (s.added >= 0)
      out.push_back(s.added);
    else
      encode_text(text.substr(s.start, s.end - s.start), i, out);
  }
  return out;
}

std::string PipelineTokenizer::decode(const std::vector<TokenId>& ids, bool skip_special) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (TokenId id : ids) {
    auto it = added_by_id_.find(id);
    if (it != added_by_id_.end()) {
      if (skip_special && added_[it->second].special) continue;
      tokens.push_back(added_[it->second].content);
      continue;
    }
    ST_CHECK(id >= 0 && id < model->size(),
             "cannot decode id " + std::to_string(id) + ": out of range for tokenizer " + source + " (vocab size " +
                 std::to_string(vocab_size_) + ")",
             "the ids were produced with a different tokenizer");
    tokens.push_back(model->token(id));
  }
  std::string out;
  if (!has_decoder) {
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }
  for (const auto& d : decoders) d->decode_chain(tokens);
  for (const auto& t : tokens) out += t;
  return out;
}

std::string PipelineTokenizer::token_text(TokenId id) const {
  auto it = added_by_id_.find(id);
  if (it != added_by_id_.end()) return added_[it->second].content;
  if (id >= 0 && id < model->size()) return model->token(id);
  return {};
}

std::optional<TokenId> PipelineTokenizer::token_to_id(std::string_view token) const {
  auto it = added_by_text_.find(std::string(token));
  if (it != added_by_text_.end()) return added_[it->second].id;
  return model->find(token);
}

std::vector<std::pair<std::string, TokenId>> PipelineTokenizer::special_tokens() const {
  std::vector<std::pair<std::string, TokenId>> out;
  for (const auto& t : added_)
    if (t.special) out.emplace_back(t.content, t.id);
  return out;
}

}  // namespace shardtune::tok
