// ShardSet (manifest + per-sample HDF5 hyperslab reads), the global sampler and batch assembly.
#include "shardtune/data/dataset.h"

#include <algorithm>
#include <mutex>
#include <tuple>

#include "h5.h"
#include "layout.h"
#include "shardtune/core/error.h"
#include "shardtune/data/manifest.h"
#include "shardtune/data/shard.h"

namespace shardtune::data {

std::mutex& hdf5_mutex() {
  static std::mutex m;
  return m;
}

struct ShardSet::Shard {
  std::string path;
  H5 file{-1, H5Fclose}, tokens{-1, H5Dclose}, mask{-1, H5Dclose};
  std::vector<int64_t> offsets;
  std::vector<int64_t> prompt_lens;  // preference shards: one per pair
};

ShardSet::~ShardSet() {
  std::lock_guard<std::mutex> lock(hdf5_mutex());
  shards_.clear();
}

std::unique_ptr<ShardSet> ShardSet::open(const std::string& dir, const std::string& split, int64_t expect_vocab) {
  const Manifest m = read_manifest(dir);
  std::unique_ptr<ShardSet> set(new ShardSet());
  DatasetInfo& info = set->info_;
  info.dir = dir;
  info.split = split;
  info.kind = m.kind;
  info.tokenizer_name = m.tokenizer_name;
  info.tokenizer_hash = m.tokenizer_hash;
  info.tokenizer_source = m.tokenizer_source;
  info.vocab_size = m.vocab_size;
  info.bos_id = m.bos_id;
  info.eos_id = m.eos_id;
  info.pad_id = m.pad_id;
  if (expect_vocab > 0)
    ST_CHECK(info.vocab_size <= expect_vocab,
             "data in '" + dir + "' was tokenized with vocabulary size " + std::to_string(info.vocab_size) + " (" +
                 info.tokenizer_name + ", " + info.tokenizer_source + ") but the model has " + std::to_string(expect_vocab),
             "prepare the data with the model's own tokenizer");
  set->first_sample_.push_back(0);
  std::lock_guard<std::mutex> lock(hdf5_mutex());
  QuietHdf5 quiet;
  const std::string rerun = "the folder mixes outputs of different prep runs or a shard is damaged; re-run shardtune-prep";
  for (const ManifestShard& s : m.shards) {
    if (s.split != split) continue;
    auto sh = std::make_unique<Shard>();
    sh->path = s.path;
    ShardInfo si = read_shard_info(sh->path);  // magic, version, attributes
    ST_CHECK(si.tokenizer_hash == info.tokenizer_hash && si.vocab_size == info.vocab_size,
             "shard '" + sh->path + "' was made with another tokenizer than manifest.json says", rerun);
    ST_CHECK(si.split == split, "shard '" + sh->path + "' holds split '" + si.split + "', manifest.json says '" + split + "'",
             rerun);
    ST_CHECK(si.kind == kind_name(m.kind),
             "shard '" + sh->path + "' holds " + si.kind + " data, manifest.json says kind '" + kind_name(m.kind) + "'", rerun);
    sh->file = H5(H5Fopen(sh->path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
    ST_CHECK(sh->file.ok(), "cannot open HDF5 file '" + sh->path + "'");
    // Rank, type and length of every dataset and the offsets, before anything is read by sample.
    ShardLayout layout = check_shard_layout(sh->file.get(), sh->path, s.sequences);
    if (m.kind == DataKind::Preference) sh->prompt_lens = check_pair_layout(sh->file.get(), sh->path, layout.offsets);
    ST_CHECK(layout.num_tokens == s.tokens,
             "shard '" + sh->path + "' holds " + std::to_string(layout.num_tokens) + " tokens, manifest.json says " +
                 std::to_string(s.tokens), rerun);
    sh->tokens = H5(H5Dopen2(sh->file.get(), "tokens", H5P_DEFAULT), H5Dclose);
    sh->mask = H5(H5Dopen2(sh->file.get(), "loss_mask", H5P_DEFAULT), H5Dclose);
    ST_CHECK(sh->tokens.ok() && sh->mask.ok(), "shard '" + sh->path + "': cannot open /tokens or /loss_mask");
    sh->offsets = std::move(layout.offsets);
    info.num_samples += s.samples;
    info.num_sequences += s.sequences;
    info.num_tokens += s.tokens;
    info.num_loss_tokens += s.loss_tokens;
    set->first_sample_.push_back(info.num_samples);
    set->shards_.push_back(std::move(sh));
  }
  return set;
}

namespace {
void require_kind(const DatasetInfo& info, DataKind want, const char* call) {
  if (info.kind == want) return;
  if (want == DataKind::Sequence)
    ST_FAIL("ShardSet::" + std::string(call) + ": '" + info.dir + "' holds preference pairs (manifest.json kind \"preference\")",
            "read its pairs with read_pair (data/dataset.h)");
  ST_FAIL("ShardSet::" + std::string(call) + ": '" + info.dir + "' holds sequences, not preference pairs",
          "prepare the data with shardtune-prep --format preference");
}
}  // namespace

int64_t ShardSet::length(int64_t sample) const {
  require_kind(info_, DataKind::Sequence, "length");
  ST_CHECK(sample >= 0 && sample < info_.num_samples, "sample " + std::to_string(sample) + " out of range");
  size_t s = std::upper_bound(first_sample_.begin(), first_sample_.end(), sample) - first_sample_.begin() - 1;
  int64_t i = sample - first_sample_[s];
  return shards_[s]->offsets[i + 1] - shards_[s]->offsets[i];
}

void ShardSet::read(int64_t sample, std::vector<int32_t>& tokens, std::vector<uint8_t>& mask) const {
  require_kind(info_, DataKind::Sequence, "read");
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
  // A last guard when content verification was skipped (--verify-data off): names shard and sample.
  check_token_chunk(tokens.data(), mask.data(), count, sh.offsets[i], sh.offsets, info_.vocab_size, sh.path);
}

int64_t ShardSet::prompt_len(int64_t pair) const {
  require_kind(info_, DataKind::Preference, "prompt_len");
  ST_CHECK(pair >= 0 && pair < info_.num_samples, "pair " + std::to_string(pair) + " out of range");
  size_t s = std::upper_bound(first_sample_.begin(), first_sample_.end(), pair) - first_sample_.begin() - 1;
  return shards_[s]->prompt_lens[pair - first_sample_[s]];
}

std::pair<int64_t, int64_t> ShardSet::pair_lengths(int64_t pair) const {
  require_kind(info_, DataKind::Preference, "pair_lengths");
  ST_CHECK(pair >= 0 && pair < info_.num_samples, "pair " + std::to_string(pair) + " out of range");
  size_t s = std::upper_bound(first_sample_.begin(), first_sample_.end(), pair) - first_sample_.begin() - 1;
  const auto& o = shards_[s]->offsets;
  const int64_t i = 2 * (pair - first_sample_[s]);
  return {o[i + 1] - o[i], o[i + 2] - o[i + 1]};
}

void ShardSet::read_pair(int64_t pair, PairSample& out) const {
  require_kind(info_, DataKind::Preference, "read_pair");
  ST_CHECK(pair >= 0 && pair < info_.num_samples, "pair " + std::to_string(pair) + " out of range");
  size_t s = std::upper_bound(first_sample_.begin(), first_sample_.end(), pair) - first_sample_.begin() - 1;
  const Shard& sh = *shards_[s];
  const int64_t p = pair - first_sample_[s];
  const int64_t a = sh.offsets[2 * p], mid = sh.offsets[2 * p + 1], b = sh.offsets[2 * p + 2];
  // Both sequences are adjacent in the file: one read of [a, b).
  hsize_t start = static_cast<hsize_t>(a), count = static_cast<hsize_t>(b - a);
  std::vector<int32_t> ids(count);
  std::vector<uint8_t> mask(count);
  {
    std::lock_guard<std::mutex> lock(hdf5_mutex());
    QuietHdf5 quiet;
    H5 mem(H5Screate_simple(1, &count, nullptr), H5Sclose);
    for (auto [ds, type, dst] : {std::tuple{sh.tokens.get(), H5T_NATIVE_INT32, static_cast<void*>(ids.data())},
                                 std::tuple{sh.mask.get(), H5T_NATIVE_UINT8, static_cast<void*>(mask.data())}}) {
      H5 space(H5Dget_space(ds), H5Sclose);
      H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, &start, nullptr, &count, nullptr);
      ST_CHECK(H5Dread(ds, type, mem.get(), space.get(), H5P_DEFAULT, dst) >= 0,
               "shard '" + sh.path + "': cannot read pair " + std::to_string(p) + " (truncated or corrupt file?)",
               "verify the folder with shardtune-inspect --verify");
    }
  }
  check_token_chunk(ids.data(), mask.data(), count, a, sh.offsets, info_.vocab_size, sh.path);
  check_pair_chunk(ids.data(), mask.data(), a, sh.offsets, sh.prompt_lens, p, p + 1, sh.path);
  out.prompt_len = sh.prompt_lens[p];
  out.chosen.assign(ids.begin(), ids.begin() + (mid - a));
  out.chosen_mask.assign(mask.begin(), mask.begin() + (mid - a));
  out.rejected.assign(ids.begin() + (mid - a), ids.end());
  out.rejected_mask.assign(mask.begin() + (mid - a), mask.end());
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

HostBatch make_pair_batch(const std::vector<PairSample>& pairs, int64_t seq_len, int64_t pad_id) {
  std::vector<std::vector<int32_t>> tokens(2 * pairs.size());
  std::vector<std::vector<uint8_t>> masks(2 * pairs.size());
  const size_t n = pairs.size();
  for (size_t i = 0; i < n; ++i) {
    tokens[i] = pairs[i].chosen;
    masks[i] = pairs[i].chosen_mask;
    tokens[n + i] = pairs[i].rejected;
    masks[n + i] = pairs[i].rejected_mask;
  }
  return make_batch(tokens, masks, seq_len, false, pad_id);
}

}  // namespace shardtune::data
