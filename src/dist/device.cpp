// Device choice per rank (device.h): node place from MPI_Comm_split_type, visible CUDA devices from the
// CUDA runtime where the build has it, and the pure rule that maps the two to a device index.
#include "shardtune/dist/device.h"

#include <mpi.h>

#ifdef SHARDTUNE_HAVE_CUDART
#include <cuda_runtime.h>
#endif

#include "shardtune/core/error.h"

namespace shardtune::dist {

NodePlace node_place(const MpiRuntime& rt) {
  NodePlace p;
  char name[MPI_MAX_PROCESSOR_NAME] = {0};
  int len = 0;
  if (!rt.active()) return p;
  MPI_Get_processor_name(name, &len);
  p.host.assign(name, size_t(len));
  MPI_Comm local;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rt.rank(), MPI_INFO_NULL, &local);
  MPI_Comm_rank(local, &p.local_rank);
  MPI_Comm_size(local, &p.local_size);
  MPI_Comm_free(&local);
  return p;
}

int cuda_device_count() {
#ifdef SHARDTUNE_HAVE_CUDART
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;  // no driver, or no device: the same to the caller
  return n;
#else
  return 0;
#endif
}

bool cuda_bf16_supported() {
#ifdef SHARDTUNE_HAVE_CUDART
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return false;
  return major >= 8;
#else
  return false;
#endif
}

int pick_cuda_device(int rank, const NodePlace& place, int visible_devices) {
  const std::string where = "rank " + std::to_string(rank) + (place.host.empty() ? "" : " on " + place.host);
  ST_CHECK(visible_devices > 0, where + ": --device cuda but no CUDA device is visible",
           "run on a GPU node (srun --gpus-per-task=1 or --gres=gpu:N), check CUDA_VISIBLE_DEVICES and nvidia-smi, "
           "or use --device cpu");
  if (visible_devices == 1) return 0;  // one GPU per rank given by the launcher (or all share one: shared_gpu)
  ST_CHECK(place.local_size <= visible_devices,
           where + ": " + std::to_string(place.local_size) + " ranks share this node but only " +
               std::to_string(visible_devices) + " CUDA device(s) are visible; --device cuda runs one rank per GPU",
           "start at most " + std::to_string(visible_devices) + " ranks per node (srun --ntasks-per-node=" +
               std::to_string(visible_devices) + ", mpirun --map-by ppr:" + std::to_string(visible_devices) +
               ":node), or make more GPUs visible (CUDA_VISIBLE_DEVICES)");
  return place.local_rank;
}

void check_cuda_build(bool nccl_built, bool torch_cuda, const std::string& torch_version) {
  ST_CHECK(nccl_built,
           "--device cuda, but this shardtune was built without the NCCL backend (CMake found no CUDA toolkit and "
           "NCCL, or was given -DSHARDTUNE_WITH_CUDA=OFF)",
           "rebuild with -DSHARDTUNE_WITH_CUDA=ON where the CUDA toolkit and NCCL are installed (CUDAToolkit_ROOT, "
           "NCCL_HOME), against a CUDA LibTorch; or use --device cpu");
  ST_CHECK(torch_cuda,
           "--device cuda, but the LibTorch " + torch_version + " this shardtune was built against is a CPU-only build",
           "rebuild against a CUDA LibTorch, e.g. the one of a CUDA PyTorch wheel: cmake -DCMAKE_PREFIX_PATH=\"$(python3 "
           "-c 'import torch; print(torch.utils.cmake_prefix_path)')\" ...; or use --device cpu");
}

std::string cuda_bus_id(int device) {
#ifdef SHARDTUNE_HAVE_CUDART
  char id[32] = {0};
  if (cudaDeviceGetPCIBusId(id, sizeof id, device) != cudaSuccess) return {};
  return id;
#else
  (void)device;
  return {};
#endif
}

std::pair<int, int> shared_gpu(const std::vector<std::string>& host_bus_ids) {
  for (size_t a = 0; a < host_bus_ids.size(); ++a) {
    const auto& id = host_bus_ids[a];
    if (id.empty() || id.back() == '|') continue;  // bus id unknown
    for (size_t b = a + 1; b < host_bus_ids.size(); ++b)
      if (host_bus_ids[b] == id) return {int(a), int(b)};
  }
  return {-1, -1};
}

}  // namespace shardtune::dist
