// File helpers: whole-file reads with clear errors, SHA-256 of files and buffers, staging folders that
// become visible only by one rename when complete.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace shardtune::fs {

namespace stdfs = std::filesystem;

std::string read_file(const stdfs::path& path);  // throws Error naming the path

// Incremental SHA-256: update() with the bytes in order, then hex() once (lowercase hex digest), so a
// writer can hash what it writes from memory instead of reading the file back.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(const void* data, size_t n);
  std::string hex();

 private:
  void* ctx_;  // EVP_MD_CTX (OpenSSL stays out of this header)
};

std::string sha256_hex(std::string_view data);
std::string sha256_file(const stdfs::path& path);

// Writes `data` to `path` via a temporary sibling and rename, so readers never see a partial file.
void write_file_atomic(const stdfs::path& path, std::string_view data);

// Refuses (Error with hint) if `dir` exists and is not empty, so nothing the user had is overwritten.
void require_absent_or_empty(const stdfs::path& dir, const std::string& what);

// Renames a completed staging folder onto `final_dir` (which must be absent or empty; `what` names it in
// errors, `rename_hint` says what to do when the rename itself fails).
void publish_dir(const stdfs::path& staging, const stdfs::path& final_dir, const std::string& what = "output folder",
                 const std::string& rename_hint = "the staging folder must be on the same file system as the output folder");

// fsync(2) every regular file in `dir` (not recursive), then `dir` itself: its contents are on disk.
void fsync_dir_contents(const stdfs::path& dir);
void fsync_path(const stdfs::path& path);  // one file or folder

// Takes an exclusive advisory lock (flock) on the folder `dir` for the rest of this process's life, so that
// a second run given the same folder fails at start instead of after hours of training. Released by the
// kernel when the process ends, however it ends. Throws Error naming `what` if another process holds it.
void lock_dir_for_process(const stdfs::path& dir, const std::string& what);

}  // namespace shardtune::fs
