// NCCL backend for CUDA tensors (internal to dist/). Built only when CUDA + NCCL are found; otherwise
// make_nccl_backend() throws an Error saying how to build with it.
#pragma once

#include <ATen/ATen.h>

#include <memory>

#include "shardtune/dist/communicator.h"

namespace shardtune::dist {

class NcclBackend {
 public:
  virtual ~NcclBackend() = default;
  virtual std::unique_ptr<Pending> all_reduce_sum(at::Tensor t, double* blocked_s) = 0;
  virtual std::unique_ptr<Pending> reduce_scatter_sum(at::Tensor in, at::Tensor out, double* blocked_s) = 0;
  virtual std::unique_ptr<Pending> all_gather(at::Tensor in, at::Tensor out, double* blocked_s) = 0;
  virtual void broadcast(at::Tensor& t, int root, double* blocked_s) = 0;
  virtual std::unique_ptr<Pending> all_to_all(at::Tensor in, at::Tensor out, double* blocked_s) = 0;
};

bool nccl_available();
// Bootstraps one NCCL communicator over MPI_COMM_WORLD on CUDA device `cuda_device` (chosen by the
// caller: device.h's pick_cuda_device); rank 0's ncclUniqueId goes to everyone by MPI_Bcast.
std::unique_ptr<NcclBackend> make_nccl_backend(const MpiRuntime& rt, int cuda_device);

}  // namespace shardtune::dist
