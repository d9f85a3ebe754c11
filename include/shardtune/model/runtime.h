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
// "fp32" | "bf16" | "auto" (resolved by resolve_precision on the CPU).
Precision parse_precision(const std::string& s);

// "auto": bf16 where the device computes it natively (CPU: AVX512_BF16 or AMX-BF16), else fp32.
// `reason` says why, for the log ("this CPU computes bf16 natively: avx512_bf16 amx_bf16").
struct PrecisionChoice {
  Precision precision;
  std::string reason;
};
PrecisionChoice resolve_precision(const std::string& s, at::DeviceType device = at::kCPU);

// Enables autocast to bf16 on `device` for the guard's lifetime when precision is BF16 (no-op for FP32).
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

}  // namespace shardtune::model
