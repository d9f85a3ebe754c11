// Internal: the structural check every shard passes before anything else of it is read. Shared by
// read_shard (shardtune-inspect), ShardSet::open (the trainer) and content verification, so the three
// can never disagree on what a valid shard is.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace shardtune::data {

// The serial HDF5 library is not thread-safe: every HDF5 call of the data layer holds this lock.
std::mutex& hdf5_mutex();

struct ShardLayout {
  std::vector<int64_t> offsets;  // validated: starts at 0, monotone, ends at num_tokens
  int64_t num_tokens = 0;
};

// Checks /tokens (int32), /offsets (int64) and /loss_mask (uint8): each exists, is a 1-D dataset of an
// integer type of that size and signedness, and claims no more elements than the file could hold;
// /loss_mask and /tokens have equal length; then reads /offsets and checks it (starts at 0, never
// decreases, ends at the token count) and the num_samples / num_tokens attributes. `expect_samples` >= 0
// is compared (manifest.json's count) before /offsets is allocated. Throws Error naming file and dataset.
ShardLayout check_shard_layout(hid_t file, const std::string& path, int64_t expect_samples = -1);

// Checks ids[0, n) (positions first.. of /tokens) against [0, vocab) and mask against {0, 1}; the
// first bad value is an Error naming the shard, the sample (from `offsets`) and the token in it.
// Returns the number of mask ones.
int64_t check_token_chunk(const int32_t* ids, const uint8_t* mask, size_t n, int64_t first,
                          const std::vector<int64_t>& offsets, int64_t vocab, const std::string& path);

// Preference shards: checks /prompt_lens (int64, 1-D, one entry per pair; the sequence count must be
// even) and reads it; each prompt length must lie in [1, shorter sequence of its pair). Throws Error
// naming the file, dataset and pair.
std::vector<int64_t> check_pair_layout(hid_t file, const std::string& path, const std::vector<int64_t>& offsets);

// Pair content of pairs [pair_begin, pair_end), whose tokens are ids/mask from position `first` of
// /tokens on: mask 0 on each prompt and 1 on each response, and the chosen and rejected prompts equal.
void check_pair_chunk(const int32_t* ids, const uint8_t* mask, int64_t first, const std::vector<int64_t>& offsets,
                      const std::vector<int64_t>& prompt_lens, int64_t pair_begin, int64_t pair_end,
                      const std::string& path);

}  // namespace shardtune::data
