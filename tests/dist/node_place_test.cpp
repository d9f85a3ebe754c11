// node_place on the ranks of one host (mpirun -np N here, or no launcher): local_size N, local ranks
// 0..N-1 each once, the host named; and pick_cuda_device on that real place (N GPUs: each rank its local
// rank; 1 GPU: device 0; 1 < N-1 GPUs: every rank refused). The verdict is OR-reduced so that every rank agrees.
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "shardtune/core/error.h"
#include "shardtune/dist/device.h"
#include "shardtune/dist/mpi_runtime.h"

namespace sd = shardtune::dist;

int main(int argc, char** argv) {
  sd::MpiRuntime rt(&argc, &argv);
  int failures = 0;
  auto expect = [&](bool ok, const std::string& what) {
    if (ok) return;
    ++failures;
    std::fprintf(stderr, "rank %d: FAILED: %s\n", rt.rank(), what.c_str());
  };
  const sd::NodePlace p = sd::node_place(rt);
  expect(p.local_size == rt.world(), "local_size " + std::to_string(p.local_size) + " != world " + std::to_string(rt.world()));
  std::vector<int64_t> locals = rt.allgather(int64_t(p.local_rank));
  std::sort(locals.begin(), locals.end());
  for (int r = 0; r < rt.world(); ++r) expect(locals[size_t(r)] == r, "local ranks are not 0..world-1 once each");
  expect(rt.active() ? !p.host.empty() : p.host.empty(), "host '" + p.host + "'");
  // Ranks on one host share it: the same name everywhere.
  const auto hosts = rt.allgather(p.host);
  for (const auto& h : hosts) expect(h == p.host, "host names differ: '" + h + "' vs '" + p.host + "'");

  expect(sd::pick_cuda_device(rt.rank(), p, rt.world()) == p.local_rank, "with one GPU per rank: the local rank");
  if (rt.world() > 1) {
    // One visible GPU: each rank was given its own by the launcher (srun --gpus-per-task=1): device 0.
    expect(sd::pick_cuda_device(rt.rank(), p, 1) == 0, "one visible GPU per rank: device 0");
  }
  if (rt.world() > 2) {
    std::string msg;
    try {
      sd::pick_cuda_device(rt.rank(), p, rt.world() - 1);
    } catch (const shardtune::Error& e) {
      msg = e.what();
    }
    expect(msg.find(std::to_string(rt.world()) + " ranks share this node") != std::string::npos &&
               msg.find(p.host) != std::string::npos,
           "fewer GPUs than ranks on the node: '" + msg + "'");
  }
  const int64_t any = rt.allreduce_max(failures);
  if (rt.rank() == 0) std::printf("node_place: %d rank(s) on %s: %s\n", rt.world(), p.host.c_str(), any ? "FAILED" : "passed");
  return any ? 1 : 0;
}
