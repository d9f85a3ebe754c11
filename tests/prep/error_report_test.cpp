// describe() on library exceptions (c10::Error-style text, std::bad_alloc) and the flat-TOML check of
// --config files, without LibTorch or CLI11: synthetic messages in the exact formats those libraries use.
#include <gtest/gtest.h>

#include <algorithm>
#include <new>
#include <stdexcept>

#include "shardtune/core/cli_config.h"
#include "shardtune/core/error.h"

namespace {

using shardtune::describe;
using shardtune::cli::check_flat_toml;

// c10::Error::what() of LibTorch 1.13: message, then the origin line and one line per frame.
const char* kC10Oom =
    "DefaultCPUAllocator: not enough memory: you tried to allocate 1099511627776 bytes.\n"
    "Exception raised from alloc_cpu at ../c10/core/impl/alloc_cpu.cpp:83 (most recent call first):\n"
    "frame #0: c10::Error::Error(c10::SourceLocation, std::string) + 0x57 (0x7f in libc10.so)\n"
    "frame #1: c10::alloc_cpu(unsigned long) + 0x2f1 (0x7f in libc10.so)\n"
    "frame #2: <unknown function> + 0x1c3d2 (0x7f in libc10.so)\n";

int lines(const std::string& s) { return static_cast<int>(std::count(s.begin(), s.end(), '\n')) + 1; }

TEST(Describe, LibTorchAllocationFailureIsOneLineWithSizeAndHint) {
  const std::string d = describe(std::runtime_error(kC10Oom));
  EXPECT_EQ(d.substr(0, d.find('\n')), "error: out of memory: tried to allocate 1099.51 GB");
  EXPECT_NE(d.find("HINT: "), std::string::npos) << d;
  EXPECT_NE(d.find("--micro-batch"), std::string::npos) << d;
  EXPECT_EQ(d.find("frame #"), std::string::npos) << d;
  EXPECT_EQ(lines(d), 2) << d;
  // The other wording of alloc_cpu (posix_memalign failed).
  const std::string d2 = describe(std::runtime_error(
      "DefaultCPUAllocator: can't allocate memory: you tried to allocate 2500000000 bytes. Error code 12 (Cannot "
      "allocate memory)\nException raised from alloc_cpu at ../c10/core/impl/alloc_cpu.cpp:72 (most recent call "
      "first):\nframe #0: x\n"));
  EXPECT_EQ(d2.substr(0, d2.find('\n')), "error: out of memory: tried to allocate 2.50 GB");
}

TEST(Describe, CudaOutOfMemory) {
  const std::string d = describe(std::runtime_error(
      "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB total capacity; 75.01 GiB already allocated)"));
  EXPECT_EQ(d.substr(0, d.find('\n')), "error: out of memory: tried to allocate 2.00 GiB (GPU)");
}

TEST(Describe, BadAlloc) {
  const std::string d = describe(std::bad_alloc());
  EXPECT_EQ(d.rfind("error: out of memory", 0), 0u) << d;
  EXPECT_NE(d.find("HINT"), std::string::npos);
  EXPECT_EQ(lines(d), 2) << d;
}

TEST(Describe, OtherLibTorchErrorsKeepTheMessageAndDropTheBacktrace) {
  const std::string d = describe(std::runtime_error(
      "The size of tensor a (3) must match the size of tensor b (4) at non-singleton dimension 1\n"
      "Exception raised from infer_size_impl at ../aten/src/ATen/ExpandUtils.cpp:35 (most recent call first):\n"
      "frame #0: c10::Error::Error(c10::SourceLocation, std::string) + 0x57\nframe #1: at::infer_size + 0x1\n"));
  EXPECT_EQ(d, "error: The size of tensor a (3) must match the size of tensor b (4) at non-singleton dimension 1\n"
               "  (raised in LibTorch at ../aten/src/ATen/ExpandUtils.cpp:35)");
  // Our own errors are unchanged; a plain exception is printed as it is.
  EXPECT_EQ(describe(std::runtime_error("plain")), "error: plain");
  EXPECT_EQ(describe(shardtune::Error("msg", "do this", "x.cpp:1")), "error: msg\n  ---> HINT: do this\n  (raised at x.cpp:1)");
}

const std::vector<std::string> kKeys = {"global-batch", "micro-batch", "lr", "pack", "precision", "input"};

TEST(FlatToml, AcceptsTheDocumentedSubset) {
  const auto c = check_flat_toml(
      "# comment\n\nglobal-batch = 32\nlr = 2e-5   # trailing comment\npack = true\nprecision = \"bf16\"\n"
      "input = [\"a.jsonl\", 'b.jsonl']  # two files\n\nmicro-batch=4\r\n",
      kKeys);
  ASSERT_FALSE(c.problem) << c.problem->line << ": " << c.problem->message;
  ASSERT_EQ(c.keys.size(), 6u);
  EXPECT_EQ(c.keys[3].key, "precision");
  EXPECT_EQ(c.keys[3].line, 6);
  EXPECT_EQ(c.keys[5].key, "micro-batch");
  EXPECT_EQ(c.keys[5].line, 9);
}

void expect_problem(const std::string& text, int line, const std::string& what) {
  const auto c = check_flat_toml(text, kKeys);
  ASSERT_TRUE(c.problem) << text;
  EXPECT_EQ(c.problem->line, line) << c.problem->message;
  EXPECT_NE(c.problem->message.find(what), std::string::npos) << c.problem->message;
  EXPECT_FALSE(c.problem->hint.empty());
}

TEST(FlatToml, NamesTheLineOfEachProblem) {
  expect_problem("lr = 1\nglobal-bach = 3\n", 2, "unknown key 'global-bach'");
  EXPECT_NE(check_flat_toml("global-bach = 3\n", kKeys).problem->hint.find("did you mean 'global-batch'"),
            std::string::npos);
  expect_problem("lr = 1\n[train]\nlr = 2\n", 2, "section header '[train]' is not supported");
  expect_problem("lr = \"abc\n", 1, "unterminated string");
  expect_problem("lr =\n", 1, "has no value");
  expect_problem("lr = 1\npack\n", 2, "expected 'key = value'");
  expect_problem("lr = 1 2\n", 1, "unexpected '2'");
  expect_problem("train.lr = 1\n", 1, "dotted key");
  expect_problem("lr = 1\n\nlr = 2\n", 3, "given twice (lines 1 and 3)");
  expect_problem("lr = 1\ninput = [\"a\",\n\"b\"]\n", 2, "arrays must be on one line");
  expect_problem("input = [\"a\" \"b\"]\n", 1, "not separated by ','");
  expect_problem("lr = {a = 1}\n", 1, "inline table");
  expect_problem("input = [\"a\", ]\n", 1, "trailing ','");
  expect_problem("precision = \"a#b\"\n", 1, "'#' inside a string");
}

}  // namespace
