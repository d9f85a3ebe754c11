// Peak RSS (getrusage) and glibc allocator statistics (mallinfo2) of this process; see core/mem.h.
#include "shardtune/core/mem.h"

#include <sys/resource.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace shardtune::mem {

MemoryStats measure_memory() {
  MemoryStats s;
  struct rusage ru {};
  if (getrusage(RUSAGE_SELF, &ru) == 0) {
#if defined(__APPLE__)
    s.rss_peak_bytes = static_cast<int64_t>(ru.ru_maxrss);  // bytes on macOS
#else
    s.rss_peak_bytes = static_cast<int64_t>(ru.ru_maxrss) * 1024;  // KiB on Linux
#endif
  }
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
  // mallinfo2 sums over every arena (threads allocate from their own); large tensors are mmapped blocks.
  const struct mallinfo2 mi = mallinfo2();
  s.heap_bytes = static_cast<int64_t>(mi.uordblks + mi.hblkhd);
  s.heap_held_bytes = static_cast<int64_t>(mi.arena + mi.hblkhd);
#endif
  return s;
}

}  // namespace shardtune::mem
