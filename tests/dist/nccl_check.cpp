// The NCCL backend against the MPI backend on the same buffers, on real GPUs (tools/gpu-check.sh runs it;
// ctest label "gpu" only compiles and skips it where no CUDA device is visible): every op (all_reduce_sum,
// reduce_scatter_sum, all_gather, broadcast, all_to_all), odd sizes, float32 / bfloat16 / int64, one rank
// per GPU (mpirun -np GPUS; also -np 1). The Communicator takes its world == 1 shortcut before any
// backend, so the NCCL backend is also driven directly (make_nccl_backend): with one GPU that is the only
// way real NCCL kernels and the backend's stream/event ordering run at all.
//
// Why the values are what they are: the per-rank inputs are small integers (exact in bf16 and fp32 for
// any order of summation up to 16 ranks), so NCCL and MPI must agree bit for bit whatever their reduction
// order; one extra fp32 case has a wide dynamic range and is compared with a tolerance. Each CUDA input is
// the last write of a slow chain of matrix products on the compute stream, issued just before the
// collective: a backend that does not order its communication stream after the compute stream reads the
// buffer before it is written (stale memory from the caching allocator) and fails the comparison.
//
// Output: one line per failure, then "nccl_check: PASS|FAIL checks=N failures=F world=W device=D".
// Exit 0 pass, 1 fail, 77 no CUDA device (skip).
#include <mpi.h>

#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "nccl_backend.h"
#include "checker.h"
#include "shardtune/core/error.h"
#include "shardtune/dist/communicator.h"
#include "shardtune/dist/device.h"
#include "shardtune/dist/mpi_runtime.h"

namespace sd = shardtune::dist;

namespace {

const std::vector<int64_t> kSizes = {1, 3, 1023, 4097, 7919, (int64_t(1) << 20) + 7};

using shardtune::testing::Checker;

bool same_bytes(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.numel() == b.numel() &&
         std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()) == 0;
}

std::string label(const std::string& op, at::ScalarType t, int64_t n) {
  return op + " " + c10::toString(t) + " n=" + std::to_string(n);
}

// Per-rank input of n elements: integers in [-8, 8] (int64: wide), different on every rank and size.
at::Tensor input(int rank, int64_t n, at::ScalarType t, int salt) {
  at::manual_seed(uint64_t(1000003) * uint64_t(rank + 1) + uint64_t(n) * 31 + uint64_t(salt));
  if (t == at::kLong) return at::randint(-(int64_t(1) << 40), int64_t(1) << 40, {n}, at::kLong);
  return at::randint(-8, 9, {n}, at::kLong).to(t);
}

class Suite {
 public:
  Suite(const sd::MpiRuntime& rt, sd::Communicator& comm, sd::NcclBackend& nccl, int device, Checker& c)
      : rt_(rt), comm_(comm), nccl_(nccl), c_(c), cuda_(at::TensorOptions().device(at::kCUDA, device)) {
    // A 4096^2 fp32 operand: 8 products take milliseconds, long enough to expose a missing stream wait.
    a_ = at::randn({4096, 4096}, cuda_) / 64;
  }

  int world() const { return rt_.world(); }
  int rank() const { return rt_.rank(); }

  // `host` copied to the GPU as the last step of a slow chain on the compute stream (see the header).
  at::Tensor late_on_gpu(const at::Tensor& host) {
    at::Tensor x = a_;
    for (int i = 0; i < 8; ++i) x = at::matmul(x, a_).clamp(-1, 1);
    at::Tensor zero = (x.sum() * 0).to(host.scalar_type());  // exactly 0 (x is finite: clamped)
    return host.to(cuda_.device()) + zero;
  }

  // The MPI reference of a sum over ranks: the Communicator on CPU tensors (bf16 is summed in fp32 there,
  // exact for these integer inputs, since MPI cannot add bf16).
  at::Tensor mpi_sum(const at::Tensor& x) {
    at::Tensor w = x.scalar_type() == at::kBFloat16 ? x.to(at::kFloat) : x.clone();
    comm_.all_reduce_sum(w);
    return w.to(x.scalar_type());
  }

  // Waits for a Pending with done() polling first (bounded), then wait(): both paths must finish.
  void finish(sd::Pending& p, const std::string& what) {
    const auto t0 = std::chrono::steady_clock::now();
    while (!p.done()) {
      if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(60)) {
        c_.expect(false, what + ": done() still false after 60 s");
        break;
      }
    }
    p.wait();
  }

  void all_reduce(at::ScalarType t, int64_t n) {
    const at::Tensor x = input(rank(), n, t, 1);
    const at::Tensor want = mpi_sum(x);
    at::Tensor g = late_on_gpu(x);
    auto p = nccl_.all_reduce_sum(g, &blocked_);
    finish(*p, label("all_reduce_sum", t, n));
    c_.expect(same_bytes(g.cpu(), want), label("all_reduce_sum", t, n) + " differs from MPI");
    if (world() > 1) {  // the Communicator's own dispatch to NCCL (start_nccl)
      at::Tensor h = late_on_gpu(x);
      comm_.all_reduce_sum(h);
      c_.expect(same_bytes(h.cpu(), want), label("Communicator all_reduce_sum", t, n) + " differs from MPI");
    }
  }

  void reduce_scatter(at::ScalarType t, int64_t n) {
    const at::Tensor x = input(rank(), n * world(), t, 2);
    const at::Tensor want = mpi_sum(x).narrow(0, rank() * n, n).contiguous();
    at::Tensor g = late_on_gpu(x);
    at::Tensor out = at::full({n}, 77, cuda_.dtype(t));
    auto p = nccl_.reduce_scatter_sum(g, out, &blocked_);
    finish(*p, label("reduce_scatter_sum", t, n));
    c_.expect(same_bytes(out.cpu(), want), label("reduce_scatter_sum", t, n) + " differs from MPI");
    if (world() > 1) {
      at::Tensor out2 = at::full({n}, 77, cuda_.dtype(t));
      comm_.reduce_scatter_sum(late_on_gpu(x), out2);
      c_.expect(same_bytes(out2.cpu(), want), label("Communicator reduce_scatter_sum", t, n) + " differs from MPI");
    }
  }

  void all_gather(at::ScalarType t, int64_t n) {
    const at::Tensor x = input(rank(), n, t, 3);
    at::Tensor want = at::empty({n * world()}, x.options());
    comm_.all_gather(x, want);
    at::Tensor out = at::full({n * world()}, 77, cuda_.dtype(t));
    auto p = nccl_.all_gather(late_on_gpu(x), out, &blocked_);
    finish(*p, label("all_gather", t, n));
    c_.expect(same_bytes(out.cpu(), want), label("all_gather", t, n) + " differs from MPI");
  }

  void broadcast(at::ScalarType t, int64_t n) {
    for (int root : {0, world() - 1}) {
      const at::Tensor x = input(rank(), n, t, 4 + root);
      at::Tensor want = x.clone();
      comm_.broadcast(want, root);
      at::Tensor g = late_on_gpu(x);
      nccl_.broadcast(g, root, &blocked_);
      c_.expect(same_bytes(g.cpu(), want), label("broadcast root " + std::to_string(root), t, n) + " differs from MPI");
      if (world() == 1) break;
    }
  }

  void all_to_all(at::ScalarType t, int64_t n) {
    const at::Tensor x = input(rank(), n * world(), t, 5);
    at::Tensor want = at::empty_like(x);
    comm_.all_to_all(x, want);
    at::Tensor out = at::full({n * world()}, 77, cuda_.dtype(t));
    auto p = nccl_.all_to_all(late_on_gpu(x), out, &blocked_);
    finish(*p, label("all_to_all", t, n));
    c_.expect(same_bytes(out.cpu(), want), label("all_to_all", t, n) + " differs from MPI");
  }

  // fp32 with a wide dynamic range: the two backends may sum in different orders, so a tolerance of the
  // sum of magnitudes times a few ulps per rank.
  void all_reduce_wide(int64_t n) {
    at::manual_seed(uint64_t(rank()) * 7919 + 17);
    const at::Tensor x = (at::randn({n}, at::kDouble) * at::exp(at::randn({n}, at::kDouble) * 3)).to(at::kFloat);
    at::Tensor mag = x.abs().to(at::kDouble);
    comm_.all_reduce_sum(mag);
    const at::Tensor want = mpi_sum(x);
    at::Tensor g = late_on_gpu(x);
    auto p = nccl_.all_reduce_sum(g, &blocked_);
    finish(*p, "all_reduce_sum wide fp32");
    const double err = ((g.cpu().to(at::kDouble) - want.to(at::kDouble)).abs() - mag * (4e-7 * world())).max().item<double>();
    c_.expect(err <= 0, "all_reduce_sum wide fp32 n=" + std::to_string(n) + ": beyond world*4e-7 of the magnitudes");
  }

  void run_all() {
    for (at::ScalarType t : {at::kFloat, at::kBFloat16, at::kLong})
      for (int64_t n : kSizes) {
        all_reduce(t, n);
        reduce_scatter(t, n);
        all_gather(t, n);
        broadcast(t, n);
        all_to_all(t, n);
      }
    all_reduce_wide(100003);
  }

 private:
  const sd::MpiRuntime& rt_;
  sd::Communicator& comm_;
  sd::NcclBackend& nccl_;
  Checker& c_;
  at::TensorOptions cuda_;
  at::Tensor a_;
  double blocked_ = 0;
};

int run(int argc, char** argv) {
  const int devices = sd::cuda_device_count();
  if (devices == 0) {
    std::printf("nccl_check: SKIP: no CUDA device visible (this build or machine has none)\n");
    return 77;
  }
  sd::MpiRuntime rt(&argc, &argv);
  ST_CHECK(rt.active(), "nccl_check needs an MPI launcher (make_nccl_backend bootstraps over MPI_Bcast)",
           "run it as: mpirun -np GPUS nccl_check (also -np 1)");
  const sd::NodePlace place = sd::node_place(rt);
  const int device = sd::pick_cuda_device(rt.rank(), place, devices);
  sd::Communicator comm(rt);
  if (rt.world() > 1) comm.start_nccl(device);
  auto nccl = sd::make_nccl_backend(rt, device);
  Checker c;
  c.print_limit = 30;
  c.rank = rt.rank();
  Suite(rt, comm, *nccl, device, c).run_all();
  const int64_t failures = rt.allreduce_sum(c.failures), checks = rt.allreduce_sum(c.checks);
  if (rt.rank() == 0)
    std::printf("nccl_check: %s checks=%lld failures=%lld world=%d devices_per_node=%d\n", failures ? "FAIL" : "PASS",
                static_cast<long long>(checks), static_cast<long long>(failures), rt.world(), devices);
  return failures ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) { return shardtune::run_guarded("nccl_check", run, argc, argv); }
