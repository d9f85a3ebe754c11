// Unit tests of preference pairs in prep (issue 11): form detection and parsing, the shared prompt of
// build_pair (byte tokenizer, so expected ids are UTF-8 bytes), and fit_pair's keep-end truncation at
// its edges (BOS kept, no BOS, the half-length floor, a length that leaves no response token).
#include <gtest/gtest.h>
#include <simdjson.h>

#include "preference.h"
#include "record.h"
#include "shardtune/tokenizer/tokenizer.h"
#include "template.h"

namespace shardtune::prep {
namespace {

Sample seq(std::vector<TokenId> prompt, std::vector<TokenId> resp) {
  Sample s;
  s.tokens = prompt;
  s.mask.assign(prompt.size(), 0);
  s.tokens.insert(s.tokens.end(), resp.begin(), resp.end());
  s.mask.insert(s.mask.end(), resp.size(), 1);
  return s;
}

TokenizedPair pair(std::vector<TokenId> prompt, std::vector<TokenId> c, std::vector<TokenId> r) {
  return {seq(prompt, c), seq(prompt, r), static_cast<int64_t>(prompt.size())};
}

TEST(PreferenceRecord, FormsAreDetectedAndParsed) {
  simdjson::dom::parser parser;
  Record plain = parse_record(parser, R"({"prompt":"p","chosen":"c","rejected":"r"})", Format::Auto);
  EXPECT_EQ(plain.format, Format::Preference);
  EXPECT_FALSE(plain.pair.chat);
  EXPECT_EQ(plain.pair.prompt + plain.pair.chosen + plain.pair.rejected, "pcr");
  // "rejected" alone already means a pair: the error then names the missing field.
  try {
    parse_record(parser, R"({"prompt":"p","rejected":"r"})", Format::Auto);
    ADD_FAILURE() << "no error";
  } catch (const RecordError& e) {
    EXPECT_NE(e.message.find("missing field \"chosen\""), std::string::npos) << e.message;
  }
  Record conv = parse_record(parser,
                             R"({"prompt":[{"role":"system","content":"s"},{"role":"user","content":"u"}],)"
                             R"("chosen":[{"role":"assistant","content":"c"}],"rejected":{"role":"assistant","content":"r"}})",
                             Format::Preference);
  ASSERT_TRUE(conv.pair.chat);
  ASSERT_EQ(conv.pair.prompt_messages.size(), 2u);
  EXPECT_EQ(conv.pair.prompt_messages[1].content, "u");
  EXPECT_EQ(conv.pair.chosen_message.content, "c");
  EXPECT_EQ(conv.pair.rejected_message.content, "r");
}

TEST(PreferencePair, ChatPromptIsSharedAndEndsWithTheGenerationPrompt) {
  auto tok = load_tokenizer("byte");
  auto tpl = PromptTemplate::load("chatml");
  simdjson::dom::parser parser;
  Record rec = parse_record(parser,
                            R"({"chosen":[{"role":"user","content":"q"},{"role":"assistant","content":"yes"}],)"
                            R"("rejected":[{"role":"user","content":"q"},{"role":"assistant","content":"no"}]})",
                            Format::Auto);
  TokenizedPair p = build_pair(rec, tpl, *tok);
  const std::string prompt = "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n";
  ASSERT_EQ(p.prompt_len, 1 + static_cast<int64_t>(prompt.size()));
  EXPECT_EQ(p.chosen.tokens[0], *tok->bos_id);
  for (size_t i = 0; i < prompt.size(); ++i) {
    EXPECT_EQ(p.chosen.tokens[1 + i], static_cast<uint8_t>(prompt[i])) << i;
    EXPECT_EQ(p.rejected.tokens[1 + i], static_cast<uint8_t>(prompt[i])) << i;
  }
  EXPECT_EQ(p.chosen.tokens.size(), p.prompt_len + std::string("yes<|im_end|>\n").size() + 1);
  EXPECT_EQ(p.chosen.tokens.back(), *tok->eos_id);
  for (size_t i = 0; i < p.chosen.tokens.size(); ++i) EXPECT_EQ(p.chosen.mask[i], i >= size_t(p.prompt_len) ? 1 : 0);
}

TEST(PreferenceFit, KeepEndTruncationEdges) {
  bool cut = false;
  const TokenId B = 256;
  // Fits: untouched.
  auto p = pair({B, 1, 2}, {10}, {20, 21});
  EXPECT_EQ(fit_pair(p, 5, false, B, cut), PairFit::Fits);
  // BOS kept, the prompt's start removed until the longer sequence fits (the floor min(8, 6/2) = 3
  // does not bind: 4 prompt tokens remain).
  p = pair({B, 1, 2, 3, 4, 5, 6, 7}, {10, 11}, {20});
  EXPECT_EQ(fit_pair(p, 6, false, B, cut), PairFit::Truncated);
  EXPECT_FALSE(cut);
  EXPECT_EQ(p.prompt_len, 4);
  EXPECT_EQ(p.chosen.tokens, (std::vector<TokenId>{B, 5, 6, 7, 10, 11}));
  EXPECT_EQ(p.rejected.tokens, (std::vector<TokenId>{B, 5, 6, 7, 20}));
  EXPECT_EQ(p.chosen.mask, (std::vector<uint8_t>{0, 0, 0, 0, 1, 1}));
  // Without a BOS the very first prompt tokens go.
  p = pair({1, 2, 3, 4, 5, 6, 7, 8}, {10}, {20});
  EXPECT_EQ(fit_pair(p, 8, false, std::nullopt, cut), PairFit::Truncated);
  EXPECT_EQ(p.chosen.tokens, (std::vector<TokenId>{2, 3, 4, 5, 6, 7, 8, 10}));
  // The floor: a long prompt keeps max_len / 2 tokens, the responses lose their ends.
  p = pair({B, 1, 2, 3, 4, 5, 6, 7, 8, 9}, {10, 11, 12, 13, 14, 15}, {20, 21});
  EXPECT_EQ(fit_pair(p, 8, false, B, cut), PairFit::Truncated);
  EXPECT_TRUE(cut);
  EXPECT_EQ(p.chosen.tokens, (std::vector<TokenId>{B, 7, 8, 9, 10, 11, 12, 13}));
  EXPECT_EQ(p.rejected.tokens, (std::vector<TokenId>{B, 7, 8, 9, 20, 21}));
  EXPECT_EQ(p.prompt_len, 4);
  // Drop.
  p = pair({B, 1, 2, 3}, {10, 11, 12}, {20});
  EXPECT_EQ(fit_pair(p, 5, true, B, cut), PairFit::Dropped);
  // Responses equal up to the cut: identical once truncated.
  p = pair({B, 1}, {10, 11, 12}, {10, 11, 13});
  EXPECT_EQ(fit_pair(p, 4, false, B, cut), PairFit::DroppedIdentical);
  // max_len 2 with BOS: the prompt keeps BOS + its last token, leaving no response token: dropped
  // (prep counts it in dropped_no_target), not reported as identical.
  p = pair({B, 1, 2}, {10}, {20});
  EXPECT_EQ(fit_pair(p, 2, false, B, cut), PairFit::NoResponse);
  EXPECT_EQ(p.prompt_len, 2);
}

}  // namespace
}  // namespace shardtune::prep
