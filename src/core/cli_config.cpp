// Flat-TOML checking of --config files and CLI11 parsing with FILE:LINE errors (see cli_config.h).
#include "shardtune/core/cli_config.h"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace shardtune::cli {

namespace {

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t\r\n");
  if (a == std::string::npos) return {};
  return s.substr(a, s.find_last_not_of(" \t\r\n") - a + 1);
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

bool bare_key(const std::string& k) {
  return !k.empty() && std::all_of(k.begin(), k.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_';
  });
}

bool bare_value_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == '+' || c == ':' ||
         c == '/';
}

const char* const kFlatHint =
    "shardtune config files are flat: one `key = value` per line at the top level, keys named like the long "
    "options without '--' (see --help)";

// Scans one value (string, bare word/number, or array) starting at text[pos]. On success sets pos past
// it; on failure returns the problem's message.
std::optional<std::string> scan_value(const std::string& text, size_t& pos, bool in_array) {
  auto at_end = [&] { return pos >= text.size(); };
  if (at_end() || text[pos] == '\n' || text[pos] == '#') return std::string("has no value");
  const char c = text[pos];
  if (c == '"' || c == '\'') {
    if (text.compare(pos, 3, std::string(3, c)) == 0) return std::string("uses a multi-line string, which is not supported");
    size_t i = pos + 1;
    for (; i < text.size() && text[i] != c && text[i] != '\n'; ++i) {
      if (text[i] == '#')
        return std::string("has a '#' inside a string: the config reader takes it for the start of a comment");
      if (c == '"' && text[i] == '\\') ++i;
    }
    if (i >= text.size() || text[i] != c) return std::string("has an unterminated string (missing closing ") + c + ")";
    pos = i + 1;
    return std::nullopt;
  }
  if (c == '[') {
    if (in_array) return std::string("has a nested array, which is not supported");
    ++pos;
    bool want_value = true, after_comma = false;
    for (;;) {
      while (!at_end() && (text[pos] == ' ' || text[pos] == '\t' || text[pos] == '\r')) ++pos;
      // CLI11 joins the lines of a multi-line array without separators and keeps comments in it:
      // only one-line arrays are read reliably.
      if (at_end() || text[pos] == '\n' || text[pos] == '#')
        return std::string("has an array that does not end on its line (missing ']'; arrays must be on one line)");
      if (text[pos] == ']') {
        if (after_comma)
          return std::string("has a trailing ',' in an array (it would add an empty value)");
        ++pos;
        return std::nullopt;
      }
      if (!want_value) {
        if (text[pos] != ',') return std::string("has array items not separated by ','");
        ++pos;
        want_value = after_comma = true;
        continue;
      }
      if (text[pos] == ',') return std::string("has an empty array item");
      if (auto err = scan_value(text, pos, true)) return err;
      want_value = after_comma = false;
    }
  }
  if (c == '{') return std::string("uses an inline table, which is not supported");
  if (!bare_value_char(c)) return std::string("has a value starting with '") + c + "'";
  while (!at_end() && bare_value_char(text[pos])) ++pos;
  return std::nullopt;
}

}  // namespace

TomlCheck check_flat_toml(const std::string& text, const std::vector<std::string>& known_keys) {
  TomlCheck out;
  auto fail = [&](int line, std::string msg, std::string hint) {
    out.problem = TomlProblem{line, std::move(msg), std::move(hint)};
    return out;
  };
  int line = 1;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    const std::string raw = text.substr(pos, nl - pos), l = trim(raw);
    const int this_line = line;
    if (l.empty() || l[0] == '#' || l[0] == ';') {
      pos = nl + 1;
      ++line;
      continue;
    }
    if (l[0] == '[')
      return fail(this_line, "section header '" + l + "' is not supported", std::string(kFlatHint) +
                  "; remove the header and write its keys at the top level");
    const size_t eq = raw.find('=');
    if (eq == std::string::npos)
      return fail(this_line, "expected 'key = value', found '" + l + "'", std::string(kFlatHint) + "; flags take true/false (e.g. pack = true)");
    std::string key = trim(raw.substr(0, eq));
    if (key.size() >= 2 && (key.front() == '"' || key.front() == '\'') && key.back() == key.front())
      key = key.substr(1, key.size() - 2);
    if (key.empty()) return fail(this_line, "a value without a key: '" + l + "'", kFlatHint);
    if (!bare_key(key)) {
      if (key.find('.') != std::string::npos)
        return fail(this_line, "dotted key '" + key + "' is not supported", kFlatHint);
      return fail(this_line, "'" + key + "' is not a valid key", kFlatHint);
    }
    size_t vpos = pos + eq + 1;
    while (vpos < text.size() && (text[vpos] == ' ' || text[vpos] == '\t')) ++vpos;
    const size_t vstart = vpos;
    if (auto err = scan_value(text, vpos, false))
      return fail(this_line, "key '" + key + "' " + *err,
                  "values are \"strings\", numbers, true/false or [arrays, of, them]; a '#' starts a comment");
    const std::string value = text.substr(vstart, vpos - vstart);
    // After the value: only blanks and an optional comment.
    size_t rest = vpos;
    while (rest < text.size() && (text[rest] == ' ' || text[rest] == '\t' || text[rest] == '\r')) ++rest;
    if (rest < text.size() && text[rest] != '\n' && text[rest] != '#') {
      size_t e = text.find('\n', rest);
      return fail(this_line,
                  "unexpected '" + trim(text.substr(rest, (e == std::string::npos ? text.size() : e) - rest)) +
                      "' after the value of key '" + key + "'",
                  "quote strings that contain spaces; give several values as an array: key = [\"a\", \"b\"]");
    }
    if (std::find(known_keys.begin(), known_keys.end(), key) == known_keys.end()) {
      std::string best;
      size_t best_d = 3;  // suggest only close matches
      for (const auto& k : known_keys) {
        const size_t d = edit_distance(key, k);
        if (d < best_d) best_d = d, best = k;
      }
      return fail(this_line, "unknown key '" + key + "'",
                  (best.empty() ? std::string() : "did you mean '" + best + "'? ") +
                      "keys are the long option names without '--' (see --help)");
    }
    for (const auto& k : out.keys)
      if (k.key == key)
        return fail(this_line, "key '" + key + "' is given twice (lines " + std::to_string(k.line) + " and " +
                                   std::to_string(this_line) + ")", "keep one of them");
    out.keys.push_back({key, value, this_line});
    pos = nl + 1;
    ++line;
  }
  return out;
}

namespace {

// The value of the last "--config X" / "--config=X" on the command line, if any.
std::optional<std::string> config_arg(int argc, char** argv) {
  std::optional<std::string> path;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--") break;
    if (a == "--config" && i + 1 < argc) path = argv[++i];
    else if (a.rfind("--config=", 0) == 0) path = a.substr(9);
  }
  return path;
}

bool on_command_line(int argc, char** argv, const std::string& key) {
  const std::string opt = "--" + key;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == opt || a.rfind(opt + "=", 0) == 0) return true;
  }
  return false;
}

int report(bool print, const char* program, const std::string& where, const std::string& msg, const std::string& hint) {
  if (print)
    std::fprintf(stderr, "%s: error: %s: %s\n  ---> HINT: %s\n", program, where.c_str(), msg.c_str(), hint.c_str());
  return 2;
}

}  // namespace

int parse(CLI::App& app, int argc, char** argv, const char* program, bool print) {
  const std::optional<std::string> config = config_arg(argc, argv);
  TomlCheck check;
  if (config && !config->empty()) {
    if (std::filesystem::is_directory(*config))
      return report(print, program, "--config '" + *config + "'", "is a folder, not a TOML file",
                    "give the path of a .toml file (e.g. configs/finetune-full.toml)");
    std::ifstream in(*config, std::ios::binary);
    if (!in.good())
      return report(print, program, "--config '" + *config + "'", "cannot read the file", "check the path");
    std::stringstream ss;
    ss << in.rdbuf();
    std::vector<std::string> known;
    for (const CLI::Option* o : app.get_options()) {
      if (!o->get_configurable()) continue;
      for (const auto& n : o->get_lnames()) known.push_back(n);
      for (const auto& n : o->get_snames()) known.push_back(n);
    }
    check = check_flat_toml(ss.str(), known);
    if (check.problem)
      return report(print, program, *config + ":" + std::to_string(check.problem->line), check.problem->message,
                    check.problem->hint);
  }
  try {
    app.parse(argc, argv);
    return -1;
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() != 0 && config) {
      // A value from the file CLI11 could not use ("Could not convert: --lr = abc", "--steps: At Most
      // 1 required but received 2"): name the file and line. Options also given on the command line
      // took the command line's value, so the error is not the file's.
      const std::string msg = e.what();
      for (const auto& k : check.keys) {
        const std::string opt = "--" + k.key;
        size_t at = msg.find(opt);
        const size_t end = at + opt.size();
        const bool mentioned = at != std::string::npos &&
                               (end == msg.size() || !(std::isalnum(static_cast<unsigned char>(msg[end])) ||
                                                       msg[end] == '-' || msg[end] == '_'));
        if (mentioned && !on_command_line(argc, argv, k.key))
          return report(print, program, *config + ":" + std::to_string(k.line), k.key + " = " + k.value + ": " + msg,
                        "fix the value in the config file (see --help for the option's type)");
      }
    }
    if (!print) return e.get_exit_code() == 0 ? 0 : 2;
    // Every usage error exits 2, as documented and as the other ranks do (CLI11's own codes are 1xx).
    return app.exit(e) == 0 ? 0 : 2;
  }
}

}  // namespace shardtune::cli
