// Writes what nf4::quantize makes of a raw fp32 tensor, as raw little-endian files, for the byte-for-byte
// comparison with tests/model/nf4_reference.py (an independent Python implementation of bitsandbytes).
// usage: nf4_dump IN.f32 ROWS COLS OUT_DIR
//   OUT_DIR/code_table.f32, dynamic_map.f32
//   OUT_DIR/{dq,bf16}/packed.u8 absmax_q.u8 absmax_scale.f32 offset.f32 dequant.f32  (double quantization;
//                      bf16: the input rounded to bf16 first)
//   OUT_DIR/plain/packed.u8 absmax.f32 dequant.f32                                    (no double quantization)
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "shardtune/core/error.h"
#include "shardtune/core/hw.h"
#include "shardtune/model/nf4.h"

namespace nf4 = shardtune::model::nf4;
namespace stdfs = std::filesystem;

namespace {

void write_raw(const stdfs::path& p, const void* data, size_t bytes) {
  std::ofstream f(p, std::ios::binary);
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  ST_CHECK(f.good(), p.string() + ": write failed", "check the output folder");
}

void write_tensor(const stdfs::path& p, const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  write_raw(p, c.data_ptr(), c.nbytes());
}

void dump(const at::Tensor& w, bool double_quant, const stdfs::path& dir) {
  stdfs::create_directories(dir);
  const nf4::Quantized q = nf4::quantize(w, double_quant, "nf4_dump input");
  write_tensor(dir / "packed.u8", q.packed);
  if (double_quant) {
    write_tensor(dir / "absmax_q.u8", q.absmax_q);
    write_tensor(dir / "absmax_scale.f32", q.absmax_scale);
    write_raw(dir / "offset.f32", &q.absmax_offset, sizeof(float));
  } else {
    write_tensor(dir / "absmax.f32", q.absmax);
  }
  write_tensor(dir / "dequant.f32", nf4::dequantize(q, at::kFloat));
}

int body(int argc, char** argv) {
  ST_CHECK(argc == 5, "usage: nf4_dump IN.f32 ROWS COLS OUT_DIR", "see tests/model/nf4_reference.py");
  const stdfs::path in = argv[1], out = argv[4];
  const int64_t rows = std::stoll(argv[2]), cols = std::stoll(argv[3]);
  ST_CHECK(stdfs::exists(in) && static_cast<int64_t>(stdfs::file_size(in)) == rows * cols * 4,
           in.string() + ": missing or not " + std::to_string(rows) + " x " + std::to_string(cols) + " fp32 values",
           "write the input with nf4_reference.py");
  at::Tensor w = at::empty({rows, cols}, at::kFloat);
  std::ifstream f(in, std::ios::binary);
  f.read(static_cast<char*>(w.data_ptr()), static_cast<std::streamsize>(w.nbytes()));
  ST_CHECK(f.good(), in.string() + ": read failed", "check the file");

  stdfs::create_directories(out);
  write_raw(out / "code_table.f32", nf4::code_table().data(), 16 * sizeof(float));
  write_raw(out / "dynamic_map.f32", nf4::dynamic_map().data(), 256 * sizeof(float));
  dump(w, true, out / "dq");
  dump(w, false, out / "plain");
  dump(w.to(at::kBFloat16), true, out / "bf16");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  shardtune::hw::select_blas_core(argv);
  return shardtune::run_guarded("nf4_dump", body, argc, argv);
}
