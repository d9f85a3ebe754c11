// GGUF (version 3) file writer, torch-free: key/value metadata and tensors, written streamed. Tensors are
// declared first (name, dims in ggml order, type, byte count, and a function that produces the bytes when
// asked); `write` lays out the header with every offset, then asks each tensor for its bytes one at a
// time, so peak memory is about the largest tensor. The file is written under "<path>.partial", fsynced
// and renamed onto `path` when complete; on any error the partial file is removed and nothing is left.
// Format reference: ggml's docs/gguf.md (magic "GGUF", little-endian, general.alignment default 32).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <variant>
#include <vector>

namespace shardtune::gguf {

// GGUF metadata value types (gguf_type), as stored in the file.
enum class ValueType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};

// ggml tensor types this project writes (ggml_type values).
enum class TensorType : uint32_t { F32 = 0, F16 = 1, Q8_0 = 8, BF16 = 30 };

// Bytes of a tensor of `n_elements` values of `type` (Q8_0: blocks of 32 = 2-byte fp16 scale + 32 int8;
// n_elements % 32 must be 0 for Q8_0, else an Error naming the tensor is thrown by the caller).
uint64_t tensor_bytes(TensorType type, uint64_t n_elements);
const char* type_name(TensorType type);  // "F32", "F16", "Q8_0", "BF16"
const char* raw_type_name(uint32_t type);  // any ggml_type a file may hold ("Q4_K", ...), "?" if unknown

// One metadata value: a scalar or a homogeneous array (strings, floats, ints).
using Value = std::variant<uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, float, bool, std::string, uint64_t,
                           int64_t, double, std::vector<std::string>, std::vector<float>, std::vector<int32_t>,
                           std::vector<uint32_t>>;

// Writes the bytes of one tensor. `out(data, n)` may be called any number of times; the total must equal
// the declared byte count (checked; a mismatch is an Error naming the tensor).
using ByteSink = std::function<void(const void* data, size_t n)>;
using TensorProducer = std::function<void(const ByteSink& out)>;

struct TensorInfo {
  std::string name;
  std::vector<uint64_t> ne;  // ggml order: ne[0] is the innermost (contiguous) dimension, i.e. HF's last
  TensorType type = TensorType::F32;
  uint64_t bytes = 0;  // tensor_bytes(type, product of ne)
  TensorProducer produce;
};

class Writer {
 public:
  // Metadata in insertion order; setting a key twice replaces its value (keeps its position).
  void set(const std::string& key, Value value);
  bool has(const std::string& key) const;

  // Declares a tensor (names must be unique, at most 63 bytes as ggml's GGML_MAX_NAME = 64 with the NUL
  // requires; ne[0] a multiple of the type's block size; Error otherwise).
  void add_tensor(TensorInfo tensor);
  const std::vector<TensorInfo>& tensors() const { return tensors_; }

  // Writes the file (temporary name + fsync + rename; refuses to overwrite an existing `path` unless
  // `overwrite`). `progress(i, n)` is called after each tensor when set. Returns the bytes written.
  uint64_t write(const std::filesystem::path& path, bool overwrite = false,
                 const std::function<void(size_t, size_t)>& progress = {}) const;

  uint32_t alignment = 32;  // also written as general.alignment when not 32

 private:
  std::vector<std::pair<std::string, Value>> kv_;
  std::vector<TensorInfo> tensors_;
};

// Reading back (shardtune-inspect FILE.gguf, tests): the whole header, with every offset and size checked
// against the file (Error naming the file and the tensor/key at fault otherwise). Tensor data is not read.
struct FileTensor {
  std::string name;
  std::vector<uint64_t> ne;
  uint32_t type = 0;     // raw ggml_type
  uint64_t offset = 0;   // absolute offset in the file
  uint64_t bytes = 0;
};
struct FileInfo {
  uint32_t version = 0;
  uint32_t alignment = 32;
  std::vector<std::pair<std::string, Value>> kv;
  std::vector<FileTensor> tensors;
  uint64_t data_offset = 0, file_size = 0;
};
FileInfo read_info(const std::filesystem::path& path);

}  // namespace shardtune::gguf
