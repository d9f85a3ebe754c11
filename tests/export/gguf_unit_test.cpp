// GGUF writer/reader round trip (keys, arrays, tensors, offsets, alignment), the streamed-byte checks, the
// temporary-name + rename contract, corrupt/truncated files detected by read_info, and the F16/BF16/Q8_0
// encodings against hand-computed values.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "shardtune/core/error.h"
#include "shardtune/export/gguf.h"
#include "shardtune/export/gguf_convert.h"

namespace fs = std::filesystem;
using namespace shardtune::gguf;

namespace {

fs::path temp_dir() {
  fs::path d = fs::temp_directory_path() / ("st_gguf_" + std::to_string(::getpid()) + "_" +
                                            ::testing::UnitTest::GetInstance()->current_test_info()->name());
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

TensorInfo f32_tensor(const std::string& name, std::vector<uint64_t> ne, float base) {
  uint64_t n = 1;
  for (auto d : ne) n *= d;
  TensorInfo t;
  t.name = name;
  t.ne = std::move(ne);
  t.type = TensorType::F32;
  t.bytes = n * 4;
  t.produce = [n, base](const ByteSink& out) {
    for (uint64_t i = 0; i < n; ++i) {  // one value per call: the sink must accept any chunking
      const float v = base + static_cast<float>(i);
      out(&v, 4);
    }
  };
  return t;
}

Writer sample_writer() {
  Writer w;
  w.set("general.architecture", std::string("llama"));
  w.set("llama.block_count", uint32_t{2});
  w.set("llama.rope.freq_base", 10000.0f);
  w.set("tokenizer.ggml.add_bos_token", true);
  w.set("tokenizer.ggml.tokens", std::vector<std::string>{"<unk>", "a", "\xe2\x96\x81"});
  w.set("tokenizer.ggml.scores", std::vector<float>{0.0f, -1.5f, -2.0f});
  w.set("tokenizer.ggml.token_type", std::vector<int32_t>{2, 1, 1});
  w.set("some.u64", uint64_t{1} << 40);
  w.set("llama.block_count", uint32_t{3});  // replaces, keeps position
  w.add_tensor(f32_tensor("token_embd.weight", {5, 3}, 0.0f));  // 60 bytes: padded to 64
  w.add_tensor(f32_tensor("output_norm.weight", {5}, 100.0f));
  return w;
}

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void write_all(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(s.data(), static_cast<std::streamsize>(s.size()));
}

}  // namespace

TEST(GgufWriter, RoundTripKeysTensorsOffsets) {
  const fs::path dir = temp_dir();
  const fs::path file = dir / "m.gguf";
  size_t progress_calls = 0;
  const uint64_t n = sample_writer().write(file, false, [&](size_t i, size_t total) {
    EXPECT_EQ(total, 2u);
    EXPECT_EQ(i, ++progress_calls);
  });
  EXPECT_EQ(progress_calls, 2u);
  EXPECT_EQ(n, fs::file_size(file));
  EXPECT_FALSE(fs::exists(dir / "m.gguf.partial"));

  const FileInfo info = read_info(file);
  EXPECT_EQ(info.version, 3u);
  EXPECT_EQ(info.alignment, 32u);
  ASSERT_EQ(info.kv.size(), 8u);
  EXPECT_EQ(info.kv[0].first, "general.architecture");
  EXPECT_EQ(std::get<std::string>(info.kv[0].second), "llama");
  EXPECT_EQ(info.kv[1].first, "llama.block_count");
  EXPECT_EQ(std::get<uint32_t>(info.kv[1].second), 3u);
  EXPECT_EQ(std::get<float>(info.kv[2].second), 10000.0f);
  EXPECT_EQ(std::get<bool>(info.kv[3].second), true);
  EXPECT_EQ(std::get<std::vector<std::string>>(info.kv[4].second)[2], "\xe2\x96\x81");
  EXPECT_EQ(std::get<std::vector<float>>(info.kv[5].second)[1], -1.5f);
  EXPECT_EQ(std::get<std::vector<int32_t>>(info.kv[6].second), (std::vector<int32_t>{2, 1, 1}));
  EXPECT_EQ(std::get<uint64_t>(info.kv[7].second), uint64_t{1} << 40);

  ASSERT_EQ(info.tensors.size(), 2u);
  EXPECT_EQ(info.data_offset % 32, 0u);
  EXPECT_EQ(info.tensors[0].name, "token_embd.weight");
  EXPECT_EQ(info.tensors[0].ne, (std::vector<uint64_t>{5, 3}));
  EXPECT_EQ(info.tensors[0].type, 0u);
  EXPECT_EQ(info.tensors[0].bytes, 60u);
  EXPECT_EQ(info.tensors[0].offset, info.data_offset);
  EXPECT_EQ(info.tensors[1].offset, info.data_offset + 64);  // padded to the alignment
  EXPECT_EQ(info.file_size, info.data_offset + 64 + 32);     // the last tensor is padded too

  // The bytes at the offsets are the produced values.
  const std::string raw = read_all(file);
  float v[2];
  std::memcpy(v, raw.data() + info.tensors[0].offset + 14 * 4, 4);
  std::memcpy(v + 1, raw.data() + info.tensors[1].offset + 4 * 4, 4);
  EXPECT_EQ(v[0], 14.0f);
  EXPECT_EQ(v[1], 104.0f);
  EXPECT_EQ(raw.substr(0, 4), "GGUF");
  fs::remove_all(dir);
}

TEST(GgufWriter, OtherAlignmentIsWrittenAndHonoured) {
  const fs::path dir = temp_dir();
  Writer w = sample_writer();
  w.alignment = 64;
  w.write(dir / "a.gguf");
  const FileInfo info = read_info(dir / "a.gguf");
  EXPECT_EQ(info.alignment, 64u);
  EXPECT_EQ(std::get<uint32_t>(info.kv.back().second), 64u);
  EXPECT_EQ(info.data_offset % 64, 0u);
  EXPECT_EQ(info.tensors[1].offset - info.tensors[0].offset, 64u);
  fs::remove_all(dir);
}

TEST(GgufWriter, RefusesOverwriteAndBadTensors) {
  const fs::path dir = temp_dir();
  write_all(dir / "x.gguf", "keep me");
  EXPECT_THROW(sample_writer().write(dir / "x.gguf"), shardtune::Error);
  EXPECT_EQ(read_all(dir / "x.gguf"), "keep me");
  sample_writer().write(dir / "x.gguf", /*overwrite=*/true);
  EXPECT_EQ(read_info(dir / "x.gguf").tensors.size(), 2u);

  Writer w;
  EXPECT_THROW(w.add_tensor(f32_tensor(std::string(64, 'n'), {4}, 0)), shardtune::Error);  // name too long
  w.add_tensor(f32_tensor(std::string(63, 'n'), {4}, 0));
  EXPECT_THROW(w.add_tensor(f32_tensor(std::string(63, 'n'), {4}, 0)), shardtune::Error);  // duplicate
  TensorInfo bad = f32_tensor("b", {4}, 0);
  bad.bytes = 12;
  EXPECT_THROW(w.add_tensor(bad), shardtune::Error);  // declared size wrong
  TensorInfo q;
  q.name = "q";
  q.ne = {48, 2};  // 48 is not a multiple of the Q8_0 block
  q.type = TensorType::Q8_0;
  q.bytes = 0;
  q.produce = [](const ByteSink&) {};
  EXPECT_THROW(w.add_tensor(q), shardtune::Error);
  EXPECT_THROW(w.add_tensor(f32_tensor("five_dims", {1, 1, 1, 1, 1}, 0)), shardtune::Error);
  fs::remove_all(dir);
}

TEST(GgufWriter, ProducerByteCountMismatchLeavesNothing) {
  const fs::path dir = temp_dir();
  for (int extra : {-4, 4}) {
    Writer w;
    TensorInfo t = f32_tensor("t", {4}, 0);
    t.produce = [extra](const ByteSink& out) {
      std::vector<char> b(static_cast<size_t>(16 + extra), 0);
      out(b.data(), b.size());
    };
    w.add_tensor(t);
    try {
      w.write(dir / "m.gguf");
      ADD_FAILURE() << "expected an Error";
    } catch (const shardtune::Error& e) {
      EXPECT_NE(std::string(e.what()).find("'t'"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(dir / "m.gguf"));
    EXPECT_FALSE(fs::exists(dir / "m.gguf.partial"));
  }
  fs::remove_all(dir);
}

TEST(GgufReader, DetectsTruncationAndCorruptOffsets) {
  const fs::path dir = temp_dir();
  const fs::path good = dir / "g.gguf";
  sample_writer().write(good);
  const std::string raw = read_all(good);
  const FileInfo info = read_info(good);

  auto expect_error = [&](const std::string& bytes, const std::string& needle) {
    const fs::path bad = dir / "bad.gguf";
    write_all(bad, bytes);
    try {
      read_info(bad);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const shardtune::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  // Cut inside the last tensor's data, inside the tensor infos, inside the kv section.
  expect_error(raw.substr(0, info.tensors[1].offset + 8), "truncated");
  expect_error(raw.substr(0, info.data_offset - 20), "truncated");
  expect_error(raw.substr(0, 60), "truncated");
  expect_error("GGUX" + raw.substr(4), "not a GGUF file");

  // Locate the offset field by its value: 64 as uint64, right after "output_norm.weight" + dims + type.
  const std::string name = "output_norm.weight";
  const size_t at = raw.find(name);
  ASSERT_NE(at, std::string::npos);
  const size_t off_field = at + name.size() + 4 /*n_dims*/ + 8 /*ne0*/ + 4 /*type*/;
  uint64_t off;
  std::memcpy(&off, raw.data() + off_field, 8);
  ASSERT_EQ(off, 64u);
  std::string moved = raw;
  const uint64_t wrong = 96;
  std::memcpy(moved.data() + off_field, &wrong, 8);
  expect_error(moved, "expected 64");
  const uint64_t huge = uint64_t{1} << 50;
  std::memcpy(moved.data() + off_field, &huge, 8);
  expect_error(moved, "output_norm.weight");

  // A corrupt string length must not allocate: it is checked against the file size.
  std::string badlen = raw;
  const uint64_t big = uint64_t{1} << 60;
  std::memcpy(badlen.data() + 24, &big, 8);  // the first key's length
  expect_error(badlen, "truncated or corrupt");
  // An absurd tensor count.
  std::string badcount = raw;
  std::memcpy(badcount.data() + 8, &big, 8);
  expect_error(badcount, "tensor infos");
  fs::remove_all(dir);
}

TEST(GgufConvert, HalfAndBfloatRounding) {
  EXPECT_EQ(f32_to_f16(0.0f), 0x0000);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(-2.0f), 0xc000);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);   // rounds up to inf
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);  // tie -> even (0)
  EXPECT_EQ(f32_to_f16(std::ldexp(3.0f, -25)), 0x0002);  // tie -> even (2)
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie -> even
  EXPECT_EQ(f32_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie -> even (up)
  EXPECT_EQ(f32_to_f16(INFINITY), 0x7c00);
  EXPECT_EQ(f32_to_f16(NAN) & 0x7c00, 0x7c00);
  EXPECT_NE(f32_to_f16(NAN) & 0x03ff, 0);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  for (int i = 0; i < 10000; ++i) {
    const float x = nd(rng);
    const float back = f16_to_f32(f32_to_f16(x));
    EXPECT_LE(std::fabs(back - x), std::fabs(x) * std::ldexp(1.0f, -11) + std::ldexp(1.0f, -25)) << x;
    EXPECT_EQ(f32_to_f16(back), f32_to_f16(x));
  }
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(1.00390625f), 0x3f80);  // 1 + 2^-8: tie -> even
  EXPECT_EQ(f32_to_bf16(1.01171875f), 0x3f82);  // 1 + 3*2^-8: tie -> even (up)
  EXPECT_EQ(f32_to_bf16(-3.0f), 0xc040);
}

TEST(GgufConvert, Q8_0BlockLayout) {
  std::vector<float> x(64);
  for (int i = 0; i < 32; ++i) x[i] = static_cast<float>(i - 16) * 0.5f;  // amax 8 -> d = 8/127
  for (int i = 32; i < 64; ++i) x[i] = 0.0f;                              // all-zero block: d = 0, q = 0
  std::vector<unsigned char> q(tensor_bytes(TensorType::Q8_0, 64));
  ASSERT_EQ(q.size(), 68u);
  encode(TensorType::Q8_0, x.data(), 64, q.data());
  uint16_t d0;
  std::memcpy(&d0, q.data(), 2);
  EXPECT_EQ(d0, f32_to_f16(8.0f / 127.0f));
  EXPECT_EQ(static_cast<int8_t>(q[2 + 0]), -127);  // -8 / d
  EXPECT_EQ(static_cast<int8_t>(q[2 + 16]), 0);
  EXPECT_EQ(static_cast<int8_t>(q[2 + 17]), static_cast<int8_t>(std::round(0.5f * 127.0f / 8.0f)));  // 7.9375 -> 8
  for (int i = 34; i < 68; ++i) EXPECT_EQ(q[i], 0);
  std::vector<float> back(64);
  decode(TensorType::Q8_0, q.data(), 64, back.data());
  for (int i = 0; i < 64; ++i) EXPECT_NEAR(back[i], x[i], 8.0f / 127.0f / 2 + 1e-3f);
  EXPECT_THROW(encode(TensorType::Q8_0, x.data(), 40, q.data()), shardtune::Error);
  EXPECT_EQ(tensor_bytes(TensorType::BF16, 10), 20u);
  EXPECT_EQ(tensor_bytes(TensorType::F16, 10), 20u);
  EXPECT_EQ(tensor_bytes(TensorType::F32, 10), 40u);
  EXPECT_STREQ(raw_type_name(12), "Q4_K");
}
