// Hardware probe: /proc/cpuinfo parsing, the OpenBLAS core choice (never a core the CPU cannot run; the
// user's setting wins), native bf16, mask formatting, and the per-rank thread plan. Fixtures in
// tests/fixtures/cpuinfo/: an AVX2-only AMD EPYC, an AVX-512 + AMX Xeon, an AVX-only Sandy Bridge and
// an SSE-only Pentium 4.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "shardtune/core/hw.h"
#include "shardtune/core/threads.h"

namespace hw = shardtune::hw;

namespace {

hw::CpuInfo fixture(const std::string& name) {
  std::ifstream in(std::string(ST_SOURCE_DIR) + "/tests/fixtures/cpuinfo/" + name);
  EXPECT_TRUE(in.good()) << name;
  std::stringstream s;
  s << in.rdbuf();
  return hw::parse_cpuinfo(s.str());
}

// Every core name OpenBLAS 0.3.21 (x86, DYNAMIC_ARCH) can report, generic or not.
const std::vector<std::string> kAllCores = {
    "Unknown", "Katmai",  "Coppermine", "Northwood", "Prescott",  "Banias",     "Atom",        "Core2",
    "Penryn",  "Dunnington", "Nehalem", "Athlon",    "Opteron",   "Opteron_SSE3", "Barcelona", "Nano",
    "Bobcat",  "Sandybridge", "Bulldozer", "Piledriver", "Haswell", "Steamroller", "Excavator", "Zen",
    "SkylakeX", "Cooperlake", "SapphireRapids", "Generic"};

const char* kFixtures[] = {"amd_epyc_avx2.txt", "xeon_avx512_amx.txt", "sandybridge_avx.txt", "old_sse_only.txt"};

}  // namespace

TEST(core_Cpuinfo, ParsesModelAndFlagsOfTheFirstProcessor) {
  const auto epyc = fixture("amd_epyc_avx2.txt");
  EXPECT_EQ(epyc.model, "AMD EPYC 7B12");
  EXPECT_TRUE(epyc.flags.count("avx2") && epyc.flags.count("fma") && epyc.flags.count("sse4_2"));
  for (const auto& f : epyc.flags) EXPECT_TRUE(f.rfind("avx512", 0) != 0 && f.rfind("amx", 0) != 0) << f;
  const auto xeon = fixture("xeon_avx512_amx.txt");
  EXPECT_EQ(xeon.model, "Intel(R) Xeon(R) Processor");
  EXPECT_TRUE(hw::has_avx512_skx(xeon.flags));
  EXPECT_TRUE(xeon.flags.count("amx_bf16"));
  EXPECT_FALSE(hw::has_avx512_skx(epyc.flags));
  const auto old = fixture("old_sse_only.txt");
  EXPECT_TRUE(old.flags.count("sse2") && old.flags.count("pni"));
  EXPECT_FALSE(old.flags.count("avx"));
  EXPECT_TRUE(hw::parse_cpuinfo("").flags.empty());
}

TEST(core_BlasCore, ForcesOnlyWhenOpenBlasFellBackToAGenericCore) {
  const auto epyc = fixture("amd_epyc_avx2.txt"), xeon = fixture("xeon_avx512_amx.txt");
  const auto sandy = fixture("sandybridge_avx.txt"), old = fixture("old_sse_only.txt");
  // Generic fallback detected: the best core the flags support.
  EXPECT_EQ(hw::choose_blas_core(epyc.flags, "Prescott"), "Haswell");
  EXPECT_EQ(hw::choose_blas_core(xeon.flags, "Prescott"), "SkylakeX");
  EXPECT_EQ(hw::choose_blas_core(xeon.flags, "Unknown"), "SkylakeX");
  EXPECT_EQ(hw::choose_blas_core(sandy.flags, "Nehalem"), "Sandybridge");
  EXPECT_EQ(hw::choose_blas_core(old.flags, "Prescott"), std::nullopt);  // nothing better exists
  // OpenBLAS detected a real core: keep it.
  EXPECT_EQ(hw::choose_blas_core(epyc.flags, "Zen"), std::nullopt);
  EXPECT_EQ(hw::choose_blas_core(epyc.flags, "Haswell"), std::nullopt);
  EXPECT_EQ(hw::choose_blas_core(xeon.flags, "SkylakeX"), std::nullopt);
  EXPECT_EQ(hw::choose_blas_core(xeon.flags, "Cooperlake"), std::nullopt);
  EXPECT_EQ(hw::choose_blas_core(sandy.flags, "Sandybridge"), std::nullopt);
  // Not OpenBLAS at all: nothing to force.
  EXPECT_EQ(hw::choose_blas_core(xeon.flags, ""), std::nullopt);
  // Names compare case-insensitively (non-dynamic OpenBLAS builds report upper case).
  EXPECT_EQ(hw::choose_blas_core(xeon.flags, "PRESCOTT"), "SkylakeX");
}

TEST(core_BlasCore, NeverChoosesACoreWhoseInstructionsAreMissing) {
  for (const char* name : kFixtures) {
    const auto cpu = fixture(name);
    for (const auto& detected : kAllCores) {
      const auto chosen = hw::choose_blas_core(cpu.flags, detected);
      if (!chosen) continue;
      EXPECT_TRUE(hw::is_generic_core(detected)) << name << ": forced " << *chosen << " over " << detected;
      EXPECT_TRUE(hw::missing_for_core(cpu.flags, *chosen).empty()) << name << ": " << *chosen;
    }
  }
  // The AVX2-only EPYC can not run AVX-512 kernels: the old unconditional SkylakeX was a SIGILL.
  const auto epyc = fixture("amd_epyc_avx2.txt");
  const auto missing = hw::missing_for_core(epyc.flags, "SkylakeX");
  ASSERT_EQ(missing.size(), 5u);
  EXPECT_EQ(missing[0], "avx512f");
  EXPECT_FALSE(hw::missing_for_core(fixture("old_sse_only.txt").flags, "haswell").empty());
  EXPECT_TRUE(hw::missing_for_core(epyc.flags, "some future core").empty());  // unknown: no claim
}

TEST(core_BlasCore, UserSettingWins) {
  const auto xeon = fixture("xeon_avx512_amx.txt"), epyc = fixture("amd_epyc_avx2.txt");
  EXPECT_EQ(hw::choose_blas_core(xeon.flags, "Prescott", "Haswell"), std::nullopt);
  EXPECT_EQ(hw::choose_blas_core(xeon.flags, "Prescott", "Prescott"), std::nullopt);
  // Even a setting this CPU cannot run is not overridden (it is warned about: missing_for_core).
  EXPECT_EQ(hw::choose_blas_core(epyc.flags, "SkylakeX", "SkylakeX"), std::nullopt);
  EXPECT_EQ(hw::choose_blas_core(xeon.flags, "Prescott", "  "), "SkylakeX");  // blank = unset
}

TEST(core_BlasCore, GenericCores) {
  for (const char* c : {"Prescott", "Katmai", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom", "Generic", "Unknown",
                        "prescott", "Barcelona"})
    EXPECT_TRUE(hw::is_generic_core(c)) << c;
  for (const char* c : {"SkylakeX", "Haswell", "Zen", "Sandybridge", "Cooperlake", "SapphireRapids", "Excavator", ""})
    EXPECT_FALSE(hw::is_generic_core(c)) << c;
}

TEST(core_Bf16, NativeOnlyWithAvx512Bf16OrAmx) {
  EXPECT_TRUE(hw::native_bf16(fixture("xeon_avx512_amx.txt").flags));
  EXPECT_FALSE(hw::native_bf16(fixture("amd_epyc_avx2.txt").flags));
  EXPECT_FALSE(hw::native_bf16(fixture("old_sse_only.txt").flags));
  EXPECT_TRUE(hw::native_bf16({"amx_bf16"}));
  EXPECT_TRUE(hw::native_bf16({"avx512_bf16"}));
  EXPECT_FALSE(hw::native_bf16({"avx512f", "avx512bw", "avx512_fp16"}));
}

TEST(core_Affinity, MaskStrings) {
  EXPECT_EQ(hw::format_cpu_list({0, 1}), "0-1");
  EXPECT_EQ(hw::format_cpu_list({0, 2, 4}), "0,2,4");
  EXPECT_EQ(hw::format_cpu_list({7, 3, 0, 1, 2, 9, 10, 2}), "0-3,7,9-10");
  EXPECT_EQ(hw::format_cpu_list({5}), "5");
  EXPECT_EQ(hw::format_cpu_list({}), "");
}

TEST(core_Affinity, MatchesTheKernelsCpusAllowedList) {
  // Independent reference: the kernel's own rendering of this process's mask in /proc/self/status.
  std::ifstream in("/proc/self/status");
  std::string line, kernel;
  while (std::getline(in, line))
    if (line.rfind("Cpus_allowed_list:", 0) == 0) kernel = line.substr(line.find_first_not_of(" \t", 18));
  if (kernel.empty()) GTEST_SKIP() << "no Cpus_allowed_list in /proc/self/status";
  const hw::Affinity a = hw::affinity();
  EXPECT_EQ(a.list, kernel);
  EXPECT_GE(a.count, 1);
}

TEST(core_BlasStatus, SaysNotOpenBlasWithoutIt) {
  // This test binary does not link LibTorch, so no OpenBLAS is loaded.
  const auto s = hw::blas_status();
  EXPECT_EQ(s.core, "");
  EXPECT_NE(s.line.find("not OpenBLAS"), std::string::npos) << s.line;
  EXPECT_TRUE(s.warning.empty());
}

TEST(core_Threads, DefaultIsTheMaskSharedEvenlyByRanksBoundAlike) {
  // One rank, 2 CPUs.
  auto p = hw::plan_threads({{"a", 2, "0-1"}}, 0);
  EXPECT_EQ(p.threads, std::vector<int>{2});
  ASSERT_EQ(p.summary.size(), 1u);
  EXPECT_EQ(p.summary[0], "1 rank: 2 threads, affinity mask of 2 CPUs (0-1)");
  EXPECT_TRUE(p.warnings.empty());
  // Open MPI's default binding (np <= 2): one core each.
  p = hw::plan_threads({{"a", 1, "0"}, {"a", 1, "1"}}, 0);
  EXPECT_EQ(p.threads, (std::vector<int>{1, 1}));
  ASSERT_EQ(p.summary.size(), 1u);
  EXPECT_EQ(p.summary[0], "all 2 ranks: 1 thread, affinity mask of 1 CPU (rank 0: 0; rank 1: 1)");
  // Unbound ranks on one host share the CPUs; on different hosts they do not.
  p = hw::plan_threads({{"a", 8, "0-7"}, {"a", 8, "0-7"}, {"a", 8, "0-7"}, {"a", 8, "0-7"}}, 0);
  EXPECT_EQ(p.threads, (std::vector<int>{2, 2, 2, 2}));
  EXPECT_NE(p.summary[0].find("shared by 4 ranks"), std::string::npos) << p.summary[0];
  p = hw::plan_threads({{"a", 2, "0-1"}, {"a", 2, "0-1"}, {"a", 2, "0-1"}, {"a", 2, "0-1"}}, 0);
  EXPECT_EQ(p.threads, (std::vector<int>{1, 1, 1, 1}));  // never 0
  EXPECT_TRUE(p.warnings.empty());                        // the default does the best there is
  p = hw::plan_threads({{"a", 4, "0-3"}, {"b", 4, "0-3"}}, 0);
  EXPECT_EQ(p.threads, (std::vector<int>{4, 4}));
  // Ranks that differ get a line each.
  p = hw::plan_threads({{"a", 4, "0-3"}, {"b", 2, "0-1"}, {"c", 4, "0-3"}}, 0);
  EXPECT_EQ(p.threads, (std::vector<int>{4, 2, 4}));
  ASSERT_EQ(p.summary.size(), 2u);
  EXPECT_EQ(p.summary[0], "ranks 0,2: 4 threads, affinity mask of 4 CPUs (0-3)");
  EXPECT_EQ(p.summary[1], "rank 1: 2 threads, affinity mask of 2 CPUs (0-1)");
}

TEST(core_Threads, ExplicitCountLargerThanTheMaskWarnsWithTheLauncherFlags) {
  auto p = hw::plan_threads({{"a", 1, "0"}}, 2);
  EXPECT_EQ(p.threads, std::vector<int>{2});  // the user's count is kept
  ASSERT_EQ(p.warnings.size(), 1u);
  const std::string& w = p.warnings[0];
  for (const char* want : {"--threads 2", "1 CPU", "--bind-to none", "--map-by slot:PE=2", "srun --cpus-per-task=2", "HINT"})
    EXPECT_NE(w.find(want), std::string::npos) << want << " in: " << w;
  EXPECT_TRUE(hw::plan_threads({{"a", 2, "0-1"}}, 2).warnings.empty());
  // Fits each mask, but 4 ranks share 2 CPUs: overcommitted.
  p = hw::plan_threads({{"a", 2, "0-1"}, {"a", 2, "0-1"}, {"a", 2, "0-1"}, {"a", 2, "0-1"}}, 1);
  ASSERT_EQ(p.warnings.size(), 1u);
  EXPECT_NE(p.warnings[0].find("all 4 ranks"), std::string::npos) << p.warnings[0];
}
