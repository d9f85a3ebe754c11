// The HDF5 shard format (docs/FORMAT.md): /tokens int32, /offsets int64 (n+1), /loss_mask uint8, and
// root attributes describing the tokenizer and provenance; preference shards (attribute kind =
// "preference") add /prompt_lens int64 (one per pair). Writer is byte-deterministic; reader validates.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace shardtune::data {

inline constexpr const char* kShardMagic = "shardtune-shard";
inline constexpr int kShardVersion = 1;
inline constexpr const char* kKindSequence = "sequence";
inline constexpr const char* kKindPreference = "preference";

// Provenance and tokenizer facts stored as root attributes of every shard.
struct ShardInfo {
  std::string split;  // "train" or "val"
  std::string tokenizer_name;
  std::string tokenizer_hash;
  int64_t vocab_size = 0;
  int64_t bos_id = -1, eos_id = -1, pad_id = -1;  // -1 = none
  std::string template_name;
  std::string source_files;  // JSON array of input paths
  // Root attribute "kind": "preference" for pair shards; written only for them, absent = "sequence"
  // (so sequence shards are byte-identical to those written before pairs existed).
  std::string kind = kKindSequence;
};

// One shard in memory: sequences concatenated; sequence i is tokens[offsets[i], offsets[i+1]).
// Preference shards: pair p is sequence 2p (chosen) and 2p+1 (rejected); both begin with the same
// prompt_lens[p] tokens (mask 0), the rest is the response (mask 1).
struct ShardData {
  std::vector<int32_t> tokens;
  std::vector<int64_t> offsets{0};
  std::vector<uint8_t> loss_mask;  // 1 = token is a training target, 0 = prompt/BOS (no loss)
  std::vector<int64_t> prompt_lens;  // preference shards only: one per pair

  int64_t num_samples() const { return static_cast<int64_t>(offsets.size()) - 1; }  // sequences
  int64_t num_pairs() const { return num_samples() / 2; }
  int64_t num_tokens() const { return static_cast<int64_t>(tokens.size()); }
  int64_t num_loss_tokens() const;
};

// Writes `data` to `path` (which must not exist) with no timestamps, so equal inputs give equal bytes.
void write_shard(const std::string& path, const ShardInfo& info, const ShardData& data);

struct Shard {
  ShardInfo info;
  ShardData data;
};

// Reads and validates a shard: magic/version, dataset shapes, offsets monotone and in range, ids in
// [0, vocab), mask in {0,1}; for preference shards also the pair layout (/prompt_lens, shared prompt,
// mask 0 on the prompt and 1 on the response). `expect_vocab` > 0 additionally requires the shard's vocab to match.
// Throws shardtune::Error naming the file and what is wrong.
Shard read_shard(const std::string& path, int64_t expect_vocab = 0);
ShardInfo read_shard_info(const std::string& path);

}  // namespace shardtune::data
