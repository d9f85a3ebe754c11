// mmap-based input access and the byte-range split of inputs across ranks.
#include "inputs.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "shardtune/core/error.h"

namespace shardtune::prep {

MappedFile::MappedFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ST_CHECK(fd >= 0, "cannot open input '" + path + "': " + std::strerror(errno), "check the --input path");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    ST_FAIL("input '" + path + "' is not a regular file", "pass JSONL files with --input");
  }
  dev_ = static_cast<uint64_t>(st.st_dev);
  ino_ = static_cast<uint64_t>(st.st_ino);
  size_ = static_cast<size_t>(st.st_size);
  if (size_ == 0) {
    ::close(fd);
    ST_FAIL("input '" + path + "' is empty", "pass a JSONL file with one JSON object per line");
  }
  void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  ST_CHECK(p != MAP_FAILED, "cannot map input '" + path + "': " + std::strerror(errno));
  ::madvise(p, size_, MADV_SEQUENTIAL);
  data_ = static_cast<const char*>(p);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<char*>(data_), size_);
}

void check_distinct_inputs(const std::vector<const MappedFile*>& files) {
  const char* hint = "give each file once with --input (to weight data, repeat lines inside one file)";
  for (size_t i = 0; i < files.size(); ++i) {
    for (size_t j = i + 1; j < files.size(); ++j) {
      const MappedFile &a = *files[i], &b = *files[j];
      const bool same_file = a.device() == b.device() && a.inode() == b.inode();
      // Equal sizes are rare among real inputs, so comparing bytes costs nothing in the usual case.
      if (!same_file && (a.view().size() != b.view().size() || a.view() != b.view())) continue;
      const std::string both = "--input '" + a.path() + "' (input " + std::to_string(i + 1) + ") and --input '" +
                               b.path() + "' (input " + std::to_string(j + 1) + ")";
      ST_FAIL(both + (same_file ? " are the same file" : " have identical content (" + std::to_string(a.view().size()) + " bytes)"),
              hint);
    }
  }
}

std::vector<Chunk> plan_chunks(const std::vector<const MappedFile*>& files, int rank, int world, size_t chunk_bytes) {
  uint64_t total = 0;
  for (const auto* f : files) total += f->view().size();
  const uint64_t lo = total * rank / world, hi = total * (rank + 1) / world;

  std::vector<Chunk> chunks;
  uint64_t base = 0;  // global offset of the current file
  for (int fi = 0; fi < static_cast<int>(files.size()); ++fi) {
    std::string_view v = files[fi]->view();
    const uint64_t fbeg = base, fend = base + v.size();
    base = fend;
    if (fend <= lo || fbeg >= hi) continue;
    size_t a = static_cast<size_t>(std::max(lo, fbeg) - fbeg);
    size_t b = static_cast<size_t>(std::min(hi, fend) - fbeg);  // lines starting before b are ours
    if (a > 0 && v[a - 1] != '\n') {                            // a line that started before `a` is not ours
      size_t nl = v.find('\n', a);
      a = nl == std::string_view::npos ? v.size() : nl + 1;
    }
    if (a >= b) continue;
    int64_t line = 1 + std::count(v.begin(), v.begin() + a, '\n');
    size_t pos = a;
    while (pos < b) {
      size_t want = std::min(v.size(), pos + chunk_bytes);
      size_t end;
      if (want >= b) {  // last chunk: finish the line that starts before b
        size_t nl = b > 0 && v[b - 1] == '\n' ? b - 1 : v.find('\n', b);
        end = nl == std::string_view::npos ? v.size() : nl + 1;
      } else {
        size_t nl = v.find('\n', want);
        end = nl == std::string_view::npos ? v.size() : nl + 1;
      }
      Chunk c{fi, line, v.substr(pos, end - pos)};
      line += std::count(c.text.begin(), c.text.end(), '\n');
      chunks.push_back(c);
      pos = end;
    }
  }
  return chunks;
}

}  // namespace shardtune::prep
