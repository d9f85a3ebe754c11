// Preference pairs (issue 11): a parsed pair record -> two token sequences that share their prompt
// tokens, and the over-length policy for pairs (prompt truncated first, keeping its end).
#pragma once

#include <cstdint>
#include <optional>

#include "record.h"

namespace shardtune::prep {

// The chosen and rejected sequences of one pair: each is the same `prompt_len` prompt tokens (mask 0)
// followed by its response (mask 1).
struct TokenizedPair {
  Sample chosen, rejected;
  int64_t prompt_len = 0;
};

// Plain strings: [BOS] prompt (as is, no template), then the response and EOS when the template appends
// one (as the instruction format does). Chat: the prompt messages rendered with the template's chat
// turns (all mask 0, earlier assistant turns included) plus the assistant turn's opening (the generation
// prompt); the response is the assistant turn's response text of the last message, then EOS likewise.
// Throws RecordError when chosen and rejected tokenize identically (unless `distinct` is false: a
// completion of shardtune-score, both sides the same text) or the prompt has no token.
TokenizedPair build_pair(const Record& rec, const PromptTemplate& tpl, const Tokenizer& tok, bool distinct = true);

enum class PairFit { Fits, Truncated, Dropped, DroppedIdentical, NoResponse };

// Applies --max-seq-len `max_len` to both sequences. Drop: a pair with a sequence longer than max_len is
// dropped. Truncate: the prompt loses tokens from its start (its end is kept, as TRL's keep_end; a
// leading BOS stays) until the longer sequence fits, but never below min(prompt, max_len / 2) tokens
// (TRL's default max_prompt_length is half its max_length); then each response is cut at its end to fit.
// `response_cut` tells whether responses were cut. A pair that truncation leaves without a response
// token in a sequence (NoResponse) or identical (DroppedIdentical) is to be dropped.
PairFit fit_pair(TokenizedPair& p, int64_t max_len, bool drop, std::optional<TokenId> bos, bool& response_cut);

}  // namespace shardtune::prep
