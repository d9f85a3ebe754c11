// NF4 (4-bit NormalFloat) weight storage as in the QLoRA paper and bitsandbytes' quantize_4bit:
// the weight is flattened and cut into blocks of 64 elements; each block stores its absmax and one
// 4-bit code per element (index into the 16 NF4 values, nearest value of w / absmax), two codes per
// byte with the FIRST element in the HIGH nibble. Double quantization (on by default, bitsandbytes'
// compress_statistics): the fp32 absmax values have their mean subtracted (`offset`) and are quantized
// blockwise to 8 bits with bitsandbytes' signed dynamic map (create_dynamic_map), blocks of 256, each
// with its own fp32 absmax. Storage: n/2 + n/64 + 4*n/(64*256) + 4 bytes, i.e. ~0.516 bytes per element.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace shardtune::model::nf4 {

constexpr int64_t kBlock = 64;         // elements per absmax (bitsandbytes blocksize for QLoRA)
constexpr int64_t kAbsmaxBlock = 256;  // absmax values per second-level scale (double quantization)

// The 16 NF4 values of the QLoRA paper (Appendix E), ascending, code i = value i.
const std::array<float, 16>& code_table();
// bitsandbytes create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), ascending (256 values).
const std::array<float, 256>& dynamic_map();

struct Quantized {
  std::vector<int64_t> shape;  // of the original weight
  int64_t numel = 0;
  at::Tensor packed;           // uint8 [numel/2]
  bool double_quant = true;
  at::Tensor absmax;           // fp32 [numel/64]            (double_quant == false)
  at::Tensor absmax_q;         // uint8 [numel/64]           (double_quant): dynamic-map codes
  at::Tensor absmax_scale;     // fp32 [ceil(numel/64/256)]  (double_quant): absmax of each 256-block
  float absmax_offset = 0;     // (double_quant): mean of the fp32 absmax, subtracted before quantizing

  int64_t storage_bytes() const;  // bytes of the tensors above (what the quantized weight occupies)
  at::Tensor absmax_fp32() const; // the per-block absmax as used by dequantize (fp32 [numel/64])
};

// Quantizes a floating weight (any float dtype, any device; contiguous copy taken). `name` is used in
// the Error when numel is not a multiple of kBlock ("... 'model.layers.0.mlp.down_proj.weight' has 100
// elements, not a multiple of the NF4 block of 64").
Quantized quantize(const at::Tensor& w, bool double_quant = true, const std::string& name = "weight");

// The weight as `dtype` (kFloat or kBFloat16) in its original shape: code_table()[code] * absmax.
at::Tensor dequantize(const Quantized& q, at::ScalarType dtype = at::kFloat);

// y = x @ W^T + bias where W = cat(dequantize(ws[i]) for i, dim 0) (each ws[i] is [out_i, in], same in):
// a fused projection over several frozen NF4 weights (q/k/v, gate/up). Differentiable with respect to
// x (and bias) only; W is dequantized into `compute` dtype in forward and again in backward, never saved
// for backward (that is what keeps QLoRA's activation memory small). bias may be undefined.
at::Tensor linear(const at::Tensor& x, const std::vector<std::shared_ptr<const Quantized>>& ws,
                  const at::Tensor& bias, at::ScalarType compute);

}  // namespace shardtune::model::nf4
