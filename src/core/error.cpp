// Error type with hint and source location, the guarded entry point every program uses, and describe():
// one readable message for any exception, including LibTorch's (backtrace stripped, allocation failures
// reduced to their size). core stays torch-free: c10::Error is recognised by its what() text.
#include "shardtune/core/error.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <typeinfo>

namespace shardtune {

Error::Error(std::string message, std::string hint, std::string where)
    : std::runtime_error(std::move(message)), hint_(std::move(hint)), where_(std::move(where)) {}

void throw_error(const char* file, int line, std::string message, std::string hint) {
  const char* base = std::strrchr(file, '/');
  throw Error(std::move(message), std::move(hint), std::string(base ? base + 1 : file) + ":" + std::to_string(line));
}

namespace {

const char* const kOomHint =
    "use less memory per rank: a smaller --micro-batch or --seq-len, more ranks, or --zero 2 (trainer); "
    "a smaller --max-new-tokens or model (shardtune-generate)";

bool starts_with(const std::string& s, size_t pos, const char* prefix) {
  return s.compare(pos, std::strlen(prefix), prefix) == 0;
}

// Bytes -> "1.50 GB" (decimal units, as `free -g` and most schedulers print memory).
std::string gigabytes(double bytes) {
  char buf[64];
  if (bytes >= 1e9)
    std::snprintf(buf, sizeof buf, "%.2f GB", bytes / 1e9);
  else
    std::snprintf(buf, sizeof buf, "%.2f MB", bytes / 1e6);
  return buf;
}

}  // namespace

LibraryMessage split_library_message(const std::string& what) {
  LibraryMessage m;
  // c10::Error::what() is the message, then "Exception raised from F at FILE:LINE (most recent call
  // first):" and one "frame #N: ..." line per stack frame. Keep the message, remember the origin.
  size_t pos = 0;
  while (pos < what.size()) {
    size_t nl = what.find('\n', pos);
    size_t end = nl == std::string::npos ? what.size() : nl;
    if (starts_with(what, pos, "Exception raised from ")) {
      std::string line = what.substr(pos, end - pos);
      size_t at = line.find(" at ");
      size_t paren = line.rfind(" (most recent call first)");
      if (at != std::string::npos)
        m.origin = line.substr(at + 4, (paren != std::string::npos && paren > at ? paren : line.size()) - at - 4);
      break;
    }
    if (starts_with(what, pos, "frame #")) break;
    m.message += (m.message.empty() ? "" : "\n") + what.substr(pos, end - pos);
    pos = end + 1;
  }
  while (!m.message.empty() && (m.message.back() == '\n' || m.message.back() == ' ')) m.message.pop_back();
  // LibTorch's CPU allocator: "DefaultCPUAllocator: not enough memory: you tried to allocate N bytes."
  // (or "can't allocate memory: you tried to allocate N bytes. Error code 12 ..."); CUDA's caching
  // allocator: "CUDA out of memory. Tried to allocate 2.00 GiB ...".
  const char* kCpu = "you tried to allocate ";
  size_t k = m.message.find(kCpu);
  if (k != std::string::npos) {
    const char* num = m.message.c_str() + k + std::strlen(kCpu);
    char* stop = nullptr;
    const double bytes = std::strtod(num, &stop);
    if (stop != num) {
      m.out_of_memory = true;
      m.oom_size = gigabytes(bytes);
    }
  }
  const char* kCuda = "Tried to allocate ";
  k = m.message.find(kCuda);
  if (!m.out_of_memory && k != std::string::npos && m.message.find("out of memory") != std::string::npos) {
    size_t from = k + std::strlen(kCuda);
    size_t to = m.message.find_first_of(";(\n", from);
    m.out_of_memory = true;
    m.oom_size = m.message.substr(from, (to == std::string::npos ? m.message.size() : to) - from);
    while (!m.oom_size.empty() && (m.oom_size.back() == ' ' || m.oom_size.back() == '.')) m.oom_size.pop_back();
    m.oom_size += " (GPU)";
  }
  return m;
}

std::string describe(const std::exception& e) {
  std::string out = "error: ";
  if (const auto* err = dynamic_cast<const Error*>(&e)) {
    out += err->what();
    if (!err->hint().empty()) out += "\n  ---> HINT: " + err->hint();
    if (!err->where().empty()) out += "\n  (raised at " + err->where() + ")";
    return out;
  }
  if (dynamic_cast<const std::bad_alloc*>(&e))
    return out + "out of memory (a memory allocation failed: " + e.what() + ")\n  ---> HINT: " + kOomHint;
  const LibraryMessage m = split_library_message(e.what());
  if (m.out_of_memory) return out + "out of memory: tried to allocate " + m.oom_size + "\n  ---> HINT: " + kOomHint;
  out += m.message.empty() ? std::string("unknown error (") + typeid(e).name() + ")" : m.message;
  if (!m.origin.empty()) out += "\n  (raised in LibTorch at " + m.origin + ")";
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
