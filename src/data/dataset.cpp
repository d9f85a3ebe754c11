// ShardSet (manifest + per-sample HDF5 hyperslab reads), the global sampler and batch assembly.
#include "shardtune/data/dataset.h"

#include <algorithm>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>

#include "h5.h"
#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/data/shard.h"

namespace shardtune::data {

namespace stdfs = std::filesystem;

// The serial HDF5 library is not thread-safe: every HDF5 call of the data layer holds this lock.
std::mutex& hdf5_mutex() {
  static std::mutex m;
  return m;
}

struct ShardSet::Shard {
  std::string path;
  H5 file{-1, H5Fclose}, tokens{-1, H5Dclose}, mask{-1, H5Dclose};
  std::vector<int64_t> offsets;
};

ShardSet::~ShardSet() {
  std::lock_guard<std::mutex> lock(hdf5_mutex());
  shards_.clear();
}

std::unique_ptr<ShardSet> ShardSet::open(const std::string& dir, const std::string& split, int64_t expect_vocab) {
  const std::string manifest_path = (stdfs::path(dir) / "manifest.json").string();
  ST_CHECK(stdfs::is_regular_file(manifest_path), "data folder '" + dir + "' has no manifest.json",
           "pass --data a folder written by shardtune-prep (an interrupted prep leaves none)");
  nlohmann::json m;
  try {
    m = nlohmann::json::parse(fs::read_file(manifest_path));
  } catch (const nlohmann::json::exception& e) {
    ST_FAIL("'" + manifest_path + "' is not valid JSON: " + e.what(), "re-run shardtune-prep");
  }
  ST_CHECK(m.value("format", "") == "shardtune-manifest" && m.value("format_version", 0) == 1,
           "'" + manifest_path + "' is not a version-1 shardtune manifest", "re-run shardtune-prep with this version");
  std::unique_ptr<ShardSet> set(new ShardSet());
  DatasetInfo& info = set->info_;
  info.dir = dir;
  info.split = split;
  const auto& t = m.at("tokenizer");
  info.tokenizer_name = t.value("name", "");
  info.tokenizer_hash = t.value("hash", "");
  info.tokenizer_source = t.value("source", "");
  info.vocab_size = t.value("vocab_size", 0);
  info.bos_id = t.value("bos_id", -1);
  info.eos_id = t.value("eos_id", -1);
  info.pad_id = t.value("pad_id", -1);
  if (expect_vocab > 0)
    ST_CHECK(info.vocab_size <= expect_vocab,
             "data in '" + dir + "' was tokenized with vocabulary size " + std::to_string(info.vocab_size) + " (" +
                 info.tokenizer_name + ", " + info.tokenizer_source + ") but the model has " + std::to_string(expect_vocab),
             "prepare the data with the model's own tokenizer");
  set->first_sample_.push_back(0);
  std::lock_guard<std::mutex> lock(hdf5_mutex());
  QuietHdf5 quiet;
  for (const auto& s : m.at("shards")) {
    if (s.value("split", "") != split) continue;
    auto sh = std::make_unique<Shard>();
    sh->path = (stdfs::path(dir) / s.value("file", "")).string();
    ShardInfo si = read_shard_info(sh->path);  // magic, version, attributes
    ST_CHECK(si.tokenizer_hash == info.tokenizer_hash && si.vocab_size == info.vocab_size,
             "shard '" + sh->path + "' was made with another tokenizer than manifest.json says",
             "the folder mixes outputs of different prep runs; re-run shardtune-prep");
    sh->file = H5(H5Fopen(sh->path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
    sh->tokens = H5(H5Dopen2(sh->file.get(), "tokens", H5P_DEFAULT), H5Dclose);
    sh->mask = H5(H5Dopen2(sh->file.get(), "loss_mask", H5P_DEFAULT), H5Dclose);
    H5 off(H5Dopen2(sh->file.get(), "offsets", H5P_DEFAULT), H5Dclose);
    ST_CHECK(sh->tokens.ok() && sh->mask.ok() && off.ok(), "shard '" + sh->path + "' lacks /tokens, /offsets or /loss_mask");
    H5 space(H5Dget_space(off.get()), H5Sclose), tspace(H5Dget_space(sh->tokens.get()), H5Sclose),
        mspace(H5Dget_space(sh->mask.get()), H5Sclose);
    hsize_t n = 0, nt = 0, nm = 0;
    H5Sget_simple_extent_dims(space.get(), &n, nullptr);
    H5Sget_simple_extent_dims(tspace.get(), &nt, nullptr);
    H5Sget_simple_extent_dims(mspace.get(), &nm, nullptr);
    sh->offsets.resize(n);
    ST_CHECK(n >= 1 && H5Dread(off.get(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, sh->offsets.data()) >= 0,
             "shard '" + sh->path + "': cannot read /offsets");
    ST_CHECK(sh->offsets.front() == 0 && std::is_sorted(sh->offsets.begin(), sh->offsets.end()) &&
                 sh->offsets.back() == static_cast<int64_t>(nt) && nm == nt,
             "shard '" + sh->path + "': /offsets, /tokens and /loss_mask are inconsistent", "re-run shardtune-prep");
    ST_CHECK(static_cast<int64_t>(n - 1) == s.value("samples", int64_t{-1}),
             "shard '" + sh->path + "' holds " + std::to_string(n - 1) + " samples, manifest.json says " +
                 std::to_string(s.value("samples", int64_t{-1})), "re-run shardtune-prep");
    info.num_samples += static_cast<int64_t>(n - 1);
    info.num_tokens += static_cast<int64_t>(nt);
    info.num_loss_tokens += s.value("loss_tokens", int64_t{0});
    set->first_sample_.push_back(info.num_samples);
    set->shards_.push_back(std::move(sh));
  }
  return set;
}

int64_t ShardSet::length(int64_t sample) const {
  ST_CHECK(sample >= 0 && sample < info_.num_samples, "sample " + std::to_string(sample) + " out of range");
  size_t s = std::upper_bound(first_sample_.begin(), first_sample_.end(), sample) - first_sample_.begin() - 1;
  int64_t i = sample - first_sample_[s];
  return shards_[s]->offsets[i + 1] - shards_[s]->offsets[i];
}

void ShardSet::read(int64_t sample, std::vector<int32_t>& tokens, std::vector<uint8_t>& mask) const {
  ST_CHECK(sample >= 0 && sample < info_.num_samples, "sample " + std::to_string(sample) + " out of range");
  size_t s = std::upper_bound(first_sample_.begin(), first_sample_.end(), sample) - first_sample_.begin() - 1;
  const Shard& sh = *shards_[s];
  int64_t i = sample - first_sample_[s];
  hsize_t start = static_cast<hsize_t>(sh.offsets[i]), count = static_cast<hsize_t>(sh.offsets[i + 1] - sh.offsets[i]);
  tokens.resize(count);
  mask.resize(count);
  if (count == 0) return;
  std::lock_guard<std::mutex> lock(hdf5_mutex());
  QuietHdf5 quiet;
  H5 mem(H5Screate_simple(1, &count, nullptr), H5Sclose);
  for (auto [ds, type, dst] : {std::tuple{sh.tokens.get(), H5T_NATIVE_INT32, static_cast<void*>(tokens.data())},
                               std::tuple{sh.mask.get(), H5T_NATIVE_UINT8, static_cast<void*>(mask.data())}}) {
    H5 space(H5Dget_space(ds), H5Sclose);
    H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, &start, nullptr, &count, nullptr);
    ST_CHECK(H5Dread(ds, type, mem.get(), space.get(), H5P_DEFAULT, dst) >= 0,
             "shard '" + sh.path + "': cannot read sample " + std::to_string(i) + " (truncated or corrupt file?)",
             "verify the folder with shardtune-inspect --verify");
  }
  for (auto id : tokens)
    ST_CHECK(id >= 0 && id < info_.vocab_size, "shard '" + sh.path + "': sample " + std::to_string(i) + " holds token id " +
                                                  std::to_string(id) + " outside the vocabulary", "re-run shardtune-prep");
}

namespace {
uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
// Unbiased integer in [0, bound) by rejection.
uint64_t bounded(uint64_t& state, uint64_t bound) {
  const uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
  for (;;) {
    uint64_t x = splitmix64(state);
    if (x < limit) return x % bound;
  }
}
}  // namespace

std::vector<int64_t> epoch_permutation(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> p(n);
  for (int64_t i = 0; i < n; ++i) p[i] = i;
  uint64_t state = seed * 0x100000001b3ull ^ (static_cast<uint64_t>(epoch) + 0x51ed27ull);
  for (int64_t i = n - 1; i > 0; --i) std::swap(p[i], p[bounded(state, static_cast<uint64_t>(i) + 1)]);
  return p;
}

GlobalSampler::GlobalSampler(int64_t num_samples, uint64_t seed) : n_(num_samples), seed_(seed) {
  ST_CHECK(num_samples > 0, "the training split has no samples", "check the prep output (shardtune-inspect)");
}

int64_t GlobalSampler::sample_at(int64_t pos) {
  int64_t e = pos / n_;
  if (e != cached_epoch_) {
    perm_ = epoch_permutation(n_, seed_, e);
    cached_epoch_ = e;
  }
  return perm_[pos % n_];
}

std::vector<int64_t> GlobalSampler::micro_batch(int64_t consumed, int64_t micro, int world, int rank, int accum_index) {
  std::vector<int64_t> out;
  int64_t first = consumed + (static_cast<int64_t>(accum_index) * world + rank) * micro;
  for (int64_t k = 0; k < micro; ++k) out.push_back(sample_at(first + k));
  return out;
}

HostBatch make_batch(const std::vector<std::vector<int32_t>>& tokens, const std::vector<std::vector<uint8_t>>& masks,
                     int64_t seq_len, bool pack, int64_t pad_id) {
  HostBatch b;
  const int64_t pad = pad_id >= 0 ? pad_id : 0;
  auto len_of = [&](size_t i) { return std::min<int64_t>(static_cast<int64_t>(tokens[i].size()), seq_len); };
  if (!pack) {
    b.B = static_cast<int64_t>(tokens.size());
    for (size_t i = 0; i < tokens.size(); ++i) b.T = std::max(b.T, len_of(i));
    b.ids.assign(b.B * b.T, pad);
    b.mask.assign(b.B * b.T, 0);
    for (size_t i = 0; i < tokens.size(); ++i)
      for (int64_t t = 0; t < len_of(i); ++t) {
        b.ids[i * b.T + t] = tokens[i][t];
        b.mask[i * b.T + t] = t > 0 ? masks[i][t] : 0;
        b.loss_tokens += t > 0 ? masks[i][t] : 0;
      }
    return b;
  }
  // Packed: first fit in order; rows are exactly seq_len long.
  b.T = seq_len;
  std::vector<int64_t> fill;  // tokens used per row
  std::vector<int64_t> docs;  // documents per row
  for (size_t i = 0; i < tokens.size(); ++i) {
    int64_t L = len_of(i);
    size_t row = 0;
    while (row < fill.size() && fill[row] + L > seq_len) ++row;
    if (row == fill.size()) {
      fill.push_back(0);
      docs.push_back(0);
      b.ids.resize(b.ids.size() + seq_len, pad);
      b.mask.resize(b.mask.size() + seq_len, 0);
      b.doc_ids.resize(b.doc_ids.size() + seq_len, -1);
    }
    int64_t base = static_cast<int64_t>(row) * seq_len + fill[row];
    for (int64_t t = 0; t < L; ++t) {
      b.ids[base + t] = tokens[i][t];
      b.mask[base + t] = t > 0 ? masks[i][t] : 0;
      b.loss_tokens += t > 0 ? masks[i][t] : 0;
      b.doc_ids[base + t] = docs[row];
    }
    fill[row] += L;
    ++docs[row];
  }
  b.B = static_cast<int64_t>(fill.size());
  for (int64_t r = 0; r < b.B; ++r)  // padding forms one more document per row
    for (int64_t t = fill[r]; t < seq_len; ++t) b.doc_ids[r * seq_len + t] = docs[r];
  return b;
}

}  // namespace shardtune::data
