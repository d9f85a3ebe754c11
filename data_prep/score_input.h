// shardtune-score --input: one JSONL line (a pair, a completion or a text) tokenized exactly as
// shardtune-prep tokenizes it (record.h's parsing, build_pair / build_sample, fit_pair's truncation), so a
// reward model scores the token sequences it was trained on. Torch- and SentencePiece-free: it links into
// LibTorch processes.
#pragma once

#include <cstdint>
#include <string_view>

#include "preference.h"
#include "record.h"

namespace shardtune::prep {

struct ScoreSample {
  ScoreLine kind = ScoreLine::Pair;
  TokenizedPair seq;       // Pair: both sides; Completion, Text: `seq.chosen` only (rejected left empty)
  bool truncated = false;  // max_len cut it (the prompt first, as prep's --overlong truncate)
};

// `max_len` > 0: prep's --max-seq-len with --overlong truncate (pairs and completions: fit_pair, the
// prompt's end kept; texts: cut at the end); 0: nothing is cut. Throws RecordError for a bad line, a
// pair identical after tokenization (or after truncation) and a sequence left without a response token.
ScoreSample tokenize_score_line(simdjson::dom::parser& parser, std::string_view line, const PromptTemplate& tpl,
                                const Tokenizer& tok, int64_t max_len);

}  // namespace shardtune::prep
