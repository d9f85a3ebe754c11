// UTF-8 validation/sanitizing and the GPT-2 byte-level alphabet.
#include "unicode.h"

#include "shardtune/tokenizer/tokenizer.h"

namespace shardtune::tok {

namespace {
// Returns the length of the valid sequence at s[i], or 0 if invalid.
size_t valid_seq_len(std::string_view s, size_t i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t n = s.size();
  unsigned char c = p[i];
  if (c < 0x80) return 1;
  auto cont = [&](size_t k) { return i + k < n && (p[i + k] & 0xC0) == 0x80; };
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (!cont(1) || !cont(2)) return 0;
    if (c == 0xE0 && p[i + 1] < 0xA0) return 0;   // overlong
    if (c == 0xED && p[i + 1] >= 0xA0) return 0;  // surrogate
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    if (c == 0xF0 && p[i + 1] < 0x90) return 0;
    if (c == 0xF4 && p[i + 1] >= 0x90) return 0;
    return 4;
  }
  return 0;
}
}  // namespace

bool utf8_valid(std::string_view s) {
  size_t i = 0, n = s.size();
  while (i < n) {
    // ASCII fast path, 8 bytes at a time.
    while (i + 8 <= n) {
      uint64_t w;
      __builtin_memcpy(&w, s.data() + i, 8);
      if (w & 0x8080808080808080ULL) break;
      i += 8;
    }
    if (i >= n) break;
    size_t len = valid_seq_len(s, i);
    if (len == 0) return false;
    i += len;
  }
  return true;
}

// Length of the maximal subpart of an ill-formed sequence at s[i] (Unicode 3.9, as WHATWG's and Rust's
// lossy decoders use): a truncated but otherwise valid prefix counts as one unit.
size_t maximal_subpart(std::string_view s, size_t i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  unsigned char c = p[i];
  int need;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    need = 1;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 2;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 3;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 1;
  }
  size_t k = 1;
  if (i + k >= s.size() || p[i + k] < lo || p[i + k] > hi) return 1;
  ++k;
  while (static_cast<int>(k) <= need && i + k < s.size() && (p[i + k] & 0xC0) == 0x80) ++k;
  return k;
}

std::string utf8_sanitize(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 16);
  size_t i = 0;
  while (i < s.size()) {
    size_t len = valid_seq_len(s, i);
    if (len == 0) {
      out += "\xEF\xBF\xBD";
      i += maximal_subpart(s, i);
    } else {
      out.append(s.data() + i, len);
      i += len;
    }
  }
  return out;
}

uint32_t utf8_next(std::string_view s, size_t& i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  unsigned char c = p[i];
  int len = utf8_len(c);
  if (i + len > s.size()) len = 1;
  uint32_t cp;
  switch (len) {
    case 1: cp = c; break;
    case 2: cp = ((c & 0x1F) << 6) | (p[i + 1] & 0x3F); break;
    case 3: cp = ((c & 0x0F) << 12) | ((p[i + 1] & 0x3F) << 6) | (p[i + 2] & 0x3F); break;
    default: cp = ((c & 0x07) << 18) | ((p[i + 1] & 0x3F) << 12) | ((p[i + 2] & 0x3F) << 6) | (p[i + 3] & 0x3F);
  }
  i += len;
  return cp;
}

void utf8_append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

ByteLevelTable::ByteLevelTable() {
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    byte_to_char[b] = printable ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + n++);
  }
}

int ByteLevelTable::char_to_byte(uint32_t cp) const {
  if (cp < 256) {
    bool printable = (cp >= '!' && cp <= '~') || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF);
    return printable ? static_cast<int>(cp) : -1;
  }
  if (cp < 256 + 68) {
    for (int b = 0; b < 256; ++b)
      if (byte_to_char[b] == cp) return b;
  }
  return -1;
}

const ByteLevelTable& byte_level_table() {
  static const ByteLevelTable table;
  return table;
}

bool byte_level_decode(std::string_view token, std::string& out) {
  const auto& t = byte_level_table();
  out.clear();
  size_t i = 0;
  while (i < token.size()) {
    int b = t.char_to_byte(utf8_next(token, i));
    if (b < 0) return false;
    out += static_cast<char>(b);
  }
  return true;
}

std::string byte_level_encode(std::string_view raw) {
  const auto& t = byte_level_table();
  std::string out;
  for (unsigned char c : raw) utf8_append(out, t.byte_to_char[c]);
  return out;
}

}  // namespace shardtune::tok

namespace shardtune {
std::string byte_level_string(std::string_view raw) { return tok::byte_level_encode(raw); }
}  // namespace shardtune
