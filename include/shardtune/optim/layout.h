// The flat layout of trainable parameters: one fp32 buffer cut into buckets (in reverse parameter
// order, the order gradients become ready in backward). Every bucket's size is a multiple of the world
// size and rank r owns the r-th equal slice of every bucket: reduce-scatter, AdamW and all-gather all
// work bucket by bucket. Torch-free so it can be tested and checkpointed without tensors.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace shardtune::optim {

struct ParamSpec {
  std::string name;
  std::vector<int64_t> shape;
  bool decay = true;  // weight decay applies (off for norms, biases, embeddings' positions…)
};

struct ParamSlot {
  std::string name;
  std::vector<int64_t> shape;
  int64_t numel = 0;
  int64_t offset = 0;  // in the flat buffer
  bool decay = true;
  int bucket = 0;
};

struct Bucket {
  int64_t offset = 0, size = 0;  // size % world == 0; padding (if any) is at the end
  std::vector<int> params;       // indices into FlatLayout::params
};

// A piece of a parameter inside this rank's owned slice of a bucket.
struct OwnedRange {
  int param;
  int64_t flat_offset, length;  // in the flat buffer
  int64_t shard_offset;         // in this rank's contiguous owned buffer
};

struct FlatLayout {
  int world = 1;
  int64_t total = 0;  // flat buffer length including padding
  std::vector<ParamSlot> params;
  std::vector<Bucket> buckets;

  int64_t shard_size() const { return total / world; }  // elements each rank owns
  int64_t slice(int b) const { return buckets[b].size / world; }
  int64_t owned_offset(int b, int rank) const { return buckets[b].offset + rank * slice(b); }
  int64_t shard_offset(int b) const;  // where bucket b's owned slice sits in the rank's owned buffer
  std::vector<OwnedRange> owned_ranges(int rank) const;
};

// Buckets of about `bucket_elems` elements (a parameter is never split across buckets).
FlatLayout plan_layout(const std::vector<ParamSpec>& params, int world, int64_t bucket_elems);

}  // namespace shardtune::optim
