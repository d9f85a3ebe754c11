// UTF-8 helpers and the GPT-2 byte<->unicode-char table shared by the tokenizer implementations.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace shardtune::tok {

// Length in bytes of the UTF-8 sequence starting with lead byte `c` (1 for invalid lead bytes).
inline int utf8_len(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c >> 5) == 0x6) return 2;
  if ((c >> 4) == 0xE) return 3;
  if ((c >> 3) == 0x1E) return 4;
  return 1;
}

// True when `s` is valid UTF-8 (no overlongs, surrogates or code points above U+10FFFF).
bool utf8_valid(std::string_view s);

// Copy of `s` with every invalid byte sequence replaced by U+FFFD (as JS/Rust lossy decoding do).
std::string utf8_sanitize(std::string_view s);

// Decodes one code point at s[i] (s must be valid UTF-8); advances i.
uint32_t utf8_next(std::string_view s, size_t& i);
void utf8_append(std::string& out, uint32_t cp);

// GPT-2 "bytes_to_unicode": every byte maps to a printable code point; byte_to_char[b] is that code point.
struct ByteLevelTable {
  uint32_t byte_to_char[256];
  int char_to_byte(uint32_t cp) const;  // -1 when cp is not one of the 256 chars
  ByteLevelTable();
};
const ByteLevelTable& byte_level_table();

// Maps a byte-level vocabulary string ("Ġthe") to raw bytes (" the"); false if a char is outside the table.
bool byte_level_decode(std::string_view token, std::string& out);
// Maps raw bytes to the byte-level string form.
std::string byte_level_encode(std::string_view raw);

}  // namespace shardtune::tok
