// float32 -> the GGUF tensor encodings this project writes (F32, F16, BF16, Q8_0), torch-free, one row or
// buffer at a time so a tensor can be streamed. Rounding as ggml / gguf-py do: F16 and BF16 round to
// nearest even; Q8_0 blocks of 32: d = max|x| / 127 stored as F16, q = round-half-away(x / d).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "shardtune/export/gguf.h"

namespace shardtune::gguf {

uint16_t f32_to_f16(float x);
float f16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float x);

// Encodes n values of `src` as `type` into `dst` (tensor_bytes(type, n) bytes; n % 32 == 0 for Q8_0).
void encode(TensorType type, const float* src, size_t n, void* dst);
// Decodes (tests, inspect): dst gets n floats.
void decode(TensorType type, const void* src, size_t n, float* dst);

}  // namespace shardtune::gguf
