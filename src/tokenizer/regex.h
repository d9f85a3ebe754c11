// A compiled PCRE2 pattern (UTF + UCP, JIT when available) that finds all matches in valid UTF-8 text.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

struct pcre2_real_code_8;

namespace shardtune::tok {

// The GPT-2 pre-tokenizer pattern (also the ByteLevel pre-tokenizer's use_regex pattern).
extern const char* const kGpt2Pattern;

class Regex {
 public:
  // `context` names where the pattern came from (e.g. "tokenizer.json pre_tokenizer Split") for errors.
  // `literal` treats the pattern as a plain string.
  Regex(const std::string& pattern, const std::string& context, bool literal = false);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends [start, end) byte offsets of every non-empty match, left to right. Text must be valid UTF-8.
  void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const;

  // Calls fn(start, end) for every non-empty match (same as find_all without the vector).
  template <class F>
  void for_each(std::string_view text, F&& fn) const {
    size_t pos = 0;
    size_t s, e;
    while (next(text, pos, s, e)) fn(s, e);
  }

 private:
  // Finds the next non-empty match at or after pos; sets pos past it. False when there is none.
  bool next(std::string_view text, size_t& pos, size_t& start, size_t& end) const;
  pcre2_real_code_8* code_ = nullptr;
  bool jit_ = false;
  std::string context_;
};

}  // namespace shardtune::tok
