// Process-wide LibTorch setup (threads, flush-to-zero) and mixed-precision guards that work on LibTorch
// 1.13 and 2.x, CPU and CUDA.
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace shardtune::model {

// Flush denormals to zero and set intra-op threads (0 = leave LibTorch's default). Call once at start.
// Note: OpenBLAS reads OPENBLAS_CORETYPE when the library loads, so set it in the environment.
void setup_runtime(int threads);

enum class Precision { FP32, BF16 };
Precision parse_precision(const std::string& s);  // "fp32" | "bf16"

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
