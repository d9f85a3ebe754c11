// Process-wide LibTorch setup (threads, flush-to-zero) and mixed-precision guards that work on LibTorch
// 1.13 and 2.x, CPU and CUDA.
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace shardtune::model {

// Flush denormals to zero and set intra-op threads (0 = the CPUs in this process's affinity mask).
// Call once at start. The BLAS core is chosen before that, by hw::select_blas_core() in main().
void setup_runtime(int threads);

enum class Precision { FP32, BF16 };
// "fp32" | "bf16" | "auto" (resolved by resolve_precision on the CPU; for another device call that).
Precision parse_precision(const std::string& s);

// "auto": bf16 where the device computes it natively, else fp32. CPU: AVX512_BF16 or AMX-BF16 (from the
// CPU flags). CUDA: `cuda_bf16`, which the caller asks the CUDA runtime for (compute capability >= 8.0:
// dist::cuda_bf16_supported(); this library does not link the CUDA runtime).
// `reason` says why, for the log ("this CPU computes bf16 natively: avx512_bf16 amx_bf16").
struct PrecisionChoice {
  Precision precision;
  std::string reason;
};
PrecisionChoice resolve_precision(const std::string& s, at::DeviceType device = at::kCPU, bool cuda_bf16 = false);

// Enables autocast to bf16 on `device` for the guard's lifetime when precision is BF16 (no-op for FP32).
// CUDA: the CUDA autocast state (LibTorch 1.13-2.3: at::autocast::set_enabled / set_autocast_gpu_dtype;
// 2.4+: set_autocast_enabled / set_autocast_dtype by device type), CPU: the CPU one. Both are
// thread-local flags, so the CUDA branch works (and is unit-tested) without a GPU.
class AutocastGuard {
 public:
  AutocastGuard(at::Device device, Precision precision);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  bool active_ = false;
  bool prev_enabled_ = false;
  at::ScalarType prev_dtype_ = at::kFloat;
  at::DeviceType device_ = at::kCPU;
};

// The dtype matmuls currently run in on `device` (kBFloat16/kHalf under autocast, else kFloat).
at::ScalarType autocast_dtype(at::DeviceType device);

// A host tensor (e.g. at::from_blob over a host batch, which it need not outlive) as an owning tensor on
// `device`. CPU: a clone (the values as before, bit for bit). CUDA: staged through pinned host memory and
// copied with non_blocking, so the host does not wait for the device to catch up (a copy from pageable
// memory synchronizes the stream); LibTorch's pinned allocator keeps the staging block until the copy ran.
at::Tensor host_to_device(const at::Tensor& host, at::Device device);

}  // namespace shardtune::model
