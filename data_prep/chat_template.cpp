// hf_chat_template: each chat turn's prompt and response patterns become Jinja string concatenations over
// message['content'], in the order build_sample (record.cpp) renders them. Text only ever appears inside
// Jinja string literals, so transformers' trim_blocks / lstrip_blocks cannot change it and "{{" in a
// template's text stays literal.
#include "chat_template.h"

#include <cstdio>

namespace shardtune::prep {

namespace {

// A Jinja (Python-style) single-quoted string literal. Non-ASCII UTF-8 may stay raw: Jinja's lexer
// round-trips it through backslashreplace / unicode-escape.
std::string literal(const std::string& s) {
  std::string out = "'";
  for (unsigned char c : s) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '\'': out += "\\'"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\x%02x", c);
          out += buf;
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  return out + "'";
}

// "{{ 'lit' + message['content'] + 'lit' }}" for a pattern; `content` "" leaves the placeholder out (an
// empty field renders nothing in prep either).
std::string output(const Pattern& p, const std::string& content) {
  std::string expr;
  for (const auto& piece : p.pieces()) {
    if (piece.is_field && content.empty()) continue;
    expr += (expr.empty() ? "" : " + ") + (piece.is_field ? content : literal(piece.text));
  }
  return expr.empty() ? "" : "{{ " + expr + " }}";
}

}  // namespace

std::string hf_chat_template(const PromptTemplate& tpl, bool bos, bool eos) {
  const auto assistant = tpl.chat.find("assistant");
  if (assistant == tpl.chat.end()) return "";
  std::string j = bos ? "{{ bos_token }}" : "";
  j += "{% for message in messages %}";
  bool first = true;
  for (const auto& [role, turn] : tpl.chat) {
    j += std::string(first ? "{% if" : "{% elif") + " message['role'] == " + literal(role) + " %}";
    j += output(turn.prompt, "message['content']");
    if (turn.has_response) j += output(turn.response, "message['content']");
    first = false;
  }
  j += "{% else %}{{ raise_exception(" + literal("template '" + tpl.name + "' has no chat turn for role ") +
       " + message['role']) }}{% endif %}{% endfor %}";
  const std::string gen = output(assistant->second.prompt, "");
  if (!gen.empty() || eos) {
    j += "{% if add_generation_prompt %}" + gen;
    if (eos) j += "{% else %}{{ eos_token }}";
    j += "{% endif %}";
  }
  return j;
}

}  // namespace shardtune::prep
