// Runtime setup and autocast guards, written once against both LibTorch 1.13 and 2.x APIs.
#include "shardtune/model/runtime.h"

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include "shardtune/core/error.h"

// LibTorch 2.4 replaced the per-device autocast functions by ones taking a device type.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
#define ST_AUTOCAST_BY_DEVICE 1
#else
#define ST_AUTOCAST_BY_DEVICE 0
#endif

namespace shardtune::model {

void setup_runtime(int threads) {
  at::globalContext().setFlushDenormal(true);
  if (threads > 0) at::set_num_threads(threads);
}

Precision parse_precision(const std::string& s) {
  if (s == "fp32" || s == "float32") return Precision::FP32;
  if (s == "bf16" || s == "bfloat16") return Precision::BF16;
  ST_FAIL("unknown precision '" + s + "'", "use fp32 or bf16");
}

namespace {
bool autocast_enabled(at::DeviceType d) {
#if ST_AUTOCAST_BY_DEVICE
  return at::autocast::is_autocast_enabled(d);
#else
  return d == at::kCUDA ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled();
#endif
}
void set_autocast(at::DeviceType d, bool on, at::ScalarType dtype) {
#if ST_AUTOCAST_BY_DEVICE
  at::autocast::set_autocast_dtype(d, dtype);
  at::autocast::set_autocast_enabled(d, on);
#else
  if (d == at::kCUDA) {
    at::autocast::set_autocast_gpu_dtype(dtype);
    at::autocast::set_enabled(on);
  } else {
    at::autocast::set_autocast_cpu_dtype(dtype);
    at::autocast::set_cpu_enabled(on);
  }
#endif
}
at::ScalarType get_dtype(at::DeviceType d) {
#if ST_AUTOCAST_BY_DEVICE
  return at::autocast::get_autocast_dtype(d);
#else
  return d == at::kCUDA ? at::autocast::get_autocast_gpu_dtype() : at::autocast::get_autocast_cpu_dtype();
#endif
}
}  // namespace

at::ScalarType autocast_dtype(at::DeviceType device) {
  return autocast_enabled(device) ? get_dtype(device) : at::kFloat;
}

AutocastGuard::AutocastGuard(at::Device device, Precision precision) {
  if (precision != Precision::BF16) return;
  device_ = device.type();
  ST_CHECK(device_ == at::kCPU || device_ == at::kCUDA, "autocast is supported on CPU and CUDA only");
  prev_enabled_ = autocast_enabled(device_);
  prev_dtype_ = get_dtype(device_);
  set_autocast(device_, true, at::kBFloat16);
  at::autocast::increment_nesting();
  active_ = true;
}

AutocastGuard::~AutocastGuard() {
  if (!active_) return;
  // As Python's torch.autocast: the cast-weight cache lives until the outermost region ends.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  set_autocast(device_, prev_enabled_, prev_dtype_);
}

}  // namespace shardtune::model
