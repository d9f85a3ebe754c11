// Template loading/validation and placeholder rendering ("{field}", "{{" and "}}" for literal braces).
#include "template.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>

#include "builtin_templates.h"  // generated: kBuiltinTemplates {name, json}
#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/core/json_depth.h"

namespace shardtune::prep {

Pattern::Pattern(const std::string& text, const std::vector<std::string>& allowed, const std::string& where) {
  std::string lit;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if ((c == '{' || c == '}') && i + 1 < text.size() && text[i + 1] == c) {
      lit.push_back(c);
      ++i;
    } else if (c == '{') {
      size_t end = text.find('}', i);
      ST_CHECK(end != std::string::npos, where + ": unclosed '{' in \"" + text + "\"", "write {{ for a literal brace");
      std::string name = text.substr(i + 1, end - i - 1);
      ST_CHECK(std::find(allowed.begin(), allowed.end(), name) != allowed.end(),
               where + ": unknown placeholder {" + name + "} in \"" + text + "\"",
               "allowed here: {" + [&] {
                 std::string s;
                 for (const auto& a : allowed) s += (s.empty() ? "" : "}, {") + a;
                 return s;
               }() + "}");
      if (!lit.empty()) pieces_.push_back({std::move(lit), false});
      lit.clear();
      pieces_.push_back({name, true});
      i = end;
    } else {
      ST_CHECK(c != '}', where + ": stray '}' in \"" + text + "\"", "write }} for a literal brace");
      lit.push_back(c);
    }
  }
  if (!lit.empty()) pieces_.push_back({std::move(lit), false});
}

std::vector<Run> Pattern::render(const std::map<std::string, std::string>& fields) const {
  std::vector<Run> runs;
  for (const auto& p : pieces_) {
    if (p.is_field) {
      auto it = fields.find(p.text);
      if (it != fields.end() && !it->second.empty()) runs.push_back({it->second, false});
    } else {
      runs.push_back({p.text, true});
    }
  }
  return runs;
}

bool Pattern::has_field(const std::string& name) const {
  return std::any_of(pieces_.begin(), pieces_.end(), [&](const Piece& p) { return p.is_field && p.text == name; });
}

namespace {

using nlohmann::json;

// A pattern that lacks the placeholder its role needs renders every sample the same (a response
// without {output} trains each target as the bare template text): refuse the template.
void require_field(const Pattern& p, const std::string& where, const char* key, const char* field, const char* why) {
  ST_CHECK(p.has_field(field), "template " + where + ": \"" + key + "\" lacks the {" + field + "} placeholder, so " + why,
           std::string("add {") + field + "} to \"" + key + "\" (see configs/templates/alpaca.json)");
}

void refuse_field(const Pattern& p, const std::string& where, const char* key, const char* field) {
  ST_CHECK(!p.has_field(field),
           "template " + where + ": \"" + key + "\" contains {" + field + "}: the answer would be shown in the prompt",
           std::string("put {") + field + "} in the \"response\" pattern only");
}

Pattern get_pattern(const json& obj, const char* key, const std::vector<std::string>& allowed, const std::string& where,
                    bool required) {
  if (!obj.contains(key)) {
    ST_CHECK(!required, where + ": missing \"" + key + "\"", "see configs/templates/alpaca.json for the layout");
    return {};
  }
  ST_CHECK(obj[key].is_string(), where + ": \"" + key + "\" must be a string");
  return Pattern(obj[key].get<std::string>(), allowed, where + "." + key);
}

}  // namespace

PromptTemplate PromptTemplate::parse(const std::string& text, const std::string& where) {
  check_json_depth(text, "template " + where);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    ST_FAIL("template " + where + " is not valid JSON: " + e.what(), "fix the file or pick a built-in template");
  }
  ST_CHECK(j.is_object(), "template " + where + " must be a JSON object");
  PromptTemplate t;
  t.name = j.value("name", std::filesystem::path(where).stem().string());
  t.hash = fs::sha256_hex(text);
  t.append_eos = j.value("append_eos", true);
  if (j.contains("instruction")) {
    const auto& s = j["instruction"];
    std::vector<std::string> f = {"instruction", "input", "output"};
    t.instruction_prompt = get_pattern(s, "prompt", f, where + ":instruction", true);
    t.instruction_prompt_no_input = get_pattern(s, "prompt_no_input", f, where + ":instruction", false);
    t.instruction_response = get_pattern(s, "response", f, where + ":instruction", true);
    require_field(t.instruction_prompt, where, "instruction.prompt", "instruction", "every prompt would lack its instruction");
    if (!t.instruction_prompt_no_input.empty())
      require_field(t.instruction_prompt_no_input, where, "instruction.prompt_no_input", "instruction",
                    "every prompt would lack its instruction");
    require_field(t.instruction_response, where, "instruction.response", "output",
                  "every target would be the bare template text");
    refuse_field(t.instruction_prompt, where, "instruction.prompt", "output");
    refuse_field(t.instruction_prompt_no_input, where, "instruction.prompt_no_input", "output");
  }
  if (j.contains("input_output")) {
    const auto& s = j["input_output"];
    t.io_prompt = get_pattern(s, "prompt", {"input", "output"}, where + ":input_output", true);
    t.io_response = get_pattern(s, "response", {"input", "output"}, where + ":input_output", true);
    require_field(t.io_prompt, where, "input_output.prompt", "input", "every prompt would lack its input");
    require_field(t.io_response, where, "input_output.response", "output", "every target would be the bare template text");
    refuse_field(t.io_prompt, where, "input_output.prompt", "output");
  }
  if (j.contains("chat")) {
    ST_CHECK(j["chat"].is_object(), "template " + where + ": \"chat\" must be an object of roles");
    for (const auto& [role, turn] : j["chat"].items()) {
      std::string w = where + ":chat." + role;
      ST_CHECK(turn.is_object(), w + " must be an object with \"prompt\" and optionally \"response\"");
      Turn tr;
      tr.prompt = get_pattern(turn, "prompt", {"content"}, w, false);
      tr.has_response = turn.contains("response");
      tr.response = get_pattern(turn, "response", {"content"}, w, false);
      const std::string key = "chat." + role;
      if (role == "assistant")  // only "response" text is trained on
        require_field(tr.response, where, (key + ".response").c_str(), "content",
                      "no assistant message would be trained on");
      else
        ST_CHECK(tr.prompt.has_field("content") || tr.response.has_field("content"),
                 "template " + where + ": \"" + key + "\" lacks the {content} placeholder, so every " + role +
                     " message would be dropped",
                 "add {content} to its \"prompt\" (see configs/templates/alpaca.json)");
      t.chat[role] = std::move(tr);
    }
  }
  return t;
}

PromptTemplate PromptTemplate::load(const std::string& spec) {
  for (const auto& b : kBuiltinTemplates)
    if (spec == b.name) return parse(b.json, std::string("built-in template '") + b.name + "'");
  std::error_code ec;
  ST_CHECK(std::filesystem::is_regular_file(spec, ec),
           "unknown template '" + spec + "' (not a built-in name and not a file)",
           "built-in templates: " + [] {
             std::string s;
             for (const auto& n : builtin_template_names()) s += (s.empty() ? "" : ", ") + n;
             return s;
           }() + "; or pass the path of a JSON template file");
  return parse(fs::read_file(spec), spec);
}

std::vector<std::string> builtin_template_names() {
  std::vector<std::string> out;
  for (const auto& b : kBuiltinTemplates) out.push_back(b.name);
  return out;
}

}  // namespace shardtune::prep
