// NF4 unit tests: code table vs the QLoRA paper, dynamic map, quantize -> dequantize error bound,
// edge cases and errors, storage bytes, and the fused nf4::linear forward/backward vs a dense reference.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <cmath>
#include <functional>

#include "shardtune/core/error.h"
#include "shardtune/model/nf4.h"
#include "shardtune/model/runtime.h"

namespace nf4 = shardtune::model::nf4;
namespace sm = shardtune::model;

namespace {

// QLoRA paper (Dettmers et al. 2023), Appendix E, "NormalFloat 4-bit data type", as printed there.
const double kPaperNf4[16] = {-1.0,
                              -0.6961928009986877,
                              -0.5250730514526367,
                              -0.39491748809814453,
                              -0.28444138169288635,
                              -0.18477343022823334,
                              -0.09105003625154495,
                              0.0,
                              0.07958029955625534,
                              0.16093020141124725,
                              0.24611230194568634,
                              0.33791524171829224,
                              0.44070982933044434,
                              0.5626170039176941,
                              0.7229568362236023,
                              1.0};

// Largest distance from a point of [-1, 1] to its nearest table value (half the largest gap, or an end).
template <size_t N>
double max_nearest_error(const std::array<float, N>& t) {
  double g = std::max(double(t.front()) + 1.0, 1.0 - double(t.back()));
  for (size_t i = 0; i + 1 < N; ++i) g = std::max(g, (double(t[i + 1]) - double(t[i])) / 2);
  return g;
}

// A weight whose rows have very different scales, so the absmax values (and the double quantization
// of them) spread over several decades.
at::Tensor spread_weight(int64_t rows, int64_t cols, uint64_t seed) {
  at::manual_seed(seed);
  at::Tensor w = at::randn({rows, cols});
  return w * at::exp(at::randn({rows, 1}) * 1.5) * 0.02;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const shardtune::Error& e) {
    return e.what();
  }
  return "";
}

// Checks |w - deq| <= bound per 64-block (see the derivation in RoundTripWithinNf4BoundPerBlock).
void expect_within_bound(const at::Tensor& w, const nf4::Quantized& q) {
  const double g4 = max_nearest_error(nf4::code_table());
  const double gd = max_nearest_error(nf4::dynamic_map());
  const at::Tensor deq = nf4::dequantize(q).reshape({-1, nf4::kBlock});
  const at::Tensor wb = w.reshape({-1, nf4::kBlock});
  const at::Tensor a = std::get<0>(wb.abs().max(1));                  // exact absmax per block
  const at::Tensor err = std::get<0>((wb - deq).abs().max(1));       // worst element per block
  at::Tensor dq_term = at::zeros_like(a);
  if (q.double_quant) {
    // S (the 256-block scale) of every block's absmax, repeated per block.
    dq_term = q.absmax_scale.repeat_interleave(nf4::kAbsmaxBlock).slice(0, 0, a.numel()) * gd;
  }
  const float off = q.double_quant ? std::fabs(q.absmax_offset) : 0.0f;
  const at::Tensor bound = a * g4 + dq_term + (a + off + dq_term) * 1e-6 + 1e-12;
  const at::Tensor bad = (err > bound);
  EXPECT_EQ(bad.sum().item<int64_t>(), 0) << "worst excess "
                                          << (err - bound).max().item<float>() << " (double_quant=" << q.double_quant
                                          << ")";
}

}  // namespace

TEST(Nf4, CodeTableEqualsQloraPaper) {
  const auto& t = nf4::code_table();
  for (int i = 0; i < 16; ++i) EXPECT_EQ(t[i], static_cast<float>(kPaperNf4[i])) << "code " << i;
  EXPECT_EQ(t[7], 0.0f);  // the code all-zero blocks use
}

TEST(Nf4, DynamicMapIsSignedEightBitMap) {
  const auto& m = nf4::dynamic_map();
  for (size_t i = 0; i + 1 < m.size(); ++i) EXPECT_LT(m[i], m[i + 1]) << "not strictly ascending at " << i;
  EXPECT_EQ(m[127], 0.0f);
  EXPECT_EQ(m[255], 1.0f);
  EXPECT_GE(m[0], -1.0f);
  // Smallest magnitude: 10^-6 times the midpoint of linspace(0.1, 1, 2) = 0.55e-6; largest below 1:
  // the last midpoint of linspace(0.1, 1, 65) = 1 - 0.9/128.
  EXPECT_NEAR(m[128], 0.55e-6, 1e-12);
  EXPECT_NEAR(m[254], 1.0 - 0.9 / 128, 1e-7);
  EXPECT_NEAR(m[0], -(1.0 - 0.9 / 128), 1e-7);
}

// Bound. In a block with exact absmax a, s = w / a lies in [-1, 1] and its nearest NF4 value c is at most
// g4 = max_nearest_error(code_table) away, so |w - c a| <= a g4 (plus fp32 rounding of w * (1/a)).
// With double quantization dequantize uses a' instead of a: v = a - offset is quantized as
// d[q] * S (S = max |v| over its 256-block, d the dynamic map), so |a - a'| <= S gd with
// gd = max_nearest_error(dynamic_map), and |c| <= 1 gives |w - c a'| <= a g4 + S gd.
// Allowed slack for fp32 rounding: 1e-6 (a + |offset| + S gd).
TEST(Nf4, RoundTripWithinNf4BoundPerBlock) {
  const at::Tensor w = spread_weight(96, 320, 1);  // 480 blocks -> 2 scale blocks, the second partial
  for (bool dq : {true, false}) {
    const nf4::Quantized q = nf4::quantize(w, dq, "w");
    EXPECT_EQ(q.numel, w.numel());
    EXPECT_EQ(q.shape, std::vector<int64_t>({96, 320}));
    EXPECT_EQ(q.packed.numel(), w.numel() / 2);
    if (dq) {
      EXPECT_EQ(q.absmax_q.numel(), 480);
      EXPECT_EQ(q.absmax_scale.numel(), 2);
      EXPECT_FALSE(q.absmax.defined() && q.absmax.numel() > 0);
    } else {
      EXPECT_EQ(q.absmax.numel(), 480);
    }
    expect_within_bound(w, q);
  }
  // Without double quantization the code is the nearest NF4 value of w / absmax (not just "close").
  const nf4::Quantized q = nf4::quantize(w, false, "w");
  const at::Tensor wb = w.reshape({-1, nf4::kBlock});
  const at::Tensor s = wb / std::get<0>(wb.abs().max(1, true));
  const at::Tensor chosen = nf4::dequantize(q).reshape({-1, nf4::kBlock}) / q.absmax.unsqueeze(1);
  at::Tensor table = at::empty({16});
  for (int i = 0; i < 16; ++i) table[i] = nf4::code_table()[i];
  const at::Tensor best = std::get<0>((s.unsqueeze(-1) - table).abs().min(-1));
  EXPECT_LE(((s - chosen).abs() - best).max().item<float>(), 1e-6f);
}

TEST(Nf4, HighNibbleHoldsFirstElement) {
  // Block [-1, 1, 0, ...]: absmax 1, codes 0 and 15, then 7s: first byte 0x0F, the rest 0x77.
  at::Tensor w = at::zeros({64});
  w[0] = -1.0f;
  w[1] = 1.0f;
  const nf4::Quantized q = nf4::quantize(w, false, "w");
  const uint8_t* p = q.packed.data_ptr<uint8_t>();
  EXPECT_EQ(p[0], 0x0F);
  for (int i = 1; i < 32; ++i) EXPECT_EQ(p[i], 0x77) << i;
  EXPECT_TRUE(at::equal(nf4::dequantize(q), w));
}

TEST(Nf4, AllZeroBlockDequantizesToZero) {
  at::Tensor w = spread_weight(4, 256, 2);  // 16 blocks
  w.view({-1, 64})[3].zero_();
  for (bool dq : {true, false}) {
    const nf4::Quantized q = nf4::quantize(w, dq, "w");
    const uint8_t* p = q.packed.data_ptr<uint8_t>() + 3 * 32;
    for (int i = 0; i < 32; ++i) EXPECT_EQ(p[i], 0x77);
    const at::Tensor deq = nf4::dequantize(q).view({-1, 64});
    EXPECT_EQ(deq[3].abs().max().item<float>(), 0.0f);
    expect_within_bound(w, q);
  }
  // An all-zero weight: every absmax is 0, so the offset and the second-level scale are 0 too.
  const nf4::Quantized z = nf4::quantize(at::zeros({2, 64}), true, "zeros");
  EXPECT_EQ(z.absmax_offset, 0.0f);
  EXPECT_EQ(z.absmax_scale.item<float>(), 0.0f);
  EXPECT_TRUE(at::equal(nf4::dequantize(z), at::zeros({2, 64})));
  EXPECT_TRUE(at::all(at::isfinite(z.absmax_fp32())).item<bool>());
}

TEST(Nf4, Bf16InputAndOutput) {
  const at::Tensor w = spread_weight(8, 128, 3).to(at::kBFloat16);
  const nf4::Quantized qb = nf4::quantize(w, true, "w");
  const nf4::Quantized qf = nf4::quantize(w.to(at::kFloat), true, "w");  // bf16 -> fp32 is exact
  EXPECT_TRUE(at::equal(qb.packed, qf.packed));
  EXPECT_TRUE(at::equal(qb.absmax_q, qf.absmax_q));
  const at::Tensor d16 = nf4::dequantize(qb, at::kBFloat16);
  EXPECT_EQ(d16.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::equal(d16, nf4::dequantize(qb).to(at::kBFloat16)));  // fp32 product, rounded once
}

TEST(Nf4, ErrorsNameTheTensor) {
  const std::string name = "model.layers.0.mlp.down_proj.weight";
  std::string e = error_of([&] { nf4::quantize(at::ones({10, 10}), true, name); });
  EXPECT_NE(e.find(name), std::string::npos) << e;
  EXPECT_NE(e.find("100 elements"), std::string::npos) << e;
  EXPECT_NE(e.find("64"), std::string::npos) << e;

  at::Tensor w = at::ones({128});
  w[70] = std::nanf("");
  e = error_of([&] { nf4::quantize(w, true, name); });
  EXPECT_NE(e.find(name), std::string::npos) << e;
  EXPECT_NE(e.find("non-finite"), std::string::npos) << e;
  EXPECT_NE(e.find("block 1"), std::string::npos) << e;

  e = error_of([&] { nf4::quantize(at::ones({64}, at::kInt), true, name); });
  EXPECT_NE(e.find(name), std::string::npos) << e;
}

TEST(Nf4, StorageBytesPerParameter) {
  at::manual_seed(4);
  const at::Tensor w = at::randn({4096, 4096});
  const double n = static_cast<double>(w.numel());
  const nf4::Quantized dq = nf4::quantize(w, true, "w");
  const nf4::Quantized plain = nf4::quantize(w, false, "w");
  // n/2 codes + n/64 absmax bytes + 4 bytes per 256 absmax + the fp32 offset.
  EXPECT_EQ(dq.storage_bytes(), w.numel() / 2 + w.numel() / 64 + 4 * (w.numel() / 64 / 256) + 4);
  EXPECT_LE(dq.storage_bytes() / n, 0.53);
  EXPECT_GT(plain.storage_bytes() / n, 0.53);
  EXPECT_EQ(plain.storage_bytes() / n, 0.5625);
}

namespace {

struct LinearCase {
  std::vector<std::shared_ptr<const nf4::Quantized>> ws;
  at::Tensor dense;  // cat(dequantize(ws)), fp32
  at::Tensor bias;
};

LinearCase fused_case() {
  LinearCase c;
  for (auto [out, seed] : {std::pair<int64_t, uint64_t>{24, 11}, {40, 12}}) {
    c.ws.push_back(std::make_shared<const nf4::Quantized>(nf4::quantize(spread_weight(out, 128, seed), true, "w")));
  }
  c.dense = at::cat({nf4::dequantize(*c.ws[0]), nf4::dequantize(*c.ws[1])}, 0);
  at::manual_seed(13);
  c.bias = at::randn({64}).requires_grad_(true);
  return c;
}

}  // namespace

TEST(Nf4, LinearForwardAndGradMatchDenseFp32) {
  LinearCase c = fused_case();
  at::manual_seed(14);
  const at::Tensor x0 = at::randn({2, 3, 128});
  const at::Tensor gy = at::randn({2, 3, 64});

  at::Tensor x = x0.clone().requires_grad_(true);
  at::Tensor y = nf4::linear(x, c.ws, c.bias, at::kFloat);
  ASSERT_EQ(y.sizes(), at::IntArrayRef({2, 3, 64}));
  EXPECT_EQ(y.scalar_type(), at::kFloat);
  (y * gy).sum().backward();

  at::Tensor xr = x0.clone().requires_grad_(true);
  at::Tensor br = c.bias.detach().clone().requires_grad_(true);
  at::Tensor yr = at::matmul(xr, c.dense.t()) + br;  // dense weight: a constant of the graph
  (yr * gy).sum().backward();

  EXPECT_LE((y - yr).abs().max().item<float>(), 1e-6f * yr.abs().max().item<float>());
  EXPECT_LE((x.grad() - xr.grad()).abs().max().item<float>(), 1e-6f * xr.grad().abs().max().item<float>());
  EXPECT_LE((c.bias.grad() - br.grad()).abs().max().item<float>(), 1e-6f * br.grad().abs().max().item<float>());

  // Without bias, and a 2-D input: the same rows.
  at::Tensor y2 = nf4::linear(x0.reshape({6, 128}), c.ws, at::Tensor(), at::kFloat);
  EXPECT_LE((y2 + c.bias.detach() - yr.detach().reshape({6, 64})).abs().max().item<float>(), 1e-5f);
}

TEST(Nf4, LinearBf16ComputeAndAutocast) {
  LinearCase c = fused_case();
  at::manual_seed(15);
  const at::Tensor x0 = at::randn({2, 5, 128});
  const at::Tensor ref = at::matmul(x0, c.dense.t()) + c.bias.detach();
  const float tol = 3e-2f * ref.abs().max().item<float>();

  at::Tensor x = x0.clone().requires_grad_(true);
  at::Tensor y = nf4::linear(x, c.ws, c.bias, at::kBFloat16);
  EXPECT_EQ(y.scalar_type(), at::kBFloat16);
  EXPECT_LE((y.to(at::kFloat) - ref).abs().max().item<float>(), tol);
  y.to(at::kFloat).sum().backward();
  EXPECT_EQ(x.grad().scalar_type(), at::kFloat);
  const at::Tensor gref = c.dense.sum(0).expand({2, 5, 128});
  EXPECT_LE((x.grad() - gref).abs().max().item<float>(), 3e-2f * gref.abs().max().item<float>());
  EXPECT_EQ(c.bias.grad().scalar_type(), at::kFloat);
  EXPECT_LE((c.bias.grad() - 10.0f).abs().max().item<float>(), 1e-2f);

  // As the model calls it: under bf16 autocast with compute = the autocast dtype.
  sm::AutocastGuard guard(at::Device(at::kCPU), sm::Precision::BF16);
  const at::ScalarType compute = sm::autocast_dtype(at::kCPU);
  EXPECT_EQ(compute, at::kBFloat16);
  at::Tensor xa = x0.clone().requires_grad_(true);
  at::Tensor ya = nf4::linear(xa, c.ws, at::Tensor(), compute);
  EXPECT_EQ(ya.scalar_type(), at::kBFloat16);
  ya.to(at::kFloat).sum().backward();
  EXPECT_LE((xa.grad() - gref).abs().max().item<float>(), 3e-2f * gref.abs().max().item<float>());
}

TEST(Nf4, LinearShapeErrorsNameTheShapes) {
  LinearCase c = fused_case();
  std::string e = error_of([&] { nf4::linear(at::randn({2, 100}), c.ws, at::Tensor(), at::kFloat); });
  EXPECT_NE(e.find("[2, 100]"), std::string::npos) << e;
  EXPECT_NE(e.find("[24, 128]"), std::string::npos) << e;
  EXPECT_NE(e.find("[40, 128]"), std::string::npos) << e;
  e = error_of([&] { nf4::linear(at::randn({2, 128}), c.ws, at::randn({63}), at::kFloat); });
  EXPECT_NE(e.find("[63]"), std::string::npos) << e;
  EXPECT_NE(e.find("64"), std::string::npos) << e;
  e = error_of([&] { nf4::linear(at::randn({2, 128}), {}, at::Tensor(), at::kFloat); });
  EXPECT_FALSE(e.empty());
}

// Two NF4 projections chained (the dense buffer is shared per thread: the second forward overwrites the
// first's W, and each backward must recompute its own), with weights of different sizes.
TEST(Nf4, ChainedLinearsRecomputeTheirOwnWeight) {
  const auto a = std::make_shared<const nf4::Quantized>(nf4::quantize(spread_weight(192, 64, 21), true, "a"));
  const auto b = std::make_shared<const nf4::Quantized>(nf4::quantize(spread_weight(32, 192, 22), true, "b"));
  const at::Tensor da = nf4::dequantize(*a), db = nf4::dequantize(*b);
  at::manual_seed(23);
  const at::Tensor x0 = at::randn({3, 4, 64}), gy = at::randn({3, 4, 32});

  at::Tensor x = x0.clone().requires_grad_(true);
  at::Tensor y = nf4::linear(at::tanh(nf4::linear(x, {a}, at::Tensor(), at::kFloat)), {b}, at::Tensor(), at::kFloat);
  (y * gy).sum().backward();

  at::Tensor xr = x0.clone().requires_grad_(true);
  at::Tensor yr = at::matmul(at::tanh(at::matmul(xr, da.t())), db.t());
  (yr * gy).sum().backward();
  EXPECT_LE((y - yr).abs().max().item<float>(), 1e-5f * yr.abs().max().item<float>());
  EXPECT_LE((x.grad() - xr.grad()).abs().max().item<float>(), 1e-5f * xr.grad().abs().max().item<float>());
}
