// Unicode NFC (canonical composition), from tables generated out of Python's unicodedata (Unicode 14).
#pragma once

#include <string>
#include <string_view>

namespace shardtune::tok {

// True when `s` (valid UTF-8) certainly is in NFC already (the quick check used before nfc()).
bool nfc_quick_yes(std::string_view s);

// NFC of valid UTF-8 text.
std::string nfc(std::string_view s);

}  // namespace shardtune::tok
