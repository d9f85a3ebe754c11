// Parallel, chunked content verification of shards and the verification cache (see verify.h and
// docs/FORMAT.md). HDF5 calls hold hdf5_mutex(); hashing and value checks run outside it in parallel.
#include "shardtune/data/verify.h"

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "h5.h"
#include "layout.h"
#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/core/hw.h"
#include "shardtune/core/json_depth.h"
#include "shardtune/data/shard.h"

namespace shardtune::data {

namespace stdfs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr hsize_t kChunk = hsize_t(1) << 20;  // tokens per read: 5 MiB of buffers per thread
constexpr int kRecordVersion = 1;

// HDF5 handles of one shard, opened and closed under the HDF5 lock (also when an Error unwinds).
struct OpenShard {
  std::unique_ptr<H5> file, tokens, mask;
  ~OpenShard() {
    std::lock_guard<std::mutex> lock(hdf5_mutex());
    mask.reset();
    tokens.reset();
    file.reset();
  }
};

// What identifies a file's content without reading it: if any of these changed, it is verified again.
struct FileStamp {
  std::string real_path;
  uint64_t size = 0, inode = 0, device = 0;
  int64_t mtime_ns = 0, ctime_ns = 0;
  bool operator==(const FileStamp& o) const {
    return real_path == o.real_path && size == o.size && inode == o.inode && device == o.device &&
           mtime_ns == o.mtime_ns && ctime_ns == o.ctime_ns;
  }
};

bool stamp_of(const std::string& path, FileStamp& out) {
  std::error_code ec;
  out.real_path = stdfs::canonical(path, ec).string();
  struct stat sb {};
  if (ec || ::stat(path.c_str(), &sb) != 0) return false;
  out.size = static_cast<uint64_t>(sb.st_size);
  out.inode = static_cast<uint64_t>(sb.st_ino);
  out.device = static_cast<uint64_t>(sb.st_dev);
  out.mtime_ns = int64_t(sb.st_mtim.tv_sec) * 1000000000 + sb.st_mtim.tv_nsec;
  out.ctime_ns = int64_t(sb.st_ctim.tv_sec) * 1000000000 + sb.st_ctim.tv_nsec;
  return true;
}

json record_of(const FileStamp& st, const ManifestShard& s, int64_t vocab) {
  json r = {{"format", "shardtune-verified"}, {"version", kRecordVersion}, {"path", st.real_path},
            {"size", st.size}, {"inode", st.inode}, {"device", st.device}, {"mtime_ns", st.mtime_ns},
            {"ctime_ns", st.ctime_ns}, {"sha256", s.sha256}, {"vocab_size", vocab}, {"samples", s.samples},
            {"tokens", s.tokens}, {"loss_tokens", s.loss_tokens}};
  // Only pair shards name their kind, so the records of sequence shards stay what they were.
  if (s.kind == DataKind::Preference) r["kind"] = kind_name(s.kind);
  return r;
}

// Read windows over /tokens: [cuts[k], cuts[k+1]) of about kChunk tokens. For pair shards the cuts fall
// between pairs (a pair longer than kChunk is one window), so each pair is checked whole.
std::vector<int64_t> read_windows(const std::vector<int64_t>& offsets, int64_t num_tokens, bool pairs) {
  std::vector<int64_t> cuts{0};
  if (!pairs) {
    for (int64_t at = static_cast<int64_t>(kChunk); at < num_tokens; at += static_cast<int64_t>(kChunk)) cuts.push_back(at);
  } else {
    for (size_t i = 2; i + 1 <= offsets.size(); i += 2)
      if (offsets[i] - cuts.back() > static_cast<int64_t>(kChunk) && offsets[i - 2] > cuts.back()) cuts.push_back(offsets[i - 2]);
  }
  if (num_tokens > cuts.back()) cuts.push_back(num_tokens);
  return cuts;
}

// One record per (file identity, manifest facts, vocabulary checked): the name is a hash of all of it.
stdfs::path record_path(const std::string& cache_dir, const json& record) {
  return stdfs::path(cache_dir) / "verified" / (fs::sha256_hex(record.dump()).substr(0, 32) + ".json");
}

bool cache_hit(const std::string& cache_dir, const json& record) {
  if (cache_dir.empty()) return false;
  try {
    const stdfs::path p = record_path(cache_dir, record);
    std::error_code ec;
    if (!stdfs::is_regular_file(p, ec) || stdfs::file_size(p, ec) > 4096) return false;
    const std::string text = fs::read_file(p);
    check_json_depth(text, p.string());
    return json::parse(text) == record;  // every field equal, not only the hash in the name
  } catch (const std::exception&) {
    return false;  // unreadable or damaged record: verify again
  }
}

// Returns "" or why the record could not be written (never fatal: the cache is an optimization).
std::string cache_store(const std::string& cache_dir, const json& record) {
  if (cache_dir.empty()) return "no cache folder (set SHARDTUNE_CACHE_DIR, XDG_CACHE_HOME or HOME)";
  try {
    const stdfs::path p = record_path(cache_dir, record);
    stdfs::create_directories(p.parent_path());
    fs::write_file_atomic(p, record.dump() + "\n");
    return "";
  } catch (const std::exception& e) {
    return e.what();
  }
}

}  // namespace

VerifyMode parse_verify_mode(const std::string& s) {
  if (s == "auto") return VerifyMode::Auto;
  if (s == "full") return VerifyMode::Full;
  if (s == "off") return VerifyMode::Off;
  ST_FAIL("--verify-data '" + s + "' is not one of auto, full, off",
          "auto (default) verifies shards not yet verified, full verifies all, off skips content checks");
}

std::string default_cache_dir() {
  if (const char* d = std::getenv("SHARDTUNE_CACHE_DIR"); d && *d) return d;
  if (const char* d = std::getenv("XDG_CACHE_HOME"); d && *d) return (stdfs::path(d) / "shardtune").string();
  if (const char* d = std::getenv("HOME"); d && *d) return (stdfs::path(d) / ".cache" / "shardtune").string();
  return "";
}

uint64_t verify_shard(const ManifestShard& s, int64_t vocab) {
  const std::string where = "shard '" + s.path + "'";
  ST_CHECK(!s.sha256.empty(), where + ": manifest.json records no sha256, so the shard cannot be verified",
           "re-run shardtune-prep (it records one), or pass --verify-data off to train without content checks");
  OpenShard sh;
  ShardLayout layout;
  const bool pairs = s.kind == DataKind::Preference;
  std::vector<int64_t> prompt_lens;
  {
    std::lock_guard<std::mutex> lock(hdf5_mutex());
    QuietHdf5 quiet;
    ST_CHECK(H5Fis_hdf5(s.path.c_str()) > 0, "'" + s.path + "' is not a readable HDF5 file",
             "check the path; re-run shardtune-prep");
    const ShardInfo si = read_shard_info(s.path);  // magic, version, attributes
    ST_CHECK(si.kind == kind_name(s.kind),
             where + " holds " + si.kind + " data, manifest.json says kind '" + kind_name(s.kind) + "'",
             "the folder mixes outputs of different prep runs; re-run shardtune-prep");
    ST_CHECK(si.vocab_size == vocab && si.split == s.split,
             where + " has vocab_size " + std::to_string(si.vocab_size) + " and split '" + si.split +
                 "', manifest.json says " + std::to_string(vocab) + " and '" + s.split + "'",
             "the folder mixes outputs of different prep runs; re-run shardtune-prep");
    sh.file = std::make_unique<H5>(H5Fopen(s.path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
    ST_CHECK(sh.file->ok(), "cannot open HDF5 file '" + s.path + "'");
    layout = check_shard_layout(sh.file->get(), s.path, s.sequences);
    if (pairs) prompt_lens = check_pair_layout(sh.file->get(), s.path, layout.offsets);
    sh.tokens = std::make_unique<H5>(H5Dopen2(sh.file->get(), "tokens", H5P_DEFAULT), H5Dclose);
    sh.mask = std::make_unique<H5>(H5Dopen2(sh.file->get(), "loss_mask", H5P_DEFAULT), H5Dclose);
    ST_CHECK(sh.tokens->ok() && sh.mask->ok(), where + ": cannot open /tokens or /loss_mask");
  }
  ST_CHECK(layout.num_tokens == s.tokens, where + " holds " + std::to_string(layout.num_tokens) +
                                              " tokens, manifest.json says " + std::to_string(s.tokens),
           "the folder mixes outputs of different prep runs; re-run shardtune-prep");
  const std::vector<int64_t> cuts = read_windows(layout.offsets, layout.num_tokens, pairs);
  int64_t widest = 1;
  for (size_t k = 1; k < cuts.size(); ++k) widest = std::max(widest, cuts[k] - cuts[k - 1]);
  std::vector<int32_t> ids(static_cast<size_t>(widest));
  std::vector<uint8_t> mask(ids.size());
  int64_t ones = 0;
  int64_t next_pair = 0;  // pair shards: the first pair not yet checked
  for (size_t k = 0; k + 1 < cuts.size(); ++k) {
    hsize_t start = static_cast<hsize_t>(cuts[k]), count = static_cast<hsize_t>(cuts[k + 1] - cuts[k]);
    {
      std::lock_guard<std::mutex> lock(hdf5_mutex());
      QuietHdf5 quiet;
      H5 mem(H5Screate_simple(1, &count, nullptr), H5Sclose);
      for (auto [ds, type, dst] : {std::tuple{sh.tokens->get(), H5T_NATIVE_INT32, static_cast<void*>(ids.data())},
                                   std::tuple{sh.mask->get(), H5T_NATIVE_UINT8, static_cast<void*>(mask.data())}}) {
        H5 space(H5Dget_space(ds), H5Sclose);
        H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, &start, nullptr, &count, nullptr);
        ST_CHECK(H5Dread(ds, type, mem.get(), space.get(), H5P_DEFAULT, dst) >= 0,
                 where + ": cannot read tokens " + std::to_string(start) + ".." + std::to_string(start + count) +
                     " (truncated or corrupt file?)", "re-copy the file or re-run shardtune-prep");
      }
    }
    ones += check_token_chunk(ids.data(), mask.data(), count, static_cast<int64_t>(start), layout.offsets, vocab, s.path);
    if (pairs) {  // the pairs that end inside this window (all of them start in it: windows cut between pairs)
      int64_t end_pair = next_pair;
      while (end_pair < static_cast<int64_t>(prompt_lens.size()) && layout.offsets[2 * end_pair + 2] <= cuts[k + 1]) ++end_pair;
      check_pair_chunk(ids.data(), mask.data(), cuts[k], layout.offsets, prompt_lens, next_pair, end_pair, s.path);
      next_pair = end_pair;
    }
  }
  ST_CHECK(!pairs || next_pair == static_cast<int64_t>(prompt_lens.size()),
           "internal: " + where + ": " + std::to_string(next_pair) + " of " + std::to_string(prompt_lens.size()) +
               " pairs content-checked");
  ST_CHECK(ones == s.loss_tokens, where + " holds " + std::to_string(ones) + " trained tokens (loss_mask 1), manifest.json says " +
                                      std::to_string(s.loss_tokens), "the shard is damaged; re-run shardtune-prep");
  std::string digest = fs::sha256_file(s.path);
  std::string want = s.sha256;
  std::transform(want.begin(), want.end(), want.begin(), [](unsigned char c) { return std::tolower(c); });
  ST_CHECK(digest == want, where + ": sha256 " + digest + " does not match manifest.json (" + s.sha256 + ")",
           "the file changed after shardtune-prep wrote it (damaged copy?); copy it again or re-run shardtune-prep");
  return static_cast<uint64_t>(stdfs::file_size(s.path));
}

VerifyResult verify_data(const std::string& dir, const std::vector<std::string>& splits, const VerifyOptions& opts) {
  VerifyResult r;
  r.cache_dir = opts.cache_dir.empty() ? default_cache_dir() : opts.cache_dir;
  if (opts.mode == VerifyMode::Off) return r;
  try {
    const Manifest m = read_manifest(dir);
    std::vector<const ManifestShard*> mine;
    int64_t index = 0;
    for (const auto& s : m.shards) {
      if (std::find(splits.begin(), splits.end(), s.split) == splits.end()) continue;
      if (index++ % std::max(1, opts.world) == opts.rank) mine.push_back(&s);
    }
    std::atomic<size_t> next{0};
    std::atomic<bool> failed{false};
    std::mutex mu;  // guards r and first_bad
    size_t first_bad = mine.size();
    auto worker = [&] {
      for (size_t i; !failed && (i = next++) < mine.size();) {
        const ManifestShard& s = *mine[i];
        try {
          FileStamp before, after;
          const bool stamped = stamp_of(s.path, before);
          const json record = record_of(before, s, m.vocab_size);
          if (stamped && opts.mode == VerifyMode::Auto && cache_hit(r.cache_dir, record)) {
            std::lock_guard<std::mutex> lock(mu);
            ++r.cached;
            continue;
          }
          const uint64_t bytes = verify_shard(s, m.vocab_size);
          // Only a file that did not change while it was read may be remembered as verified.
          const std::string why = stamped && stamp_of(s.path, after) && after == before
                                      ? cache_store(r.cache_dir, record)
                                      : "shard '" + s.path + "' changed while it was verified";
          std::lock_guard<std::mutex> lock(mu);
          ++r.verified;
          r.bytes += bytes;
          if (!why.empty() && r.cache_warning.empty())
            r.cache_warning = "verification cache '" + r.cache_dir + "': record not written (" + why +
                              "); unchanged shards will be verified again at the next start";
        } catch (const std::exception& e) {
          std::lock_guard<std::mutex> lock(mu);
          failed = true;
          if (i < first_bad) {  // prefer the earliest shard in manifest order
            first_bad = i;
            r.error = e.what();
            const auto* err = dynamic_cast<const Error*>(&e);
            r.hint = err ? err->hint() : "";
          }
        }
      }
    };
    const int n = std::max(1, std::min<int>(opts.threads > 0 ? opts.threads : std::max(1, hw::affinity().count),
                                            static_cast<int>(mine.size())));
    std::vector<std::thread> pool;
    for (int t = 1; t < n; ++t) pool.emplace_back(worker);
    worker();
    for (auto& t : pool) t.join();
  } catch (const std::exception& e) {
    r.error = e.what();
    const auto* err = dynamic_cast<const Error*>(&e);
    r.hint = err ? err->hint() : "";
  }
  return r;
}

}  // namespace shardtune::data
