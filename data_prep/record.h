// One JSONL line -> a typed record (text, instruction, input/output, chat or a preference pair), with
// format detection and errors that say which field is wrong. Samples are built from records by
// `build_sample` (pairs by `build_pair`, preference.h).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "template.h"
#include "shardtune/tokenizer/tokenizer.h"

namespace simdjson::dom {
class parser;
}

namespace shardtune::prep {

enum class Format { Auto, Text, Instruction, InputOutput, Chat, Preference };
Format parse_format(const std::string& s);  // throws Error for an unknown name
const char* format_name(Format f);

struct Message {
  std::string role, content;
};

// A preference pair (issue 11). Plain: prompt, chosen and rejected strings. Chat (messages in
// "chosen"/"rejected", and optionally a message-list "prompt"): the messages shared by both
// conversations before their last one, and each conversation's last (assistant) message.
struct PairFields {
  bool chat = false;
  std::string prompt, chosen, rejected;
  std::vector<Message> prompt_messages;
  Message chosen_message, rejected_message;
};

struct Record {
  Format format = Format::Text;
  std::string text, instruction, input, output;
  std::vector<Message> messages;
  PairFields pair;  // Format::Preference
};

// Thrown for a bad line; the caller adds file and line number.
struct RecordError {
  std::string message;
};

// Parses one JSONL line. `want` = Auto detects by keys ("chosen" or "rejected" = a preference pair,
// "messages", "instruction", "input"+"output", "text"); otherwise the line must have that format's
// fields. Throws RecordError.
Record parse_record(simdjson::dom::parser& parser, std::string_view line, Format want);

// shardtune-score --input: what one line holds. Pair: parse_record's preference forms. Completion:
// {"prompt", "completion"} in the plain or the chat form (the completion a string, a message list or an
// assistant message object), returned as a pair whose chosen and rejected are both the completion, so it
// tokenizes exactly as a pair's chosen side. Text: {"text"} (Format::Text). Throws RecordError.
enum class ScoreLine { Pair, Completion, Text };
Record parse_score_line(simdjson::dom::parser& parser, std::string_view line, ScoreLine& kind);

// A tokenized training sample: tokens and, per token, 1 when it is a training target.
struct Sample {
  std::vector<TokenId> tokens;
  std::vector<uint8_t> mask;
};

// Encodes template runs into `out` with one mask value: trusted text is split at the tokenizer's
// special-token strings, plain text between specials is encoded in one call.
void encode_runs(const std::vector<Run>& runs, const Tokenizer& tok, uint8_t mask, Sample& out);

// Renders `rec` with `tpl` and tokenizes it: [BOS] prompt(mask 0) response(mask 1) ... [EOS(mask 1)].
// Prompt and response segments are tokenized separately, so the mask boundary is exact.
Sample build_sample(const Record& rec, const PromptTemplate& tpl, const Tokenizer& tok);

}  // namespace shardtune::prep
