// Input JSONL files mapped read-only, split into whole-line chunks, and divided among ranks by bytes.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace shardtune::prep {

// A read-only memory map of one input file (RAII; copying deleted).
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  std::string_view view() const { return {data_, size_}; }
  const std::string& path() const { return path_; }
  // Device and inode: the same file under two names (symlink, hard link, "./a" vs "a") has the same.
  uint64_t device() const { return dev_; }
  uint64_t inode() const { return ino_; }

 private:
  std::string path_;
  uint64_t dev_ = 0, ino_ = 0;
  const char* data_ = nullptr;
  size_t size_ = 0;
};

// Refuses (Error naming both --input arguments) two inputs that are the same file or have identical
// content: their lines would be trained twice, and a line could be train in one copy and val in the
// other (the split depends on the file index), leaking validation data into training.
void check_distinct_inputs(const std::vector<const MappedFile*>& files);

// A run of whole lines of one file. `first_line` is the 1-based line number of its first line.
struct Chunk {
  int file = 0;
  int64_t first_line = 1;
  std::string_view text;
};

// The chunks of this rank's share of the inputs, in input order. Rank r owns the lines whose first byte
// lies in the r-th of `world` equal byte ranges of all inputs laid end to end, so the union over ranks
// is every line exactly once, in order. Chunks are cut at line ends every ~`chunk_bytes`.
std::vector<Chunk> plan_chunks(const std::vector<const MappedFile*>& files, int rank, int world, size_t chunk_bytes);

}  // namespace shardtune::prep
