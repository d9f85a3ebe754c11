// JSONL record parsing with simdjson (UTF-8 validated by the parser) and sample assembly.
#include "record.h"

#include <simdjson.h>

#include <algorithm>

#include "shardtune/core/error.h"

namespace shardtune::prep {

Format parse_format(const std::string& s) {
  if (s == "auto") return Format::Auto;
  if (s == "text") return Format::Text;
  if (s == "instruction") return Format::Instruction;
  if (s == "input_output") return Format::InputOutput;
  if (s == "chat") return Format::Chat;
  if (s == "preference") return Format::Preference;
  ST_FAIL("unknown --format '" + s + "'", "use one of auto, text, instruction, input_output, chat, preference");
}

const char* format_name(Format f) {
  switch (f) {
    case Format::Auto: return "auto";
    case Format::Text: return "text";
    case Format::Instruction: return "instruction";
    case Format::InputOutput: return "input_output";
    case Format::Chat: return "chat";
    case Format::Preference: return "preference";
  }
  return "?";
}

namespace {

const char* type_name(simdjson::dom::element_type t) {
  using T = simdjson::dom::element_type;
  switch (t) {
    case T::ARRAY: return "an array";
    case T::OBJECT: return "an object";
    case T::INT64:
    case T::UINT64:
    case T::DOUBLE: return "a number";
    case T::STRING: return "a string";
    case T::BOOL: return "a boolean";
    case T::NULL_VALUE: return "null";
  }
  return "?";
}

[[noreturn]] void bad(std::string msg) { throw RecordError{std::move(msg)}; }

bool has(simdjson::dom::object obj, const char* key) { return !obj[key].error(); }

std::string get_string(simdjson::dom::object obj, const char* key, bool required, const std::string& ctx = "") {
  auto field = obj[key];
  if (field.error()) {
    if (required) bad(ctx + "missing field \"" + key + "\"");
    return {};
  }
  simdjson::dom::element el = field.value_unsafe();
  if (!el.is_string()) {
    if (!required && el.is_null()) return {};
    bad(ctx + "field \"" + key + "\" must be a string, found " + type_name(el.type()));
  }
  return std::string(el.get_string().value_unsafe());
}

std::string keys_of(simdjson::dom::object obj) {
  std::string s;
  for (auto [k, v] : obj) s += (s.empty() ? "" : ", ") + std::string("\"") + std::string(k) + "\"";
  return s.empty() ? "none" : s;
}

// True when LINE parses once its byte-order marks are removed, i.e. they are what broke it.
bool bom_is_the_error(simdjson::dom::parser& parser, std::string_view line) {
  std::string s(line);
  for (size_t at; (at = s.find("\xEF\xBB\xBF")) != std::string::npos;) s.erase(at, 3);
  simdjson::dom::element doc;
  return !parser.parse(s.data(), s.size(), true).get(doc);
}

// A message list (field `name`), each {"role", "content"} with a known role.
std::vector<Message> parse_messages(simdjson::dom::element m, const std::string& name) {
  if (!m.is_array()) bad("field \"" + name + "\" must be an array, found " + type_name(m.type()));
  std::vector<Message> out;
  size_t i = 0;
  simdjson::dom::array items = m.get_array().value_unsafe();  // a named copy: the result temporary dies
  for (simdjson::dom::element item : items) {
    std::string ctx = name + "[" + std::to_string(i++) + "]: ";
    if (!item.is_object()) bad(ctx + "must be an object, found " + type_name(item.type()));
    simdjson::dom::object mo = item.get_object().value_unsafe();
    Message msg{get_string(mo, "role", true, ctx), get_string(mo, "content", true, ctx)};
    if (msg.role != "system" && msg.role != "user" && msg.role != "assistant")
      bad(ctx + "unknown role \"" + msg.role + "\" (expected system, user or assistant)");
    out.push_back(std::move(msg));
  }
  return out;
}

// The preference forms: {"prompt": str, "chosen": str, "rejected": str}; {"chosen": [msgs],
// "rejected": [msgs]} (the shared leading messages are the prompt); {"prompt": [msgs], "chosen": [msgs]
// or {msg}, "rejected": likewise} (TRL's conversational form: prompt + chosen is the conversation).
// `ck`/`rk` name the two response fields: "chosen"/"rejected", or "completion" twice for shardtune-score's
// completions (one response: the pair's two sides are the same, and every check between them holds).
PairFields parse_pair(simdjson::dom::object obj, const char* ck = "chosen", const char* rk = "rejected") {
  using T = simdjson::dom::element_type;
  auto get = [&](const char* key) {
    auto f = obj[key];
    if (f.error()) bad(std::string("missing field \"") + key + "\"");
    return f.value_unsafe();
  };
  simdjson::dom::element chosen = get(ck), rejected = get(rk);
  const std::string C = std::string("\"") + ck + "\"", R = std::string("\"") + rk + "\"";
  const bool one = std::string(ck) == rk;
  const std::string both = one ? C + " is" : C + " and " + R + " are";
  PairFields p;
  if (chosen.type() == T::STRING) {
    if (rejected.type() != T::STRING)
      bad("field " + R + " must be a string like " + C + ", found " + type_name(rejected.type()));
    auto pr = obj["prompt"];
    if (pr.error()) bad("missing field \"prompt\" (" + both + " strings, so the prompt is its own field)");
    if (!pr.value_unsafe().is_string())
      bad("field \"prompt\" must be a string like " + C + ", found " + type_name(pr.value_unsafe().type()));
    p.prompt = std::string(pr.value_unsafe().get_string().value_unsafe());
    p.chosen = std::string(chosen.get_string().value_unsafe());
    p.rejected = std::string(rejected.get_string().value_unsafe());
    return p;
  }
  // Chat forms: a single message object stands for a one-message list.
  auto messages_of = [&](simdjson::dom::element el, const char* name) {
    if (el.type() == T::OBJECT) {
      simdjson::dom::object mo = el.get_object().value_unsafe();
      const std::string ctx = std::string(name) + ": ";
      Message msg{get_string(mo, "role", true, ctx), get_string(mo, "content", true, ctx)};
      if (msg.role != "assistant") bad(ctx + "a single message must have role \"assistant\", found \"" + msg.role + "\"");
      return std::vector<Message>{msg};
    }
    if (el.type() != T::ARRAY)
      bad(std::string("field \"") + name + "\" must be a string, a message list or an assistant message object, found " +
          type_name(el.type()));
    return parse_messages(el, name);
  };
  std::vector<Message> c = messages_of(chosen, ck), r = messages_of(rejected, rk);
  std::vector<Message> prompt;
  auto pr = obj["prompt"];
  if (!pr.error()) {
    if (!pr.value_unsafe().is_array())
      bad("field \"prompt\" must be a message list when " + C + " holds messages, found " +
          type_name(pr.value_unsafe().type()));
    prompt = parse_messages(pr.value_unsafe(), "prompt");
  }
  c.insert(c.begin(), prompt.begin(), prompt.end());
  r.insert(r.begin(), prompt.begin(), prompt.end());
  for (auto [conv, name] : {std::pair{&c, ck}, std::pair{&r, rk}}) {
    if (conv->empty()) bad(std::string("\"") + name + "\" has no messages");
    if (conv->back().role != "assistant")
      bad(std::string("the last message of \"") + name + "\" must be the assistant's response, found role \"" +
          conv->back().role + "\"");
  }
  if (c.size() != r.size())
    bad("\"chosen\" and \"rejected\" must share every message before their last (the prompt), but they have " +
        std::to_string(c.size()) + " and " + std::to_string(r.size()) + " messages");
  for (size_t i = 0; i + 1 < c.size(); ++i)
    if (c[i].role != r[i].role || c[i].content != r[i].content)
      bad("\"chosen\" and \"rejected\" must share every message before their last (the prompt), but message " +
          std::to_string(i) + " of the conversation differs");
  if (c.size() < 2) bad("no prompt: " + std::string(one ? C + " holds" : C + " and " + R + " hold") + " only the response (give the shared prompt messages, or a \"prompt\" message list)");
  p.chat = true;
  p.chosen_message = c.back();
  p.rejected_message = r.back();
  c.pop_back();
  p.prompt_messages = std::move(c);
  return p;
}

// One line as a JSON object (valid while `parser` parses nothing else), or a RecordError saying why not.
simdjson::dom::object parse_object(simdjson::dom::parser& parser, std::string_view line) {
  simdjson::dom::element doc;
  auto err = parser.parse(line.data(), line.size(), true).get(doc);
  if (err == simdjson::UTF8_ERROR) bad("invalid UTF-8");
  if (err) {
    // A byte-order mark is accepted at the start of a file only (the caller skips it there); one
    // elsewhere, e.g. from files joined with `cat`, is not JSON: say so instead of "structure error".
    const size_t bom = line.find("\xEF\xBB\xBF");
    if (bom != std::string_view::npos && bom_is_the_error(parser, line))
      bad("a UTF-8 byte-order mark (bytes EF BB BF) at byte " + std::to_string(bom + 1) +
          " of this line; it is allowed only at the very start of a file (were files joined with cat?)");
    bad(std::string("malformed JSON: ") + simdjson::error_message(err));
  }
  if (!doc.is_object()) bad(std::string("expected a JSON object, found ") + type_name(doc.type()));
  return doc.get_object().value_unsafe();
}

}  // namespace

Record parse_record(simdjson::dom::parser& parser, std::string_view line, Format want) {
  simdjson::dom::object obj = parse_object(parser, line);
  Format f = want;
  if (f == Format::Auto) {
    if (has(obj, "chosen") || has(obj, "rejected"))  // no other format has these keys
      f = Format::Preference;
    else if (has(obj, "messages"))
      f = Format::Chat;
    else if (has(obj, "instruction"))
      f = Format::Instruction;
    else if (has(obj, "input") && has(obj, "output"))
      f = Format::InputOutput;
    else if (has(obj, "text"))
      f = Format::Text;
    else
      bad("cannot tell the format from the fields (found " + keys_of(obj) +
          "); expected \"text\", \"instruction\"/\"input\"/\"output\", \"input\"/\"output\" or \"messages\"");
  }
  Record r;
  r.format = f;
  switch (f) {
    case Format::Text: r.text = get_string(obj, "text", true); break;
    case Format::Instruction:
      r.instruction = get_string(obj, "instruction", true);
      r.input = get_string(obj, "input", false);
      r.output = get_string(obj, "output", true);
      break;
    case Format::InputOutput:
      r.input = get_string(obj, "input", true);
      r.output = get_string(obj, "output", true);
      break;
    case Format::Chat: {
      auto msgs = obj["messages"];
      if (msgs.error()) bad("missing field \"messages\"");
      r.messages = parse_messages(msgs.value_unsafe(), "messages");
      if (std::none_of(r.messages.begin(), r.messages.end(), [](const Message& m) { return m.role == "assistant"; }))
        bad("\"messages\" has no assistant message, so there is nothing to train on");
      break;
    }
    case Format::Preference: r.pair = parse_pair(obj); break;
    case Format::Auto: break;
  }
  return r;
}

Record parse_score_line(simdjson::dom::parser& parser, std::string_view line, ScoreLine& kind) {
  simdjson::dom::object obj = parse_object(parser, line);
  Record r;
  r.format = Format::Preference;
  if (has(obj, "chosen") || has(obj, "rejected")) {
    kind = ScoreLine::Pair;
    r.pair = parse_pair(obj);
  } else if (has(obj, "completion")) {
    kind = ScoreLine::Completion;
    r.pair = parse_pair(obj, "completion", "completion");
  } else if (has(obj, "text")) {
    kind = ScoreLine::Text;
    r.format = Format::Text;
    r.text = get_string(obj, "text", true);
  } else {
    bad("cannot tell what to score from the fields (found " + keys_of(obj) +
        "); expected a pair {\"prompt\", \"chosen\", \"rejected\"}, a completion {\"prompt\", \"completion\"} or "
        "{\"text\"}");
  }
  return r;
}

// Encodes runs: trusted text is split at the tokenizer's special-token strings; all plain text between
// specials is joined and encoded in one call (so template and field text tokenize as one string).
void encode_runs(const std::vector<Run>& runs, const Tokenizer& tok, uint8_t mask, Sample& out) {
  static thread_local const Tokenizer* cached_tok = nullptr;
  static thread_local std::vector<std::pair<std::string, TokenId>> specials;
  if (cached_tok != &tok) {
    specials = tok.special_tokens();
    specials.erase(std::remove_if(specials.begin(), specials.end(), [](const auto& s) { return s.first.empty(); }),
                   specials.end());
    // Longest first, so that "<|im_start|>" wins over a shorter special that is its prefix.
    std::sort(specials.begin(), specials.end(), [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
    cached_tok = &tok;
  }
  std::string plain;
  auto flush = [&] {
    if (plain.empty()) return;
    std::vector<TokenId> ids = tok.encode(plain, false);
    out.tokens.insert(out.tokens.end(), ids.begin(), ids.end());
    out.mask.insert(out.mask.end(), ids.size(), mask);
    plain.clear();
  };
  for (const Run& run : runs) {
    if (!run.trusted) {
      plain += run.text;
      continue;
    }
    size_t pos = 0;
    while (pos < run.text.size()) {
      size_t best = std::string::npos;
      const std::pair<std::string, TokenId>* hit = nullptr;
      for (const auto& s : specials) {
        size_t at = run.text.find(s.first, pos);
        if (at < best) {
          best = at;
          hit = &s;
        }
      }
      if (!hit) {
        plain.append(run.text, pos, std::string::npos);
        break;
      }
      plain.append(run.text, pos, best - pos);
      flush();
      out.tokens.push_back(hit->second);
      out.mask.push_back(mask);
      pos = best + hit->first.size();
    }
  }
  flush();
}

Sample build_sample(const Record& rec, const PromptTemplate& tpl, const Tokenizer& tok) {
  Sample s;
  if (tok.add_bos && tok.bos_id) {
    s.tokens.push_back(*tok.bos_id);
    s.mask.push_back(0);  // never a target: nothing precedes it
  }
  auto need = [&](const Pattern& p, const char* what) {
    if (p.empty()) throw RecordError{std::string("template '") + tpl.name + "' has no \"" + what + "\" section for this record's format"};
  };
  switch (rec.format) {
    case Format::Text:
      encode_runs({{rec.text, false}}, tok, 1, s);
      break;
    case Format::Instruction: {
      std::map<std::string, std::string> f{{"instruction", rec.instruction}, {"input", rec.input}, {"output", rec.output}};
      const Pattern& prompt = rec.input.empty() && !tpl.instruction_prompt_no_input.empty() ? tpl.instruction_prompt_no_input
                                                                                             : tpl.instruction_prompt;
      need(prompt, "instruction.prompt");
      if (!rec.input.empty() && !prompt.has_field("input"))
        throw RecordError{"this line has an \"input\", but template '" + tpl.name +
                          "' has no {input} placeholder in \"instruction.prompt\", so the input would be dropped"};
      encode_runs(prompt.render(f), tok, 0, s);
      encode_runs(tpl.instruction_response.render(f), tok, 1, s);
      break;
    }
    case Format::InputOutput: {
      std::map<std::string, std::string> f{{"input", rec.input}, {"output", rec.output}};
      need(tpl.io_prompt, "input_output.prompt");
      encode_runs(tpl.io_prompt.render(f), tok, 0, s);
      encode_runs(tpl.io_response.render(f), tok, 1, s);
      break;
    }
    case Format::Chat:
      for (const Message& m : rec.messages) {
        auto it = tpl.chat.find(m.role);
        if (it == tpl.chat.end())
          throw RecordError{"template '" + tpl.name + "' has no chat turn for role \"" + m.role + "\""};
        std::map<std::string, std::string> f{{"content", m.content}};
        const Turn& turn = it->second;
        encode_runs(turn.prompt.render(f), tok, 0, s);
        if (turn.has_response) encode_runs(turn.response.render(f), tok, m.role == "assistant" ? 1 : 0, s);
      }
      break;
    case Format::Preference:
      throw RecordError{"internal: a preference pair is built by build_pair, not build_sample"};
    case Format::Auto: break;
  }
  if (tpl.append_eos && tok.eos_id) {
    s.tokens.push_back(*tok.eos_id);
    s.mask.push_back(1);  // learning to stop is part of the response
  }
  return s;
}

}  // namespace shardtune::prep
