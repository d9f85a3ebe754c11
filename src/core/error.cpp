// Error type with hint and source location, and the guarded entry point every program uses.
#include "shardtune/core/error.h"

#include <cstdio>
#include <cstring>

namespace shardtune {

Error::Error(std::string message, std::string hint, std::string where)
    : std::runtime_error(std::move(message)), hint_(std::move(hint)), where_(std::move(where)) {}

void throw_error(const char* file, int line, std::string message, std::string hint) {
  const char* base = std::strrchr(file, '/');
  throw Error(std::move(message), std::move(hint), std::string(base ? base + 1 : file) + ":" + std::to_string(line));
}

std::string describe(const std::exception& e) {
  std::string out = "error: ";
  out += e.what();
  if (const auto* err = dynamic_cast<const Error*>(&e)) {
    if (!err->hint().empty()) out += "\n  ---> HINT: " + err->hint();
    if (!err->where().empty()) out += "\n  (raised at " + err->where() + ")";
  }
  return out;
}

int run_guarded(const char* program, int (*body)(int, char**), int argc, char** argv) {
  try {
    return body(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", program, describe(e).c_str());
    return 1;
  }
}

}  // namespace shardtune
