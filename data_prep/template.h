// Prompt templates: data files (configs/templates/*.json, embedded at build time) that turn a record's
// fields into prompt text (loss_mask 0) and response text (loss_mask 1).
#pragma once

#include <map>
#include <string>
#include <vector>

namespace shardtune::prep {

// A piece of rendered text. Template text is trusted (its special-token strings become special ids);
// field values come from the user's data and are always encoded as plain text.
struct Run {
  std::string text;
  bool trusted = false;
};

// A parsed pattern such as "### Instruction:\n{instruction}\n": literal pieces and placeholders.
class Pattern {
 public:
  Pattern() = default;
  Pattern(const std::string& text, const std::vector<std::string>& allowed, const std::string& where);
  std::vector<Run> render(const std::map<std::string, std::string>& fields) const;
  bool empty() const { return pieces_.empty(); }
  bool has_field(const std::string& name) const;

  struct Piece {
    std::string text;  // literal text, or the placeholder's name
    bool is_field;
  };
  const std::vector<Piece>& pieces() const { return pieces_; }

 private:
  std::vector<Piece> pieces_;
};

struct Turn {
  Pattern prompt, response;
  bool has_response = false;
};

struct PromptTemplate {
  std::string name;
  std::string hash;  // sha256 of the template's JSON text
  bool append_eos = true;
  Pattern instruction_prompt, instruction_prompt_no_input, instruction_response;
  Pattern io_prompt, io_response;
  std::map<std::string, Turn> chat;  // role -> turn patterns

  // SPEC is a built-in name (see `builtin_template_names`) or a path to a JSON file.
  static PromptTemplate load(const std::string& spec);
  static PromptTemplate parse(const std::string& json_text, const std::string& where);
};

std::vector<std::string> builtin_template_names();

}  // namespace shardtune::prep
