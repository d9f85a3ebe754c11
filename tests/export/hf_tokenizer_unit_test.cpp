// Unit tests of the tokenizer side of model folders (export/hf_tokenizer_files.h, torch-free): the member
// edit that keeps a config's other bytes, GPT-2 files turned into HF's vocab.json + merges.txt, the checks of
// the source files against the recorded hashes (warning, record only), and carrying a folder of ours.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "json_members.h"
#include "shardtune/core/fs.h"
#include "shardtune/export/hf_tokenizer_files.h"
#include "shardtune/tokenizer/source_files.h"
#include "shardtune/tokenizer/tokenizer.h"

namespace {

namespace stdfs = std::filesystem;
using namespace shardtune;
using namespace shardtune::exporter;

TEST(JsonMembers, ReplacesInPlaceAndKeepsEveryOtherByte) {
  const std::string text = "{\n  \"a\": {\"x\": \"}\\\"\"},\n  \"big\": 1000000000000000019884624838656,\n  \"t\": null\n}\n";
  EXPECT_EQ(set_json_member(text, "t", "\"<s>\""),
            "{\n  \"a\": {\"x\": \"}\\\"\"},\n  \"big\": 1000000000000000019884624838656,\n  \"t\": \"<s>\"\n}\n");
  EXPECT_EQ(set_json_member(text, "a", "1"), "{\n  \"a\": 1,\n  \"big\": 1000000000000000019884624838656,\n  \"t\": null\n}\n");
  // "x" is a member of a nested object, not of the top level: appended.
  const std::string added = set_json_member(text, "x", "2");
  EXPECT_EQ(added, "{\n  \"a\": {\"x\": \"}\\\"\"},\n  \"big\": 1000000000000000019884624838656,\n  \"t\": null,\n  \"x\": 2\n}\n");
  EXPECT_EQ(nlohmann::json::parse(added)["x"], 2);
  EXPECT_EQ(set_json_member("{}", "k", "[1]"), "{\"k\": [1]}");
  EXPECT_EQ(set_json_member("{\"a\":1}", "b", "true"), "{\"a\":1, \"b\": true}");
}

struct Gpt2Files : ::testing::Test {
  stdfs::path dir;
  TokenizerRecord rec;
  void SetUp() override {
    dir = stdfs::temp_directory_path() / ("st-hf-unit-" + std::to_string(::getpid()) + "-" +
                                          ::testing::UnitTest::GetInstance()->current_test_info()->name());
    stdfs::remove_all(dir);
    stdfs::create_directories(dir / "src");
    stdfs::create_directories(dir / "out");
    fs::write_file_atomic(dir / "src/encoder.json", R"({"a": 0, "b": 1, "ab": 2, "<|endoftext|>": 3})");
    fs::write_file_atomic(dir / "src/vocab.bpe", "a b");  // no "#version" header, no final newline
    const auto tok = load_tokenizer((dir / "src/encoder.json").string() + "," + (dir / "src/vocab.bpe").string());
    rec.name = tok->name;
    rec.source = tok->source;
    rec.hash = tok->hash;
    for (const auto& f : tokenizer_source_files(*tok)) rec.files.push_back({f, fs::sha256_file(f)});
    rec.bos_id = rec.eos_id = 3;
    rec.bos_token = rec.eos_token = "<|endoftext|>";
    rec.add_bos = false;
    rec.vocab_size = tok->vocab_size();
  }
  void TearDown() override { stdfs::remove_all(dir); }
};

TEST_F(Gpt2Files, BecomeVocabJsonAndMergesTxtAsGpt2TokenizerReadsThem) {
  HfFolderOptions o;
  o.model_max_length = 64;
  const HfFolderResult r = write_hf_tokenizer_files(dir / "out", rec, o);
  EXPECT_EQ(r.warning, "");
  EXPECT_EQ(fs::read_file(dir / "out/vocab.json"), fs::read_file(dir / "src/encoder.json"));
  // GPT2Tokenizer drops the first line and the last (empty) one: both are supplied.
  EXPECT_EQ(fs::read_file(dir / "out/merges.txt"), "#version: 0.2\na b\n");
  const auto cfg = nlohmann::json::parse(fs::read_file(dir / "out/tokenizer_config.json"));
  EXPECT_EQ(cfg["tokenizer_class"], "GPT2Tokenizer");
  EXPECT_EQ(cfg["eos_token"], "<|endoftext|>");
  EXPECT_EQ(cfg["model_max_length"], 64);
  EXPECT_EQ(cfg["add_bos_token"], false);
  EXPECT_FALSE(cfg.contains("chat_template"));
  const auto gen = nlohmann::json::parse(fs::read_file(dir / "out/generation_config.json"));
  EXPECT_EQ(gen, nlohmann::json({{"bos_token_id", 3}, {"eos_token_id", 3}}));
  const auto record = nlohmann::json::parse(fs::read_file(dir / "out/shardtune_tokenizer.json"));
  EXPECT_EQ(record["hf_files"].size(), 4u);
  EXPECT_EQ(record["hf_files"]["merges.txt"], fs::sha256_hex("#version: 0.2\na b\n"));

  // A folder of ours carried on (as merge does with an adapter): the same bytes, its files checked...
  stdfs::create_directories(dir / "carried");
  ASSERT_TRUE(carry_hf_tokenizer_files(dir / "out", dir / "carried", o).has_value());
  for (const char* n : {"vocab.json", "merges.txt", "tokenizer_config.json", "generation_config.json"})
    EXPECT_EQ(fs::read_file(dir / "carried" / n), fs::read_file(dir / "out" / n)) << n;
  // ... and one changed since: written again from the sources instead (same result).
  fs::write_file_atomic(dir / "out/merges.txt", "#version: 0.2\nb a\n");
  stdfs::create_directories(dir / "again");
  ASSERT_TRUE(carry_hf_tokenizer_files(dir / "out", dir / "again", o).has_value());
  EXPECT_EQ(fs::read_file(dir / "again/merges.txt"), "#version: 0.2\na b\n");
  // A folder without shardtune_tokenizer.json is not ours: the caller decides.
  EXPECT_FALSE(carry_hf_tokenizer_files(dir / "src", dir / "again", o).has_value());
}

TEST_F(Gpt2Files, AChangedSourceGivesAWarningNamingItAndTheRecordOnly) {
  fs::write_file_atomic(dir / "src/vocab.bpe", "a b\n");
  const HfFolderResult r = write_hf_tokenizer_files(dir / "out", rec, {});
  EXPECT_NE(r.warning.find((dir / "src/vocab.bpe").string()), std::string::npos) << r.warning;
  EXPECT_NE(r.warning.find("changed since the data was prepared"), std::string::npos) << r.warning;
  std::vector<std::string> names;
  for (const auto& e : stdfs::directory_iterator(dir / "out")) names.push_back(e.path().filename().string());
  EXPECT_EQ(names, std::vector<std::string>{"shardtune_tokenizer.json"});
  const auto record = nlohmann::json::parse(fs::read_file(dir / "out/shardtune_tokenizer.json"));
  EXPECT_TRUE(record["hf_files"].empty());
  EXPECT_NE(record["note"].get<std::string>().find("vocab.bpe"), std::string::npos);

  // Without per-file digests (an older record) the hash over both files still catches it.
  for (auto& f : rec.files) f.sha256.clear();
  stdfs::remove(dir / "out/shardtune_tokenizer.json");
  EXPECT_NE(write_hf_tokenizer_files(dir / "out", rec, {}).warning.find("not those the data was prepared with"),
            std::string::npos);
  stdfs::remove(dir / "src/encoder.json");
  EXPECT_NE(write_hf_tokenizer_files(dir / "out", rec, {}).warning.find("no longer exists"), std::string::npos);
}

}  // namespace
