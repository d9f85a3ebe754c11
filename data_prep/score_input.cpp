// One shardtune-score --input line -> token sequences, as shardtune-prep would write them (score_input.h).
#include "score_input.h"

#include <algorithm>
#include <string>

namespace shardtune::prep {

namespace {

bool has_target(const Sample& s, int64_t prompt_len) {
  return std::any_of(s.mask.begin() + std::min<int64_t>(prompt_len, int64_t(s.mask.size())), s.mask.end(),
                     [](uint8_t m) { return m == 1; });
}

std::string too_short(int64_t max_len) {
  return "no response token is left within --max-seq-len " + std::to_string(max_len) +
         " (prep would drop this line): raise --max-seq-len";
}

}  // namespace

ScoreSample tokenize_score_line(simdjson::dom::parser& parser, std::string_view line, const PromptTemplate& tpl,
                                const Tokenizer& tok, int64_t max_len) {
  ScoreSample out;
  Record rec = parse_score_line(parser, line, out.kind);
  if (out.kind == ScoreLine::Text) {
    if (rec.text.empty()) throw RecordError{"field \"text\" is empty: there is nothing to score"};
    Sample s = build_sample(rec, tpl, tok);
    if (max_len > 0 && int64_t(s.tokens.size()) > max_len) {  // prep's --overlong truncate: the end goes
      s.tokens.resize(size_t(max_len));
      s.mask.resize(size_t(max_len));
      out.truncated = true;
    }
    if (!has_target(s, 0)) throw RecordError{max_len > 0 && out.truncated ? too_short(max_len) : "the text has no token"};
    out.seq.chosen = std::move(s);
    return out;
  }
  const bool pair = out.kind == ScoreLine::Pair;
  out.seq = build_pair(rec, tpl, tok, /*distinct=*/pair);
  if (max_len > 0) {
    bool response_cut = false;
    switch (fit_pair(out.seq, max_len, /*drop=*/false, tok.add_bos ? tok.bos_id : std::nullopt, response_cut)) {
      case PairFit::Fits: break;
      case PairFit::Truncated: out.truncated = true; break;
      case PairFit::DroppedIdentical:
        if (pair)
          throw RecordError{"\"chosen\" and \"rejected\" are identical once cut to --max-seq-len " +
                            std::to_string(max_len) + " (prep would drop this pair): raise --max-seq-len"};
        out.truncated = true;  // a completion: its two sides are the same by construction
        break;
      case PairFit::NoResponse:
      case PairFit::Dropped: throw RecordError{too_short(max_len)};
    }
  }
  // As prep's finish_pair: a side without a response token (a template that appends no EOS) is no sample.
  if (!has_target(out.seq.chosen, out.seq.prompt_len) || (pair && !has_target(out.seq.rejected, out.seq.prompt_len)))
    throw RecordError{"a response has no token (empty, and the template appends no EOS), so it has no reward"};
  if (!pair) out.seq.rejected = Sample{};
  return out;
}

}  // namespace shardtune::prep
