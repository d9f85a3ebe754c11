// Unit tests of the tokenizer library on hand-made tokenizers: merges, byte fallback, added tokens and
// parse_special, Metaspace, Split behaviours, round trips, error messages, thread safety.
#include <gtest/gtest.h>

#include <thread>

#include "shardtune/core/error.h"
#include "shardtune/tokenizer/tokenizer.h"
#include "tiny_tokenizers.h"

namespace shardtune {
namespace {

using test::json;
using Ids = std::vector<TokenId>;

const char* const kUnicode =
    "Héllo wörld! 日本語 😀👩‍👩‍👧 👍🏽 e\u0301 مرحبا שלום नमस्ते Привет Γειά  two  spaces\ttab 12345 it's";

std::unique_ptr<Tokenizer> load_json(const json& j, const std::string& tag, std::string* path_out = nullptr) {
  auto dir = test::temp_dir(tag);
  std::string path = test::write_file(dir / "tokenizer.json", j.dump());
  if (path_out) *path_out = path;
  return load_tokenizer(path);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("NOT a shardtune::Error: ") + e.what();
  }
  return "no error";
}

TEST(tokenizer_Byte, RoundTripAndSpecials) {
  auto t = load_tokenizer("byte");
  EXPECT_EQ(t->name, "byte");
  EXPECT_EQ(t->vocab_size(), 259);
  EXPECT_EQ(t->bos_id, 256);
  EXPECT_EQ(t->eos_id, 257);
  EXPECT_EQ(t->pad_id, 258);
  EXPECT_TRUE(t->add_bos);
  EXPECT_FALSE(t->hash.empty());
  Ids ids = t->encode("A\xC3\xA9");
  EXPECT_EQ(ids, (Ids{65, 0xC3, 0xA9}));
  EXPECT_EQ(t->decode(t->encode(kUnicode)), kUnicode);
  EXPECT_EQ(t->encode("<s>x</s>", false).size(), 8u);
  EXPECT_EQ(t->encode("<s>x</s>", true), (Ids{256, 'x', 257}));
  EXPECT_EQ(t->decode({256, 'x', 257}), "<s>x</s>");
  EXPECT_EQ(t->decode({256, 'x', 257}, true), "x");
  EXPECT_EQ(t->special_tokens().size(), 3u);
}

class tokenizer_SpStyle : public ::testing::TestWithParam<bool> {};

TEST_P(tokenizer_SpStyle, MergesByteFallbackAddedTokens) {
  auto t = load_json(test::sp_style_json(GetParam()), "sp");
  EXPECT_EQ(t->name, "hf-bpe-sentencepiece");
  EXPECT_TRUE(t->add_bos);
  EXPECT_EQ(t->bos_id, 1);
  EXPECT_EQ(t->eos_id, 2);
  const TokenId hello = *t->token_to_id("\xE2\x96\x81hello"), world = *t->token_to_id("\xE2\x96\x81world");
  const TokenId space = *t->token_to_id("\xE2\x96\x81"), tool = *t->token_to_id("<tool>");
  EXPECT_EQ(t->encode("hello world"), (Ids{hello, world}));
  // é is not in the vocabulary: its UTF-8 bytes via <0xC3> <0xA9>
  EXPECT_EQ(t->encode("hello é"), (Ids{hello, space, 3 + 0xC3, 3 + 0xA9}));
  // special strings are text unless parse_special
  Ids plain = t->encode("hello<s>");
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 1), 0);
  EXPECT_EQ(t->encode("hello<s>", true), (Ids{hello, 1}));
  // non-special added tokens are always split out; each text segment is normalized on its own
  Ids with_tool = t->encode("hello<tool>world");
  EXPECT_EQ(with_tool, (Ids{hello, tool, world}));
  EXPECT_EQ(t->encode("hello<tool>world", true), with_tool);
  EXPECT_EQ(t->decode(with_tool), "hello<tool> world");
  EXPECT_EQ(t->decode(t->encode("hello world")), "hello world");
  EXPECT_EQ(t->decode({1, hello}), "<s> hello");
  EXPECT_EQ(t->decode({1, hello}, true), "hello");
  EXPECT_TRUE(t->encode("").empty());
}

TEST_P(tokenizer_SpStyle, UnicodeRoundTrip) {
  auto t = load_json(test::sp_style_json(GetParam()), "sp_rt");
  EXPECT_EQ(t->decode(t->encode(kUnicode)), kUnicode);
  EXPECT_EQ(t->decode(t->encode("  leading and trailing  ")), "  leading and trailing  ");
}

INSTANTIATE_TEST_SUITE_P(MergeFormats, tokenizer_SpStyle, ::testing::Values(false, true));

TEST(tokenizer_Metaspace, PrependSchemes) {
  const std::string U = "\xE2\x96\x81";
  json j = test::sp_style_json(false);
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", U}, {"prepend_scheme", "first"}, {"split", true}};
  j["decoder"] = {{"type", "Sequence"},
                  {"decoders", json::array({{{"type", "Metaspace"}, {"replacement", U}, {"prepend_scheme", "first"}},
                                            {{"type", "ByteFallback"}}, {{"type", "Fuse"}}})}};
  auto t = load_json(j, "meta");
  const TokenId hello = *t->token_to_id(U + "hello"), world = *t->token_to_id(U + "world"),
                tool = *t->token_to_id("<tool>");
  EXPECT_EQ(t->encode("hello world"), (Ids{hello, world}));
  // "first": only the first segment gets the prefix; "world" after <tool> is w|or|l|d
  Ids ids = t->encode("hello<tool>world");
  EXPECT_EQ(ids, (Ids{hello, tool, *t->token_to_id("w"), *t->token_to_id("or"), *t->token_to_id("l"),
                      *t->token_to_id("d")}));
  EXPECT_EQ(t->decode(ids), "hello<tool>world");
  EXPECT_EQ(t->decode(t->encode(kUnicode)), kUnicode);

  j["pre_tokenizer"]["prepend_scheme"] = "always";
  auto always = load_json(j, "meta_always");
  EXPECT_EQ(always->encode("hello<tool>world"), (Ids{hello, tool, world}));
  j["pre_tokenizer"]["prepend_scheme"] = "never";
  auto never = load_json(j, "meta_never");
  EXPECT_EQ(never->encode("hello world"), (Ids{*t->token_to_id("hello"), world}));
}

TEST(tokenizer_Split, Behaviours) {
  auto enc = [](const std::string& behavior, const std::string& text, bool invert = false) {
    return load_json(test::byte_level_json(test::split_then_bytelevel(behavior, invert)), "split_" + behavior)->encode(text);
  };
  EXPECT_EQ(enc("Isolated", "a-b"), (Ids{'a', '-', 'b'}));
  EXPECT_EQ(enc("Removed", "a-b"), (Ids{'a', 'b'}));
  EXPECT_EQ(enc("MergedWithPrevious", "a-b"), (Ids{256, 'b'}));
  EXPECT_EQ(enc("MergedWithNext", "a-b"), (Ids{'a', 257}));
  EXPECT_EQ(enc("Contiguous", "a--b"), (Ids{'a', 258, 'b'}));
  EXPECT_EQ(enc("Isolated", "a--b"), (Ids{'a', '-', '-', 'b'}));
  // invert: the matches ("-") are the content, everything else is the delimiter
  EXPECT_EQ(enc("Removed", "a-b", true), (Ids{'-'}));
}

TEST(tokenizer_ByteLevelJson, AddedSpecialAndRoundTrip) {
  json pre = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  auto t = load_json(test::byte_level_json(pre), "bl");
  EXPECT_EQ(t->name, "hf-bpe-bytelevel");
  EXPECT_FALSE(t->add_bos);
  EXPECT_EQ(t->encode("x<|end|>", true), (Ids{'x', 259}));
  EXPECT_EQ(t->encode("x<|end|>", false).size(), 8u);
  EXPECT_EQ(t->decode(t->encode(kUnicode)), kUnicode);
  EXPECT_EQ(t->decode({'x', 259}), "x<|end|>");
  EXPECT_EQ(t->decode({'x', 259}, true), "x");
  // the GPT-2 regex splits "a-b" into "a" "-" "b", so neither merge "a-" nor "-b" applies
  EXPECT_EQ(t->encode("a-b"), (Ids{'a', '-', 'b'}));
  // invalid UTF-8 is replaced by U+FFFD (as a JS/Rust string would hold it) instead of failing
  EXPECT_EQ(t->encode("\xFF"), (Ids{0xEF, 0xBF, 0xBD}));
  // a truncated sequence is one U+FFFD (maximal subpart, as TextDecoder and Rust's from_utf8_lossy)
  EXPECT_EQ(t->decode(t->encode("a\xE2\x96" "b\xF0\x9F\x98" "c\xC0\xAF")),
            "a\uFFFDb\uFFFDc\uFFFD\uFFFD");

  pre["add_prefix_space"] = true;
  auto prefixed = load_json(test::byte_level_json(pre), "bl_prefix");
  EXPECT_EQ(prefixed->encode("x"), (Ids{' ', 'x'}));
}

TEST(tokenizer_Digits, IndividualAndRuns) {
  json pre = {{"type", "Sequence"},
              {"pretokenizers", json::array({{{"type", "Digits"}, {"individual_digits", true}},
                                             {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}};
  auto t = load_json(test::byte_level_json(pre), "digits");
  EXPECT_EQ(t->encode("a-12"), (Ids{256, '1', '2'}));
}

// Llama 3 / Qwen 2 style: Split with the big regex (Isolated), then ByteLevel without its own regex.
TEST(tokenizer_Llama3Style, SplitRegexThenByteLevel) {
  const char* llama3 =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  json pre = {{"type", "Sequence"},
              {"pretokenizers", json::array({{{"type", "Split"}, {"pattern", {{"Regex", llama3}}}, {"behavior", "Isolated"},
                                              {"invert", false}},
                                             {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true},
                                              {"use_regex", false}}})}};
  auto t = load_json(test::byte_level_json(pre, true), "llama3");
  EXPECT_EQ(t->encode("1234"), (Ids{260, '3', '4'}));  // digits in groups of 3: "123" "4"
  EXPECT_EQ(t->decode(t->encode(kUnicode)), kUnicode);
  json plain = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}};
  EXPECT_EQ(load_json(test::byte_level_json(plain, true), "noregex")->encode("1234"), (Ids{260, 261}));
}

TEST(tokenizer_Nfc, ComposesAndReorders) {
  json pre = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}};
  json j = test::byte_level_json(pre);
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", json::array({{{"type", "NFC"}}})}};
  auto t = load_json(j, "nfc");
  EXPECT_EQ(t->encode("e\u0301"), (Ids{0xC3, 0xA9}));                          // é
  EXPECT_EQ(t->encode("\u1100\u1161\u11A8"), (Ids{0xEA, 0xB0, 0x81}));       // Hangul L V T -> U+AC01
  EXPECT_EQ(t->encode("\u212B"), (Ids{0xC3, 0x85}));                          // Angstrom sign -> Å
  EXPECT_EQ(t->encode("a\u0301\u0328"), (Ids{0xC4, 0x85, 0xCC, 0x81}));       // reorder ogonek first
  EXPECT_EQ(t->encode("plain ASCII"), t->encode("plain ASCII"));
  EXPECT_EQ(t->decode(t->encode("caf\u00e9 日本")), "caf\u00e9 日本");
}

TEST(tokenizer_Whitespace, SplitAndWhitespace) {
  json bl = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}};
  json ws = {{"type", "Sequence"}, {"pretokenizers", json::array({{{"type", "WhitespaceSplit"}}, bl})}};
  EXPECT_EQ(load_json(test::byte_level_json(ws), "wss")->encode(" a-  b "), (Ids{256, 'b'}));
  json w = {{"type", "Sequence"}, {"pretokenizers", json::array({{{"type", "Whitespace"}}, bl})}};
  EXPECT_EQ(load_json(test::byte_level_json(w), "ws")->encode("a-b a- -b"), (Ids{'a', '-', 'b', 'a', '-', '-', 'b'}));
}

TEST(tokenizer_PostProcessor, SequenceWithTemplateAndStrip) {
  json pre = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  json j = test::byte_level_json(pre);
  // Llama 3 layout: Sequence[ByteLevel, TemplateProcessing("<|end|> $A")]
  j["post_processor"] = {
      {"type", "Sequence"},
      {"processors",
       json::array({{{"type", "ByteLevel"}, {"trim_offsets", false}},
                    {{"type", "TemplateProcessing"},
                     {"single", json::array({{{"SpecialToken", {{"id", "<|end|>"}, {"type_id", 0}}}},
                                             {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
                     {"special_tokens", {{"<|end|>", {{"id", "<|end|>"}, {"ids", {259}}, {"tokens", {"<|end|>"}}}}}}}})}};
  auto t = load_json(j, "post");
  EXPECT_TRUE(t->add_bos);
  EXPECT_EQ(t->bos_id, 259);
  // lstrip/rstrip: whitespace next to the added token is absorbed by it
  j = test::byte_level_json(pre);
  j["added_tokens"][0]["lstrip"] = true;
  j["added_tokens"][0]["rstrip"] = true;
  auto s = load_json(j, "strip");
  EXPECT_EQ(s->encode("x  <|end|>  y", true), (Ids{'x', 259, 'y'}));
  EXPECT_EQ(s->encode("x  <|end|>  y", false).size(), 13u);
  j = test::byte_level_json(pre);
  j["post_processor"] = {{"type", "RobertaProcessing"}, {"cls", {"<|end|>", 259}}, {"sep", {"<|end|>", 259}}};
  EXPECT_TRUE(load_json(j, "roberta")->add_bos);
}

TEST(tokenizer_LongWord, MergeLoopIsNotQuadratic) {
  auto t = load_json(test::sp_style_json(false), "long");
  // No spaces: one ~500 KB "word" with no place to cut it, so the heap merge loop runs on all of it
  // (an O(n^2) loop would take minutes, and ctest's timeout catches that: no wall-clock assert here,
  // which would flake on a loaded machine).
  std::string text;
  for (int i = 0; i < 100000; ++i) text += "hello";
  Ids ids = t->encode(text);
  EXPECT_EQ(ids.size(), 100000u);  // "▁hello" then "hello" x 99999
  EXPECT_EQ(ids[0], *t->token_to_id("\xE2\x96\x81hello"));
  EXPECT_EQ(ids[1], *t->token_to_id("hello"));
  EXPECT_EQ(t->decode(ids), text);
  // With spaces the text is cut before each "▁" (no token has "▁" after another char): same ids as
  // encoding word by word.
  std::string spaced;
  for (int i = 0; i < 40000; ++i) spaced += "hello world ";
  Ids sids = t->encode(spaced);
  EXPECT_EQ(sids.size(), 80000u + 1u);  // ▁hello ▁world pairs and the trailing "▁"
  EXPECT_EQ(t->decode(sids), spaced);
}

TEST(tokenizer_Threads, SameIdsFromTwoThreads) {
  auto sp = load_json(test::sp_style_json(false), "thr_sp");
  auto bl = load_json(test::byte_level_json({{"type", "ByteLevel"}, {"add_prefix_space", false}}), "thr_bl");
  std::vector<std::string> texts;
  for (int i = 0; i < 200; ++i) texts.push_back(std::string(kUnicode) + " hello world " + std::to_string(i * 7919));
  auto run = [&](const Tokenizer& t, std::vector<Ids>& out) {
    for (int rep = 0; rep < 5; ++rep)
      for (size_t i = 0; i < texts.size(); ++i) out[i] = t.encode(texts[i], rep % 2 == 0);
  };
  for (const Tokenizer* t : {sp.get(), bl.get()}) {
    std::vector<Ids> a(texts.size()), b(texts.size()), ref(texts.size());
    for (size_t i = 0; i < texts.size(); ++i) ref[i] = t->encode(texts[i], false);
    std::thread ta([&] { run(*t, a); }), tb([&] { run(*t, b); });
    ta.join();
    tb.join();
    EXPECT_EQ(a, b);
    EXPECT_EQ(a, ref);
  }
}

TEST(tokenizer_Errors, MessagesNameTheFile) {
  auto dir = test::temp_dir("err");
  std::string missing = (dir / "nope" / "tokenizer.json").string();
  std::string msg = error_of([&] { load_tokenizer(missing); });
  EXPECT_NE(msg.find(missing), std::string::npos) << msg;

  std::string bad = test::write_file(dir / "bad.json", "{\"model\": {\"type\": \"BPE\", ");
  msg = error_of([&] { load_tokenizer(bad); });
  EXPECT_NE(msg.find(bad), std::string::npos) << msg;
  EXPECT_NE(msg.find("malformed JSON"), std::string::npos) << msg;

  json j = test::sp_style_json(false);
  j["model"]["type"] = "WordPiece";
  std::string path;
  msg = error_of([&] { load_json(j, "wp", &path); });
  EXPECT_NE(msg.find("WordPiece"), std::string::npos) << msg;
  EXPECT_NE(msg.find(path), std::string::npos) << msg;

  j = test::sp_style_json(false);
  j["normalizer"] = {{"type", "NFKC"}};
  msg = error_of([&] { load_json(j, "nfkc", &path); });
  EXPECT_NE(msg.find("unsupported normalizer 'NFKC'"), std::string::npos) << msg;
  EXPECT_NE(msg.find(path), std::string::npos) << msg;

  j = test::sp_style_json(false);
  j["pre_tokenizer"] = {{"type", "BertPreTokenizer"}};
  msg = error_of([&] { load_json(j, "bert", &path); });
  EXPECT_NE(msg.find("BertPreTokenizer"), std::string::npos) << msg;

  j = test::sp_style_json(false);
  j["model"]["merges"].push_back("x y");
  msg = error_of([&] { load_json(j, "badmerge", &path); });
  EXPECT_NE(msg.find("x y"), std::string::npos) << msg;

  msg = error_of([&] { load_tokenizer((dir / "tokenizer.model").string()); });
  EXPECT_NE(msg.find("shardtune-prep"), std::string::npos) << msg;
  EXPECT_NE(msg.find("tokenizer.json"), std::string::npos) << msg;

  msg = error_of([&] { load_tokenizer(dir.string()); });
  EXPECT_NE(msg.find("holds no tokenizer"), std::string::npos) << msg;

  auto t = load_tokenizer("byte");
  msg = error_of([&] { t->decode({300}); });
  EXPECT_NE(msg.find("300"), std::string::npos) << msg;
}

TEST(tokenizer_Spec, DirectoryAndConfig) {
  auto dir = test::temp_dir("cfg");
  test::write_file(dir / "tokenizer.json", test::sp_style_json(false).dump());
  auto t = load_tokenizer(dir.string());
  EXPECT_TRUE(t->add_bos);
  std::string h1 = t->hash;
  test::write_file(dir / "tokenizer_config.json",
                   json({{"add_bos_token", false}, {"bos_token", "<s>"}, {"eos_token", {{"content", "</s>"}}},
                         {"pad_token", "<unk>"}})
                       .dump());
  t = load_tokenizer(dir.string());
  EXPECT_FALSE(t->add_bos);
  EXPECT_EQ(t->pad_id, 0);
  EXPECT_EQ(t->eos_id, 2);
  EXPECT_NE(t->hash, h1);  // the config takes part in the hash
}

}  // namespace
}  // namespace shardtune
