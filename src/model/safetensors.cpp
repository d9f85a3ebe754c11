// Safetensors parsing (validated, mmap) and writing; torch-free so that any tool may link it.
#include "shardtune/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/core/json_depth.h"

namespace shardtune::st {

namespace {
constexpr uint64_t kMaxHeader = 100ull << 20;  // the reference implementation's limit (100 MB)
using json = nlohmann::json;
}  // namespace

size_t dtype_size(DType d) {
  switch (d) {
    case DType::F64: case DType::I64: return 8;
    case DType::F32: case DType::I32: return 4;
    case DType::F16: case DType::BF16: case DType::I16: return 2;
    case DType::I8: case DType::U8: case DType::BOOL: return 1;
  }
  return 0;
}

const char* dtype_name(DType d) {
  switch (d) {
    case DType::F64: return "F64";
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I64: return "I64";
    case DType::I32: return "I32";
    case DType::I16: return "I16";
    case DType::I8: return "I8";
    case DType::U8: return "U8";
    case DType::BOOL: return "BOOL";
  }
  return "?";
}

DType parse_dtype(std::string_view name, const std::string& context) {
  static const std::pair<const char*, DType> table[] = {
      {"F64", DType::F64}, {"F32", DType::F32}, {"F16", DType::F16}, {"BF16", DType::BF16},
      {"I64", DType::I64}, {"I32", DType::I32}, {"I16", DType::I16}, {"I8", DType::I8},
      {"U8", DType::U8},   {"BOOL", DType::BOOL}};
  for (const auto& [n, d] : table)
    if (name == n) return d;
  ST_FAIL(context + ": unsupported dtype '" + std::string(name) + "'",
          "supported: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL (convert FP8/other dtypes with Hugging Face first)");
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

std::vector<TensorInfo> parse_header(std::string_view json_text, uint64_t data_size, const std::string& file,
                                     std::map<std::string, std::string>* metadata) {
  const std::string hint = "the file is not a valid safetensors file (truncated or corrupt?); re-download or re-export it";
  check_json_depth(json_text, file + " (safetensors header)");
  json header;
  try {
    header = json::parse(json_text.begin(), json_text.end());
  } catch (const std::exception& e) {
    ST_FAIL(file + ": safetensors header is not valid JSON (" + e.what() + ")", hint);
  }
  ST_CHECK(header.is_object(), file + ": safetensors header is not a JSON object", hint);
  std::vector<TensorInfo> out;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const std::string ctx = file + ": tensor '" + name + "'";
    if (name == "__metadata__") {
      ST_CHECK(it->is_object(), file + ": __metadata__ is not an object", hint);
      for (auto m = it->begin(); m != it->end(); ++m) {
        ST_CHECK(m->is_string(), file + ": __metadata__ value '" + m.key() + "' is not a string", hint);
        if (metadata) (*metadata)[m.key()] = m->get<std::string>();
      }
      continue;
    }
    const json& e = *it;
    ST_CHECK(e.is_object() && e.contains("dtype") && e.contains("shape") && e.contains("data_offsets"),
             ctx + ": entry needs dtype, shape and data_offsets", hint);
    ST_CHECK(e["dtype"].is_string(), ctx + ": dtype is not a string", hint);
    TensorInfo t;
    t.name = name;
    t.dtype = parse_dtype(e["dtype"].get<std::string>(), ctx);
    ST_CHECK(e["shape"].is_array(), ctx + ": shape is not an array", hint);
    uint64_t numel = 1;
    for (const json& s : e["shape"]) {
      ST_CHECK(s.is_number_unsigned() || (s.is_number_integer() && s.get<int64_t>() >= 0),
               ctx + ": shape has a non-integer or negative entry", hint);
      const uint64_t d = s.get<uint64_t>();
      ST_CHECK(d == 0 || numel <= (uint64_t(1) << 62) / d, ctx + ": shape is absurdly large", hint);
      numel *= d;
      t.shape.push_back(int64_t(d));
    }
    const json& off = e["data_offsets"];
    ST_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() && off[1].is_number_unsigned(),
             ctx + ": data_offsets must be two non-negative integers", hint);
    t.begin = off[0].get<uint64_t>();
    t.end = off[1].get<uint64_t>();
    ST_CHECK(t.begin <= t.end, ctx + ": data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                                   "] are reversed", hint);
    ST_CHECK(t.end <= data_size, ctx + ": data_offsets end " + std::to_string(t.end) + " is past the data section (" +
                                     std::to_string(data_size) + " bytes): file truncated?", hint);
    const uint64_t expect = numel * dtype_size(t.dtype);
    ST_CHECK(expect == t.nbytes(), ctx + ": shape x dtype size = " + std::to_string(expect) +
                                       " bytes but data_offsets span " + std::to_string(t.nbytes()) + " bytes", hint);
    out.push_back(std::move(t));
  }
  std::sort(out.begin(), out.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (size_t i = 1; i < out.size(); ++i) {
    const TensorInfo& a = out[i - 1];
    const TensorInfo& b = out[i];
    // Zero-sized tensors occupy no bytes and cannot overlap anything.
    if (a.nbytes() == 0 || b.nbytes() == 0) continue;
    ST_CHECK(b.begin >= a.end, file + ": tensors '" + a.name + "' [" + std::to_string(a.begin) + ", " +
                                   std::to_string(a.end) + ") and '" + b.name + "' [" + std::to_string(b.begin) + ", " +
                                   std::to_string(b.end) + ") overlap", hint);
  }
  return out;
}

File::File(const std::filesystem::path& path) : path_(path) {
  const std::string file = path.string();
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  ST_CHECK(fd >= 0, file + ": cannot open (" + std::strerror(errno) + ")", "check the path and permissions");
  struct stat sb {};
  if (::fstat(fd, &sb) != 0) {
    ::close(fd);
    ST_FAIL(file + ": cannot stat (" + std::strerror(errno) + ")");
  }
  map_size_ = size_t(sb.st_size);
  if (map_size_ < 8) {
    ::close(fd);
    ST_FAIL(file + ": only " + std::to_string(map_size_) + " bytes, too short for a safetensors file",
            "the file is truncated; re-download or re-export it");
  }
  map_ = ::mmap(nullptr, map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  ST_CHECK(map_ != MAP_FAILED, file + ": mmap failed (" + std::strerror(errno) + ")");
  const auto* bytes = static_cast<const uint8_t*>(map_);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  try {
    ST_CHECK(n <= kMaxHeader && n <= map_size_ - 8,
             file + ": header length " + std::to_string(n) + " is impossible for a file of " +
                 std::to_string(map_size_) + " bytes",
             "the file is truncated or not a safetensors file");
    data_ = bytes + 8 + n;
    tensors_ = parse_header(std::string_view(reinterpret_cast<const char*>(bytes + 8), n), map_size_ - 8 - n, file,
                            &metadata_);
  } catch (...) {
    ::munmap(map_, map_size_);
    map_ = nullptr;
    throw;
  }
  for (size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
}

File::~File() {
  if (map_ && map_ != MAP_FAILED) ::munmap(map_, map_size_);
}

void File::release(const TensorInfo& t) const {
  if (t.nbytes() == 0) return;
  static const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  const uintptr_t b = uintptr_t(data_ + t.begin) & ~(page - 1), e = uintptr_t(data_ + t.end);
  // Read-only private mapping: dropped pages are re-read from the file if touched again. The pages at
  // either end may hold a neighbour's bytes; that neighbour is then re-read too, never lost. Advisory:
  // a failure costs memory, not correctness.
  ::madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
}

const TensorInfo* File::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& File::at(const std::string& name) const {
  const TensorInfo* t = find(name);
  ST_CHECK(t, path_.string() + ": tensor '" + name + "' is missing",
           "the checkpoint does not match the config (wrong architecture or incomplete download?)");
  return *t;
}

namespace {
std::string header_for(const std::vector<TensorRef>& tensors, const std::map<std::string, std::string>& metadata) {
  // ordered_json keeps the write order, so the header lists tensors as they lie in the file.
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  uint64_t off = 0;
  for (const TensorRef& t : tensors) {
    uint64_t numel = 1;
    for (int64_t s : t.shape) numel *= uint64_t(s);
    ST_CHECK(numel * dtype_size(t.dtype) == t.nbytes,
             "tensor '" + t.name + "': " + std::to_string(t.nbytes) + " bytes given for shape x dtype size " +
                 std::to_string(numel * dtype_size(t.dtype)));
    h[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {off, off + t.nbytes}}};
    off += t.nbytes;
  }
  std::string s = h.dump();
  while (s.size() % 8 != 0) s.push_back(' ');
  return s;
}
}  // namespace

StreamWriter::StreamWriter(const std::filesystem::path& path, std::vector<TensorRef> layout,
                           const std::map<std::string, std::string>& metadata, bool hash)
    : path_(path), tmp_(path.string() + ".tmp" + std::to_string(::getpid())), layout_(std::move(layout)) {
  if (hash) hash_ = std::make_unique<fs::Sha256>();
  const std::string header = header_for(layout_, metadata);
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ST_CHECK(fd_ >= 0, tmp_.string() + ": cannot create (" + std::strerror(errno) + ")", "check that the folder is writable");
  unsigned char len[8];
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) len[i] = (unsigned char)((n >> (8 * i)) & 0xff);
  try {
    write_all(len, 8);
    write_all(header.data(), header.size());
  } catch (...) {
    ::close(fd_);
    fd_ = -1;
    std::error_code ec;
    std::filesystem::remove(tmp_, ec);
    throw;
  }
}

StreamWriter::~StreamWriter() {
  if (fd_ >= 0) {
    ::close(fd_);
    std::error_code ec;
    std::filesystem::remove(tmp_, ec);
  }
}

void StreamWriter::write_all(const void* data, uint64_t nbytes) {
  const auto* p = static_cast<const char*>(data);
  while (nbytes > 0) {
    // Hash mode: small pieces, each hashed right after write() copied it (still in the CPU cache: about a
    // quarter less CPU time than hashing large blocks); the disk writes each chunk while this thread goes on.
    const uint64_t limit = hash_ ? kHashPiece : uint64_t(1) << 30;
    const ssize_t w = ::write(fd_, p, size_t(std::min<uint64_t>(nbytes, limit)));
    if (w < 0 && errno == EINTR) continue;
    ST_CHECK(w > 0, path_.string() + ": write failed (" + std::strerror(errno) + ")", "check free disk space");
    if (hash_) hash_->update(p, size_t(w));
    p += w;
    nbytes -= uint64_t(w);
    written_ += uint64_t(w);
    if (hash_ && written_ - kicked_ >= kWritebackChunk) {
#ifdef __linux__
      // A hint: an error here (e.g. a file system without it) only loses the overlap; fsync reports real errors.
      (void)::sync_file_range(fd_, off_t(kicked_), off_t(written_ - kicked_), SYNC_FILE_RANGE_WRITE);
#endif
      kicked_ = written_;
    }
  }
}

const std::string& StreamWriter::sha256() const {
  ST_CHECK(hash_ && fd_ < 0 && next_ == layout_.size(), path_.string() + ": sha256() needs a hashing writer, after finish()");
  return sha256_;
}

void StreamWriter::write(const void* data, uint64_t nbytes) {
  ST_CHECK(fd_ >= 0 && next_ < layout_.size(), path_.string() + ": more tensors written than its header lists");
  const TensorRef& t = layout_[next_];
  ST_CHECK(nbytes == t.nbytes, path_.string() + ": tensor '" + t.name + "' given " + std::to_string(nbytes) +
                                   " bytes, its header says " + std::to_string(t.nbytes));
  if (nbytes) write_all(data, nbytes);
  ++next_;
}

void StreamWriter::finish(bool sync) {
  ST_CHECK(fd_ >= 0, path_.string() + ": finished twice");
  ST_CHECK(next_ == layout_.size(), path_.string() + ": " + std::to_string(next_) + " of " +
                                        std::to_string(layout_.size()) + " tensors written before finish");
  if (hash_) sha256_ = hash_->hex();
  if (sync) ST_CHECK(::fsync(fd_) == 0, path_.string() + ": fsync failed (" + std::strerror(errno) + ")",
                     "check the disk (full? failing?)");
  const int rc = ::close(fd_);
  fd_ = -1;
  std::error_code ec;
  if (rc != 0) {
    std::filesystem::remove(tmp_, ec);
    ST_FAIL(path_.string() + ": write failed (" + std::strerror(errno) + ")", "check free disk space");
  }
  std::filesystem::rename(tmp_, path_, ec);
  if (ec) {
    std::filesystem::remove(tmp_, ec);
    ST_FAIL("cannot rename '" + tmp_.string() + "' to '" + path_.string() + "': " + ec.message());
  }
}

void write_file(const std::filesystem::path& path, const std::vector<TensorRef>& tensors,
                const std::map<std::string, std::string>& metadata) {
  // Streams to a temporary sibling and renames, so a multi-GB model is never copied into one buffer
  // and readers never see a partial file.
  StreamWriter w(path, tensors, metadata);
  for (const TensorRef& t : tensors) w.write(t.data, t.nbytes);
  w.finish();
}

WrittenFile write_file_hashed(const std::filesystem::path& path, const std::vector<TensorRef>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  StreamWriter w(path, tensors, metadata, true);
  for (const TensorRef& t : tensors) w.write(t.data, t.nbytes);
  w.finish();
  return {path.filename().string(), w.bytes(), w.sha256()};
}

std::pair<size_t, size_t> part_range(const std::vector<uint64_t>& nbytes, int part, int parts) {
  ST_CHECK(parts >= 1 && part >= 0 && part < parts,
           "part " + std::to_string(part) + " of " + std::to_string(parts) + ": no such part");
  uint64_t total = 0;
  for (uint64_t b : nbytes) total += b;
  // Tensor i belongs to the part holding the middle of its bytes (all to part 0 when there are none);
  // that part number never decreases with i, so each part is one contiguous run.
  auto owner = [&](size_t i, uint64_t before) {
    if (total == 0) return 0;
    const long double mid = (long double)before + (long double)nbytes[i] / 2;
    return std::min(parts - 1, int(mid * parts / (long double)total));
  };
  size_t first = nbytes.size(), last = nbytes.size();
  uint64_t before = 0;
  for (size_t i = 0; i < nbytes.size(); ++i) {
    const int o = owner(i, before);
    if (o == part && first == nbytes.size()) first = i;
    if (o > part) {
      last = i;
      break;
    }
    before += nbytes[i];
  }
  if (first == nbytes.size() || first > last) first = last;
  return {first, last};
}

std::vector<WrittenFile> write_part(const std::filesystem::path& dir, const std::string& stem,
                                    const std::vector<TensorRef>& tensors, int part, int parts,
                                    const std::map<std::string, std::string>& metadata) {
  std::vector<uint64_t> nbytes;
  for (const TensorRef& t : tensors) nbytes.push_back(t.nbytes);
  // Every part's range (the same on every writer): the file numbers count only the parts holding tensors.
  std::vector<std::pair<size_t, size_t>> ranges;
  int files = 0, mine = -1;
  for (int k = 0; k < parts; ++k) {
    ranges.push_back(part_range(nbytes, k, parts));
    if (ranges.back().first == ranges.back().second) continue;
    if (k == part) mine = files;
    ++files;
  }
  auto file_name = [&](int i) {
    if (files <= 1) return stem + ".safetensors";
    char buf[64];
    std::snprintf(buf, sizeof buf, "-%05d-of-%05d.safetensors", i + 1, files);
    return stem + buf;
  };
  std::vector<WrittenFile> out;
  if (mine >= 0) {
    const auto [a, b] = ranges[size_t(part)];
    const std::vector<TensorRef> own(tensors.begin() + std::ptrdiff_t(a), tensors.begin() + std::ptrdiff_t(b));
    out.push_back(write_file_hashed(dir / file_name(mine), own, metadata));
  }
  if (part == 0 && files > 1) {
    nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
    uint64_t total = 0;
    int i = 0;
    for (const auto& [a, b] : ranges) {
      if (a == b) continue;
      for (size_t t = a; t < b; ++t) {
        weight_map[tensors[t].name] = file_name(i);
        total += tensors[t].nbytes;
      }
      ++i;
    }
    const std::string name = stem + ".safetensors.index.json";
    const std::string text =
        nlohmann::ordered_json({{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}}).dump(2) + "\n";
    fs::write_file_atomic(dir / name, text);
    out.push_back({name, text.size(), fs::sha256_hex(text)});
  }
  return out;
}

std::vector<std::filesystem::path> write_sharded(const std::filesystem::path& dir, const std::string& stem,
                                                 const std::vector<TensorRef>& tensors, uint64_t max_shard_bytes,
                                                 const std::map<std::string, std::string>& metadata) {
  std::filesystem::create_directories(dir);
  std::vector<std::vector<TensorRef>> shards(1);
  uint64_t cur = 0, total = 0;
  for (const TensorRef& t : tensors) {
    if (max_shard_bytes && cur > 0 && cur + t.nbytes > max_shard_bytes) {
      shards.emplace_back();
      cur = 0;
    }
    shards.back().push_back(t);
    cur += t.nbytes;
    total += t.nbytes;
  }
  std::vector<std::filesystem::path> out;
  if (shards.size() == 1) {
    out.push_back(dir / (stem + ".safetensors"));
    write_file(out.back(), shards[0], metadata);
    return out;
  }
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  char name[64];
  for (size_t i = 0; i < shards.size(); ++i) {
    std::snprintf(name, sizeof name, "-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    const std::string fname = stem + name;
    out.push_back(dir / fname);
    write_file(out.back(), shards[i], metadata);
    for (const TensorRef& t : shards[i]) weight_map[t.name] = fname;
  }
  nlohmann::ordered_json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  fs::write_file_atomic(dir / (stem + ".safetensors.index.json"), index.dump(2) + "\n");
  return out;
}

std::vector<std::filesystem::path> model_files(const std::filesystem::path& dir, const std::string& stem) {
  const auto index_path = dir / (stem + ".safetensors.index.json");
  const auto single = dir / (stem + ".safetensors");
  if (std::filesystem::exists(index_path)) {
    json index;
    try {
      const std::string text = fs::read_file(index_path);
      check_json_depth(text, index_path.string());
      index = json::parse(text);
    } catch (const json::exception& e) {
      ST_FAIL(index_path.string() + ": not valid JSON (" + e.what() + ")", "re-download or re-export the model");
    }
    ST_CHECK(index.contains("weight_map") && index["weight_map"].is_object(),
             index_path.string() + ": no \"weight_map\" object", "re-download or re-export the model");
    std::vector<std::string> names;
    for (const auto& [k, v] : index["weight_map"].items()) {
      ST_CHECK(v.is_string(), index_path.string() + ": weight_map entry '" + k + "' is not a file name");
      const std::string f = v.get<std::string>();
      ST_CHECK(f.find('/') == std::string::npos && f != ".." && !f.empty(),
               index_path.string() + ": weight_map file '" + f + "' for tensor '" + k + "' is not a plain file name");
      if (std::find(names.begin(), names.end(), f) == names.end()) names.push_back(f);
    }
    std::sort(names.begin(), names.end());
    std::vector<std::filesystem::path> out;
    for (const auto& n : names) {
      ST_CHECK(std::filesystem::exists(dir / n), index_path.string() + " lists shard '" + n + "' which is missing",
               "download every shard of the model");
      out.push_back(dir / n);
    }
    return out;
  }
  ST_CHECK(std::filesystem::exists(single),
           dir.string() + ": neither " + stem + ".safetensors nor " + stem + ".safetensors.index.json found",
           "point --model at a Hugging Face model folder (config.json + model.safetensors) or a llama2.c .bin file; "
           "pickle (.bin/.pt) checkpoints are not read: convert them with transformers' save_pretrained(safe_serialization=True)");
  return {single};
}

}  // namespace shardtune::st
