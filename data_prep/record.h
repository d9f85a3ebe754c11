// One JSONL line -> a typed record (text, instruction, input/output or chat), with format detection and
// errors that say which field is wrong. Samples are built from records by `build_sample`.
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

enum class Format { Auto, Text, Instruction, InputOutput, Chat };
Format parse_format(const std::string& s);  // throws Error for an unknown name
const char* format_name(Format f);

struct Message {
  std::string role, content;
};

struct Record {
  Format format = Format::Text;
  std::string text, instruction, input, output;
  std::vector<Message> messages;
};

// Thrown for a bad line; the caller adds file and line number.
struct RecordError {
  std::string message;
};

// Parses one JSONL line. `want` = Auto detects by keys ("messages", "instruction", "input"+"output",
// "text"); otherwise the line must have that format's fields. Throws RecordError.
Record parse_record(simdjson::dom::parser& parser, std::string_view line, Format want);

// A tokenized training sample: tokens and, per token, 1 when it is a training target.
struct Sample {
  std::vector<TokenId> tokens;
  std::vector<uint8_t> mask;
};

// Renders `rec` with `tpl` and tokenizes it: [BOS] prompt(mask 0) response(mask 1) ... [EOS(mask 1)].
// Prompt and response segments are tokenized separately, so the mask boundary is exact.
Sample build_sample(const Record& rec, const PromptTemplate& tpl, const Tokenizer& tok);

}  // namespace shardtune::prep
