// Torch-free safetensors reader (mmap, fully validated header) and writer, so tools without LibTorch
// can read and write Hugging Face weight files. Format: u64 LE header length N, N bytes of JSON
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the data.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shardtune/core/fs.h"

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

// A file a writer produced: its name in the folder, size, and SHA-256 (lowercase hex; "" when not hashed).
struct WrittenFile {
  std::string name;
  uint64_t bytes = 0;
  std::string sha256;
};

// Writes one safetensors file whose header (names, dtypes, shapes) is known before its data, one tensor at a
// time, so that writing a file larger than memory holds at most one tensor: the constructor writes the
// header into a temporary sibling, write() appends the next tensor of `layout` (its data pointer is not
// used there), finish() checks that every tensor came, optionally fsyncs, and renames onto `path`. A
// writer destroyed before finish() removes its temporary file.
// With `hash` (checkpoints): the file's SHA-256 is computed from the bytes in memory as they are written
// (never by reading the file back: write() and hash kHashPiece bytes at a time, while they are in the CPU
// cache), and every kWritebackChunk bytes the kernel is told to start writing them to disk
// (sync_file_range, Linux), so that the disk works meanwhile and the fsync that follows waits for little.
class StreamWriter {
 public:
  static constexpr uint64_t kWritebackChunk = 16u << 20, kHashPiece = 256u << 10;
  StreamWriter(const std::filesystem::path& path, std::vector<TensorRef> layout,
               const std::map<std::string, std::string>& metadata = {}, bool hash = false);
  ~StreamWriter();
  StreamWriter(const StreamWriter&) = delete;
  StreamWriter& operator=(const StreamWriter&) = delete;

  const TensorRef* next() const { return next_ < layout_.size() ? &layout_[next_] : nullptr; }
  void write(const void* data, uint64_t nbytes);  // the bytes of next(); nbytes must be its size
  void finish(bool sync = false);
  uint64_t bytes() const { return written_; }      // the file's size so far
  const std::string& sha256() const;               // with `hash`, after finish()

 private:
  void write_all(const void* data, uint64_t nbytes);
  std::filesystem::path path_, tmp_;
  std::vector<TensorRef> layout_;
  size_t next_ = 0;
  int fd_ = -1;
  uint64_t written_ = 0, kicked_ = 0;  // bytes written; bytes handed to the disk (hash mode)
  std::unique_ptr<fs::Sha256> hash_;
  std::string sha256_;
};

// Writes one file atomically (temporary sibling + rename), tensors in the order given, 8-byte aligned header.
void write_file(const std::filesystem::path& path, const std::vector<TensorRef>& tensors,
                const std::map<std::string, std::string>& metadata = {});

// write_file with the SHA-256 computed while writing (StreamWriter's `hash`); not fsynced: the caller
// syncs. Returns the file (its name without the folder).
WrittenFile write_file_hashed(const std::filesystem::path& path, const std::vector<TensorRef>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// The tensors of writer `part` of `parts` when a model is shared out over several writers (a checkpoint's
// ranks): contiguous in order, whole tensors, about equal bytes (each tensor goes to the part that holds
// the middle of its bytes). Returns [first, last) into `nbytes`; a part may be empty (fewer tensors than parts).
std::pair<size_t, size_t> part_range(const std::vector<uint64_t>& nbytes, int part, int parts);

// Writer `part`'s share of a model that `parts` writers (processes) write into one folder at once: the
// tensors of part_range as "<stem>-0000i-of-0000n.safetensors" (n: the parts that hold tensors; one
// "<stem>.safetensors" and no index when n is 1) and, on part 0, "<stem>.safetensors.index.json" naming
// every tensor's file. `tensors` lists the whole model (names, dtypes, shapes, sizes), but only this
// part's data pointers are read. Files are hashed while written (write_file_hashed), not fsynced; returns
// those this call wrote. The loaders read the result like any sharded HF folder (model_files).
std::vector<WrittenFile> write_part(const std::filesystem::path& dir, const std::string& stem,
                                    const std::vector<TensorRef>& tensors, int part, int parts,
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
