// Unit tests of prep's pieces: rank/chunk planning, the ordered pool, templates, record parsing and
// sample masks (byte tokenizer, so expected ids are the UTF-8 bytes), and the shard writer/reader.
#include <gtest/gtest.h>
#include <simdjson.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>

#include "inputs.h"
#include "ordered_pool.h"
#include "record.h"
#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/data/shard.h"
#include "template.h"

namespace shardtune::prep {
namespace {

namespace stdfs = std::filesystem;

stdfs::path temp_dir() {
  stdfs::path p = stdfs::temp_directory_path() / ("st-prep-unit-" + std::to_string(::getpid()));
  stdfs::create_directories(p);
  return p;
}

std::string write_temp(const std::string& name, const std::string& content) {
  auto p = temp_dir() / name;
  std::ofstream(p, std::ios::binary) << content;
  return p.string();
}

TEST(PlanChunks, EveryLineExactlyOnceForAnyWorld) {
  std::string a, b;
  for (int i = 0; i < 300; ++i) a += "line-a-" + std::to_string(i) + std::string(i % 17, 'x') + "\n";
  for (int i = 0; i < 7; ++i) b += "line-b-" + std::to_string(i) + "\n";
  b += "last-without-newline";
  MappedFile fa(write_temp("a.jsonl", a)), fb(write_temp("b.jsonl", b));
  std::vector<const MappedFile*> files{&fa, &fb};
  for (int world : {1, 2, 3, 5, 64, 400}) {
    std::string joined[2];
    int64_t next_line[2] = {1, 1};
    for (int r = 0; r < world; ++r)
      for (const Chunk& c : plan_chunks(files, r, world, 64)) {
        EXPECT_EQ(c.first_line, next_line[c.file]) << "world " << world << " rank " << r;
        joined[c.file] += std::string(c.text);
        next_line[c.file] += std::count(c.text.begin(), c.text.end(), '\n');
      }
    EXPECT_EQ(joined[0], a) << "world " << world;
    EXPECT_EQ(joined[1], b) << "world " << world;
  }
}

TEST(OrderedParallel, ResultsInOrderAndErrorsSurfaceInOrder) {
  for (int threads : {1, 2, 4}) {
    std::vector<size_t> seen;
    std::function<size_t(size_t)> work = [](size_t i) {
      if (i % 7 == 0) usleep(200);
      return i * i;
    };
    std::function<void(size_t, size_t&&)> consume = [&](size_t i, size_t&& v) {
      EXPECT_EQ(v, i * i);
      seen.push_back(i);
    };
    ordered_parallel<size_t>(100, threads, 8, work, consume);
    ASSERT_EQ(seen.size(), 100u);
    for (size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i], i);

    std::vector<size_t> before_error;
    std::function<size_t(size_t)> failing = [](size_t i) -> size_t {
      if (i == 42) throw std::runtime_error("boom at 42");
      return i;
    };
    std::function<void(size_t, size_t&&)> record = [&](size_t i, size_t&&) { before_error.push_back(i); };
    EXPECT_THROW(ordered_parallel<size_t>(100, threads, 8, failing, record), std::runtime_error);
    EXPECT_EQ(before_error.size(), 42u);
  }
}

TEST(Template, PlaceholdersBracesAndErrors) {
  Pattern p("A {x} {{b}} C", {"x"}, "t");
  auto runs = p.render({{"x", "val"}});
  ASSERT_EQ(runs.size(), 3u);
  EXPECT_EQ(runs[0].text, "A ");
  EXPECT_TRUE(runs[0].trusted);
  EXPECT_EQ(runs[1].text, "val");
  EXPECT_FALSE(runs[1].trusted);
  EXPECT_EQ(runs[2].text, " {b} C");
  EXPECT_THROW(Pattern("{y}", {"x"}, "t"), Error);
  EXPECT_THROW(Pattern("{x", {"x"}, "t"), Error);
  EXPECT_THROW(Pattern("x}", {"x"}, "t"), Error);
  for (const auto& name : builtin_template_names()) EXPECT_NO_THROW(PromptTemplate::load(name)) << name;
  EXPECT_GE(builtin_template_names().size(), 3u);
}

TEST(Record, DetectsFormatsAndNamesBadFields) {
  simdjson::dom::parser parser;
  EXPECT_EQ(parse_record(parser, R"({"text":"t"})", Format::Auto).format, Format::Text);
  EXPECT_EQ(parse_record(parser, R"({"instruction":"i","output":"o"})", Format::Auto).format, Format::Instruction);
  EXPECT_EQ(parse_record(parser, R"({"input":"i","output":"o"})", Format::Auto).format, Format::InputOutput);
  auto chat = parse_record(parser, R"({"messages":[{"role":"user","content":"u"},{"role":"assistant","content":"a"}]})",
                           Format::Auto);
  EXPECT_EQ(chat.format, Format::Chat);
  ASSERT_EQ(chat.messages.size(), 2u);
  EXPECT_EQ(chat.messages[1].content, "a");
  auto expect_error = [&](const std::string& line, Format f, const std::string& needle) {
    try {
      parse_record(parser, line, f);
      ADD_FAILURE() << "no error for " << line;
    } catch (const RecordError& e) {
      EXPECT_NE(e.message.find(needle), std::string::npos) << e.message;
    }
  };
  expect_error(R"({"text": 3})", Format::Auto, "must be a string, found a number");
  expect_error(R"({"text": "x")", Format::Auto, "malformed JSON");
  expect_error("{\"text\": \"\xff\"}", Format::Auto, "invalid UTF-8");
  expect_error(R"({"output":"o"})", Format::Instruction, "missing field \"instruction\"");
  expect_error(R"({"messages":[{"role":"user"}]})", Format::Chat, "messages[0]: missing field \"content\"");
  expect_error(R"({"messages":"hi"})", Format::Chat, "must be an array");
  // null input is allowed for instruction data (Alpaca has empty inputs)
  EXPECT_EQ(parse_record(parser, R"({"instruction":"i","input":null,"output":"o"})", Format::Auto).input, "");
}

TEST(Sample, MaskCoversResponseAndEosOnly) {
  auto tok = load_tokenizer("byte");
  auto tpl = PromptTemplate::load("plain");
  Record r;
  r.format = Format::InputOutput;
  r.input = "héllo";
  r.output = "wörld";
  Sample s = build_sample(r, tpl, *tok);
  std::string prompt = "héllo\n", resp = "wörld";
  ASSERT_EQ(s.tokens.size(), 1 + prompt.size() + resp.size() + 1);
  EXPECT_EQ(s.tokens.front(), *tok->bos_id);
  EXPECT_EQ(s.tokens.back(), *tok->eos_id);
  for (size_t i = 0; i < s.tokens.size(); ++i) EXPECT_EQ(s.mask[i], i > prompt.size() ? 1 : 0) << i;
  for (size_t i = 0; i < prompt.size(); ++i) EXPECT_EQ(s.tokens[1 + i], static_cast<uint8_t>(prompt[i]));
}

TEST(Shard, RoundTripDeterministicAndValidated) {
  data::ShardInfo info;
  info.split = "train";
  info.tokenizer_name = "byte";
  info.tokenizer_hash = "abc";
  info.vocab_size = 259;
  info.bos_id = 256;
  info.eos_id = 257;
  info.source_files = "[\"x\"]";
  data::ShardData d;
  d.tokens = {256, 1, 2, 257, 256, 3, 257};
  d.offsets = {0, 4, 7};
  d.loss_mask = {0, 1, 1, 1, 0, 1, 1};
  auto dir = temp_dir();
  std::string p1 = (dir / "s1.h5").string(), p2 = (dir / "s2.h5").string();
  stdfs::remove(p1);
  stdfs::remove(p2);
  data::write_shard(p1, info, d);
  usleep(1100000);  // a timestamp, if any were written, would now differ
  data::write_shard(p2, info, d);
  EXPECT_EQ(fs::sha256_file(p1), fs::sha256_file(p2));
  EXPECT_THROW(data::write_shard(p1, info, d), Error);  // never overwrites
  data::Shard s = data::read_shard(p1, 259);
  EXPECT_EQ(s.data.tokens, d.tokens);
  EXPECT_EQ(s.data.offsets, d.offsets);
  EXPECT_EQ(s.data.loss_mask, d.loss_mask);
  EXPECT_EQ(s.info.tokenizer_name, "byte");
  EXPECT_EQ(s.info.eos_id, 257);
  try {
    data::read_shard(p1, 32000);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("s1.h5"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("32000"), std::string::npos);
  }
  // corrupt: an id outside the vocabulary, offsets that run backwards, a truncated file
  std::string p3 = (dir / "s3.h5").string(), p4 = (dir / "s4.h5").string(), p5 = (dir / "s5.h5").string();
  for (auto& p : {p3, p4, p5}) stdfs::remove(p);
  auto bad = d;
  bad.tokens[2] = 400;
  data::write_shard(p3, info, bad);
  EXPECT_THROW(data::read_shard(p3), Error);
  bad = d;
  bad.offsets = {0, 5, 4, 7};
  EXPECT_THROW(data::write_shard(p4, info, bad), Error);  // writer refuses inconsistent data too
  std::string bytes = fs::read_file(p1);
  std::ofstream(p5, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  EXPECT_THROW(data::read_shard(p5), Error);
  stdfs::remove_all(dir);
}

}  // namespace
}  // namespace shardtune::prep
