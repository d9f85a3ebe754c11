// Unit tests of the SentencePiece `.model` tokenizer (prep-side library) on the Llama 2 model from
// ../shared (skipped when absent), and of load_tokenizer_any's delegation.
#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

#include "sentencepiece_tokenizer.h"
#include "shardtune/core/error.h"

namespace shardtune {
namespace {

using Ids = std::vector<TokenId>;
const std::string kModel = std::string(ST_SHARED_DIR) + "/tokenizers/llama2-tokenizer.model";

#define REQUIRE_MODEL()                                                                             \
  do {                                                                                              \
    if (!std::filesystem::exists(kModel)) GTEST_SKIP() << kModel << " not found (../shared absent)"; \
  } while (0)

TEST(tokenizer_SentencePiece, InfoAndSpecials) {
  REQUIRE_MODEL();
  auto t = load_tokenizer_any(kModel);
  EXPECT_EQ(t->name, "sentencepiece");
  EXPECT_EQ(t->vocab_size(), 32000);
  EXPECT_EQ(t->bos_id, 1);
  EXPECT_EQ(t->eos_id, 2);
  EXPECT_FALSE(t->pad_id.has_value());
  EXPECT_TRUE(t->add_bos);
  EXPECT_EQ(t->hash.size(), 64u);
  EXPECT_EQ(t->encode("Hello world"), (Ids{15043, 3186}));
  // parse_special=false: "<s>" is text, never id 1
  Ids plain = t->encode("a <s> b </s>");
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 1), 0);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 2), 0);
  Ids special = t->encode("a <s> b </s>", true);
  EXPECT_EQ(std::count(special.begin(), special.end(), 1), 1);
  EXPECT_EQ(special.back(), 2);
  EXPECT_EQ(t->decode({1, 15043, 3186, 2}), "<s> Hello world</s>");
  EXPECT_EQ(t->decode({1, 15043, 3186, 2}, true), "Hello world");
  EXPECT_EQ(t->token_to_id("<s>"), 1);
  EXPECT_FALSE(t->token_to_id("definitely not a piece").has_value());
  auto specials = t->special_tokens();
  EXPECT_GE(specials.size(), 3u);
}

TEST(tokenizer_SentencePiece, UnicodeRoundTripAndThreads) {
  REQUIRE_MODEL();
  auto t = load_tokenizer_any(kModel);
  const std::string text = "Héllo wörld! 日本語 😀👩‍👩‍👧 👍🏽 مرحبا नमस्ते Привет\ttab  two";
  EXPECT_EQ(t->decode(t->encode(text)), text);
  Ids ref = t->encode(text);
  Ids a, b;
  std::thread ta([&] { for (int i = 0; i < 200; ++i) a = t->encode(text); });
  std::thread tb([&] { for (int i = 0; i < 200; ++i) b = t->encode(text); });
  ta.join();
  tb.join();
  EXPECT_EQ(a, ref);
  EXPECT_EQ(b, ref);
}

TEST(tokenizer_SentencePiece, LoaderDelegatesAndErrors) {
  EXPECT_EQ(load_tokenizer_any("byte")->name, "byte");
  try {
    load_tokenizer_any("/nonexistent/dir/tokenizer.model");
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/dir/tokenizer.model"), std::string::npos) << e.what();
  }
  try {
    load_tokenizer("/x/tokenizer.model");
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("shardtune-prep"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace shardtune
