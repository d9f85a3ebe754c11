// Tokenization and over-length handling of preference pairs (see preference.h and docs/FORMAT.md).
#include "preference.h"

#include <algorithm>
#include <map>

namespace shardtune::prep {

namespace {

// The template's chat turn for `role`, or a RecordError naming the template.
const Turn& turn_for(const PromptTemplate& tpl, const std::string& role) {
  auto it = tpl.chat.find(role);
  if (it == tpl.chat.end())
    throw RecordError{"template '" + tpl.name + "' has no chat turn for role \"" + role + "\""};
  return it->second;
}

void append(Sample& to, const Sample& from) {
  to.tokens.insert(to.tokens.end(), from.tokens.begin(), from.tokens.end());
  to.mask.insert(to.mask.end(), from.mask.begin(), from.mask.end());
}

}  // namespace

TokenizedPair build_pair(const Record& rec, const PromptTemplate& tpl, const Tokenizer& tok, bool distinct) {
  const PairFields& f = rec.pair;
  Sample prompt;
  if (tok.add_bos && tok.bos_id) {
    prompt.tokens.push_back(*tok.bos_id);
    prompt.mask.push_back(0);
  }
  Sample resp[2];
  if (!f.chat) {
    encode_runs({{f.prompt, false}}, tok, 0, prompt);
    encode_runs({{f.chosen, false}}, tok, 1, resp[0]);
    encode_runs({{f.rejected, false}}, tok, 1, resp[1]);
  } else {
    // The prompt messages as the chat format renders them, every token mask 0 (an earlier assistant
    // turn is context here, not a target), then the generation prompt: the assistant turn's opening.
    for (const Message& m : f.prompt_messages) {
      const Turn& turn = turn_for(tpl, m.role);
      std::map<std::string, std::string> fields{{"content", m.content}};
      encode_runs(turn.prompt.render(fields), tok, 0, prompt);
      if (turn.has_response) encode_runs(turn.response.render(fields), tok, 0, prompt);
    }
    const Turn& assistant = turn_for(tpl, "assistant");
    if (assistant.prompt.has_field("content"))
      throw RecordError{"template '" + tpl.name + "': \"chat.assistant.prompt\" contains {content}, so chosen and "
                        "rejected would have different prompts"};
    encode_runs(assistant.prompt.render({}), tok, 0, prompt);
    const Message* last[2] = {&f.chosen_message, &f.rejected_message};
    for (int k = 0; k < 2; ++k) encode_runs(assistant.response.render({{"content", last[k]->content}}), tok, 1, resp[k]);
  }
  for (Sample& r : resp)
    if (tpl.append_eos && tok.eos_id) {
      r.tokens.push_back(*tok.eos_id);
      r.mask.push_back(1);  // learning to stop is part of the response
    }
  if (prompt.tokens.empty())
    throw RecordError{"the prompt is empty and the tokenizer adds no BOS, so the response's first token has no context"};
  if (distinct && resp[0].tokens == resp[1].tokens)
    throw RecordError{"\"chosen\" and \"rejected\" are identical after tokenization (" +
                      std::to_string(resp[0].tokens.size()) + " response tokens), so the pair expresses no preference"};
  TokenizedPair p;
  p.prompt_len = static_cast<int64_t>(prompt.tokens.size());
  p.chosen = prompt;
  append(p.chosen, resp[0]);
  p.rejected = std::move(prompt);
  append(p.rejected, resp[1]);
  return p;
}

PairFit fit_pair(TokenizedPair& p, int64_t max_len, bool drop, std::optional<TokenId> bos, bool& response_cut) {
  response_cut = false;
  const int64_t longest = static_cast<int64_t>(std::max(p.chosen.tokens.size(), p.rejected.tokens.size()));
  if (longest <= max_len) return PairFit::Fits;
  if (drop) return PairFit::Dropped;
  // Prompt first: drop tokens from its start (after a BOS), keeping its end next to the response.
  const int64_t floor = std::min(p.prompt_len, std::max<int64_t>(1, max_len / 2));
  const int64_t keep_bos = bos && p.chosen.tokens[0] == *bos && p.prompt_len > 1 ? 1 : 0;
  const int64_t cut = std::min(longest - max_len, p.prompt_len - std::max(floor, keep_bos + 1));
  if (cut > 0) {
    for (Sample* s : {&p.chosen, &p.rejected}) {
      s->tokens.erase(s->tokens.begin() + keep_bos, s->tokens.begin() + keep_bos + cut);
      s->mask.erase(s->mask.begin() + keep_bos, s->mask.begin() + keep_bos + cut);
    }
    p.prompt_len -= cut;
  }
  // Then the responses, at their ends.
  for (Sample* s : {&p.chosen, &p.rejected})
    if (static_cast<int64_t>(s->tokens.size()) > max_len) {
      s->tokens.resize(max_len);
      s->mask.resize(max_len);
      response_cut = true;
    }
  const auto plen = static_cast<size_t>(p.prompt_len);
  if (p.chosen.tokens.size() <= plen || p.rejected.tokens.size() <= plen) return PairFit::NoResponse;
  if (p.chosen.tokens == p.rejected.tokens) return PairFit::DroppedIdentical;
  return PairFit::Truncated;
}

}  // namespace shardtune::prep
