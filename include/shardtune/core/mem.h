// Memory of this process as the OS and the allocator see it (measured, not computed from buffer sizes):
// peak resident set size and glibc malloc statistics. Torch-free; used for the trainer's metrics lines.
#pragma once

#include <cstdint>

namespace shardtune::mem {

struct MemoryStats {
  int64_t rss_peak_bytes = -1;   // getrusage(RUSAGE_SELF).ru_maxrss: peak RSS since the process started
  int64_t heap_bytes = -1;       // malloc in use now: mallinfo2 uordblks + hblkhd (all arenas, mmapped blocks)
  int64_t heap_held_bytes = -1;  // malloc holds from the OS now: mallinfo2 arena + hblkhd (in use + free lists)
};

// -1 in a field that this platform cannot measure (heap fields need glibc >= 2.33).
MemoryStats measure_memory();

}  // namespace shardtune::mem
