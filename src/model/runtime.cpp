// Runtime setup and autocast guards, written once against both LibTorch 1.13 and 2.x APIs.
#include "shardtune/model/runtime.h"

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include <algorithm>

#include "shardtune/core/error.h"
#include "shardtune/core/hw.h"

// LibTorch 2.4 replaced the per-device autocast functions by ones taking a device type.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
#define ST_AUTOCAST_BY_DEVICE 1
#else
#define ST_AUTOCAST_BY_DEVICE 0
#endif

namespace shardtune::model {

void setup_runtime(int threads) {
  ST_CHECK(threads >= 0, "thread count " + std::to_string(threads) + " is negative",
           "give --threads 0 (the CPUs of the affinity mask) or a positive count");
  at::globalContext().setFlushDenormal(true);
  at::set_num_threads(threads > 0 ? threads : std::max(1, hw::affinity().count));
}

Precision parse_precision(const std::string& s) {
  if (s == "fp32" || s == "float32") return Precision::FP32;
  if (s == "bf16" || s == "bfloat16") return Precision::BF16;
  if (s == "auto") return resolve_precision(s).precision;
  ST_FAIL("unknown precision '" + s + "'", "use auto, fp32 or bf16");
}

PrecisionChoice resolve_precision(const std::string& s, at::DeviceType device, bool cuda_bf16) {
  if (s != "auto") return {parse_precision(s), "given explicitly"};
  if (device == at::kCUDA) {
    if (cuda_bf16) return {Precision::BF16, "this GPU computes bf16 natively (compute capability 8.0 or newer)"};
    return {Precision::FP32, "this GPU has no native bf16 (compute capability below 8.0)"};
  }
  ST_CHECK(device == at::kCPU, std::string("--precision auto: no rule for device ") + c10::DeviceTypeName(device),
           "give --precision fp32 or bf16");
  const hw::Flags& flags = hw::cpu().flags;
  std::string have;
  for (const char* f : {"avx512_bf16", "amx_bf16"})
    if (flags.count(f)) have += (have.empty() ? "" : " ") + std::string(f);
  if (hw::native_bf16(flags)) return {Precision::BF16, "this CPU computes bf16 natively: " + have};
  return {Precision::FP32, "no native bf16 on this CPU (no avx512_bf16/amx_bf16): bf16 would be emulated, far slower"};
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

at::Tensor host_to_device(const at::Tensor& host, at::Device device) {
  ST_CHECK(host.device().is_cpu(), "internal: host_to_device needs a CPU tensor, got one on " + host.device().str());
  if (device.is_cpu()) return host.clone();
  at::Tensor pinned = at::empty(host.sizes(), host.options().pinned_memory(true));
  pinned.copy_(host);
  return pinned.to(device, pinned.scalar_type(), /*non_blocking=*/true);
}

}  // namespace shardtune::model
