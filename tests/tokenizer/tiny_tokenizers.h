// Hand-made tokenizer.json files for unit tests, written into a fresh temporary folder by each test.
#pragma once

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

namespace shardtune::test {

using nlohmann::json;

inline std::filesystem::path temp_dir(const std::string& tag) {
  std::random_device rd;
  auto dir = std::filesystem::temp_directory_path() / ("st_tok_" + tag + "_" + std::to_string(rd()));
  std::filesystem::create_directories(dir);
  return dir;
}

inline std::string write_file(const std::filesystem::path& p, const std::string& text) {
  std::ofstream(p, std::ios::binary) << text;
  return p.string();
}

inline std::string byte_char(int b) {  // GPT-2 bytes_to_unicode
  int n = 0;
  for (int x = 0; x < 256; ++x) {
    bool printable = (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF);
    int cp = printable ? x : 256 + n++;
    if (x == b) {
      std::string s;
      if (cp < 0x80) {
        s += static_cast<char>(cp);
      } else {
        s += static_cast<char>(0xC0 | (cp >> 6));
        s += static_cast<char>(0x80 | (cp & 0x3F));
      }
      return s;
    }
  }
  return {};
}

// SentencePiece-style (Llama 2 / Mistral layout): ids 0..2 specials, 3..258 <0xXX>, then pieces.
// "<tool>" is a non-special added token. `array_merges` writes merges as [a, b] pairs.
inline json sp_style_json(bool array_merges) {
  const std::string U = "\xE2\x96\x81";  // ▁
  json vocab = json::object();
  vocab["<unk>"] = 0;
  vocab["<s>"] = 1;
  vocab["</s>"] = 2;
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    vocab[name] = 3 + b;
  }
  int id = 259;
  for (std::string p : {U, std::string("h"), std::string("e"), std::string("l"), std::string("o"), std::string("w"),
                        std::string("r"), std::string("d")})
    vocab[p] = id++;
  std::vector<std::pair<std::string, std::string>> merges = {
      {"h", "e"}, {"l", "l"}, {"ll", "o"}, {"he", "llo"}, {U, "hello"}, {U, "w"}, {"o", "r"}, {U + "w", "or"},
      {U + "wor", "l"}, {U + "worl", "d"}};
  json m = json::array();
  for (const auto& [a, b] : merges) {
    if (!vocab.contains(a + b)) vocab[a + b] = id++;
    if (array_merges)
      m.push_back(json::array({a, b}));
    else
      m.push_back(a + " " + b);
  }
  vocab["<tool>"] = id++;
  json added = json::array();
  auto add = [&](const std::string& c, bool special) {
    added.push_back({{"id", vocab[c]}, {"content", c}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", special}});
  };
  add("<unk>", true);
  add("<s>", true);
  add("</s>", true);
  add("<tool>", false);
  json j;
  j["version"] = "1.0";
  j["added_tokens"] = added;
  j["normalizer"] = {{"type", "Sequence"},
                     {"normalizers", json::array({{{"type", "Prepend"}, {"prepend", U}},
                                                  {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", U}}})}};
  j["pre_tokenizer"] = nullptr;
  j["post_processor"] = {{"type", "TemplateProcessing"},
                         {"single", json::array({{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                                                 {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
                         {"pair", json::array()},
                         {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}};
  j["decoder"] = {{"type", "Sequence"},
                  {"decoders", json::array({{{"type", "Replace"}, {"pattern", {{"String", U}}}, {"content", " "}},
                                            {{"type", "ByteFallback"}},
                                            {{"type", "Fuse"}},
                                            {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}};
  j["model"] = {{"type", "BPE"},          {"dropout", nullptr},       {"unk_token", "<unk>"},
                {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr}, {"fuse_unk", true},
                {"byte_fallback", true},  {"vocab", vocab},           {"merges", m}};
  return j;
}

// Byte-level BPE whose ids 0..255 are the bytes; merges "a-", "-b", "--" make Split behaviours visible.
inline json byte_level_json(const json& pre_tokenizer, bool digit_merges = false) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_char(b)] = b;
  vocab["a-"] = 256;
  vocab["-b"] = 257;
  vocab["--"] = 258;
  vocab["<|end|>"] = 259;
  json merges = json::array({"a -", "- b", "- -"});
  if (digit_merges) {  // "12" = 260, "34" = 261
    vocab["12"] = 260;
    vocab["34"] = 261;
    merges.push_back("1 2");
    merges.push_back("3 4");
  }
  json j;
  j["added_tokens"] = json::array({{{"id", 259}, {"content", "<|end|>"}, {"special", true}}});
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = pre_tokenizer;
  j["post_processor"] = {{"type", "ByteLevel"}, {"trim_offsets", false}};
  j["decoder"] = {{"type", "ByteLevel"}};
  j["model"] = {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}};
  return j;
}

inline json split_then_bytelevel(const std::string& behavior, bool invert = false) {
  return {{"type", "Sequence"},
          {"pretokenizers",
           json::array({{{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", behavior}, {"invert", invert}},
                        {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}};
}

}  // namespace shardtune::test
