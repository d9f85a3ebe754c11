// shardtune-hw: prints what shardtune's hardware probe sees (CPU, SIMD flags, OpenBLAS core, the core
// shardtune would force, native bf16, affinity mask). `--blas-env` prints `export OPENBLAS_CORETYPE=X`
// or nothing, for shell scripts (tools/test.sh, benchmarks, Slurm templates): the same choice the
// programs make for themselves at start. Torch-free: OpenBLAS is loaded here with dlopen.
#include <dlfcn.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "shardtune/core/error.h"
#include "shardtune/core/hw.h"

namespace hw = shardtune::hw;

namespace {

struct Probe {
  std::string library;  // which file answered, "" = no OpenBLAS found
  std::string core;     // the core OpenBLAS picks by its own detection
  std::string config;   // openblas_get_config(): version and build options
};

// What OpenBLAS detects by itself: loaded with OPENBLAS_CORETYPE removed from the environment for the
// moment of loading (it reads the variable only then). libblas.so.3 first: what Debian's LibTorch links.
Probe probe_openblas() {
  const char* user = std::getenv("OPENBLAS_CORETYPE");
  const std::string saved = user ? user : "";
  if (user) unsetenv("OPENBLAS_CORETYPE");
  Probe p;
  for (const char* lib : {"libblas.so.3", "libopenblas.so.0", "libopenblas.so"}) {
    void* h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (!h) continue;
    using Fn = char* (*)();
    auto core = reinterpret_cast<Fn>(dlsym(h, "openblas_get_corename"));
    auto config = reinterpret_cast<Fn>(dlsym(h, "openblas_get_config"));
    if (!core) continue;  // e.g. reference BLAS behind libblas.so.3: try libopenblas itself
    p.library = lib;
    p.core = core() ? core() : "Unknown";
    if (config && config()) p.config = config();
    break;
  }
  if (user) setenv("OPENBLAS_CORETYPE", saved.c_str(), 1);
  return p;
}

int run(int argc, char** argv) {
  bool blas_env = false;
  CLI::App app{"shardtune-hw: CPU features, OpenBLAS core choice, native bf16 and affinity, as shardtune sees them"};
  app.add_flag("--blas-env", blas_env, "print `export OPENBLAS_CORETYPE=X` when a core should be forced, else nothing");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  const hw::CpuInfo& cpu = hw::cpu();
  const char* user_env = std::getenv("OPENBLAS_CORETYPE");
  const std::string user = user_env ? user_env : "";
  const Probe probe = probe_openblas();
  const auto chosen = hw::choose_blas_core(cpu.flags, probe.core, user);
  if (blas_env) {
    if (chosen) std::printf("export OPENBLAS_CORETYPE=%s\n", chosen->c_str());
    return 0;
  }
  const hw::Affinity mask = hw::affinity();
  auto row = [](const char* k, const std::string& v) { std::printf("%-16s%s\n", k, v.c_str()); };
  row("cpu", cpu.model.empty() ? "(no model name in /proc/cpuinfo)" : cpu.model);
  row("simd", hw::simd_summary(cpu.flags));
  row("native bf16", hw::native_bf16(cpu.flags) ? "yes (--precision auto trains in bf16)"
                                                : "no (--precision auto trains in fp32; bf16 would be emulated)");
  row("affinity", std::to_string(mask.count) + " CPU(s): " + mask.list + " (--threads 0 uses these)");
  if (probe.library.empty()) {
    row("openblas", "not found (libblas.so.3 / libopenblas.so.0 without openblas_get_corename)");
  } else {
    std::string detected = probe.core + (hw::is_generic_core(probe.core) ? " (a generic fallback)" : "");
    row("openblas", detected + ", detected by " + probe.library + (probe.config.empty() ? "" : " [" + probe.config + "]"));
  }
  row("user setting", user.empty() ? "OPENBLAS_CORETYPE unset" : "OPENBLAS_CORETYPE=" + user + " (wins)");
  if (!user.empty()) {
    const auto missing = hw::missing_for_core(cpu.flags, user);
    std::string m;
    for (const auto& f : missing) m += " " + f;
    if (!missing.empty()) row("", "warning: " + user + " needs" + m + ", which this CPU lacks: unset it");
  }
  row("chosen core", chosen ? *chosen + " (programs set OPENBLAS_CORETYPE=" + *chosen + " at start)"
                            : std::string(user.empty() ? "none: OpenBLAS's own choice stands" : "none: the user's setting stands"));
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return shardtune::run_guarded("shardtune-hw", run, argc, argv); }
