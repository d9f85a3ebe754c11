// Errors that carry where they were raised (file:line) and a hint telling the user what to do next.
#pragma once

#include <stdexcept>
#include <string>

namespace shardtune {

// Every user-facing failure is an Error: `what()` says what is wrong (naming the user's file, line or
// tensor), `hint()` says what to do about it, `where()` is the source location for bug reports.
class Error : public std::runtime_error {
 public:
  Error(std::string message, std::string hint = {}, std::string where = {});
  const std::string& hint() const noexcept { return hint_; }
  const std::string& where() const noexcept { return where_; }

 private:
  std::string hint_;
  std::string where_;
};

[[noreturn]] void throw_error(const char* file, int line, std::string message, std::string hint = {});

// "error: <what>\n  ---> HINT: <hint>\n  (raised at file:line)" for any exception. A library message
// (LibTorch's c10::Error) keeps its text but not its backtrace; an allocation failure (std::bad_alloc,
// LibTorch's "you tried to allocate N bytes") becomes "out of memory: tried to allocate X GB" + a hint.
std::string describe(const std::exception& e);

// A library exception's what() split into its message and, for c10::Error, where it was raised
// ("Exception raised from ..." and the "frame #N" lines are dropped). Exposed for tests.
struct LibraryMessage {
  std::string message;      // the lines before the backtrace
  std::string origin;       // "FILE:LINE" from "Exception raised from F at FILE:LINE", or empty
  bool out_of_memory = false;
  std::string oom_size;     // "1.50 GB" when out_of_memory
};
LibraryMessage split_library_message(const std::string& what);

// Runs `body` and turns any exception into a message on stderr and exit code 1 (2 for usage errors
// already handled by the caller). Keeps main() free of try/catch boilerplate.
int run_guarded(const char* program, int (*body)(int, char**), int argc, char** argv);

}  // namespace shardtune

#define ST_FAIL(...) ::shardtune::throw_error(__FILE__, __LINE__, __VA_ARGS__)
#define ST_CHECK(cond, ...)                                  \
  do {                                                       \
    if (!(cond)) ::shardtune::throw_error(__FILE__, __LINE__, __VA_ARGS__); \
  } while (0)
