// The per-rank expectation counter of the MPI test programs (communicator_test.cpp, nccl_check.cpp):
// counts checks, prints the first `print_limit` failures with the rank, and the verdict is reduced by
// the caller so every rank agrees.
#pragma once

#include <cstdio>
#include <string>

namespace shardtune::testing {

struct Checker {
  int rank = 0;
  int checks = 0, failures = 0;
  int print_limit = 20;
  void expect(bool ok, const std::string& what) {
    ++checks;
    if (ok) return;
    ++failures;
    if (failures <= print_limit) std::fprintf(stderr, "rank %d: FAILED: %s\n", rank, what.c_str());
  }
};

}  // namespace shardtune::testing
