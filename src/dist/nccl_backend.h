// NCCL backend for CUDA tensors (internal to dist/). Built only when CUDA + NCCL are found; otherwise
// make_nccl_backend() throws an Error saying how to build with it (nccl_stub.cpp).
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>

#include "shardtune/dist/communicator.h"

namespace shardtune::dist {

// Every operation is issued on the backend's communication stream after the calling thread's compute
// stream (CUDA events, no host synchronization) and returns at once; Pending::wait() orders the compute
// stream after it. `blocked_s` accumulates the host time spent waiting (next to nothing: see GPU.md).
class NcclBackend {
 public:
  virtual ~NcclBackend() = default;
  virtual std::unique_ptr<Pending> all_reduce_sum(at::Tensor t, double* blocked_s) = 0;
  virtual std::unique_ptr<Pending> reduce_scatter_sum(at::Tensor in, at::Tensor out, double* blocked_s) = 0;
  virtual std::unique_ptr<Pending> all_gather(at::Tensor in, at::Tensor out, double* blocked_s) = 0;
  // Returns with the compute stream ordered after the broadcast (the host does not wait for it).
  virtual void broadcast(at::Tensor& t, int root, double* blocked_s) = 0;
  virtual std::unique_ptr<Pending> all_to_all(at::Tensor in, at::Tensor out, double* blocked_s) = 0;
};

bool nccl_available();
// "NCCL 2.28.9, CUDA runtime 13.0" (what the backend was compiled against), or "" without it.
std::string nccl_build_info();

// Bootstraps one non-blocking NCCL communicator over MPI_COMM_WORLD on CUDA device `cuda_device`
// (chosen by the caller: device.h's pick_cuda_device), made current for the calling thread; rank 0's
// ncclUniqueId goes to everyone by MPI_Bcast. Creation is bounded by `init_timeout_s` (0: unbounded).
// `abandoned` (may be null) is set when a Pending is abandoned (Communicator::abandoned). Starts the
// communicator's watchdog thread (NCCL errors, --collective-timeout).
std::unique_ptr<NcclBackend> make_nccl_backend(const MpiRuntime& rt, int cuda_device, bool* abandoned = nullptr,
                                               double init_timeout_s = 0);

}  // namespace shardtune::dist
