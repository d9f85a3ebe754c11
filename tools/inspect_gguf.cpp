// shardtune-inspect FILE.gguf: metadata and tensor table of a GGUF file, offsets and sizes verified.
#include "inspect_gguf.h"

#include <cstdio>
#include <fstream>
#include <string>
#include <variant>

#include "shardtune/export/gguf.h"

namespace shardtune::inspect {
namespace {

constexpr size_t kShownItems = 5;
constexpr size_t kShownChars = 80;

// Strings shown JSON-ish and cut at kShownChars (chat templates and token lists can be long).
std::string quoted(const std::string& s) {
  std::string o = "\"";
  for (size_t i = 0; i < s.size() && i < kShownChars; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\') o += '\\', o += char(c);
    else if (c == '\n') o += "\\n";
    else if (c < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\x%02x", c);
      o += b;
    } else o += char(c);
  }
  if (s.size() > kShownChars) o += "...\" (" + std::to_string(s.size()) + " bytes)";
  else o += '"';
  return o;
}

template <class T>
std::string item(const T& v) {
  if constexpr (std::is_same_v<T, std::string>) return quoted(v);
  else if constexpr (std::is_same_v<T, bool>) return v ? "true" : "false";
  else if constexpr (std::is_floating_point_v<T>) {
    char b[32];
    std::snprintf(b, sizeof b, "%.9g", double(v));
    return b;
  } else return std::to_string(v);
}

template <class T>
const char* elem_name() {
  if constexpr (std::is_same_v<T, std::string>) return "string";
  else if constexpr (std::is_same_v<T, float>) return "float32";
  else if constexpr (std::is_same_v<T, int32_t>) return "int32";
  else return "uint32";
}

std::string show(const gguf::Value& value) {
  return std::visit(
      [](const auto& v) -> std::string {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::vector<std::string>> || std::is_same_v<T, std::vector<float>> ||
                      std::is_same_v<T, std::vector<int32_t>> || std::is_same_v<T, std::vector<uint32_t>>) {
          using E = typename T::value_type;
          std::string s = std::string("[") + elem_name<E>() + " x " + std::to_string(v.size()) + "] ";
          for (size_t i = 0; i < v.size() && i < kShownItems; ++i) s += (i ? ", " : "") + item<E>(v[i]);
          if (v.size() > kShownItems) s += ", ...";
          return s;
        } else {
          return item<T>(v);
        }
      },
      value);
}

}  // namespace

bool is_gguf_path(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  char magic[4] = {};
  if (in.read(magic, 4) && std::string(magic, 4) == "GGUF") return true;
  return p.extension() == ".gguf";
}

int inspect_gguf(const std::filesystem::path& p) {
  const gguf::FileInfo info = gguf::read_info(p);  // Error on any bad offset, size or truncation
  std::printf("GGUF file %s: version %u, alignment %u, %zu metadata keys, %zu tensors, %llu bytes\n", p.c_str(),
              info.version, info.alignment, info.kv.size(), info.tensors.size(),
              static_cast<unsigned long long>(info.file_size));
  std::printf("\nmetadata:\n");
  for (const auto& [key, value] : info.kv) std::printf("  %-42s %s\n", key.c_str(), show(value).c_str());
  std::printf("\ntensors (data section at offset %llu):\n", static_cast<unsigned long long>(info.data_offset));
  std::printf("  %-36s %-6s %-24s %14s %12s\n", "name", "type", "ggml dims (ne)", "offset", "bytes");
  uint64_t total = 0;
  for (const auto& t : info.tensors) {
    std::string dims;
    for (size_t d = 0; d < t.ne.size(); ++d) dims += (d ? " x " : "") + std::to_string(t.ne[d]);
    std::printf("  %-36s %-6s %-24s %14llu %12llu\n", t.name.c_str(), gguf::raw_type_name(t.type), dims.c_str(),
                static_cast<unsigned long long>(t.offset), static_cast<unsigned long long>(t.bytes));
    total += t.bytes;
  }
  std::printf("\nOK: %zu tensors, %llu tensor bytes; every offset is aligned, in order and inside the file\n",
              info.tensors.size(), static_cast<unsigned long long>(total));
  return 0;
}

}  // namespace shardtune::inspect
