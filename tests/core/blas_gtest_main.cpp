// gtest main of test binaries that run LibTorch: picks the BLAS core (hw::select_blas_core, which may
// re-exec) before any test, as every shardtune program does. Only a warning is printed: stdout must stay
// gtest's own (gtest_discover_tests parses --gtest_list_tests).
#include <gtest/gtest.h>

#include <cstdio>

#include "shardtune/core/hw.h"

int main(int argc, char** argv) {
  shardtune::hw::select_blas_core(argv);
  const shardtune::hw::BlasStatus s = shardtune::hw::blas_status();
  if (!s.warning.empty()) std::fprintf(stderr, "warning: %s\n", s.warning.c_str());
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
