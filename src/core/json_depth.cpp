// Nesting-depth pre-scan for untrusted JSON (see json_depth.h).
#include "shardtune/core/json_depth.h"

#include "shardtune/core/error.h"

namespace shardtune {

void check_json_depth(std::string_view text, const std::string& source, size_t max_depth) {
  size_t depth = 0;
  bool in_string = false, escaped = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      ST_CHECK(++depth <= max_depth,
               source + ": JSON nested deeper than " + std::to_string(max_depth) + " levels (at byte " +
                   std::to_string(i) + ")",
               "the file is corrupt or not what it claims to be; real configs nest only a few levels");
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
}

}  // namespace shardtune
