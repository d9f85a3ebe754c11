// --device cuda start-up (communicator.h's start_cuda): build checks, one GPU per rank by node place,
// then the NCCL communicator, with every rank agreeing on the first problem before any GPU work.
#include <ATen/ATen.h>
#include <torch/version.h>

#include <functional>
#include <string>

#include "shardtune/core/error.h"
#include "shardtune/dist/communicator.h"
#include "shardtune/dist/device.h"

namespace shardtune::dist {

int start_cuda(Communicator& comm, double timeout_s) {
  const MpiRuntime& rt = comm.runtime();
  std::string err, hint;
  // The first problem of this rank; the later checks are skipped once there is one.
  auto check = [&](const std::function<void()>& f) {
    if (!err.empty()) return;
    try {
      f();
    } catch (const Error& e) {
      err = e.what();
      hint = e.hint();
    }
  };
  // A CUDA LibTorch whose CMake package named no CUDA libraries still counts when it can use a GPU.
  check([&] { check_cuda_build(Communicator::has_nccl(), Communicator::torch_cuda_built() || at::hasCUDA(), TORCH_VERSION); });
  const NodePlace place = node_place(rt);  // collective: every rank calls it, whatever it found so far
  int device = -1;
  check([&] { device = pick_cuda_device(rt.rank(), place, cuda_device_count()); });
  check([&] {
    ST_CHECK(at::hasCUDA(),
             "rank " + std::to_string(rt.rank()) + (place.host.empty() ? "" : " on " + place.host) +
                 ": --device cuda, and the CUDA runtime sees a GPU, but LibTorch " TORCH_VERSION " cannot use it",
             "the NVIDIA driver may be older than the CUDA version this LibTorch was built for (nvidia-smi shows the "
             "driver's CUDA version), or libtorch_cuda was not loaded; or use --device cpu");
  });
  // Everyone stops on the first rank's problem (one message, the same on every rank), before NCCL.
  const auto errors = rt.allgather(err), hints = rt.allgather(hint);
  for (size_t r = 0; r < errors.size(); ++r) ST_CHECK(errors[r].empty(), errors[r], hints[r]);
  // Two ranks on one physical GPU (e.g. each sees one device, but the launcher gave all the same one):
  // named here rather than by NCCL's "duplicate GPU" later.
  const auto ids = rt.allgather(place.host + "|" + cuda_bus_id(device));
  const auto [a, b] = shared_gpu(ids);
  ST_CHECK(a < 0, "ranks " + std::to_string(a) + " and " + std::to_string(b) + " would both compute on the GPU " +
                      ids[size_t(a < 0 ? 0 : a)] + " (host|PCI bus id); --device cuda runs one rank per GPU",
           "give each rank its own GPU: srun --ntasks-per-node=GPUS --gpus-per-node=GPUS (every rank sees all, "
           "and picks its local rank's), or --gpus-per-task=1 (each rank sees its own); check CUDA_VISIBLE_DEVICES");
  comm.start_nccl(device, timeout_s);
  return device;
}

}  // namespace shardtune::dist
