// GGUF v3 writer (streamed tensors, temporary name + fsync + rename) and header reader with every offset and
// size checked, as declared in include/shardtune/export/gguf.h. Layout (ggml docs/gguf.md): magic, version,
// tensor count, kv count, kv pairs, tensor infos, padding to the alignment, then the tensor data, each tensor
// starting at an aligned offset relative to the data section and padded to the alignment (the last one too:
// ggml's reader sizes the data section that way).
#include "shardtune/export/gguf.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>

#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"

namespace shardtune::gguf {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian uint32
constexpr uint32_t kVersion = 3;
constexpr size_t kMaxName = 64;          // GGML_MAX_NAME, including the terminating NUL
constexpr uint32_t kMaxDims = 4;         // GGML_MAX_DIMS

static_assert(sizeof(float) == 4 && sizeof(double) == 8, "GGUF needs IEEE float32/float64");

// Block size and bytes per block of every ggml type a file may hold, so shardtune-inspect can verify sizes of
// files written by llama.cpp too (quantized K types included). {0, 0} = unknown / removed type.
struct TypeTraits {
  const char* name;
  uint64_t block;
  uint64_t block_bytes;
};
TypeTraits raw_traits(uint32_t type) {
  switch (type) {
    case 0: return {"F32", 1, 4};
    case 1: return {"F16", 1, 2};
    case 2: return {"Q4_0", 32, 18};
    case 3: return {"Q4_1", 32, 20};
    case 6: return {"Q5_0", 32, 22};
    case 7: return {"Q5_1", 32, 24};
    case 8: return {"Q8_0", 32, 34};
    case 9: return {"Q8_1", 32, 36};
    case 10: return {"Q2_K", 256, 84};
    case 11: return {"Q3_K", 256, 110};
    case 12: return {"Q4_K", 256, 144};
    case 13: return {"Q5_K", 256, 176};
    case 14: return {"Q6_K", 256, 210};
    case 15: return {"Q8_K", 256, 292};
    case 16: return {"IQ2_XXS", 256, 66};
    case 17: return {"IQ2_XS", 256, 74};
    case 18: return {"IQ3_XXS", 256, 98};
    case 19: return {"IQ1_S", 256, 50};
    case 20: return {"IQ4_NL", 32, 18};
    case 21: return {"IQ3_S", 256, 110};
    case 22: return {"IQ2_S", 256, 82};
    case 23: return {"IQ4_XS", 256, 136};
    case 24: return {"I8", 1, 1};
    case 25: return {"I16", 1, 2};
    case 26: return {"I32", 1, 4};
    case 27: return {"I64", 1, 8};
    case 28: return {"F64", 1, 8};
    case 29: return {"IQ1_M", 256, 56};
    case 30: return {"BF16", 1, 2};
    case 34: return {"TQ1_0", 256, 54};
    case 35: return {"TQ2_0", 256, 66};
    default: return {nullptr, 0, 0};
  }
}

uint64_t pad_to(uint64_t x, uint64_t align) { return (x + align - 1) / align * align; }

// ---- writing -------------------------------------------------------------------------------------------

// Little-endian serialisation into a byte string (the header is built in memory: it is small next to the data).
struct Bytes {
  std::string s;
  template <class T>
  void pod(T v) {
    char b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));  // the build targets little-endian hosts only (checked below)
    s.append(b, sizeof(T));
  }
  void str(const std::string& v) {
    pod<uint64_t>(v.size());
    s.append(v);
  }
};

bool host_is_little_endian() {
  const uint16_t one = 1;
  unsigned char b;
  std::memcpy(&b, &one, 1);
  return b == 1;
}

template <class T>
constexpr ValueType scalar_type() {
  if constexpr (std::is_same_v<T, uint8_t>) return ValueType::UINT8;
  else if constexpr (std::is_same_v<T, int8_t>) return ValueType::INT8;
  else if constexpr (std::is_same_v<T, uint16_t>) return ValueType::UINT16;
  else if constexpr (std::is_same_v<T, int16_t>) return ValueType::INT16;
  else if constexpr (std::is_same_v<T, uint32_t>) return ValueType::UINT32;
  else if constexpr (std::is_same_v<T, int32_t>) return ValueType::INT32;
  else if constexpr (std::is_same_v<T, float>) return ValueType::FLOAT32;
  else if constexpr (std::is_same_v<T, bool>) return ValueType::BOOL;
  else if constexpr (std::is_same_v<T, std::string>) return ValueType::STRING;
  else if constexpr (std::is_same_v<T, uint64_t>) return ValueType::UINT64;
  else if constexpr (std::is_same_v<T, int64_t>) return ValueType::INT64;
  else return ValueType::FLOAT64;
}

template <class T>
void put_scalar(Bytes& b, const T& v) {
  if constexpr (std::is_same_v<T, std::string>) b.str(v);
  else if constexpr (std::is_same_v<T, bool>) b.pod<uint8_t>(v ? 1 : 0);
  else b.pod<T>(v);
}

template <class>
struct is_vector : std::false_type {};
template <class T>
struct is_vector<std::vector<T>> : std::true_type {};

void put_value(Bytes& b, const Value& value) {
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (is_vector<T>::value) {
          using E = typename T::value_type;
          b.pod<uint32_t>(static_cast<uint32_t>(ValueType::ARRAY));
          b.pod<uint32_t>(static_cast<uint32_t>(scalar_type<E>()));
          b.pod<uint64_t>(v.size());
          for (const auto& e : v) put_scalar<E>(b, e);
        } else {
          b.pod<uint32_t>(static_cast<uint32_t>(scalar_type<T>()));
          put_scalar<T>(b, v);
        }
      },
      value);
}

// Buffered writes to a file descriptor; owns the descriptor.
class FdWriter {
 public:
  FdWriter(int fd, std::string path) : fd_(fd), path_(std::move(path)) { buf_.reserve(kBuf); }
  ~FdWriter() {
    if (fd_ >= 0) ::close(fd_);
  }
  FdWriter(const FdWriter&) = delete;
  FdWriter& operator=(const FdWriter&) = delete;

  void write(const void* data, size_t n) {
    const char* p = static_cast<const char*>(data);
    if (buf_.size() + n > kBuf) flush();
    if (n >= kBuf) return raw(p, n);
    buf_.append(p, n);
  }
  void zeros(size_t n) {
    static const char z[64] = {};
    while (n > 0) {
      const size_t k = std::min(n, sizeof(z));
      write(z, k);
      n -= k;
    }
  }
  void flush() {
    raw(buf_.data(), buf_.size());
    buf_.clear();
  }
  void sync_and_close() {
    flush();
    ST_CHECK(::fsync(fd_) == 0, "cannot sync '" + path_ + "' to disk: " + std::strerror(errno),
             "check the disk (full? failing?)");
    const int rc = ::close(fd_);
    fd_ = -1;
    ST_CHECK(rc == 0, "cannot close '" + path_ + "': " + std::strerror(errno), "check the disk (full? failing?)");
  }
  uint64_t written() const { return written_ + buf_.size(); }

 private:
  void raw(const char* p, size_t n) {
    while (n > 0) {
      const ssize_t k = ::write(fd_, p, n);
      if (k < 0 && errno == EINTR) continue;
      ST_CHECK(k > 0, "cannot write '" + path_ + "': " + std::strerror(errno), "check the free disk space");
      p += k;
      n -= static_cast<size_t>(k);
      written_ += static_cast<uint64_t>(k);
    }
  }
  static constexpr size_t kBuf = 4 << 20;
  int fd_;
  std::string path_;
  std::string buf_;
  uint64_t written_ = 0;
};

// ---- reading -------------------------------------------------------------------------------------------

// Bounds-checked sequential reader over the header; every length is checked against the bytes left in the
// file before anything is allocated, so a corrupt count cannot make us allocate gigabytes.
class HeaderReader {
 public:
  HeaderReader(const std::filesystem::path& path, uint64_t size) : path_(path.string()), size_(size), in_(path, std::ios::binary) {
    ST_CHECK(in_.good(), "cannot open '" + path_ + "': " + std::strerror(errno));
  }
  template <class T>
  T pod(const std::string& what) {
    T v;
    bytes(&v, sizeof(T), what);
    return v;
  }
  std::string str(const std::string& what) {
    const uint64_t n = pod<uint64_t>(what + " (string length)");
    need(n, what);
    std::string s(n, '\0');
    bytes(s.data(), n, what);
    return s;
  }
  void need(uint64_t n, const std::string& what) {
    ST_CHECK(n <= size_ - pos_,
             "GGUF file '" + path_ + "' is truncated or corrupt: " + what + " needs " + std::to_string(n) +
                 " bytes at offset " + std::to_string(pos_) + " but the file has " + std::to_string(size_ - pos_) +
                 " left",
             "the file was cut short or damaged; export it again");
  }
  uint64_t pos() const { return pos_; }
  const std::string& path() const { return path_; }

 private:
  void bytes(void* dst, uint64_t n, const std::string& what) {
    need(n, what);
    in_.read(static_cast<char*>(dst), static_cast<std::streamsize>(n));
    ST_CHECK(in_.good(), "cannot read '" + path_ + "' at offset " + std::to_string(pos_) + " (" + what + ")");
    pos_ += n;
  }
  std::string path_;
  uint64_t size_;
  uint64_t pos_ = 0;
  std::ifstream in_;
};

template <class T, class S>
std::vector<T> read_array(HeaderReader& r, uint64_t n, uint64_t elem_bytes, const std::string& what) {
  r.need(n * elem_bytes, what);  // n <= file size / elem_bytes, so no overflow for elem_bytes <= 8
  std::vector<T> v;
  v.reserve(n);
  for (uint64_t i = 0; i < n; ++i) v.push_back(static_cast<T>(r.pod<S>(what)));
  return v;
}

Value read_value(HeaderReader& r, uint32_t type, const std::string& key) {
  const std::string what = "value of key '" + key + "'";
  switch (static_cast<ValueType>(type)) {
    case ValueType::UINT8: return r.pod<uint8_t>(what);
    case ValueType::INT8: return r.pod<int8_t>(what);
    case ValueType::UINT16: return r.pod<uint16_t>(what);
    case ValueType::INT16: return r.pod<int16_t>(what);
    case ValueType::UINT32: return r.pod<uint32_t>(what);
    case ValueType::INT32: return r.pod<int32_t>(what);
    case ValueType::FLOAT32: return r.pod<float>(what);
    case ValueType::BOOL: {
      const uint8_t b = r.pod<uint8_t>(what);
      ST_CHECK(b <= 1, "GGUF file '" + r.path() + "': key '" + key + "' is a bool with byte value " + std::to_string(b),
               "the file is corrupt; export it again");
      return b == 1;
    }
    case ValueType::STRING: return r.str(what);
    case ValueType::UINT64: return r.pod<uint64_t>(what);
    case ValueType::INT64: return r.pod<int64_t>(what);
    case ValueType::FLOAT64: return r.pod<double>(what);
    case ValueType::ARRAY: {
      const uint32_t et = r.pod<uint32_t>(what + " (array type)");
      const uint64_t n = r.pod<uint64_t>(what + " (array length)");
      // Arrays are returned in the nearest Value alternative (the variant has no vector of every type); the
      // types this project writes (string, float32, int32, uint32) round-trip exactly.
      switch (static_cast<ValueType>(et)) {
        case ValueType::STRING: {
          r.need(n * 8 < n ? std::numeric_limits<uint64_t>::max() : n * 8, what);  // each string has a length
          std::vector<std::string> v;
          v.reserve(n);
          for (uint64_t i = 0; i < n; ++i) v.push_back(r.str(what));
          return v;
        }
        case ValueType::FLOAT32: return read_array<float, float>(r, n, 4, what);
        case ValueType::FLOAT64: return read_array<float, double>(r, n, 8, what);
        case ValueType::INT32: return read_array<int32_t, int32_t>(r, n, 4, what);
        case ValueType::UINT32: return read_array<uint32_t, uint32_t>(r, n, 4, what);
        case ValueType::INT8: return read_array<int32_t, int8_t>(r, n, 1, what);
        case ValueType::UINT8: return read_array<uint32_t, uint8_t>(r, n, 1, what);
        case ValueType::BOOL: return read_array<uint32_t, uint8_t>(r, n, 1, what);
        case ValueType::INT16: return read_array<int32_t, int16_t>(r, n, 2, what);
        case ValueType::UINT16: return read_array<uint32_t, uint16_t>(r, n, 2, what);
        case ValueType::INT64: return read_array<int32_t, int64_t>(r, n, 8, what);    // narrowed (display only)
        case ValueType::UINT64: return read_array<uint32_t, uint64_t>(r, n, 8, what);  // narrowed (display only)
        default:
          ST_FAIL("GGUF file '" + r.path() + "': key '" + key + "' is an array of unsupported type " + std::to_string(et),
                  "nested arrays and unknown types are not valid GGUF; the file is corrupt or from a newer format");
      }
    }
  }
  ST_FAIL("GGUF file '" + r.path() + "': key '" + key + "' has unknown value type " + std::to_string(type),
          "the file is corrupt or from a newer GGUF version");
}

}  // namespace

// ---- public API ----------------------------------------------------------------------------------------

uint64_t tensor_bytes(TensorType type, uint64_t n_elements) {
  const TypeTraits t = raw_traits(static_cast<uint32_t>(type));
  ST_CHECK(t.block != 0, "unknown GGUF tensor type " + std::to_string(static_cast<uint32_t>(type)));
  ST_CHECK(n_elements % t.block == 0, std::string(t.name) + " needs a multiple of " + std::to_string(t.block) +
                                          " elements, got " + std::to_string(n_elements));
  return n_elements / t.block * t.block_bytes;
}

const char* type_name(TensorType type) {
  const char* n = raw_traits(static_cast<uint32_t>(type)).name;
  return n ? n : "?";
}

const char* raw_type_name(uint32_t type) {
  const char* n = raw_traits(type).name;
  return n ? n : "?";
}

void Writer::set(const std::string& key, Value value) {
  ST_CHECK(!key.empty(), "GGUF metadata key must not be empty");
  for (auto& kv : kv_)
    if (kv.first == key) {
      kv.second = std::move(value);
      return;
    }
  kv_.emplace_back(key, std::move(value));
}

bool Writer::has(const std::string& key) const {
  for (const auto& kv : kv_)
    if (kv.first == key) return true;
  return false;
}

void Writer::add_tensor(TensorInfo tensor) {
  const std::string& n = tensor.name;
  ST_CHECK(!n.empty() && n.size() < kMaxName,
           "GGUF tensor name '" + n + "' must be 1 to " + std::to_string(kMaxName - 1) + " bytes",
           "llama.cpp (GGML_MAX_NAME) cannot load longer names");
  for (const auto& t : tensors_) ST_CHECK(t.name != n, "GGUF tensor '" + n + "' is declared twice");
  ST_CHECK(!tensor.ne.empty() && tensor.ne.size() <= kMaxDims,
           "GGUF tensor '" + n + "' has " + std::to_string(tensor.ne.size()) + " dimensions; ggml supports 1 to 4");
  const TypeTraits t = raw_traits(static_cast<uint32_t>(tensor.type));
  ST_CHECK(t.block != 0, "GGUF tensor '" + n + "' has unknown type " + std::to_string(static_cast<uint32_t>(tensor.type)));
  ST_CHECK(tensor.ne[0] % t.block == 0,
           "GGUF tensor '" + n + "': its innermost dimension " + std::to_string(tensor.ne[0]) +
               " is not a multiple of " + std::to_string(t.block) + " as " + t.name + " requires",
           "choose another --dtype (f16, bf16, f32) for this model");
  uint64_t elems = 1;
  for (uint64_t d : tensor.ne) {
    ST_CHECK(d == 0 || elems <= std::numeric_limits<uint64_t>::max() / d, "GGUF tensor '" + n + "' is too large");
    elems *= d;
  }
  const uint64_t expected = tensor_bytes(tensor.type, elems);
  ST_CHECK(tensor.bytes == expected, "GGUF tensor '" + n + "' declares " + std::to_string(tensor.bytes) +
                                         " bytes but " + std::to_string(elems) + " " + t.name + " values need " +
                                         std::to_string(expected));
  ST_CHECK(static_cast<bool>(tensor.produce), "GGUF tensor '" + n + "' has no data producer");
  tensors_.push_back(std::move(tensor));
}

uint64_t Writer::write(const std::filesystem::path& path, bool overwrite,
                       const std::function<void(size_t, size_t)>& progress) const {
  ST_CHECK(host_is_little_endian(), "GGUF export needs a little-endian host");
  ST_CHECK(alignment >= 1 && (alignment & (alignment - 1)) == 0,
           "GGUF alignment " + std::to_string(alignment) + " is not a power of two");
  std::error_code ec;
  ST_CHECK(overwrite || !std::filesystem::exists(path, ec), "output file '" + path.string() + "' already exists",
           "choose another --out; shardtune never overwrites existing files");

  // Header, all in memory.
  Bytes h;
  h.pod<uint32_t>(kMagic);
  h.pod<uint32_t>(kVersion);
  h.pod<uint64_t>(tensors_.size());
  const bool write_alignment = alignment != 32 && !has("general.alignment");
  h.pod<uint64_t>(kv_.size() + (write_alignment ? 1 : 0));
  for (const auto& [key, value] : kv_) {
    h.str(key);
    put_value(h, value);
  }
  if (write_alignment) {
    h.str("general.alignment");
    put_value(h, Value{alignment});
  }
  uint64_t offset = 0;
  for (const auto& t : tensors_) {
    h.str(t.name);
    h.pod<uint32_t>(static_cast<uint32_t>(t.ne.size()));
    for (uint64_t d : t.ne) h.pod<uint64_t>(d);
    h.pod<uint32_t>(static_cast<uint32_t>(t.type));
    h.pod<uint64_t>(offset);
    offset += pad_to(t.bytes, alignment);
  }
  const uint64_t header_padded = pad_to(h.s.size(), alignment);
  h.s.resize(header_padded, '\0');
  const uint64_t total = header_padded + offset;

  std::filesystem::path partial = path;
  partial += ".partial";
  std::filesystem::remove(partial, ec);  // a leftover of an earlier crash
  const int fd = ::open(partial.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ST_CHECK(fd >= 0, "cannot create '" + partial.string() + "': " + std::strerror(errno),
           "check that the folder exists and is writable");
  try {
    FdWriter out(fd, partial.string());
    out.write(h.s.data(), h.s.size());
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const TensorInfo& t = tensors_[i];
      uint64_t got = 0;
      const ByteSink sink = [&](const void* data, size_t n) {
        ST_CHECK(n <= t.bytes - got, "GGUF tensor '" + t.name + "' produced more than its declared " +
                                         std::to_string(t.bytes) + " bytes");
        out.write(data, n);
        got += n;
      };
      t.produce(sink);
      ST_CHECK(got == t.bytes, "GGUF tensor '" + t.name + "' produced " + std::to_string(got) + " bytes, declared " +
                                   std::to_string(t.bytes));
      out.zeros(pad_to(t.bytes, alignment) - t.bytes);
      if (progress) progress(i + 1, tensors_.size());
    }
    ST_CHECK(out.written() == total, "internal error: GGUF size " + std::to_string(out.written()) + " != planned " +
                                         std::to_string(total));
    out.sync_and_close();
    std::filesystem::rename(partial, path, ec);
    ST_CHECK(!ec, "cannot rename '" + partial.string() + "' to '" + path.string() + "': " + ec.message());
  } catch (...) {
    std::filesystem::remove(partial, ec);
    throw;
  }
  const auto parent = path.parent_path().empty() ? std::filesystem::path(".") : path.parent_path();
  fs::fsync_path(parent);  // the rename itself is durable
  return total;
}

FileInfo read_info(const std::filesystem::path& path) {
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(path, ec);
  ST_CHECK(!ec, "cannot read '" + path.string() + "': " + ec.message(), "check the path");
  HeaderReader r(path, size);
  const std::string p = path.string();
  FileInfo info;
  info.file_size = size;
  const uint32_t magic = r.pod<uint32_t>("magic");
  ST_CHECK(magic == kMagic, "'" + p + "' is not a GGUF file (no \"GGUF\" magic)", "pass a .gguf file");
  info.version = r.pod<uint32_t>("version");
  ST_CHECK(info.version == 2 || info.version == 3,
           "GGUF file '" + p + "' has version " + std::to_string(info.version) + "; versions 2 and 3 are supported");
  const uint64_t n_tensors = r.pod<uint64_t>("tensor count");
  const uint64_t n_kv = r.pod<uint64_t>("metadata count");
  // Each kv needs at least 12 bytes (key length + type), each tensor info at least 28: bound the counts.
  r.need(n_kv > size / 12 ? size + 1 : n_kv * 12, "the " + std::to_string(n_kv) + " metadata entries");
  r.need(n_tensors > size / 28 ? size + 1 : n_tensors * 28, "the " + std::to_string(n_tensors) + " tensor infos");

  std::set<std::string> keys;
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = r.str("key of metadata entry " + std::to_string(i));
    ST_CHECK(keys.insert(key).second, "GGUF file '" + p + "' has the key '" + key + "' twice", "the file is corrupt");
    const uint32_t type = r.pod<uint32_t>("type of key '" + key + "'");
    Value v = read_value(r, type, key);
    if (key == "general.alignment") {
      ST_CHECK(std::holds_alternative<uint32_t>(v), "GGUF file '" + p + "': general.alignment is not a uint32");
      info.alignment = std::get<uint32_t>(v);
      ST_CHECK(info.alignment != 0 && (info.alignment & (info.alignment - 1)) == 0,
               "GGUF file '" + p + "': general.alignment " + std::to_string(info.alignment) + " is not a power of two");
    }
    info.kv.emplace_back(std::move(key), std::move(v));
  }

  std::set<std::string> names;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    FileTensor t;
    t.name = r.str("name of tensor " + std::to_string(i));
    const std::string what = "tensor '" + t.name + "'";
    ST_CHECK(t.name.size() < kMaxName, "GGUF file '" + p + "': " + what + " has a name longer than 63 bytes");
    ST_CHECK(names.insert(t.name).second, "GGUF file '" + p + "' has " + what + " twice", "the file is corrupt");
    const uint32_t n_dims = r.pod<uint32_t>(what + " (dimension count)");
    ST_CHECK(n_dims >= 1 && n_dims <= kMaxDims,
             "GGUF file '" + p + "': " + what + " has " + std::to_string(n_dims) + " dimensions (ggml allows 1 to 4)",
             "the file is corrupt");
    uint64_t elems = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t ne = r.pod<uint64_t>(what + " (dimensions)");
      ST_CHECK(ne <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) &&
                   (ne == 0 || elems <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / ne),
               "GGUF file '" + p + "': " + what + " has impossible dimensions", "the file is corrupt");
      t.ne.push_back(ne);
      elems *= ne;
    }
    t.type = r.pod<uint32_t>(what + " (type)");
    const TypeTraits tt = raw_traits(t.type);
    ST_CHECK(tt.block != 0, "GGUF file '" + p + "': " + what + " has unknown ggml type " + std::to_string(t.type),
             "the file is corrupt or uses a type this shardtune does not know");
    ST_CHECK(t.ne[0] % tt.block == 0, "GGUF file '" + p + "': " + what + " has ne[0] = " + std::to_string(t.ne[0]) +
                                          ", not a multiple of the " + tt.name + " block size " +
                                          std::to_string(tt.block),
             "the file is corrupt");
    t.bytes = elems / tt.block * tt.block_bytes;
    t.offset = r.pod<uint64_t>(what + " (offset)");  // relative for now
    info.tensors.push_back(std::move(t));
  }
  info.data_offset = pad_to(r.pos(), info.alignment);
  ST_CHECK(info.data_offset <= size || n_tensors == 0,
           "GGUF file '" + p + "' is truncated: the data section would start at " + std::to_string(info.data_offset) +
               " but the file has " + std::to_string(size) + " bytes",
           "the file was cut short; export it again");
  // ggml requires the tensors to be laid out in order, each at the padded end of the previous one.
  uint64_t expected = 0;
  for (auto& t : info.tensors) {
    ST_CHECK(t.offset == expected, "GGUF file '" + p + "': tensor '" + t.name + "' has data offset " +
                                       std::to_string(t.offset) + ", expected " + std::to_string(expected) +
                                       " (tensors must follow each other, aligned to " +
                                       std::to_string(info.alignment) + ")",
             "the file is corrupt; llama.cpp would refuse it too");
    t.offset += info.data_offset;
    ST_CHECK(t.offset <= size && t.bytes <= size - t.offset,
             "GGUF file '" + p + "' is truncated: tensor '" + t.name + "' needs bytes " + std::to_string(t.offset) +
                 ".." + std::to_string(t.offset + t.bytes) + " but the file has " + std::to_string(size),
             "the file was cut short; export it again");
    expected += pad_to(t.bytes, info.alignment);
  }
  return info;
}

}  // namespace shardtune::gguf
