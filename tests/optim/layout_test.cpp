// The flat layout: world-divisible buckets, whole parameters per bucket, and owned ranges that give
// every element of every parameter to exactly one rank.
#include <gtest/gtest.h>

#include <vector>

#include "shardtune/optim/layout.h"

namespace so = shardtune::optim;

namespace {

std::vector<so::ParamSpec> specs() {
  return {{"embed", {37, 8}, true}, {"norm", {8}, false}, {"w1", {8, 13}, true}, {"b1", {13}, false},
          {"w2", {13, 8}, true},    {"head", {37, 8}, true}};
}

}  // namespace

TEST(Layout, BucketsAreWorldDivisibleAndHoldWholeParams) {
  for (int world : {1, 2, 3, 4, 7}) {
    for (int64_t bucket : {1, 50, 120, 100000}) {
      so::FlatLayout L = so::plan_layout(specs(), world, bucket);
      int64_t end = 0;
      std::vector<int> seen(L.params.size(), 0);
      for (size_t b = 0; b < L.buckets.size(); ++b) {
        const auto& bk = L.buckets[b];
        EXPECT_EQ(bk.offset, end) << "buckets are contiguous";
        EXPECT_EQ(bk.size % world, 0) << "world " << world << " bucket " << b;
        int64_t used = 0;
        for (int p : bk.params) {
          const auto& s = L.params[p];
          EXPECT_EQ(s.bucket, static_cast<int>(b));
          EXPECT_GE(s.offset, bk.offset);
          EXPECT_LE(s.offset + s.numel, bk.offset + bk.size) << s.name << " crosses its bucket";
          used += s.numel;
          ++seen[p];
        }
        EXPECT_LT(bk.size - used, world) << "padding is less than one element per rank";
        end += bk.size;
      }
      EXPECT_EQ(end, L.total);
      EXPECT_EQ(L.total % world, 0);
      for (int s : seen) EXPECT_EQ(s, 1);
      // Reverse parameter order: the head (last) is in the first bucket, the embedding in the last.
      EXPECT_EQ(L.params[L.buckets.front().params.front()].name, "head");
    }
  }
}

TEST(Layout, OwnedRangesCoverEveryElementOnce) {
  for (int world : {1, 2, 3, 4, 7}) {
    so::FlatLayout L = so::plan_layout(specs(), world, 60);
    std::vector<int> owner(L.total, -1);
    for (int r = 0; r < world; ++r) {
      int64_t shard_end = 0;
      for (const auto& o : L.owned_ranges(r)) {
        const auto& s = L.params[o.param];
        ASSERT_GE(o.flat_offset, s.offset);
        ASSERT_LE(o.flat_offset + o.length, s.offset + s.numel);
        // inside rank r's slice of the parameter's bucket, at the matching place of its owned buffer
        const int b = s.bucket;
        ASSERT_GE(o.flat_offset, L.owned_offset(b, r));
        ASSERT_LE(o.flat_offset + o.length, L.owned_offset(b, r) + L.slice(b));
        EXPECT_EQ(o.shard_offset - L.shard_offset(b), o.flat_offset - L.owned_offset(b, r));
        shard_end = std::max(shard_end, o.shard_offset + o.length);
        for (int64_t i = o.flat_offset; i < o.flat_offset + o.length; ++i) {
          EXPECT_EQ(owner[i], -1) << "element " << i << " owned twice";
          owner[i] = r;
        }
      }
      EXPECT_LE(shard_end, L.shard_size());
    }
    for (const auto& s : L.params)
      for (int64_t i = s.offset; i < s.offset + s.numel; ++i) ASSERT_NE(owner[i], -1) << s.name << " element unowned";
  }
}
