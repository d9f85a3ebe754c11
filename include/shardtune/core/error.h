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

// "error: <what>\n  ---> HINT: <hint>\n  (raised at file:line)" for any exception.
std::string describe(const std::exception& e);

// Runs `body` and turns any exception into a message on stderr and exit code 1 (2 for usage errors
// already handled by the caller). Keeps main() free of try/catch boilerplate.
int run_guarded(const char* program, int (*body)(int, char**), int argc, char** argv);

}  // namespace shardtune

#define ST_FAIL(...) ::shardtune::throw_error(__FILE__, __LINE__, __VA_ARGS__)
#define ST_CHECK(cond, ...)                                  \
  do {                                                       \
    if (!(cond)) ::shardtune::throw_error(__FILE__, __LINE__, __VA_ARGS__); \
  } while (0)
