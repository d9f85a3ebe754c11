// Which device a rank computes on: the CPU, or one CUDA GPU per rank picked by the rank's index among
// the ranks of its node (MPI_Comm_split_type). The pure part (pick_cuda_device) is unit-tested without
// a GPU; the rest asks MPI and the CUDA runtime (absent from a CPU-only build: no devices).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "shardtune/dist/mpi_runtime.h"

namespace shardtune::dist {

// This rank's place among the ranks on its node (shared-memory domain).
struct NodePlace {
  int local_rank = 0;
  int local_size = 1;
  std::string host;
};

// MPI_Comm_split_type(MPI_COMM_TYPE_SHARED) over MPI_COMM_WORLD (rank 0 of 1 when not under MPI).
// Collective: every rank calls it.
NodePlace node_place(const MpiRuntime& rt);

// CUDA devices this process sees (after CUDA_VISIBLE_DEVICES); 0 when built without CUDA or none.
int cuda_device_count();

// Whether the current CUDA device (device 0 until one is chosen) computes bf16 natively: compute
// capability 8.0 or newer (Ampere, Hopper, ...). --precision auto resolves to bf16 on CUDA then
// (train/launch.h). False when built without CUDA or no device answers.
bool cuda_bf16_supported();

// The CUDA device index for a rank: local_rank, when there are at least as many visible devices as
// ranks on the node; 0 when the rank sees exactly one device (the launcher gave each rank its own GPU,
// as srun --gpus-per-task=1 does through CUDA_VISIBLE_DEVICES; ranks that were all given the same GPU
// are caught by shared_gpu below). Throws an Error naming the rank, the host, the ranks per node and the
// visible devices, with a hint (srun --ntasks-per-node=GPUS, or CUDA_VISIBLE_DEVICES), when
// 1 < visible_devices < local_size or there are none.
int pick_cuda_device(int rank, const NodePlace& place, int visible_devices);

// The PCI bus id of CUDA device `device` ("0000:3B:00.0"), which names a physical GPU whatever
// CUDA_VISIBLE_DEVICES renumbered; empty when built without CUDA or it cannot be read.
std::string cuda_bus_id(int device);

// Given every rank's "host|bus id" (index = rank), the first two ranks that would compute on the same
// physical GPU, or {-1, -1}. Empty ids (unknown) never match.
std::pair<int, int> shared_gpu(const std::vector<std::string>& host_bus_ids);

// What this build needs for --device cuda, checked before anything touches a GPU: the NCCL backend
// (`nccl_built`) and a LibTorch compiled with CUDA (`torch_cuda`; whether it can use a GPU here is asked
// after the device count, so that "no GPU" is named as such). Throws an
// Error saying which is missing and how to build with it; `torch_version` is named in the message.
void check_cuda_build(bool nccl_built, bool torch_cuda, const std::string& torch_version);

}  // namespace shardtune::dist
