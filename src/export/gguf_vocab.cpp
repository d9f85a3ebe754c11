// Tokenizer metadata for GGUF (tokenizer.ggml.*), as declared in include/shardtune/export/gguf_vocab.h.
// Each tokenizer kind becomes one Vocab (tokens, types, scores or merges, special ids); `finish` pads it to
// the model's vocabulary and writes the keys llama.cpp reads. What llama.cpp cannot reproduce (a
// pre-tokenizer or normalizer it has no form for) is an Error before anything is set on the writer. Where this file departs from llama.cpp's convert_hf_to_gguf.py it says why (docs/FORMAT.md).
#include "shardtune/export/gguf_vocab.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <optional>
#include <unordered_map>

#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/export/sentencepiece_model.h"
#include "shardtune/tokenizer/tokenizer.h"

namespace shardtune::gguf {

namespace {

namespace stdfs = std::filesystem;
using nlohmann::json;

// llama.cpp's llama_token_type (the values of SentencePiece's piece types).
enum class TokType : int32_t { NORMAL = 1, UNKNOWN = 2, CONTROL = 3, USER_DEFINED = 4, UNUSED = 5, BYTE = 6 };

// Llama 3's pre-tokenizer regex, as its tokenizer.json spells it (llama.cpp: pre "llama-bpe").
const char* const kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

const char* const kSpecHint =
    "GGUF export takes a SentencePiece .model, a Hugging Face tokenizer.json (byte-level BPE as GPT-2 / Llama 3, or "
    "SentencePiece-style BPE as Llama 2 / Mistral), GPT-2's encoder.json,vocab.bpe or byte; see docs/FORMAT.md";

struct Vocab {
  std::string model;                  // tokenizer.ggml.model: "llama" | "gpt2"
  std::string pre;                    // tokenizer.ggml.pre
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  std::vector<float> scores;          // "llama" only
  std::vector<std::string> merges;    // "gpt2" only
  std::optional<int32_t> bos, eos, unk, pad;
  bool add_bos = false;
  std::optional<bool> add_space_prefix;  // "llama" only
};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::optional<int32_t> opt_id(int32_t id) { return id >= 0 ? std::optional<int32_t>(id) : std::nullopt; }

// ---- SentencePiece .model ----

Vocab from_sentencepiece(const std::string& file) {
  const sp::Model m = sp::read_model(file);
  auto refuse = [&](const std::string& what, const std::string& hint) {
    ST_FAIL(file + ": " + what + ", which llama.cpp's SentencePiece tokenizer (tokenizer.ggml.model \"llama\") does not "
                "reproduce, so the GGUF file would tokenize differently from the prepared data", hint);
  };
  if (m.model_type != sp::ModelType::BPE)
    refuse(std::string("the model type is ") + (m.model_type == sp::ModelType::UNIGRAM ? "UNIGRAM" : "not BPE"),
           "llama.cpp's \"llama\" tokenizer is SentencePiece's BPE (Llama 2, Mistral); export a BPE model");
  if (!m.byte_fallback) refuse("it has no byte-fallback pieces", "llama.cpp needs <0xXX> pieces for unknown characters");
  if (m.has_charsmap) refuse("it normalizes text (normalizer '" + m.normalizer_name + "')", "use a model trained with --normalization_rule_name=identity");
  if (m.remove_extra_whitespaces) refuse("it collapses whitespace (remove_extra_whitespaces)", "use a model trained with --remove_extra_whitespaces=false");
  if (!m.escape_whitespaces) refuse("it does not escape whitespace as U+2581", "use a model trained with the default --escape_whitespaces");

  Vocab v;
  v.model = "llama";
  v.pre = "default";
  v.tokens.reserve(m.pieces.size());
  for (const auto& p : m.pieces) {
    v.tokens.push_back(p.piece);
    v.scores.push_back(p.score);
    // The proto's type numbers are llama.cpp's. USER_DEFINED stays USER_DEFINED (convert_hf_to_gguf.py writes
    // NORMAL): llama.cpp then matches such a piece whole, as SentencePiece does.
    v.types.push_back(static_cast<int32_t>(p.type));
  }
  v.unk = opt_id(m.unk_id);
  v.bos = opt_id(m.bos_id);
  v.eos = opt_id(m.eos_id);
  v.pad = opt_id(m.pad_id);
  v.add_bos = true;  // what shardtune-prep does with a .model (data_prep/sentencepiece_tokenizer.cpp)
  v.add_space_prefix = m.add_dummy_prefix;
  return v;
}

// ---- Hugging Face tokenizer.json ----

std::string type_of(const json& j) { return j.is_object() && j.contains("type") && j["type"].is_string() ? j["type"].get<std::string>() : ""; }

// j[key] as a bool; absent or null -> def (tokenizer.json files write null for unset options).
bool flag(const json& j, const char* key, bool def) {
  return j.is_object() && j.contains(key) && j[key].is_boolean() ? j[key].get<bool>() : def;
}

// j[key] by reference when it is an array, else an empty array (json::value would copy it).
const json& array_at(const json& j, const char* key) {
  static const json empty = json::array();
  return j.contains(key) && j[key].is_array() ? j[key] : empty;
}

// Sequence{a, Sequence{b}} -> [a, b]
void flatten(const json& j, const char* list_key, std::vector<json>& out) {
  if (j.is_null()) return;
  if (type_of(j) == "Sequence") {
    for (const auto& e : j.at(list_key)) flatten(e, list_key, out);
  } else {
    out.push_back(j);
  }
}

// The pattern string of a Split pre-tokenizer ({"Regex": ...} or {"String": ...}).
std::string split_pattern(const json& p) {
  const json& pat = p.value("pattern", json());
  if (pat.is_object() && pat.contains("Regex")) return pat["Regex"].get<std::string>();
  if (pat.is_object() && pat.contains("String")) return "String:" + pat["String"].get<std::string>();
  return pat.dump();
}

[[noreturn]] void refuse_pre(const std::string& file, const std::string& desc, const std::string& why) {
  ST_FAIL(file + ": pre-tokenizer '" + desc + "' has no llama.cpp tokenizer.ggml.pre this exporter knows (" + why + ")",
          "supported: GPT-2's ByteLevel regex (pre \"gpt-2\") and Llama 3's Split regex + ByteLevel (pre \"llama-bpe\"); "
          "llama.cpp would split the text differently, so the file would not tokenize like the prepared data");
}

// tokenizer.ggml.pre from the pre-tokenizer chain (llama.cpp picks its regex by this name).
std::string byte_level_pre(const json& j, const std::string& file) {
  std::vector<json> pts;
  flatten(j.value("pre_tokenizer", json()), "pretokenizers", pts);
  std::string desc;
  for (const auto& p : pts) desc += (desc.empty() ? "" : " + ") + type_of(p) + (type_of(p) == "Split" ? "(" + split_pattern(p) + ")" : "");
  auto unknown = [&](const std::string& why) { refuse_pre(file, desc, why); };
  const json& norm = j.value("normalizer", json());
  if (!norm.is_null()) unknown("llama.cpp's byte-level BPE applies no normalizer, this file has '" + type_of(norm) + "'");
  if (pts.empty() || type_of(pts.back()) != "ByteLevel") unknown("it does not end in ByteLevel");
  const json& bl = pts.back();
  if (flag(bl, "add_prefix_space", true)) unknown("ByteLevel add_prefix_space: llama.cpp adds no space");
  if (pts.size() == 1 && flag(bl, "use_regex", true)) return "gpt-2";
  if (pts.size() == 2 && !flag(bl, "use_regex", true) && type_of(pts[0]) == "Split" &&
      split_pattern(pts[0]) == kLlama3Regex && pts[0].value("behavior", "") == "Isolated" && !flag(pts[0], "invert", false))
    return "llama-bpe";
  refuse_pre(file, desc, "an unknown regex or chain");
}

// Metaspace / Prepend+Replace -> whether llama.cpp must add a leading space; Error when no form matches.
bool sentencepiece_space_prefix(const json& j, const std::string& file) {
  std::vector<json> norms, pts;
  flatten(j.value("normalizer", json()), "normalizers", norms);
  flatten(j.value("pre_tokenizer", json()), "pretokenizers", pts);
  const std::string space = "\xe2\x96\x81";  // U+2581
  auto refuse = [&](const std::string& what) {
    ST_FAIL(file + ": " + what + "; llama.cpp's \"llama\" tokenizer always writes spaces as U+2581 and merges across them",
            "SentencePiece-style tokenizer.json files (Llama 2, Mistral) use Prepend + Replace normalizers or a Metaspace "
            "pre-tokenizer with split=false");
  };
  if (norms.empty() && pts.size() == 1 && type_of(pts[0]) == "Metaspace") {
    const json& m = pts[0];
    if (m.value("replacement", space) != space) refuse("Metaspace replacement is not U+2581");
    if (flag(m, "split", true)) refuse("Metaspace split=true splits the text at spaces");
    if (m.contains("prepend_scheme") && m["prepend_scheme"].is_string()) return m["prepend_scheme"].get<std::string>() != "never";
    return flag(m, "add_prefix_space", true);
  }
  if (!pts.empty()) refuse("pre-tokenizer '" + type_of(pts[0]) + "' is not a lone Metaspace");
  bool prepend = false, replace = false;
  for (const auto& n : norms) {
    const std::string t = type_of(n);
    const json& pat = n.value("pattern", json());
    if (t == "Prepend" && n.value("prepend", "") == space && !replace) {
      prepend = true;
    } else if (t == "Replace" && n.value("content", "") == space && pat.is_object() && pat.value("String", "") == " ") {
      replace = true;
    } else {
      refuse("normalizer '" + t + "' is not Prepend(U+2581) followed by Replace(' ' -> U+2581)");
    }
  }
  if (!replace) refuse("spaces are not replaced by U+2581");
  return prepend;
}

Vocab from_hf_json(const Tokenizer& tok) {
  const std::string& file = tok.source;
  json j = json::parse(fs::read_file(file));  // already parsed once by load_tokenizer: well-formed
  const json& model = j.at("model");
  const bool byte_level = tok.name == "hf-bpe-bytelevel";

  Vocab v;
  const int32_t n = tok.vocab_size();
  std::unordered_map<TokenId, const json*> added;
  const json& added_list = array_at(j, "added_tokens");
  for (const auto& a : added_list) added[a.at("id").get<TokenId>()] = &a;
  const std::optional<std::string> unk_token =
      model.contains("unk_token") && model["unk_token"].is_string() ? std::optional(model["unk_token"].get<std::string>()) : std::nullopt;
  const bool byte_fallback = flag(model, "byte_fallback", false);
  for (TokenId id = 0; id < n; ++id) {
    std::string text = tok.token_text(id);
    TokType type = TokType::NORMAL;
    if (unk_token && text == *unk_token) {
      type = TokType::UNKNOWN;  // also when it is an added special token (Mistral): as from a .model
    } else if (auto it = added.find(id); it != added.end()) {
      // Added tokens are stored as their text (not byte-level encoded), as llama.cpp expects. Special ones are
      // CONTROL (matched only when parsing special tokens); the others USER_DEFINED (always matched), as in HF.
      // (convert_hf_to_gguf.py also makes CONTROL some non-special tokens that look special, e.g. "<|x|>";
      // we keep HF's flag so llama.cpp tokenizes like shardtune-tokenize.)
      type = flag(*it->second, "special", false) ? TokType::CONTROL : TokType::USER_DEFINED;
    } else if (text.empty() || tok.token_to_id(text) != id) {
      text = "[PAD" + std::to_string(id) + "]";  // an id no token has (a hole in the vocabulary)
      type = TokType::UNUSED;
    } else if (!byte_level && byte_fallback && text.size() == 6 && text.compare(0, 3, "<0x") == 0 && text[5] == '>') {
      type = TokType::BYTE;
    }
    v.tokens.push_back(std::move(text));
    v.types.push_back(static_cast<int32_t>(type));
  }

  std::vector<std::pair<std::string, std::string>> merges;
  for (const auto& e : array_at(model, "merges")) {
    if (e.is_string()) {
      const auto& s = e.get_ref<const std::string&>();
      const size_t sp = s.find(' ', 1);
      merges.emplace_back(s.substr(0, sp), sp == std::string::npos ? "" : s.substr(sp + 1));
    } else {
      merges.emplace_back(e.at(0).get<std::string>(), e.at(1).get<std::string>());
    }
  }

  if (byte_level) {
    v.model = "gpt2";
    v.pre = byte_level_pre(j, file);
    v.merges.reserve(merges.size());
    for (const auto& [a, b] : merges) {
      // llama.cpp splits a merge at its first space after the first byte; byte-level tokens hold no space.
      ST_CHECK(a.find(' ') == std::string::npos && b.find(' ') == std::string::npos,
               file + ": merge '" + a + " " + b + "' contains a space, which GGUF's \"a b\" merge strings cannot hold", kSpecHint);
      v.merges.push_back(a + " " + b);
    }
  } else {
    ST_CHECK(byte_fallback, file + ": a SentencePiece-style BPE without byte_fallback",
             "llama.cpp's \"llama\" tokenizer needs <0xXX> byte pieces for characters outside the vocabulary");
    v.model = "llama";
    v.pre = "default";
    v.add_space_prefix = sentencepiece_space_prefix(j, file);
    // llama.cpp's "llama" tokenizer merges the adjacent pair whose joined piece has the highest score, as
    // SentencePiece's BPE does with its piece scores. A tokenizer.json has merge ranks instead: a token's score
    // is minus the rank of the first merge that makes it, so merges happen in the order HF's BPE applies them.
    // (convert_hf_to_gguf.py writes -1000 for every token of a tokenizer.json-only Llama, which makes llama.cpp
    // merge left to right instead; see docs/FORMAT.md.) Tokens no merge makes (characters, bytes, specials): 0.
    v.scores.assign(v.tokens.size(), 0.0f);
    std::vector<bool> scored(v.tokens.size(), false);
    for (size_t rank = 0; rank < merges.size(); ++rank) {
      auto id = tok.token_to_id(merges[rank].first + merges[rank].second);
      if (id && *id >= 0 && *id < n && !scored[*id]) {
        v.scores[*id] = -static_cast<float>(rank + 1);
        scored[*id] = true;
      }
    }
  }
  if (unk_token) v.unk = tok.token_to_id(*unk_token);
  return v;
}

// ---- GPT-2 encoder.json + vocab.bpe ----

Vocab from_gpt2_files(const Tokenizer& tok) {
  // tok.source is "ENCODER,MERGES" (tools: load_gpt2_files); paths may hold commas, so find the split point
  // at which both halves are files.
  std::string merges_file;
  for (size_t c = tok.source.find(','); c != std::string::npos; c = tok.source.find(',', c + 1))
    if (stdfs::is_regular_file(tok.source.substr(0, c)) && stdfs::is_regular_file(tok.source.substr(c + 1)))
      merges_file = tok.source.substr(c + 1);
  ST_CHECK(!merges_file.empty(), "cannot find the merges file of GPT-2 tokenizer '" + tok.source + "'", kSpecHint);

  Vocab v;
  v.model = "gpt2";
  v.pre = "gpt-2";
  const int32_t n = tok.vocab_size();
  std::vector<bool> special(n, false);
  for (const auto& [text, id] : tok.special_tokens())
    if (id >= 0 && id < n) special[id] = true;
  for (TokenId id = 0; id < n; ++id) {
    std::string text = tok.token_text(id);
    TokType type = special[id] ? TokType::CONTROL : TokType::NORMAL;
    if (text.empty() || tok.token_to_id(text) != id) {
      text = "[PAD" + std::to_string(id) + "]";
      type = TokType::UNUSED;
    }
    v.tokens.push_back(std::move(text));
    v.types.push_back(static_cast<int32_t>(type));
  }
  const std::string text = fs::read_file(merges_file);
  size_t line_no = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    std::string line = text.substr(pos, nl - pos);
    pos = nl + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (line_no == 1 && line.compare(0, 8, "#version") == 0)) continue;
    v.merges.push_back(std::move(line));  // already "a b" (load_gpt2_files checked the form)
  }
  return v;
}

// ---- the byte tokenizer ----

// ids 0..255 = the bytes, then <s>, </s>, <pad>. As a byte-level BPE ("gpt2") with one token per byte and no
// merges, llama.cpp maps every byte of any text to its own token, whatever its pre-tokenizer splits. (The
// SentencePiece form, <0xXX> byte tokens in a "llama" vocabulary, cannot: llama.cpp's "llama" tokenizer
// rewrites each space as U+2581 before it falls back to bytes, so " " would become E2 96 81; see
// docs/FORMAT.md.) The specials are CONTROL: matched only when special tokens are parsed, as in
// shardtune-tokenize --parse-special.
Vocab from_byte(const Tokenizer& tok) {
  ST_CHECK(tok.vocab_size() == 259 && tok.bos_id == 256 && tok.eos_id == 257 && tok.pad_id == 258,
           "the byte tokenizer is not ids 0..255 = bytes, <s>=256, </s>=257, <pad>=258 as the GGUF exporter expects",
           "update src/export/gguf_vocab.cpp with src/tokenizer/byte_tokenizer.cpp");
  Vocab v;
  v.model = "gpt2";
  v.pre = "gpt-2";
  for (int b = 0; b < 256; ++b) {
    v.tokens.push_back(byte_level_string(std::string(1, static_cast<char>(b))));
    v.types.push_back(static_cast<int32_t>(TokType::NORMAL));
  }
  for (TokenId id = 256; id < 259; ++id) {
    v.tokens.push_back(tok.token_text(id));
    v.types.push_back(static_cast<int32_t>(TokType::CONTROL));
  }
  return v;  // no merges: every token is one byte
}

// ---- common ----

Vocab load_vocab(const std::string& spec) {
  if (ends_with(spec, ".model")) return from_sentencepiece(spec);
  if (stdfs::is_directory(spec) && !stdfs::exists(stdfs::path(spec) / "tokenizer.json") &&
      stdfs::exists(stdfs::path(spec) / "tokenizer.model"))
    return from_sentencepiece((stdfs::path(spec) / "tokenizer.model").string());
  // The same loader prep uses: the same special ids and add_bos, and its checks of the files.
  const auto tok = load_tokenizer(spec);
  Vocab v;
  if (tok->name == "hf-bpe-bytelevel" || tok->name == "hf-bpe-sentencepiece") {
    try {
      v = from_hf_json(*tok);
    } catch (const json::exception& e) {
      ST_FAIL(tok->source + ": unexpected structure for GGUF export: " + e.what(), kSpecHint);
    }
  } else if (tok->name == "gpt2-bpe") {
    v = from_gpt2_files(*tok);
  } else if (tok->name == "byte") {
    v = from_byte(*tok);
  } else {
    ST_FAIL("tokenizer '" + spec + "' (" + tok->name + ") has no GGUF form", kSpecHint);
  }
  v.bos = tok->bos_id;
  v.eos = tok->eos_id;
  v.pad = tok->pad_id;
  v.add_bos = tok->add_bos;
  return v;
}

}  // namespace

int64_t add_tokenizer_metadata(Writer& w, const VocabOptions& opts) {
  ST_CHECK(opts.model_vocab > 0, "GGUF tokenizer metadata: the model's vocabulary size is " + std::to_string(opts.model_vocab),
           "pass the rows of the model's token embedding");
  Vocab v = load_vocab(opts.spec);
  const auto n = static_cast<int64_t>(v.tokens.size());
  ST_CHECK(n <= opts.model_vocab,
           "tokenizer '" + opts.spec + "' has " + std::to_string(n) + " tokens but the model's embedding has only " +
               std::to_string(opts.model_vocab) + " rows",
           "export with the tokenizer the model was trained with (the --tokenizer of shardtune-prep)");
  // A larger embedding (rows padded to a multiple, as many checkpoints are) gets UNUSED placeholder tokens, as
  // convert_hf_to_gguf.py writes them: llama.cpp needs one token per row.
  for (int64_t id = n; id < opts.model_vocab; ++id) {
    v.tokens.push_back("[PAD" + std::to_string(id) + "]");
    v.types.push_back(static_cast<int32_t>(TokType::UNUSED));
    if (v.model == "llama") v.scores.push_back(-10000.0f);
  }

  w.set("tokenizer.ggml.model", v.model);
  w.set("tokenizer.ggml.pre", v.pre);
  w.set("tokenizer.ggml.tokens", std::move(v.tokens));
  if (v.model == "llama") w.set("tokenizer.ggml.scores", std::move(v.scores));
  w.set("tokenizer.ggml.token_type", std::move(v.types));
  if (v.model == "gpt2") w.set("tokenizer.ggml.merges", std::move(v.merges));
  auto set_id = [&](const char* key, const std::optional<int32_t>& id) {
    if (id) w.set(key, static_cast<uint32_t>(*id));
  };
  set_id("tokenizer.ggml.bos_token_id", v.bos);
  set_id("tokenizer.ggml.eos_token_id", v.eos);
  set_id("tokenizer.ggml.unknown_token_id", v.unk);
  set_id("tokenizer.ggml.padding_token_id", v.pad);
  w.set("tokenizer.ggml.add_bos_token", v.add_bos);
  w.set("tokenizer.ggml.add_eos_token", false);  // llama.cpp must not append EOS to a prompt
  if (v.add_space_prefix) w.set("tokenizer.ggml.add_space_prefix", *v.add_space_prefix);
  if (!opts.chat_template.empty()) w.set("tokenizer.chat_template", opts.chat_template);
  return opts.model_vocab;
}

}  // namespace shardtune::gguf
