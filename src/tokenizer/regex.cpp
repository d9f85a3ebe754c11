// PCRE2 wrapper: per-thread match data and JIT stack, so one compiled Regex is shared by all threads.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "regex.h"

#include <pcre2.h>

#include "shardtune/core/error.h"
#include "unicode.h"

namespace shardtune::tok {

const char* const kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

namespace {

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof buf);
  return reinterpret_cast<const char*>(buf);
}

// Per-thread scratch: match data (one ovector pair is all we read) and a 1 MiB JIT stack.
struct ThreadScratch {
  pcre2_match_data* md = nullptr;
  pcre2_match_context* mctx = nullptr;
  pcre2_jit_stack* stack = nullptr;
  ThreadScratch() {
    md = pcre2_match_data_create(4, nullptr);
    mctx = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(32 * 1024, 1024 * 1024, nullptr);
    if (mctx && stack) pcre2_jit_stack_assign(mctx, nullptr, stack);
  }
  ~ThreadScratch() {
    if (md) pcre2_match_data_free(md);
    if (mctx) pcre2_match_context_free(mctx);
    if (stack) pcre2_jit_stack_free(stack);
  }
};

ThreadScratch& scratch() {
  thread_local ThreadScratch s;
  return s;
}

}  // namespace

Regex::Regex(const std::string& pattern, const std::string& context, bool literal) : context_(context) {
  int err = 0;
  PCRE2_SIZE off = 0;
  uint32_t opts = PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK;
  if (literal) opts = PCRE2_UTF | PCRE2_NO_UTF_CHECK | PCRE2_LITERAL;
  ST_CHECK(utf8_valid(pattern), context + ": the pattern is not valid UTF-8",
           "check the file's encoding");
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), opts, &err, &off, nullptr);
  if (!code_)
    ST_FAIL(context + ": cannot compile regex /" + pattern + "/ at offset " + std::to_string(off) + ": " +
                pcre2_message(err),
            "the pattern uses syntax PCRE2 does not support; please report it with the tokenizer file");
  jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() {
  if (code_) pcre2_code_free(code_);
}

bool Regex::next(std::string_view text, size_t& pos, size_t& start, size_t& end) const {
  auto& s = scratch();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  while (pos < text.size()) {
    int rc = jit_ ? pcre2_jit_match(code_, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, s.md, s.mctx)
                  : pcre2_match(code_, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, s.md, s.mctx);
    if (rc == PCRE2_ERROR_NOMATCH) return false;
    if (rc < 0 && rc != 0)
      ST_FAIL(context_ + ": regex match failed: " + pcre2_message(rc),
              "the input may be pathological for this pattern (e.g. a huge whitespace run)");
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(s.md);
    start = ov[0];
    end = ov[1];
    if (end > start) {
      pos = end;
      return true;
    }
    // Empty match: move on by one character.
    pos = start + utf8_len(static_cast<unsigned char>(text[start]));
  }
  return false;
}

void Regex::find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const {
  for_each(text, [&](size_t s, size_t e) { out.emplace_back(s, e); });
}

}  // namespace shardtune::tok
