// Hardware probe (torch-free): CPU feature flags, the OpenBLAS core and when to force a better one,
// native bf16, and this process's CPU affinity mask. Parsing and choosing are pure functions (tested
// from /proc/cpuinfo fixtures); the rest reads this machine.
#pragma once

#include <cstdio>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace shardtune::hw {

using Flags = std::set<std::string>;

struct CpuInfo {
  std::string model;  // "model name" of the first processor ("" if absent, e.g. on ARM)
  Flags flags;        // its "flags" line (x86: what the kernel lets user space use)
};

// Reads the first processor block of /proc/cpuinfo text.
CpuInfo parse_cpuinfo(const std::string& text);
// This machine's /proc/cpuinfo, read once (tests may point SHARDTUNE_CPUINFO at a fixture).
const CpuInfo& cpu();

// The SIMD/matrix features that matter for BLAS and bf16, present ones only, in a fixed order.
std::string simd_summary(const Flags& flags);
// All of AVX-512 F, CD, BW, DQ and VL (what OpenBLAS's SkylakeX kernels use).
bool has_avx512_skx(const Flags& flags);
// bf16 computed in hardware (AVX512_BF16 or AMX-BF16), not emulated through fp32.
bool native_bf16(const Flags& flags);

// OpenBLAS core names are compared case-insensitively ("SkylakeX", "HASWELL" in non-dynamic builds).
// A generic fallback: a pre-AVX core (Prescott, Core2, Nehalem, ...), "Unknown" or "Generic".
bool is_generic_core(const std::string& core);
// The CPU flags a core's kernels execute that `flags` lacks (empty: safe, or a core we do not know).
std::vector<std::string> missing_for_core(const Flags& flags, const std::string& core);
// The core to force through OPENBLAS_CORETYPE, or none: only when the user set none (`user_setting`
// empty), OpenBLAS's own choice `detected` is a generic fallback, and the flags support a better core
// (AVX-512 -> SkylakeX, AVX2+FMA -> Haswell, AVX -> Sandybridge). Never a core whose instructions are missing.
std::optional<std::string> choose_blas_core(const Flags& flags, const std::string& detected,
                                            const std::string& user_setting = "");

// CPUs this process may run on (sched_getaffinity).
struct Affinity {
  int count = 0;
  std::string list;  // compact, e.g. "0-1" or "0,2,4"
};
Affinity affinity();
// The largest --threads a program accepts: max(64, 8 x the machine's online CPUs). More threads per CPU
// are never faster, and tens of thousands take minutes and GBs only to start (--threads 100000 hung).
int max_threads();
// Throws Error "--threads N is more than the M threads, the limit on this machine" with `hint` when
// `threads` exceeds max_threads() (the one wording for every program's --threads).
void check_threads_limit(int threads, const std::string& hint);
// Sorted, de-duplicated ids as ranges: {0,1,2,5} -> "0-2,5"; {0,2,4} -> "0,2,4"; {} -> "".
std::string format_cpu_list(std::vector<int> ids);
std::string hostname();

// The core name the loaded OpenBLAS runs (openblas_get_corename); "" when no OpenBLAS is loaded.
std::string loaded_blas_core();

// Call first thing in main() of every program that runs LibTorch, before MPI_Init and any torch
// work. When OPENBLAS_CORETYPE is unset and choose_blas_core() says so, sets it and re-executes the
// program (same PID, same argv; once, guarded by SHARDTUNE_BLAS_REEXEC): OpenBLAS reads the variable
// only when it loads. Warns on stderr when the user's own setting names a core this CPU cannot run.
void select_blas_core(char** argv);

struct BlasStatus {
  std::string core;     // what OpenBLAS runs; "" = not OpenBLAS
  std::string line;     // one short line: "BLAS: OpenBLAS core SkylakeX (its own detection)"
  std::string warning;  // non-empty when the core is a generic fallback on an AVX2/AVX-512 CPU
};
BlasStatus blas_status();
// For single-process tools: the line to `out` (stderr keeps stdout clean), the warning to stderr.
void print_blas_status(std::FILE* out);

}  // namespace shardtune::hw
