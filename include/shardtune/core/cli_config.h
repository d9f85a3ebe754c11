// Command-line parsing with readable --config errors. CLI11 2.1.2 reads TOML through its INI parser:
// its errors say "INI", name neither file nor line, and some mistakes (a key without a value, a
// [section]) are silently ignored or reported as "train.++". The config file is therefore checked here
// first, as the flat TOML subset shardtune documents, and CLI11's errors about values from the file
// are given the file and line.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace shardtune::cli {

struct TomlProblem {
  int line = 0;  // 1-based
  std::string message, hint;
};

struct TomlKey {
  std::string key, value;  // value as written (quotes included)
  int line = 0;
};

struct TomlCheck {
  std::vector<TomlKey> keys;           // in file order
  std::optional<TomlProblem> problem;  // the first problem, if any
};

// Checks TEXT as flat TOML: `key = value` lines (value: "string", 'string', a bare number/word or a
// one-line array of those), blank lines and # comments. `[section]` headers,
// dotted keys, inline tables, duplicate keys and keys not in KNOWN_KEYS are problems.
TomlCheck check_flat_toml(const std::string& text, const std::vector<std::string>& known_keys);

// Parses argv into APP (which must have set_config("--config")) like app.parse(), checking the config
// file first. Returns -1 when parsing succeeded; otherwise the exit code (0 after --help), having
// printed the message to stderr (help to stdout) when PRINT is true.
int parse(CLI::App& app, int argc, char** argv, const char* program, bool print = true);

}  // namespace shardtune::cli
