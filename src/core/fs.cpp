// File helpers with error messages that name the path; SHA-256 via OpenSSL's EVP interface.
#include "shardtune/core/fs.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>

#include "shardtune/core/error.h"

namespace shardtune::fs {

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  ST_CHECK(ctx_ && EVP_DigestInit_ex(static_cast<EVP_MD_CTX*>(ctx_), EVP_sha256(), nullptr) == 1,
           "OpenSSL: cannot set up SHA-256");
}

Sha256::~Sha256() { EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(ctx_)); }

void Sha256::update(const void* data, size_t n) { EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(ctx_), data, n); }

std::string Sha256::hex() {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(ctx_), md, &len);
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; ++i) {
    out.push_back(digits[md[i] >> 4]);
    out.push_back(digits[md[i] & 15]);
  }
  return out;
}

std::string read_file(const stdfs::path& path) {
  std::ifstream in(path, std::ios::binary);
  ST_CHECK(in.good(), "cannot open '" + path.string() + "': " + std::strerror(errno),
           "check that the path exists and is readable");
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ST_CHECK(!in.bad(), "error while reading '" + path.string() + "'");
  return data;
}

std::string sha256_hex(std::string_view data) {
  Sha256 d;
  d.update(data.data(), data.size());
  return d.hex();
}

std::string sha256_file(const stdfs::path& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  ST_CHECK(f != nullptr, "cannot open '" + path.string() + "': " + std::strerror(errno));
  Sha256 d;
  std::string buf(1 << 20, '\0');
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), f.get())) > 0) d.update(buf.data(), n);
  ST_CHECK(!std::ferror(f.get()), "error while reading '" + path.string() + "'");
  return d.hex();
}

void write_file_atomic(const stdfs::path& path, std::string_view data) {
  stdfs::path tmp = path;
  tmp += ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    ST_CHECK(out.good(), "cannot create '" + tmp.string() + "': " + std::strerror(errno),
             "check that the folder exists and is writable");
    out.write(data.data(), static_cast<std::streamsize>(data.size()));
    out.flush();
    ST_CHECK(out.good(), "cannot write '" + tmp.string() + "' (disk full?)");
  }
  std::error_code ec;
  stdfs::rename(tmp, path, ec);
  if (ec) {
    stdfs::remove(tmp);
    ST_FAIL("cannot rename '" + tmp.string() + "' to '" + path.string() + "': " + ec.message());
  }
}

void require_absent_or_empty(const stdfs::path& dir, const std::string& what) {
  std::error_code ec;
  if (!stdfs::exists(dir, ec)) return;
  ST_CHECK(stdfs::is_directory(dir, ec), what + " '" + dir.string() + "' exists and is not a folder",
           "choose another path; shardtune never overwrites existing files");
  ST_CHECK(stdfs::is_empty(dir, ec), what + " '" + dir.string() + "' already exists and is not empty",
           "choose a new folder, or remove the old one yourself if you no longer need it");
}

void publish_dir(const stdfs::path& staging, const stdfs::path& final_dir, const std::string& what,
                 const std::string& rename_hint) {
  std::error_code ec;
  if (stdfs::exists(final_dir, ec)) {
    require_absent_or_empty(final_dir, what);
    stdfs::remove(final_dir, ec);
  }
  stdfs::rename(staging, final_dir, ec);
  ST_CHECK(!ec, "cannot rename '" + staging.string() + "' to '" + final_dir.string() + "': " + ec.message(), rename_hint);
}

void fsync_path(const stdfs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ST_CHECK(fd >= 0, "cannot open '" + path.string() + "' to sync it: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  ST_CHECK(rc == 0, "cannot sync '" + path.string() + "' to disk: " + std::strerror(err), "check the disk (full? failing?)");
}

void fsync_dir_contents(const stdfs::path& dir) {
  for (const auto& e : stdfs::directory_iterator(dir))
    if (e.is_regular_file()) fsync_path(e.path());
  fsync_path(dir);
}

void lock_dir_for_process(const stdfs::path& dir, const std::string& what) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  ST_CHECK(fd >= 0, "cannot open the " + what + " '" + dir.string() + "': " + std::strerror(errno));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int e = errno;
    ::close(fd);
    ST_CHECK(e != EWOULDBLOCK, "another running job is using the " + what + " '" + dir.string() + "'",
             "give each run its own folder; wait for the other job to finish, or end it");
    ST_FAIL("cannot lock the " + what + " '" + dir.string() + "': " + std::strerror(e));
  }
  // The descriptor stays open on purpose: the lock lasts as long as this process.
}

}  // namespace shardtune::fs
