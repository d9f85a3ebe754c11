// Torch-free safetensors reader (mmap, fully validated header) and writer, so tools without LibTorch
// can read and write Hugging Face weight files. Format: u64 LE header length N, N bytes of JSON
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the data.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace shardtune::st {

enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

size_t dtype_size(DType d);
const char* dtype_name(DType d);  // "F32", "BF16", ...
DType parse_dtype(std::string_view name, const std::string& context);  // throws Error naming context

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets relative to the start of the data section
  int64_t numel() const;
  uint64_t nbytes() const { return end - begin; }
};

// Parses and validates a header (the JSON text) for a data section of `data_size` bytes: every entry
// has a known dtype, offsets in range, shape x dtype size == byte length, no two ranges overlap.
// `file` is only used in messages. Returned in data-offset order.
std::vector<TensorInfo> parse_header(std::string_view json_text, uint64_t data_size, const std::string& file,
                                     std::map<std::string, std::string>* metadata = nullptr);

// A read-only memory-mapped safetensors file. Pointers stay valid while the object lives.
class File {
 public:
  explicit File(const std::filesystem::path& path);
  ~File();
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TensorInfo* find(const std::string& name) const;  // nullptr if absent
  const TensorInfo& at(const std::string& name) const;     // Error naming file and tensor if absent
  const uint8_t* data(const TensorInfo& t) const { return data_ + t.begin; }
  // Drops the mapped pages of `t` from this process's memory (madvise MADV_DONTNEED; the mapping stays valid
  // and re-reads the file if touched again). Mapped file pages count in RSS: a pass over a large model
  // releases each tensor after use so that its resident memory stays at about one tensor.
  void release(const TensorInfo& t) const;

 private:
  std::filesystem::path path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  const uint8_t* data_ = nullptr;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// One tensor to write; `data` must hold shape x dtype size bytes (little-endian, row-major).
struct TensorRef {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  uint64_t nbytes = 0;
};

// Writes one safetensors file whose header (names, dtypes, shapes) is known before its data, one tensor at a
// time, so that writing a file larger than memory holds at most one tensor: the constructor writes the
// header into a temporary sibling, write() appends the next tensor of `layout` (its data pointer is not
// used there), finish() checks that every tensor came, optionally fsyncs, and renames onto `path`. A
// writer destroyed before finish() removes its temporary file.
class StreamWriter {
 public:
  StreamWriter(const std::filesystem::path& path, std::vector<TensorRef> layout,
               const std::map<std::string, std::string>& metadata = {});
  ~StreamWriter();
  StreamWriter(const StreamWriter&) = delete;
  StreamWriter& operator=(const StreamWriter&) = delete;

  const TensorRef* next() const { return next_ < layout_.size() ? &layout_[next_] : nullptr; }
  void write(const void* data, uint64_t nbytes);  // the bytes of next(); nbytes must be its size
  void finish(bool sync = false);

 private:
  void write_all(const void* data, uint64_t nbytes);
  std::filesystem::path path_, tmp_;
  std::vector<TensorRef> layout_;
  size_t next_ = 0;
  int fd_ = -1;
};

// Writes one file atomically (temporary sibling + rename), tensors in the order given, 8-byte aligned header.
void write_file(const std::filesystem::path& path, const std::vector<TensorRef>& tensors,
                const std::map<std::string, std::string>& metadata = {});

// Writes `tensors` as "<stem>.safetensors" if they fit in `max_shard_bytes` (0 = no limit), otherwise as
// "<stem>-0000i-of-0000n.safetensors" plus "<stem>.safetensors.index.json" (HF layout). Returns the files.
std::vector<std::filesystem::path> write_sharded(const std::filesystem::path& dir, const std::string& stem,
                                                 const std::vector<TensorRef>& tensors, uint64_t max_shard_bytes,
                                                 const std::map<std::string, std::string>& metadata = {});

// The safetensors files of a model directory: the index's shards (validated: every listed file exists)
// or the single "<stem>.safetensors". Error with a hint when neither exists.
std::vector<std::filesystem::path> model_files(const std::filesystem::path& dir, const std::string& stem = "model");

}  // namespace shardtune::st
