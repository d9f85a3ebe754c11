// Reads a Hugging Face tokenizer.json (model type BPE) into a PipelineTokenizer, plus the special-token
// names and add_bos_token of a tokenizer_config.json beside it. Unsupported components are errors.
#include <nlohmann/json.hpp>

#include "loaders.h"
#include "pipeline.h"
#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/core/json_depth.h"

namespace shardtune::tok {

using nlohmann::json;

namespace {

const char* const kSupportedHint =
    "shardtune reads BPE tokenizer.json files (GPT-2, Llama 2/3, Mistral, Qwen style); see docs/TOKENIZERS.md "
    "for the supported components";

struct Ctx {
  std::string file;
  [[noreturn]] void unsupported(const std::string& what, const std::string& type) const {
    ST_FAIL("unsupported " + what + " '" + type + "' in " + file, kSupportedHint);
  }
};

std::string type_of(const json& j) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) return "<missing type>";
  return j["type"].get<std::string>();
}

std::string get_str(const json& j, const char* key, const std::string& def) {
  if (!j.is_object() || !j.contains(key) || j[key].is_null()) return def;
  return j[key].get<std::string>();
}
bool get_bool(const json& j, const char* key, bool def) {
  if (!j.is_object() || !j.contains(key) || j[key].is_null()) return def;
  return j[key].get<bool>();
}

// {"String": "x"} or {"Regex": "..."} -> compiled Regex.
std::unique_ptr<Regex> parse_pattern(const json& p, const Ctx& ctx, const std::string& where) {
  if (p.is_object() && p.contains("String")) return std::make_unique<Regex>(p["String"].get<std::string>(), ctx.file + " " + where, true);
  if (p.is_object() && p.contains("Regex")) return std::make_unique<Regex>(p["Regex"].get<std::string>(), ctx.file + " " + where, false);
  if (p.is_string()) return std::make_unique<Regex>(p.get<std::string>(), ctx.file + " " + where, true);
  ST_FAIL(ctx.file + ": " + where + " has a pattern that is neither {\"String\": ...} nor {\"Regex\": ...}", kSupportedHint);
}

void parse_normalizer(const json& j, const Ctx& ctx, std::vector<std::unique_ptr<Normalizer>>& out) {
  if (j.is_null()) return;
  std::string type = type_of(j);
  if (type == "Sequence") {
    for (const auto& n : j.at("normalizers")) parse_normalizer(n, ctx, out);
  } else if (type == "Prepend") {
    auto n = std::make_unique<PrependNormalizer>();
    n->prefix = j.at("prepend").get<std::string>();
    out.push_back(std::move(n));
  } else if (type == "NFC") {
    out.push_back(std::make_unique<NfcNormalizer>());
  } else if (type == "Replace") {
    auto n = std::make_unique<ReplaceNormalizer>();
    n->pattern = parse_pattern(j.at("pattern"), ctx, "normalizer Replace");
    n->content = j.at("content").get<std::string>();
    out.push_back(std::move(n));
  } else {
    ctx.unsupported("normalizer", type);
  }
}

SplitBehavior parse_behavior(const std::string& s, const Ctx& ctx) {
  if (s == "Removed") return SplitBehavior::Removed;
  if (s == "Isolated") return SplitBehavior::Isolated;
  if (s == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
  if (s == "MergedWithNext") return SplitBehavior::MergedWithNext;
  if (s == "Contiguous") return SplitBehavior::Contiguous;
  ctx.unsupported("Split behavior", s);
}

PrependScheme parse_scheme(const json& j, const Ctx& ctx) {
  if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string()) {
    std::string s = j["prepend_scheme"].get<std::string>();
    if (s == "always") return PrependScheme::Always;
    if (s == "first") return PrependScheme::First;
    if (s == "never") return PrependScheme::Never;
    ctx.unsupported("Metaspace prepend_scheme", s);
  }
  return get_bool(j, "add_prefix_space", true) ? PrependScheme::Always : PrependScheme::Never;
}

void parse_pre_tokenizer(const json& j, const Ctx& ctx, std::vector<std::unique_ptr<PreTokenizer>>& out) {
  if (j.is_null()) return;
  std::string type = type_of(j);
  const std::string where = "pre_tokenizer " + type;
  if (type == "Sequence") {
    for (const auto& p : j.at("pretokenizers")) parse_pre_tokenizer(p, ctx, out);
  } else if (type == "ByteLevel") {
    auto p = std::make_unique<ByteLevelPreTokenizer>();
    p->add_prefix_space = get_bool(j, "add_prefix_space", true);
    if (get_bool(j, "use_regex", true)) p->pattern = std::make_unique<Regex>(kGpt2Pattern, ctx.file + " " + where);
    out.push_back(std::move(p));
  } else if (type == "Split") {
    auto p = std::make_unique<SplitPreTokenizer>();
    p->pattern = parse_pattern(j.at("pattern"), ctx, where);
    p->behavior = parse_behavior(get_str(j, "behavior", "Isolated"), ctx);
    p->invert = get_bool(j, "invert", false);
    out.push_back(std::move(p));
  } else if (type == "Metaspace") {
    auto p = std::make_unique<MetaspacePreTokenizer>();
    p->replacement = get_str(j, "replacement", p->replacement);
    p->prepend = parse_scheme(j, ctx);
    p->split_words = get_bool(j, "split", true);
    out.push_back(std::move(p));
  } else if (type == "Digits") {
    out.push_back(make_digits(get_bool(j, "individual_digits", false), ctx.file + " " + where));
  } else if (type == "Whitespace") {
    out.push_back(make_whitespace(ctx.file + " " + where));
  } else if (type == "WhitespaceSplit") {
    out.push_back(make_whitespace_split(ctx.file + " " + where));
  } else {
    ctx.unsupported("pre_tokenizer", type);
  }
}

void parse_decoder(const json& j, const Ctx& ctx, std::vector<std::unique_ptr<Decoder>>& out) {
  if (j.is_null()) return;
  std::string type = type_of(j);
  if (type == "Sequence") {
    for (const auto& d : j.at("decoders")) parse_decoder(d, ctx, out);
  } else if (type == "ByteLevel") {
    out.push_back(std::make_unique<ByteLevelDecoder>());
  } else if (type == "Replace") {
    auto d = std::make_unique<ReplaceDecoder>();
    d->pattern = parse_pattern(j.at("pattern"), ctx, "decoder Replace");
    d->content = j.at("content").get<std::string>();
    out.push_back(std::move(d));
  } else if (type == "ByteFallback") {
    out.push_back(std::make_unique<ByteFallbackDecoder>());
  } else if (type == "Fuse") {
    out.push_back(std::make_unique<FuseDecoder>());
  } else if (type == "Strip") {
    auto d = std::make_unique<StripDecoder>();
    d->content = get_str(j, "content", " ");
    d->start = j.value("start", 0);
    d->stop = j.value("stop", 0);
    out.push_back(std::move(d));
  } else if (type == "Metaspace") {
    auto d = std::make_unique<MetaspaceDecoder>();
    d->replacement = get_str(j, "replacement", d->replacement);
    d->strip_first = parse_scheme(j, ctx) != PrependScheme::Never;
    out.push_back(std::move(d));
  } else {
    ctx.unsupported("decoder", type);
  }
}

std::unique_ptr<BpeModel> parse_model(const json& m, BpeUnits units, const Ctx& ctx) {
  ST_CHECK(m.is_object(), ctx.file + ": has no \"model\" object", "is this a Hugging Face tokenizer.json?");
  std::string type = m.contains("type") ? m["type"].get<std::string>() : (m.contains("merges") ? "BPE" : "<missing>");
  if (type != "BPE") ctx.unsupported("model type", type);
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (m.contains(key) && !m[key].is_null() && !m[key].get<std::string>().empty())
      ctx.unsupported(std::string("BPE option ") + key, m[key].get<std::string>());
  if (m.contains("dropout") && !m["dropout"].is_null() && m["dropout"].get<double>() > 0.0)
    ctx.unsupported("BPE option", "dropout");
  BpeConfig cfg;
  cfg.units = units;
  cfg.byte_fallback = get_bool(m, "byte_fallback", false);
  cfg.fuse_unk = get_bool(m, "fuse_unk", false);
  cfg.ignore_merges = get_bool(m, "ignore_merges", false);
  if (m.contains("unk_token") && m["unk_token"].is_string()) cfg.unk_token = m["unk_token"].get<std::string>();

  ST_CHECK(m.contains("vocab") && m["vocab"].is_object(), ctx.file + ": model.vocab is missing or not an object",
           "the file is truncated or not a BPE tokenizer.json");
  std::vector<std::pair<std::string, TokenId>> vocab;
  vocab.reserve(m["vocab"].size());
  for (const auto& [k, v] : m["vocab"].items()) vocab.emplace_back(k, v.get<TokenId>());

  std::vector<std::pair<std::string, std::string>> merges;
  if (m.contains("merges")) {
    merges.reserve(m["merges"].size());
    for (const auto& e : m["merges"]) {
      if (e.is_string()) {
        const auto& s = e.get_ref<const std::string&>();
        size_t sp = s.find(' ', 1);  // a token can be " "? not in this format; first space after char 0
        ST_CHECK(sp != std::string::npos, ctx.file + ": merge '" + s + "' is not of the form \"a b\"");
        merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
      } else {
        ST_CHECK(e.is_array() && e.size() == 2, ctx.file + ": a merge is neither \"a b\" nor [a, b]");
        merges.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
      }
    }
  }
  return std::make_unique<BpeModel>(cfg, vocab, merges, ctx.file);
}

// Reads a special-token entry of tokenizer_config.json: "tok" or {"content": "tok", ...}.
std::optional<std::string> config_token(const json& cfg, const char* key) {
  if (!cfg.is_object() || !cfg.contains(key)) return std::nullopt;
  const auto& v = cfg[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

// Post-processor -> whether BOS is prepended, and which id.
void parse_post_processor(const json& j, const Ctx& ctx, PipelineTokenizer& t) {
  if (j.is_null()) return;
  std::string type = type_of(j);
  if (type == "Sequence") {
    for (const auto& p : j.at("processors")) parse_post_processor(p, ctx, t);
  } else if (type == "ByteLevel") {
    // only trims offsets
  } else if (type == "TemplateProcessing") {
    const auto& single = j.at("single");
    auto special_id = [&](const std::string& name) -> std::optional<TokenId> {
      if (j.contains("special_tokens") && j["special_tokens"].contains(name)) {
        const auto& ids = j["special_tokens"][name]["ids"];
        if (ids.is_array() && !ids.empty()) return ids[0].get<TokenId>();
      }
      return t.token_to_id(name);
    };
    bool seen_seq = false;
    for (const auto& item : single) {
      if (item.contains("Sequence")) {
        seen_seq = true;
      } else if (item.contains("SpecialToken")) {
        std::string name = item["SpecialToken"].at("id").get<std::string>();
        auto id = special_id(name);
        if (!seen_seq) {
          t.add_bos = true;
          if (id) t.bos_id = id;
        } else if (id && !t.eos_id) {
          t.eos_id = id;
        }
      }
    }
  } else if (type == "RobertaProcessing" || type == "BertProcessing") {
    t.add_bos = true;
    if (j.contains("cls") && j["cls"].is_array()) t.bos_id = j["cls"][1].get<TokenId>();
    if (j.contains("sep") && j["sep"].is_array() && !t.eos_id) t.eos_id = j["sep"][1].get<TokenId>();
  } else {
    ctx.unsupported("post_processor", type);
  }
}

}  // namespace

std::unique_ptr<Tokenizer> load_hf_json(const std::filesystem::path& file) {
  Ctx ctx{file.string()};
  std::string text = fs::read_file(file);
  check_json_depth(text, ctx.file);  // parsed values are copied recursively below
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    ST_FAIL(ctx.file + ": malformed JSON: " + e.what(), "the file is truncated or not a tokenizer.json");
  }
  ST_CHECK(j.is_object() && j.contains("model"), ctx.file + ": no \"model\" key, so this is not a Hugging Face tokenizer.json",
           "pass the tokenizer.json of the model (or a folder holding it)");

  auto t = std::make_unique<PipelineTokenizer>();
  try {
    parse_normalizer(j.value("normalizer", json()), ctx, t->normalizers);
    parse_pre_tokenizer(j.value("pre_tokenizer", json()), ctx, t->pre_tokenizers);
    for (size_t i = 0; i < t->pre_tokenizers.size(); ++i)
      if (t->pre_tokenizers[i]->is_byte_level() && i + 1 != t->pre_tokenizers.size())
        ctx.unsupported("pre_tokenizer order", "ByteLevel before another pre-tokenizer");
    bool byte_level = !t->pre_tokenizers.empty() && t->pre_tokenizers.back()->is_byte_level();
    t->model = parse_model(j["model"], byte_level ? BpeUnits::Bytes : BpeUnits::Chars, ctx);
    t->has_decoder = j.contains("decoder") && !j["decoder"].is_null();
    if (t->has_decoder) parse_decoder(j["decoder"], ctx, t->decoders);

    std::vector<AddedToken> added;
    if (j.contains("added_tokens") && j["added_tokens"].is_array())
      for (const auto& a : j["added_tokens"]) {
        AddedToken at;
        at.id = a.at("id").get<TokenId>();
        at.content = a.at("content").get<std::string>();
        at.special = get_bool(a, "special", false);
        at.lstrip = get_bool(a, "lstrip", false);
        at.rstrip = get_bool(a, "rstrip", false);
        added.push_back(std::move(at));
      }
    t->set_added_tokens(std::move(added));
    parse_post_processor(j.value("post_processor", json()), ctx, *t);
  } catch (const json::exception& e) {
    ST_FAIL(ctx.file + ": unexpected structure: " + e.what(), "the file does not follow the tokenizer.json schema");
  }

  std::string hash_input = fs::sha256_file(file);
  auto cfg_path = file.parent_path() / "tokenizer_config.json";
  if (std::filesystem::exists(cfg_path)) {
    json cfg;
    try {
      cfg = json::parse(fs::read_file(cfg_path));
    } catch (const json::exception& e) {
      ST_FAIL(cfg_path.string() + ": malformed JSON: " + e.what(), "fix or remove tokenizer_config.json");
    }
    hash_input += fs::sha256_file(cfg_path);
    auto lookup = [&](const char* key) -> std::optional<TokenId> {
      auto name = config_token(cfg, key);
      if (!name) return std::nullopt;
      auto id = t->token_to_id(*name);
      ST_CHECK(id.has_value(), cfg_path.string() + ": " + key + " '" + *name + "' is not a token of " + ctx.file,
               "tokenizer_config.json belongs to a different tokenizer");
      return id;
    };
    if (auto id = lookup("bos_token")) t->bos_id = id;
    if (auto id = lookup("eos_token")) t->eos_id = id;
    if (auto id = lookup("pad_token")) t->pad_id = id;
    if (cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean()) t->add_bos = cfg["add_bos_token"].get<bool>();
  }
  // Conventional names when neither the post-processor nor a config said.
  auto first_of = [&](std::initializer_list<const char*> names) -> std::optional<TokenId> {
    for (const char* n : names)
      if (auto id = t->token_to_id(n)) return id;
    return std::nullopt;
  };
  if (!t->eos_id) t->eos_id = first_of({"</s>", "<|endoftext|>", "<|end_of_text|>", "<|im_end|>", "<eos>"});
  if (!t->bos_id) t->bos_id = first_of({"<s>", "<|begin_of_text|>", "<bos>"});
  if (!t->bos_id && t->eos_id && t->token_text(*t->eos_id) == "<|endoftext|>") t->bos_id = t->eos_id;  // GPT-2
  ST_CHECK(!t->add_bos || t->bos_id, ctx.file + ": add_bos is set but no BOS token could be determined",
           "add bos_token to tokenizer_config.json beside it");

  t->unk_id = t->model->unk_id();
  t->name = t->model->units() == BpeUnits::Bytes ? "hf-bpe-bytelevel" : "hf-bpe-sentencepiece";
  t->source = ctx.file;
  t->hash = fs::sha256_hex(hash_input);
  return t;
}

}  // namespace shardtune::tok
