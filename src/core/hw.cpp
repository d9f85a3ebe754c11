// Hardware probe: /proc/cpuinfo flags, OpenBLAS core choice (and the re-exec that applies it),
// native bf16, affinity mask.
#include "shardtune/core/hw.h"

#include <dlfcn.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include "shardtune/core/error.h"

namespace shardtune::hw {
namespace {

constexpr const char* kGuard = "SHARDTUNE_BLAS_REEXEC";  // set across our own re-exec: OpenBLAS's detected core

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string trim(const std::string& s) {
  const auto a = s.find_first_not_of(" \t\r\n"), b = s.find_last_not_of(" \t\r\n");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

const std::vector<std::string> kAvx512Skx = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"};

// Instructions each OpenBLAS x86 core's kernels execute (lower-case core name -> /proc/cpuinfo flags).
const std::map<std::string, std::vector<std::string>>& core_requirements() {
  static const std::map<std::string, std::vector<std::string>> req = [] {
    std::map<std::string, std::vector<std::string>> r;
    r["skylakex"] = kAvx512Skx;
    r["cooperlake"] = kAvx512Skx;
    r["cooperlake"].push_back("avx512_bf16");
    r["sapphirerapids"] = r["cooperlake"];
    r["sapphirerapids"].insert(r["sapphirerapids"].end(), {"amx_bf16", "amx_tile"});
    r["haswell"] = r["zen"] = {"avx", "avx2", "fma"};
    r["sandybridge"] = {"avx"};
    r["bulldozer"] = {"avx", "fma4"};
    r["piledriver"] = r["steamroller"] = {"avx", "fma", "fma4"};
    r["excavator"] = {"avx", "avx2", "fma", "fma4"};
    r["nehalem"] = {"sse4_2"};
    r["penryn"] = r["dunnington"] = {"sse4_1"};
    r["core2"] = r["atom"] = {"ssse3"};
    r["prescott"] = r["barcelona"] = r["opteron_sse3"] = r["nano"] = r["bobcat"] = {"pni"};
    r["northwood"] = r["opteron"] = r["athlon"] = r["banias"] = {"sse2"};
    r["katmai"] = r["coppermine"] = {"sse"};
    return r;
  }();
  return req;
}

bool has(const Flags& f, const char* name) { return f.count(name) != 0; }

}  // namespace

CpuInfo parse_cpuinfo(const std::string& text) {
  CpuInfo info;
  std::istringstream in(text);
  std::string line;
  bool seen_any = false;
  while (std::getline(in, line)) {
    if (trim(line).empty()) {
      if (seen_any) break;  // end of the first processor block
      continue;
    }
    seen_any = true;
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    const std::string key = trim(line.substr(0, colon)), value = trim(line.substr(colon + 1));
    if (key == "model name") info.model = value;
    if (key == "flags") {
      std::istringstream words(value);
      std::string w;
      while (words >> w) info.flags.insert(lower(w));
    }
  }
  return info;
}

const CpuInfo& cpu() {
  static const CpuInfo info = [] {
    // Test hook: SHARDTUNE_CPUINFO=FILE reads another CPU's /proc/cpuinfo (tests/core/launch_test.py).
    const char* path = std::getenv("SHARDTUNE_CPUINFO");
    std::ifstream in(path && *path ? path : "/proc/cpuinfo");
    std::stringstream s;
    s << in.rdbuf();
    return parse_cpuinfo(s.str());
  }();
  return info;
}

std::string simd_summary(const Flags& f) {
  static const char* order[] = {"sse4_2",      "avx",         "avx2",     "fma",      "avx512f",
                                "avx512cd",    "avx512bw",    "avx512dq", "avx512vl", "avx512_vnni",
                                "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"};
  std::string out;
  for (const char* name : order)
    if (has(f, name)) out += (out.empty() ? "" : " ") + std::string(name);
  return out.empty() ? "(none of sse4_2/avx/avx2/avx512/amx)" : out;
}

bool has_avx512_skx(const Flags& f) {
  return std::all_of(kAvx512Skx.begin(), kAvx512Skx.end(), [&](const std::string& x) { return f.count(x) != 0; });
}

bool native_bf16(const Flags& f) { return has(f, "avx512_bf16") || has(f, "amx_bf16"); }

bool is_generic_core(const std::string& core) {
  static const std::set<std::string> generic = {
      "unknown", "generic", "katmai",  "coppermine", "northwood",    "prescott", "banias", "atom", "core2",
      "penryn",  "dunnington", "nehalem", "athlon",  "opteron",    "opteron_sse3", "barcelona", "nano", "bobcat"};
  return generic.count(lower(trim(core))) != 0;
}

std::vector<std::string> missing_for_core(const Flags& flags, const std::string& core) {
  std::vector<std::string> missing;
  const auto& req = core_requirements();
  const auto it = req.find(lower(trim(core)));
  if (it == req.end()) return missing;
  for (const auto& f : it->second)
    if (!flags.count(f)) missing.push_back(f);
  return missing;
}

std::optional<std::string> choose_blas_core(const Flags& flags, const std::string& detected,
                                            const std::string& user_setting) {
  if (!trim(user_setting).empty()) return std::nullopt;                    // the user's choice wins
  if (trim(detected).empty() || !is_generic_core(detected)) return std::nullopt;  // not OpenBLAS, or a real core
  for (const char* candidate : {"SkylakeX", "Haswell", "Sandybridge"})
    if (missing_for_core(flags, candidate).empty()) return std::string(candidate);
  return std::nullopt;  // an old CPU: the generic core is the right one
}

std::string format_cpu_list(std::vector<int> ids) {
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  std::string out;
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (!out.empty()) out += ",";
    out += std::to_string(ids[i]);
    if (j > i) out += "-" + std::to_string(ids[j]);
    i = j + 1;
  }
  return out;
}

int max_threads() {
  const long online = sysconf(_SC_NPROCESSORS_ONLN);
  return static_cast<int>(std::max<long>(64, 8 * std::max<long>(1, online)));
}

void check_threads_limit(int threads, const std::string& hint) {
  const int limit = max_threads();
  ST_CHECK(threads <= limit,
           "--threads " + std::to_string(threads) + " is more than the " + std::to_string(limit) +
               " threads, the limit on this machine",
           hint);
}

Affinity affinity() {
  // cpu_set_t holds 1024 CPUs; larger machines need a bigger dynamically sized set.
  for (int n = 1024; n <= (1 << 18); n *= 4) {
    cpu_set_t* set = CPU_ALLOC(n);
    const size_t size = CPU_ALLOC_SIZE(n);
    CPU_ZERO_S(size, set);
    if (sched_getaffinity(0, size, set) == 0) {
      std::vector<int> ids;
      for (int c = 0; c < n; ++c)
        if (CPU_ISSET_S(c, size, set)) ids.push_back(c);
      CPU_FREE(set);
      return {static_cast<int>(ids.size()), format_cpu_list(ids)};
    }
    CPU_FREE(set);
    if (errno != EINVAL) break;
  }
  const long online = sysconf(_SC_NPROCESSORS_ONLN);  // no mask available: every online CPU
  const int count = online > 0 ? static_cast<int>(online) : 1;
  return {count, "0-" + std::to_string(count - 1)};
}

std::string hostname() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof buf - 1) != 0) return "?";
  return buf;
}

std::string loaded_blas_core() {
  using Fn = char* (*)();
  auto fn = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  if (!fn) return "";
  const char* name = fn();
  return name ? trim(name) : std::string("Unknown");
}

void select_blas_core(char** argv) {
  const char* user = std::getenv("OPENBLAS_CORETYPE");
  if (user && *user) {
    // The user's choice stands, but a core this CPU cannot run dies at the first matrix product with
    // nothing but "Illegal instruction": say so now, before that happens.
    std::string m;
    for (const auto& f : missing_for_core(cpu().flags, user)) m += (m.empty() ? "" : " ") + f;
    if (!m.empty())
      std::fprintf(stderr,
                   "warning: OPENBLAS_CORETYPE=%s needs CPU instructions this CPU lacks (%s): expect 'Illegal "
                   "instruction' (signal 4) at the first matrix product\n  ---> HINT: unset OPENBLAS_CORETYPE: "
                   "shardtune then picks a core this CPU runs (see shardtune-hw)\n",
                   user, m.c_str());
    return;
  }
  if (std::getenv(kGuard)) return;
  // Test hook: pretend OpenBLAS detected this core (tests/core/launch_test.py exercises the re-exec).
  const char* fake = std::getenv("SHARDTUNE_TEST_BLAS_DETECTED");
  const std::string detected = fake ? fake : loaded_blas_core();
  const auto core = choose_blas_core(cpu().flags, detected);
  if (!core) return;
  setenv("OPENBLAS_CORETYPE", core->c_str(), 1);
  setenv(kGuard, detected.c_str(), 1);
  execv("/proc/self/exe", argv);
  // Only reached when exec failed: run on with the generic core (blas_status() warns).
  std::fprintf(stderr, "warning: could not re-execute with OPENBLAS_CORETYPE=%s (%s)\n", core->c_str(),
               std::strerror(errno));
  unsetenv("OPENBLAS_CORETYPE");
}

BlasStatus blas_status() {
  BlasStatus s;
  s.core = loaded_blas_core();
  if (s.core.empty()) {
    s.line = "BLAS: not OpenBLAS (no openblas_get_corename in this process)";
    return s;
  }
  const char* user = std::getenv("OPENBLAS_CORETYPE");
  const char* detected = std::getenv(kGuard);
  std::string source = "its own detection";
  if (user && *user && detected)
    source = "OPENBLAS_CORETYPE=" + std::string(user) + " set by shardtune; OpenBLAS detected " + detected;
  else if (user && *user)
    source = "OPENBLAS_CORETYPE=" + std::string(user) + " from the environment";
  s.line = "BLAS: OpenBLAS core " + s.core + " (" + source + ")";

  // (A core this CPU cannot run at all is warned about by select_blas_core(), before it can crash.)
  const Flags& flags = cpu().flags;
  if (is_generic_core(s.core) && (has_avx512_skx(flags) || has(flags, "avx2"))) {
    const auto better = choose_blas_core(flags, s.core);
    s.warning = "OpenBLAS runs the generic core " + s.core + " on a CPU with " +
                (has_avx512_skx(flags) ? "AVX-512" : "AVX2") + ": matrix products may run ~10x slower\n  ---> HINT: " +
                (user && *user ? "unset OPENBLAS_CORETYPE (now '" + std::string(user) +
                                     "'): shardtune then picks a core this CPU runs"
                               : "set OPENBLAS_CORETYPE=" + better.value_or("Haswell") + " in the environment");
  }
  return s;
}

void print_blas_status(std::FILE* out) {
  const BlasStatus s = blas_status();
  std::fprintf(out, "%s\n", s.line.c_str());
  std::fflush(out);
  if (!s.warning.empty()) std::fprintf(stderr, "warning: %s\n", s.warning.c_str());
}

}  // namespace shardtune::hw
