// NF4 storage of frozen base weights (QLoRA / bitsandbytes quantize_4bit layout with double quantization)
// and the fused projection over NF4 weights that dequantizes in forward and again in backward.
//
// Semantics follow bitsandbytes' reference ("default") backend, which its CUDA kernels agree with:
//   scaled = clamp(w * (1 / absmax), -1, 1) in fp32 (a reciprocal, then a multiply: not w / absmax),
//   code   = number of midpoints (c[i] + c[i+1]) / 2 strictly below `scaled` (torch.bucketize, right=False:
//            a value exactly on a midpoint takes the lower code, as the CUDA decision tree does).
// Deviations, both chosen for bit-reproducibility across thread counts and machines:
//   * offset = mean(absmax) is summed in fp64 and rounded once to fp32 (bitsandbytes: torch's fp32 mean,
//     whose rounding depends on the SIMD width and threads; the two agree to about 1 ulp);
//   * a block whose absmax is 0 (or subnormal: the runtime flushes denormals) gets the code of 0.0
//     (NF4 code 7, dynamic-map code 127): the value bitsandbytes' reference backend gives, and exact 0
//     after dequantization. The last, partial 256-block of the double quantization also uses the
//     reciprocal (as the CUDA kernel does; the reference backend divides there).
#include "shardtune/model/nf4.h"

#include <ATen/Parallel.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "shardtune/core/error.h"

namespace shardtune::model::nf4 {

namespace {

std::string shape_str(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

constexpr int kNf4Zero = 7;    // code_table()[7] == 0.0f
constexpr int kDynZero = 127;  // dynamic_map()[127] == 0.0f (127 negative values below it)

// Midpoints between adjacent code values: the nearest-code search thresholds.
struct Tables {
  std::array<float, 15> nf4_mid;
  std::array<float, 255> dyn_mid;
};

const Tables& tables() {
  static const Tables t = [] {
    Tables r{};
    const auto& c = code_table();
    const auto& d = dynamic_map();
    // fp32 sum then halve, as torch computes (code[:-1] + code[1:]) / 2 (halving is exact).
    for (int i = 0; i < 15; ++i) r.nf4_mid[i] = (c[i] + c[i + 1]) * 0.5f;
    for (int i = 0; i < 255; ++i) r.dyn_mid[i] = (d[i] + d[i + 1]) * 0.5f;
    return r;
  }();
  return t;
}

// Index of the nearest NF4 value to s in [-1, 1]: the count of midpoints below s (branch-free).
inline uint8_t nf4_code(float s, const std::array<float, 15>& mid) {
  int c = 0;
  for (int k = 0; k < 15; ++k) c += s > mid[k];
  return static_cast<uint8_t>(c);
}

inline float clamp1(float v) { return std::min(1.0f, std::max(-1.0f, v)); }

// A block scale that 1/scale cannot use: zero, subnormal (flushed to zero at runtime) or NaN.
inline bool unusable_scale(float a) { return !(a >= FLT_MIN); }

// First-level quantization of one block of kBlock elements from `src` (float or bf16).
template <typename T>
float quantize_block(const T* src, uint8_t* packed, const std::array<float, 15>& mid, bool& finite) {
  float amax = 0.0f;
  bool ok = true;
  for (int64_t i = 0; i < kBlock; ++i) {
    const float v = static_cast<float>(src[i]);
    ok &= std::isfinite(v);
    amax = std::max(amax, std::fabs(v));
  }
  finite = ok;
  if (unusable_scale(amax)) {
    std::memset(packed, kNf4Zero << 4 | kNf4Zero, kBlock / 2);
    return amax;
  }
  const float inv = 1.0f / amax;
  for (int64_t j = 0; j < kBlock / 2; ++j) {
    const uint8_t hi = nf4_code(clamp1(static_cast<float>(src[2 * j]) * inv), mid);
    const uint8_t lo = nf4_code(clamp1(static_cast<float>(src[2 * j + 1]) * inv), mid);
    packed[j] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return amax;
}

// bitsandbytes quantize_blockwise(values, code=dynamic_map, blocksize=256) on fp32 values.
void quantize_absmax(const float* v, int64_t n, uint8_t* q, float* scale) {
  const auto& mid = tables().dyn_mid;
  const int64_t blocks = (n + kAbsmaxBlock - 1) / kAbsmaxBlock;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * kAbsmaxBlock, end = std::min(n, begin + kAbsmaxBlock);
    float s = 0.0f;
    for (int64_t i = begin; i < end; ++i) s = std::max(s, std::fabs(v[i]));
    scale[b] = s;
    const bool zero = unusable_scale(s);
    const float inv = zero ? 0.0f : 1.0f / s;
    for (int64_t i = begin; i < end; ++i) {
      if (zero) {
        q[i] = kDynZero;
        continue;
      }
      const float t = clamp1(v[i] * inv);
      // bucketize(right=False): the first midpoint >= t.
      q[i] = static_cast<uint8_t>(std::lower_bound(mid.begin(), mid.end(), t) - mid.begin());
    }
  }
}

// Writes dequantize(q) into dst (numel elements of type T) using the per-block absmax `am`. Per block the
// 16 products code[k] * absmax are formed once (the same fp32 products as code[code] * absmax per
// element), then each byte is two lookups into that small table: a gather-free inner loop.
template <typename T>
void dequantize_into(const Quantized& q, const float* am, T* dst) {
  const auto& code = code_table();
  const uint8_t* packed = q.packed.data_ptr<uint8_t>();
  const int64_t blocks = q.numel / kBlock;
  at::parallel_for(0, blocks, 64, [&](int64_t b0, int64_t b1) {
    T lut[16];
    for (int64_t b = b0; b < b1; ++b) {
      const float a = am[b];
      for (int k = 0; k < 16; ++k) lut[k] = static_cast<T>(code[k] * a);
      const uint8_t* p = packed + b * (kBlock / 2);
      T* o = dst + b * kBlock;
      for (int64_t j = 0; j < kBlock / 2; ++j) {
        o[2 * j] = lut[p[j] >> 4];
        o[2 * j + 1] = lut[p[j] & 15];
      }
    }
  });
}

void dequantize_to(const Quantized& q, at::Tensor& dst) {
  const at::Tensor am = q.absmax_fp32();
  const float* a = am.data_ptr<float>();
  if (dst.scalar_type() == at::kFloat) {
    dequantize_into(q, a, dst.data_ptr<float>());
  } else {
    dequantize_into(q, a, dst.data_ptr<at::BFloat16>());
  }
}

}  // namespace

const std::array<float, 16>& code_table() {
  // bitsandbytes get_4bit_type("nf4") = QLoRA Appendix E (create_normal_map(0.9677083), fp32 values).
  static const std::array<float, 16> t = {
      -1.0f,
      -0.6961928009986877f,
      -0.5250730514526367f,
      -0.39491748809814453f,
      -0.28444138169288635f,
      -0.18477343022823334f,
      -0.09105003625154495f,
      0.0f,
      0.07958029955625534f,
      0.16093020141124725f,
      0.24611230194568634f,
      0.33791524171829224f,
      0.44070982933044434f,
      0.5626170039176941f,
      0.7229568362236023f,
      1.0f,
  };
  return t;
}

const std::array<float, 256>& dynamic_map() {
  // create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): for exponent i = 0..6, the
  // midpoints of linspace(0.1, 1, 2^i + 1) scaled by 10^(i-6), both signs; plus 0 and 1 (no extra
  // linear items with 7 non-sign bits and 7 exponent bits). Built with the same fp32 tensor operations
  // as bitsandbytes so every value is bit-identical.
  static const std::array<float, 256> m = [] {
    std::vector<float> data;
    for (int i = 0; i < 7; ++i) {
      const at::Tensor bounds = at::linspace(0.1, 1.0, (int64_t{1} << i) + 1, at::kFloat);
      const at::Tensor means = (bounds.slice(0, 0, -1) + bounds.slice(0, 1)) / 2.0;
      const double scale = std::pow(10.0, i - 6);
      const at::Tensor pos = means * scale, neg = means * (-scale);
      data.insert(data.end(), pos.data_ptr<float>(), pos.data_ptr<float>() + pos.numel());
      data.insert(data.end(), neg.data_ptr<float>(), neg.data_ptr<float>() + neg.numel());
    }
    data.push_back(0.0f);
    data.push_back(1.0f);
    ST_CHECK(data.size() == 256, "internal: dynamic map has " + std::to_string(data.size()) + " values, not 256");
    std::sort(data.begin(), data.end());
    std::array<float, 256> r{};
    std::copy(data.begin(), data.end(), r.begin());
    return r;
  }();
  return m;
}

int64_t Quantized::storage_bytes() const {
  auto bytes = [](const at::Tensor& t) { return t.defined() ? static_cast<int64_t>(t.nbytes()) : int64_t{0}; };
  int64_t n = bytes(packed);
  if (double_quant) {
    n += bytes(absmax_q) + bytes(absmax_scale) + static_cast<int64_t>(sizeof(absmax_offset));
  } else {
    n += bytes(absmax);
  }
  return n;
}

at::Tensor Quantized::absmax_fp32() const {
  if (!double_quant) return absmax;
  // bitsandbytes dequantize_blockwise then "+= offset": code[q] * scale, then + offset, each in fp32.
  const int64_t n = absmax_q.numel();
  at::Tensor out = at::empty({n}, at::kFloat);
  const auto& map = dynamic_map();
  const uint8_t* q = absmax_q.data_ptr<uint8_t>();
  const float* s = absmax_scale.data_ptr<float>();
  float* o = out.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) {
    const float scaled = map[q[i]] * s[i / kAbsmaxBlock];
    o[i] = scaled + absmax_offset;
  }
  return out;
}

Quantized quantize(const at::Tensor& w, bool double_quant, const std::string& name) {
  ST_CHECK(w.defined(), "NF4: '" + name + "' is an undefined tensor", "pass the loaded weight");
  ST_CHECK(at::isFloatingType(w.scalar_type()),
           "NF4: '" + name + "' has dtype " + std::string(c10::toString(w.scalar_type())) + ", not a floating type",
           "quantize fp32, bf16 or fp16 weights");
  const int64_t n = w.numel();
  ST_CHECK(n > 0 && n % kBlock == 0,
           "NF4: '" + name + "' " + shape_str(w.sizes()) + " has " + std::to_string(n) +
               " elements, not a multiple of the NF4 block of " + std::to_string(kBlock),
           "leave this module out of --lora-targets (it stays dense) or use --method lora");
  at::Tensor src = w.detach().to(at::kCPU);
  if (src.scalar_type() != at::kBFloat16) src = src.to(at::kFloat);
  src = src.contiguous();

  Quantized q;
  q.shape.assign(w.sizes().begin(), w.sizes().end());
  q.numel = n;
  q.double_quant = double_quant;
  q.packed = at::empty({n / 2}, at::kByte);
  const int64_t blocks = n / kBlock;
  at::Tensor absmax = at::empty({blocks}, at::kFloat);

  const auto& mid = tables().nf4_mid;
  uint8_t* packed = q.packed.data_ptr<uint8_t>();
  float* am = absmax.data_ptr<float>();
  std::atomic<int64_t> first_bad{-1};
  at::parallel_for(0, blocks, 256, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      bool finite = true;
      if (src.scalar_type() == at::kFloat) {
        am[b] = quantize_block(src.data_ptr<float>() + b * kBlock, packed + b * (kBlock / 2), mid, finite);
      } else {
        am[b] = quantize_block(src.data_ptr<at::BFloat16>() + b * kBlock, packed + b * (kBlock / 2), mid, finite);
      }
      if (!finite) {
        int64_t expected = -1;
        first_bad.compare_exchange_strong(expected, b);
      }
    }
  });
  ST_CHECK(first_bad.load() < 0,
           "NF4: '" + name + "' has a non-finite value (NaN or Inf) in block " + std::to_string(first_bad.load()) +
               " (elements " + std::to_string(first_bad.load() * kBlock) + ".." +
               std::to_string(first_bad.load() * kBlock + kBlock - 1) + " of the flattened weight)",
           "the checkpoint is corrupt or was saved after a diverged run; re-export it");

  if (!double_quant) {
    q.absmax = absmax;
    return q;
  }
  double sum = 0.0;
  for (int64_t i = 0; i < blocks; ++i) sum += am[i];
  q.absmax_offset = static_cast<float>(sum / static_cast<double>(blocks));
  at::Tensor centered = absmax - q.absmax_offset;  // fp32 subtraction, as bitsandbytes' `_absmax - offset`
  q.absmax_q = at::empty({blocks}, at::kByte);
  q.absmax_scale = at::empty({(blocks + kAbsmaxBlock - 1) / kAbsmaxBlock}, at::kFloat);
  quantize_absmax(centered.data_ptr<float>(), blocks, q.absmax_q.data_ptr<uint8_t>(), q.absmax_scale.data_ptr<float>());
  return q;
}

at::Tensor dequantize(const Quantized& q, at::ScalarType dtype) {
  ST_CHECK(dtype == at::kFloat || dtype == at::kBFloat16,
           "NF4: dequantize to " + std::string(c10::toString(dtype)) + " is not supported", "use fp32 or bf16");
  ST_CHECK(q.packed.defined() && q.packed.numel() * 2 == q.numel, "NF4: dequantize of an empty or inconsistent weight",
           "quantize the weight with nf4::quantize first");
  at::Tensor out = at::empty(q.shape, dtype);
  dequantize_to(q, out);
  return out;
}

namespace {

// Keeps the quantized weights alive in the autograd graph (saved_data holds IValues only).
struct WeightsHolder : torch::CustomClassHolder {
  std::vector<std::shared_ptr<const Quantized>> ws;
};

// A dense buffer per thread and dtype, reused by every projection: a fresh allocation of a 100+ MB weight
// costs more in page faults than dequantizing into it (measured: 4096x4096 fp32 ~15 ms vs ~5 ms). It
// keeps the largest fused weight seen (e.g. gate+up) alive for the thread's lifetime. Safe because the
// dense W never escapes forward or backward: it is not saved, and CPU GEMMs finish before we return.
at::Tensor workspace(int64_t numel, at::ScalarType dtype) {
  thread_local at::Tensor buffers[2];
  at::Tensor& b = buffers[dtype == at::kFloat ? 0 : 1];
  if (!b.defined() || b.numel() < numel) {
    b = at::Tensor();  // free the smaller one first
    b = at::empty({numel}, dtype);
  }
  return b.narrow(0, 0, numel);
}

// W = cat(dequantize(ws), dim 0) in `dtype`, written in place into one [sum_out, in] buffer.
at::Tensor fused_weight(const std::vector<std::shared_ptr<const Quantized>>& ws, int64_t sum_out, int64_t in,
                        at::ScalarType dtype) {
  at::Tensor w = workspace(sum_out * in, dtype).view({sum_out, in});
  int64_t row = 0;
  for (const auto& q : ws) {
    at::Tensor part = w.narrow(0, row, q->shape[0]);  // contiguous: whole rows of a row-major buffer
    dequantize_to(*q, part);
    row += q->shape[0];
  }
  return w;
}

struct Nf4Linear : torch::autograd::Function<Nf4Linear> {
  // bias is an optional: LibTorch 1.13's Function cannot take an undefined tensor as an input.
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const c10::optional<at::Tensor>& bias,
                            const std::vector<std::shared_ptr<const Quantized>>& ws, int64_t sum_out,
                            at::ScalarType compute) {
    // `compute` is authoritative: autocast must not re-cast the GEMM behind our back.
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const int64_t in = x.size(-1);
    at::Tensor w = fused_weight(ws, sum_out, in, compute).to(x.device());
    at::Tensor b = bias.has_value() ? bias->to(compute) : at::Tensor();
    at::Tensor y = at::linear(x.to(compute), w, b);

    auto holder = c10::make_intrusive<WeightsHolder>();
    holder->ws = ws;
    ctx->saved_data["ws"] = c10::IValue::make_capsule(std::move(holder));
    ctx->saved_data["in"] = in;
    ctx->saved_data["sum_out"] = sum_out;
    ctx->saved_data["compute"] = static_cast<int64_t>(compute);
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    ctx->saved_data["has_bias"] = bias.has_value();
    ctx->saved_data["bias_dtype"] = static_cast<int64_t>(bias.has_value() ? bias->scalar_type() : compute);
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const auto compute = static_cast<at::ScalarType>(ctx->saved_data["compute"].toInt());
    const int64_t in = ctx->saved_data["in"].toInt(), sum_out = ctx->saved_data["sum_out"].toInt();
    at::Tensor gy = grads[0].to(compute).contiguous();  // e.g. the expanded grad of a sum(): BLAS wants dense
    at::Tensor gx, gb;
    if (ctx->needs_input_grad(0)) {
      const auto holder = c10::static_intrusive_pointer_cast<WeightsHolder>(ctx->saved_data["ws"].toCapsule());
      at::Tensor w = fused_weight(holder->ws, sum_out, in, compute).to(gy.device());
      gx = at::matmul(gy, w).to(static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt()));
    }
    // needs_input_grad counts tensor inputs only: the bias is tensor input 1 when it was given.
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(1)) {
      gb = gy.reshape({-1, sum_out}).sum(0).to(static_cast<at::ScalarType>(ctx->saved_data["bias_dtype"].toInt()));
    }
    // One entry per forward argument: x, bias, ws, sum_out, compute (the last three are not tensors).
    return {gx, gb, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor linear(const at::Tensor& x, const std::vector<std::shared_ptr<const Quantized>>& ws, const at::Tensor& bias,
                  at::ScalarType compute) {
  ST_CHECK(compute == at::kFloat || compute == at::kBFloat16,
           "NF4 linear: compute dtype " + std::string(c10::toString(compute)) + " is not supported",
           "use --compute-dtype fp32 or bf16");
  ST_CHECK(!ws.empty(), "NF4 linear: no weights given", "pass at least one quantized weight");
  ST_CHECK(x.defined() && x.dim() >= 1, "NF4 linear: the input is undefined or a scalar", "pass x of shape [..., in]");
  const int64_t in = x.size(-1);
  int64_t sum_out = 0;
  std::string shapes;
  for (size_t i = 0; i < ws.size(); ++i) {
    ST_CHECK(ws[i] != nullptr, "NF4 linear: weight " + std::to_string(i) + " is null", "pass quantized weights");
    shapes += (i ? " + " : "") + shape_str(ws[i]->shape);
  }
  for (size_t i = 0; i < ws.size(); ++i) {
    const auto& s = ws[i]->shape;
    ST_CHECK(s.size() == 2 && s[1] == in,
             "NF4 linear: input " + shape_str(x.sizes()) + " does not fit weight " + std::to_string(i) + " of " +
                 shapes + " (each weight must be [out, " + std::to_string(in) + "])",
             "the quantized weights and the layer input disagree; check the model config against the checkpoint");
    sum_out += s[0];
  }
  if (bias.defined()) {
    ST_CHECK(bias.dim() == 1 && bias.size(0) == sum_out,
             "NF4 linear: bias " + shape_str(bias.sizes()) + " does not fit the weights " + shapes + " (expected [" +
                 std::to_string(sum_out) + "])",
             "the bias must have one entry per output row of the fused weights");
  }
  c10::optional<at::Tensor> b;
  if (bias.defined()) b = bias;
  return Nf4Linear::apply(x, b, ws, sum_out, compute);
}

}  // namespace shardtune::model::nf4
