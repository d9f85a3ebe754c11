// Flat parameter layout: bucket planning and the per-rank owned ranges.
#include "shardtune/optim/layout.h"

#include <algorithm>

#include "shardtune/core/error.h"

namespace shardtune::optim {

FlatLayout plan_layout(const std::vector<ParamSpec>& specs, int world, int64_t bucket_elems) {
  ST_CHECK(world >= 1 && bucket_elems >= 1, "plan_layout: bad world size or bucket size");
  FlatLayout L;
  L.world = world;
  Bucket cur;
  auto close = [&] {
    if (cur.params.empty()) return;
    int64_t used = L.total - cur.offset;
    cur.size = (used + world - 1) / world * world;
    L.total = cur.offset + cur.size;
    L.buckets.push_back(cur);
    cur = Bucket{};
    cur.offset = L.total;
  };
  for (int i = static_cast<int>(specs.size()) - 1; i >= 0; --i) {
    const ParamSpec& s = specs[i];
    int64_t n = 1;
    for (auto d : s.shape) n *= d;
    if (!cur.params.empty() && L.total - cur.offset + n > bucket_elems) close();
    ParamSlot slot{s.name, s.shape, n, L.total, s.decay, static_cast<int>(L.buckets.size())};
    cur.params.push_back(static_cast<int>(L.params.size()));
    L.params.push_back(slot);
    L.total += n;
  }
  close();
  return L;
}

int64_t FlatLayout::shard_offset(int b) const {
  int64_t off = 0;
  for (int i = 0; i < b; ++i) off += slice(i);
  return off;
}

std::vector<OwnedRange> FlatLayout::owned_ranges(int rank) const {
  std::vector<OwnedRange> out;
  int64_t shard_off = 0;
  for (int b = 0; b < static_cast<int>(buckets.size()); ++b) {
    int64_t lo = owned_offset(b, rank), hi = lo + slice(b);
    for (int p : buckets[b].params) {
      int64_t a = std::max(lo, params[p].offset), e = std::min(hi, params[p].offset + params[p].numel);
      if (a < e) out.push_back({p, a, e - a, shard_off + (a - lo)});
    }
    shard_off += slice(b);
  }
  return out;
}

}  // namespace shardtune::optim
