// Content verification of a prep folder before training: every shard's sha256 against manifest.json,
// every token id against the vocabulary and every loss_mask value against {0, 1}, streamed in chunks
// (bounded memory) on several threads. An unchanged shard that already passed is recognized by a small
// record in a verification cache (docs/FORMAT.md, "Verification cache") and not read again.
// No collectives: each rank verifies its share and the caller combines the results.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "shardtune/data/manifest.h"

namespace shardtune::data {

// auto: verify, skipping shards the cache knows as verified; full: verify every shard (the cache is
// refreshed, not trusted); off: no content verification (structure is still checked at open).
enum class VerifyMode { Auto, Full, Off };
VerifyMode parse_verify_mode(const std::string& s);  // Error naming --verify-data

struct VerifyOptions {
  VerifyMode mode = VerifyMode::Auto;
  int rank = 0, world = 1;  // this caller verifies the shards i (manifest order, chosen splits) with i % world == rank
  int threads = 0;          // 0: the CPUs this process may run on
  std::string cache_dir;    // "" = default_cache_dir()
};

struct VerifyResult {
  std::string error, hint;  // the first failure (shard file and sample), empty when every shard passed
  int64_t verified = 0;     // shards read and checked here
  int64_t cached = 0;       // shards recognized as unchanged since they passed
  uint64_t bytes = 0;       // bytes hashed here
  std::string cache_dir;    // where records were looked up / written
  std::string cache_warning;  // non-empty when records could not be written (read-only home, ...)
};

// Verifies this caller's share of the shards of `splits` in `dir`, ids against [0, vocab of the
// manifest). Never throws: every failure lands in `error` so that all ranks can agree on it.
VerifyResult verify_data(const std::string& dir, const std::vector<std::string>& splits, const VerifyOptions& opts);

// One shard: structure, ids < vocab, mask in {0,1}, loss-token count and sha256 against the manifest.
// Throws Error naming the shard file (and sample). Returns the bytes hashed.
uint64_t verify_shard(const ManifestShard& shard, int64_t vocab);

// $SHARDTUNE_CACHE_DIR, else $XDG_CACHE_HOME/shardtune, else $HOME/.cache/shardtune ("" if none is set).
std::string default_cache_dir();

}  // namespace shardtune::data
