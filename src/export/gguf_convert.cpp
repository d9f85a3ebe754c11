// float32 -> F16 / BF16 / Q8_0 encodings for GGUF tensors (see include/shardtune/export/gguf_convert.h).
#include "shardtune/export/gguf_convert.h"

#include <cmath>
#include <cstring>

#include "shardtune/core/error.h"

namespace shardtune::gguf {
namespace {

uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
float float_of(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

constexpr size_t kQ8Block = 32;
constexpr size_t kQ8BlockBytes = 34;  // fp16 scale + 32 int8 (ggml block_q8_0)

}  // namespace

uint16_t f32_to_f16(float x) {
  const uint32_t u = bits_of(x);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t abs = u & 0x7fffffffu;
  if (abs >= 0x7f800000u) return static_cast<uint16_t>(sign | (abs > 0x7f800000u ? 0x7e00u : 0x7c00u));  // NaN, inf
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: overflow to inf
  if (abs < 0x38800000u) {
    // Result is an F16 subnormal (or zero): value / 2^-24 rounded to nearest even.
    const float scaled = float_of(abs) * 16777216.0f;  // exact: multiply by 2^24
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(scaled)));
  }
  // Normal: rebias the exponent (127 -> 15) and round the 23-bit mantissa to 10 bits, nearest even.
  uint32_t h = ((abs >> 13) - ((127u - 15u) << 10));
  const uint32_t rest = abs & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // carries into the exponent correctly
  return static_cast<uint16_t>(sign | h);
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = (static_cast<uint32_t>(h) & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0) {
    const float v = static_cast<float>(man) / 16777216.0f;  // man * 2^-24
    return sign ? -v : v;
  }
  if (exp == 31) return float_of(sign | 0x7f800000u | (man << 13));
  return float_of(sign | ((exp + 127u - 15u) << 23) | (man << 13));
}

uint16_t f32_to_bf16(float x) {
  uint32_t u = bits_of(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

void encode(TensorType type, const float* src, size_t n, void* dst) {
  switch (type) {
    case TensorType::F32: std::memcpy(dst, src, n * 4); return;
    case TensorType::F16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
      return;
    }
    case TensorType::BF16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
      return;
    }
    case TensorType::Q8_0: {
      ST_CHECK(n % kQ8Block == 0, "Q8_0 needs a multiple of 32 values, got " + std::to_string(n));
      auto* out = static_cast<unsigned char*>(dst);
      for (size_t b = 0; b < n / kQ8Block; ++b, src += kQ8Block, out += kQ8BlockBytes) {
        float amax = 0.0f;
        for (size_t i = 0; i < kQ8Block; ++i) amax = std::fmax(amax, std::fabs(src[i]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        const uint16_t dh = f32_to_f16(d);
        std::memcpy(out, &dh, 2);
        for (size_t i = 0; i < kQ8Block; ++i) {
          const float q = std::round(src[i] * id);  // half away from zero, as ggml's roundf
          out[2 + i] = static_cast<unsigned char>(static_cast<int8_t>(std::fmax(-127.0f, std::fmin(127.0f, q))));
        }
      }
      return;
    }
  }
  ST_FAIL("unknown GGUF tensor type " + std::to_string(static_cast<uint32_t>(type)));
}

void decode(TensorType type, const void* src, size_t n, float* dst) {
  switch (type) {
    case TensorType::F32: std::memcpy(dst, src, n * 4); return;
    case TensorType::F16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
      return;
    }
    case TensorType::BF16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = float_of(static_cast<uint32_t>(s[i]) << 16);
      return;
    }
    case TensorType::Q8_0: {
      ST_CHECK(n % kQ8Block == 0, "Q8_0 needs a multiple of 32 values, got " + std::to_string(n));
      const auto* in = static_cast<const unsigned char*>(src);
      for (size_t b = 0; b < n / kQ8Block; ++b, in += kQ8BlockBytes) {
        uint16_t dh;
        std::memcpy(&dh, in, 2);
        const float d = f16_to_f32(dh);
        for (size_t i = 0; i < kQ8Block; ++i) *dst++ = d * static_cast<float>(static_cast<int8_t>(in[2 + i]));
      }
      return;
    }
  }
  ST_FAIL("unknown GGUF tensor type " + std::to_string(static_cast<uint32_t>(type)));
}

}  // namespace shardtune::gguf
