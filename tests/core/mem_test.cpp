// core/mem.h: the memory figures the trainer writes to its metrics follow real allocations (a 64 MiB
// block shows in the heap while it lives and in the peak RSS once touched) rather than being constants.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>

#include "shardtune/core/mem.h"

namespace sm = shardtune::mem;

namespace {
void* volatile g_escape;  // keeps the compiler from eliding the allocation
}

TEST(Memory, FollowsAnAllocation) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer replaces malloc: glibc's statistics do not see its allocations";
#endif
  const sm::MemoryStats before = sm::measure_memory();
  ASSERT_GT(before.rss_peak_bytes, 0);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
  ASSERT_GT(before.heap_bytes, 0);
  EXPECT_GE(before.heap_held_bytes, before.heap_bytes);
#endif
  const size_t n = size_t(64) << 20;  // above glibc's largest mmap threshold: one mmapped block
  char* p = static_cast<char*>(std::malloc(n));
  ASSERT_NE(p, nullptr);
  std::memset(p, 1, n);  // touch every page so that it is resident
  g_escape = p;
  const sm::MemoryStats during = sm::measure_memory();
  EXPECT_GE(during.rss_peak_bytes - before.rss_peak_bytes, int64_t(32) << 20) << "peak RSS did not follow 64 MiB";
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
  EXPECT_GE(during.heap_bytes - before.heap_bytes, static_cast<int64_t>(n)) << "heap in use did not follow 64 MiB";
#endif
  std::free(g_escape);
  const sm::MemoryStats after = sm::measure_memory();
  EXPECT_GE(after.rss_peak_bytes, during.rss_peak_bytes) << "a peak never falls";
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
  EXPECT_GE(during.heap_bytes - after.heap_bytes, static_cast<int64_t>(n)) << "heap in use did not drop after free";
#endif
}
