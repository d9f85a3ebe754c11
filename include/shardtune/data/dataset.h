// Training-side data access: one split of a prep folder as a random-access sample set (each rank reads
// only the samples it is given), the global sample order, and host-side batch assembly (padded or packed).
// Preference folders (issue 11) are read by pair: see PairSample, ShardSet::read_pair, make_pair_batch.
// Knows ranks only as two ints; no torch, no collectives.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "shardtune/data/manifest.h"

namespace shardtune::data {

struct DatasetInfo {
  std::string dir, split;
  DataKind kind = DataKind::Sequence;
  std::string tokenizer_name, tokenizer_hash, tokenizer_source;
  int64_t vocab_size = 0, bos_id = -1, eos_id = -1, pad_id = -1;
  int64_t num_samples = 0;    // samples of the split: sequences, or pairs for preference data
  int64_t num_sequences = 0;  // stored sequences: num_samples, or 2 x num_samples for preference data
  int64_t num_tokens = 0, num_loss_tokens = 0;  // over all stored sequences
};

// One preference pair. Both sequences begin with the same `prompt_len` prompt tokens (BOS included,
// mask 0); the rest of each is its response (mask 1, EOS included when the template appends one).
struct PairSample {
  std::vector<int32_t> chosen, rejected;
  std::vector<uint8_t> chosen_mask, rejected_mask;
  int64_t prompt_len = 0;
};

// One split ("train" / "val") of a folder written by shardtune-prep. Opening validates the manifest
// (manifest.h) and every shard's header and structure (rank, dtype and length of each dataset, offsets,
// counts against the manifest) before reading anything else; `read` re-checks the ids and mask values
// it returns. Content verification of whole shards (sha256, every id and mask) is verify.h's job.
// Not thread-safe (HDF5).
class ShardSet {
 public:
  // `expect_vocab` > 0: error if the data was tokenized for another vocabulary size.
  static std::unique_ptr<ShardSet> open(const std::string& dir, const std::string& split, int64_t expect_vocab = 0);
  ~ShardSet();
  ShardSet(const ShardSet&) = delete;
  ShardSet& operator=(const ShardSet&) = delete;

  const DatasetInfo& info() const { return info_; }
  DataKind kind() const { return info_.kind; }
  // Samples of the split: sequences, or pairs for a preference folder (what GlobalSampler draws from).
  int64_t size() const { return info_.num_samples; }
  // Sequence folders only (a preference folder refuses them: read its pairs with read_pair).
  int64_t length(int64_t sample) const;
  void read(int64_t sample, std::vector<int32_t>& tokens, std::vector<uint8_t>& mask) const;

  // Preference folders only (a sequence folder refuses them). `pair` in [0, size()).
  int64_t prompt_len(int64_t pair) const;
  std::pair<int64_t, int64_t> pair_lengths(int64_t pair) const;  // tokens of {chosen, rejected}
  // Reads both sequences of a pair; re-checks ids, masks and the shared prompt it returns.
  void read_pair(int64_t pair, PairSample& out) const;

 private:
  ShardSet() = default;
  struct Shard;
  DatasetInfo info_;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::vector<int64_t> first_sample_;  // cumulative sample counts, size shards+1
};

// A permutation of [0, n) determined by (seed, epoch) alone: the same on every rank, world size and
// platform (own PRNG + unbiased bounded draws, no std::shuffle).
std::vector<int64_t> epoch_permutation(int64_t n, uint64_t seed, int64_t epoch);

// The samples one rank reads for one micro-step. On a preference folder num_samples = ShardSet::size()
// is the pair count, so stream positions, global batches and micro-batches count pairs: a global batch
// of G pairs is split over ranks and micro-steps by pair and the two sequences of a pair never part. The global stream is the concatenation of epoch
// permutations; optimizer step s covers stream positions [s*G, (s+1)*G). Micro-step a of rank r takes
// positions s*G + (a*world + r)*micro + [0, micro). Hence the union over ranks and micro-steps is the
// global batch, independent of how it is split.
class GlobalSampler {
 public:
  GlobalSampler(int64_t num_samples, uint64_t seed);
  int64_t sample_at(int64_t stream_pos);  // sample id at a position of the global stream
  std::vector<int64_t> micro_batch(int64_t consumed, int64_t micro, int world, int rank, int accum_index);
  int64_t epoch_of(int64_t stream_pos) const { return stream_pos / n_; }

 private:
  int64_t n_;
  uint64_t seed_;
  int64_t cached_epoch_ = -1;
  std::vector<int64_t> perm_;
};

// Host batch, row-major [B, T]. Unpacked: one sample per row, T = longest sample (<= seq_len), padding
// has mask 0. Packed: samples are laid end to end into rows of exactly seq_len (first fit in order);
// doc_ids number the documents of a row (padding is its own document), so attention stays within one.
struct HostBatch {
  int64_t B = 0, T = 0;
  std::vector<int64_t> ids, doc_ids;  // doc_ids empty when unpacked
  std::vector<uint8_t> mask;
  int64_t loss_tokens = 0;  // targets that count (mask 1, not the first token of a document/row)
  std::vector<float> ref_logps;  // [B] per-row reference log-probs (DPO --precompute-ref), or empty
};

HostBatch make_batch(const std::vector<std::vector<int32_t>>& tokens, const std::vector<std::vector<uint8_t>>& masks,
                     int64_t seq_len, bool pack, int64_t pad_id);

// Pairs as one padded batch of 2n rows: rows [0, n) the chosen sequences, rows [n, 2n) the rejected
// ones in the same order (one forward pass for both, as TRL's concatenated forward). T = the longest
// sequence (<= seq_len); padding has mask 0. Pairs are never packed: a packed row would mix pairs.
HostBatch make_pair_batch(const std::vector<PairSample>& pairs, int64_t seq_len, int64_t pad_id);

}  // namespace shardtune::data
