// set_json_member: one scan over the top-level members of a JSON object's text (keys, value spans).
#include "json_members.h"

#include "shardtune/core/error.h"

namespace shardtune::exporter {

namespace {

bool is_ws(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

size_t skip_ws(const std::string& s, size_t i) {
  while (i < s.size() && is_ws(s[i])) ++i;
  return i;
}

// s[i] == '"': the index after the closing quote.
size_t end_of_string(const std::string& s, size_t i) {
  for (++i; i < s.size(); ++i) {
    if (s[i] == '\\') ++i;
    else if (s[i] == '"') return i + 1;
  }
  return s.size();
}

size_t end_of_value(const std::string& s, size_t i) {
  if (i >= s.size()) return i;
  if (s[i] == '"') return end_of_string(s, i);
  if (s[i] == '{' || s[i] == '[') {
    int depth = 0;
    while (i < s.size()) {
      const char c = s[i];
      if (c == '"') {
        i = end_of_string(s, i);
        continue;
      }
      if (c == '{' || c == '[') ++depth;
      if (c == '}' || c == ']') --depth;
      ++i;
      if (depth == 0) return i;
    }
    return i;
  }
  while (i < s.size() && !is_ws(s[i]) && s[i] != ',' && s[i] != '}' && s[i] != ']') ++i;  // number, literal
  return i;
}

}  // namespace

std::string set_json_member(const std::string& text, const std::string& key, const std::string& value_json) {
  size_t i = skip_ws(text, 0);
  ST_CHECK(i < text.size() && text[i] == '{', "set_json_member: not a JSON object");
  const size_t open = i;
  std::string indent = "\n  ";
  size_t last_end = std::string::npos;  // end of the last member's value
  i = skip_ws(text, i + 1);
  bool first = true;
  while (i < text.size() && text[i] == '"') {
    if (first) indent = text.substr(open + 1, i - open - 1);
    first = false;
    const size_t kend = end_of_string(text, i);
    const std::string k = text.substr(i + 1, kend - i - 2);
    i = skip_ws(text, kend);
    ST_CHECK(i < text.size() && text[i] == ':', "set_json_member: malformed object");
    const size_t vstart = skip_ws(text, i + 1), vend = end_of_value(text, vstart);
    if (k == key) return text.substr(0, vstart) + value_json + text.substr(vend);
    last_end = vend;
    i = skip_ws(text, vend);
    if (i < text.size() && text[i] == ',') i = skip_ws(text, i + 1);
  }
  const std::string member = "\"" + key + "\": " + value_json;
  if (last_end == std::string::npos)  // {} -> {"key": value}
    return text.substr(0, open + 1) + member + text.substr(open + 1);
  if (indent.empty() || indent.find_first_not_of(" \n\r\t") != std::string::npos) indent = " ";
  return text.substr(0, last_end) + "," + indent + member + text.substr(last_end);
}

}  // namespace shardtune::exporter
