// Hugging Face tokenizer files of a model folder (see shardtune/export/hf_tokenizer_files.h). Every file
// is built in memory first, from source bytes that were hashed once, then written: what is copied is what
// was checked, and a failure leaves no tokenizer file half written.
#include "shardtune/export/hf_tokenizer_files.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <utility>

#include "json_members.h"
#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/core/log.h"
#include "shardtune/tokenizer/source_files.h"
#include "shardtune/tokenizer/tokenizer.h"

namespace shardtune::exporter {

namespace stdfs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kGenerationConfig = "generation_config.json";
constexpr const char* kTokenizerConfig = "tokenizer_config.json";

using Files = std::vector<std::pair<std::string, std::string>>;  // file name in the folder -> bytes

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The source files when the manifest did not list them (older preps): resolved from the SPEC as the
// loaders resolve it (relative to the current folder); token strings filled from the tokenizer.
std::vector<data::ManifestFile> files_from_spec(TokenizerRecord& rec) {
  const std::string& spec = rec.source;
  ST_CHECK(!spec.empty(), "the data's manifest records neither the tokenizer's files nor its SPEC",
           "prepare the data again with this version of shardtune-prep");
  std::error_code ec;
  if (ends_with(spec, ".model")) return {{stdfs::absolute(spec).lexically_normal().string(), ""}};
  if (stdfs::is_directory(spec, ec) && !stdfs::exists(stdfs::path(spec) / "tokenizer.json", ec) &&
      stdfs::exists(stdfs::path(spec) / "tokenizer.model", ec))
    return {{stdfs::absolute(stdfs::path(spec) / "tokenizer.model").lexically_normal().string(), ""}};
  const auto tok = load_tokenizer(spec);
  std::vector<data::ManifestFile> files;
  for (const auto& f : tokenizer_source_files(*tok)) files.push_back({f, ""});
  return files;
}

// Special tokens' strings that an older manifest did not record, from the tokenizer itself (not for a
// .model: libsentencepiece is not loaded beside libtorch; LlamaTokenizer's defaults apply there).
void fill_token_strings(TokenizerRecord& rec) {
  const bool missing = (rec.bos_id >= 0 && rec.bos_token.empty()) || (rec.eos_id >= 0 && rec.eos_token.empty()) ||
                       (rec.pad_id >= 0 && rec.pad_token.empty());
  if (!missing || rec.name == "sentencepiece" || rec.files.empty()) return;
  const std::string spec = rec.name == "gpt2-bpe" && rec.files.size() == 2 ? rec.files[0].path + "," + rec.files[1].path
                                                                           : rec.files[0].path;
  const auto tok = load_tokenizer(spec);
  auto fill = [&](int64_t id, std::string& s) {
    if (id >= 0 && s.empty()) s = tok->token_text(static_cast<TokenId>(id));
  };
  fill(rec.bos_id, rec.bos_token);
  fill(rec.eos_id, rec.eos_token);
  fill(rec.pad_id, rec.pad_token);
  if (rec.unk_id < 0 && tok->unk_id) rec.unk_id = *tok->unk_id;
  fill(rec.unk_id, rec.unk_token);
}

// The source files' bytes, each checked against its recorded sha256 and all against the data's
// tokenizer hash. Errors name the file.
std::vector<std::string> read_sources(const TokenizerRecord& rec) {
  std::vector<std::string> bytes, digests;
  for (const auto& f : rec.files) {
    std::error_code ec;
    ST_CHECK(stdfs::is_regular_file(f.path, ec),
             "the tokenizer file " + f.path + " that the data was prepared with no longer exists",
             "copy the tokenizer files into the model folder by hand");
    bytes.push_back(fs::read_file(f.path));
    digests.push_back(fs::sha256_hex(bytes.back()));
    ST_CHECK(f.sha256.empty() || f.sha256 == digests.back(),
             "the tokenizer file " + f.path + " changed since the data was prepared (sha256 " + digests.back() +
                 ", recorded " + f.sha256 + ")",
             "copy the tokenizer files the data was prepared with into the model folder by hand");
  }
  std::string names;
  for (const auto& f : rec.files) names += (names.empty() ? "" : ", ") + f.path;
  ST_CHECK(tokenizer_hash_from_digests(rec.name, digests) == rec.hash,
           "the tokenizer files " + names + " are not those the data was prepared with (their hash differs from the "
           "manifest's tokenizer hash " + rec.hash + ")",
           "copy the tokenizer files the data was prepared with into the model folder by hand");
  return bytes;
}

// HF's GPT2Tokenizer drops the first line of merges.txt unread (the "#version" header) and the last (the
// empty string after the final newline): vocab.bpe is that format; supply either when it lacks it.
std::string merges_txt(std::string bpe) {
  if (bpe.rfind("#version", 0) != 0) bpe = "#version: 0.2\n" + bpe;
  if (bpe.back() != '\n') bpe.push_back('\n');
  return bpe;
}

json token_or_null(const std::string& s) { return s.empty() ? json(nullptr) : json(s); }

// tokenizer_config.json as save_pretrained writes it (keys sorted, indent 2): for a tokenizer that came
// without one.
std::string generated_config(const TokenizerRecord& rec, const std::string& tokenizer_class, const HfFolderOptions& o) {
  const bool sp = rec.name == "sentencepiece" || rec.name == "hf-bpe-sentencepiece";
  json c = {{"add_bos_token", rec.add_bos.value_or(sp)},
            {"add_eos_token", false},  // EOS ends a training sample by the template, not every encode
            {"bos_token", token_or_null(rec.bos_token)},
            {"eos_token", token_or_null(rec.eos_token)},
            {"pad_token", token_or_null(rec.pad_token)},
            {"clean_up_tokenization_spaces", false},
            {"tokenizer_class", tokenizer_class}};
  if (!rec.unk_token.empty()) c["unk_token"] = rec.unk_token;
  if (o.model_max_length > 0) c["model_max_length"] = o.model_max_length;
  if (!rec.chat_template.empty()) c["chat_template"] = rec.chat_template;
  if (rec.name == "sentencepiece") {
    // prep encodes the text between special tokens with SentencePiece's own dummy prefix, as legacy does
    c["legacy"] = true;
    c["sp_model_kwargs"] = json::object();
  }
  return c.dump(2) + "\n";
}

// The input's tokenizer_config.json, byte for byte, unless it lacks a special token we know or the data's
// chat template: then those members are set in its text and nothing else changes.
std::string patched_config(const std::string& text, const std::string& path, const TokenizerRecord& rec) {
  const json c = json::parse(text);  // prep parsed it, and it hashed as then
  ST_CHECK(c.is_object(), path + ": not a JSON object");
  std::string out = text, added;
  for (const auto& [key, s] : {std::pair<const char*, const std::string&>{"bos_token", rec.bos_token},
                               {"eos_token", rec.eos_token}, {"pad_token", rec.pad_token}, {"unk_token", rec.unk_token}})
    if (!s.empty() && (!c.contains(key) || c[key].is_null())) {
      out = set_json_member(out, key, json(s).dump());
      added += std::string(added.empty() ? "" : ", ") + key;
    }
  if (!rec.chat_template.empty() && (!c.contains("chat_template") || c["chat_template"] != rec.chat_template)) {
    out = set_json_member(out, "chat_template", json(rec.chat_template).dump());
    added += std::string(added.empty() ? "" : ", ") + "chat_template (the template the data was prepared with)";
  }
  if (!added.empty()) log::info("tokenizer_config.json: the one of " + path + ", with " + added + " set");
  return out;
}

// special_tokens_map.json beside tokenizer.json (prep did not hash it), when its tokens agree with the
// data's: transformers lets it override tokenizer_config.json's.
std::optional<std::string> special_tokens_map(const stdfs::path& path, const TokenizerRecord& rec) {
  std::error_code ec;
  if (!stdfs::is_regular_file(path, ec)) return std::nullopt;
  std::string text = fs::read_file(path);
  json m;
  try {
    m = json::parse(text);
  } catch (const json::exception&) {
    log::warn(path.string() + " is not valid JSON: not copied into the model folder");
    return std::nullopt;
  }
  for (const auto& [key, s] : {std::pair<const char*, const std::string&>{"bos_token", rec.bos_token},
                               {"eos_token", rec.eos_token}, {"pad_token", rec.pad_token}, {"unk_token", rec.unk_token}}) {
    if (!m.is_object() || !m.contains(key) || s.empty()) continue;
    const json& v = m[key];
    const std::string got = v.is_string() ? v.get<std::string>()
                            : v.is_object() && v.contains("content") && v["content"].is_string() ? v["content"].get<std::string>()
                                                                                                : std::string();
    if (got != s) {
      log::warn(path.string() + ": " + key + " '" + got + "' is not the data's '" + s + "': not copied into the model folder");
      return std::nullopt;
    }
  }
  return text;
}

// generation_config.json: the data's ids; the base model's file with them set, when it has one (its eos
// list stays when it holds the data's EOS).
std::string generation_config(const TokenizerRecord& rec, const stdfs::path& base) {
  std::error_code ec;
  const stdfs::path path = base.empty() ? stdfs::path() : base / kGenerationConfig;
  if (!path.empty() && stdfs::is_regular_file(path, ec)) {
    std::string text = fs::read_file(path);
    json g;
    try {
      g = json::parse(text);
    } catch (const json::exception&) {
      g = nullptr;
    }
    if (g.is_object()) {
      if (rec.bos_id >= 0) text = set_json_member(text, "bos_token_id", std::to_string(rec.bos_id));
      const json& e = g.contains("eos_token_id") ? g["eos_token_id"] : json();
      const bool keep_list = e.is_array() && std::find(e.begin(), e.end(), json(rec.eos_id)) != e.end();
      if (rec.eos_id >= 0 && !keep_list) text = set_json_member(text, "eos_token_id", std::to_string(rec.eos_id));
      if (rec.pad_id >= 0) text = set_json_member(text, "pad_token_id", std::to_string(rec.pad_id));
      return text;
    }
    log::warn(path.string() + " is not a JSON object: generation_config.json is written without its settings");
  }
  // transformers tolerates a file without transformers_version; not "_from_model_config": these ids are meant.
  json g = json::object();
  if (rec.bos_id >= 0) g["bos_token_id"] = rec.bos_id;
  if (rec.eos_id >= 0) g["eos_token_id"] = rec.eos_id;
  if (rec.pad_id >= 0) g["pad_token_id"] = rec.pad_id;
  return g.dump(2) + "\n";
}

// Every Hugging Face file of the folder, from the record's sources. Throws Error naming what is wrong.
Files build(TokenizerRecord& rec, const HfFolderOptions& o) {
  if (rec.files.empty()) rec.files = files_from_spec(rec);
  const std::vector<std::string> src = read_sources(rec);
  fill_token_strings(rec);
  Files out;
  if (rec.name == "hf-bpe-bytelevel" || rec.name == "hf-bpe-sentencepiece") {
    out.emplace_back("tokenizer.json", src[0]);
    if (src.size() > 1) {
      out.emplace_back(kTokenizerConfig, patched_config(src[1], rec.files[1].path, rec));
    } else {
      // LlamaTokenizer(Fast) for SentencePiece-style BPE (Llama 2, Mistral): it sets BOS/EOS from
      // add_bos_token/add_eos_token; byte-level BPE (Llama 3, Qwen, GPT-2 JSON) keeps tokenizer.json's own.
      out.emplace_back(kTokenizerConfig, generated_config(rec, rec.name == "hf-bpe-sentencepiece" ? "LlamaTokenizer"
                                                                                                   : "PreTrainedTokenizerFast", o));
    }
    if (auto m = special_tokens_map(stdfs::path(rec.files[0].path).parent_path() / "special_tokens_map.json", rec))
      out.emplace_back("special_tokens_map.json", *m);
  } else if (rec.name == "sentencepiece") {
    out.emplace_back("tokenizer.model", src[0]);
    out.emplace_back(kTokenizerConfig, generated_config(rec, "LlamaTokenizer", o));
  } else if (rec.name == "gpt2-bpe") {
    ST_CHECK(src.size() == 2, "the GPT-2 tokenizer was recorded with " + std::to_string(src.size()) + " files, not 2");
    out.emplace_back("vocab.json", src[0]);  // encoder.json is vocab.json
    out.emplace_back("merges.txt", merges_txt(src[1]));
    out.emplace_back(kTokenizerConfig, generated_config(rec, "GPT2Tokenizer", o));  // save_pretrained's name
  } else {
    ST_FAIL("tokenizer kind '" + rec.name + "' has no Hugging Face form in this version");
  }
  if (o.model) out.emplace_back(kGenerationConfig, generation_config(rec, o.base));
  return out;
}

// Writes `files` into `dir`; on a failure removes those written and rethrows.
void write_all(const stdfs::path& dir, const Files& files, TokenizerRecordFile& rf, HfFolderResult& r) {
  try {
    for (const auto& [name, bytes] : files) {
      fs::write_file_atomic(dir / name, bytes);
      rf.hf_files[name] = fs::sha256_hex(bytes);
      r.files.push_back(name);
    }
  } catch (...) {
    std::error_code ec;
    for (const auto& name : r.files) stdfs::remove(dir / name, ec);
    rf.hf_files.clear();
    r.files.clear();
    throw;
  }
}

}  // namespace

HfFolderResult write_hf_tokenizer_files(const stdfs::path& dir, const TokenizerRecord& rec, const HfFolderOptions& o) {
  TokenizerRecordFile rf;
  rf.record = rec;
  HfFolderResult r;
  if (rec.name == "byte") {
    rf.note = "the byte tokenizer has no Hugging Face form: this file is its only record";
  } else {
    try {
      TokenizerRecord full = rec;
      const Files files = build(full, o);
      rf.record = full;
      write_all(dir, files, rf, r);
    } catch (const std::exception& e) {
      r.warning = e.what();
      rf.note = "no Hugging Face tokenizer files: " + r.warning;
      log::warn(std::string("the model folder gets no Hugging Face tokenizer files, only ") + kTokenizerRecordFile + ": " +
                r.warning + " (copy the tokenizer files the data was prepared with into the folder by hand, or prepare "
                "the data again and retrain)");
    }
  }
  write_record_file(dir, rf);
  return r;
}

void write_tokenizer_record(const stdfs::path& dir, const TokenizerRecord& rec) {
  TokenizerRecordFile rf;
  rf.record = rec;
  rf.note = "identity only: shardtune-export checkpoint writes the tokenizer files";
  write_record_file(dir, rf);
}

std::optional<HfFolderResult> carry_hf_tokenizer_files(const stdfs::path& from, const stdfs::path& to,
                                                       const HfFolderOptions& o) {
  std::optional<TokenizerRecordFile> src;
  try {
    src = read_record_file(from);
  } catch (const std::exception& e) {
    log::warn(std::string(e.what()) + ": its tokenizer files are not carried");
    return std::nullopt;
  }
  if (!src) return std::nullopt;
  if (!src->hf_files.empty()) {
    try {
      Files files;
      for (const auto& [name, sha] : src->hf_files) {
        if (name == kGenerationConfig) continue;  // written anew below, for a whole model only
        const stdfs::path p = from / name;
        std::error_code ec;
        ST_CHECK(stdfs::is_regular_file(p, ec), p.string() + " (listed in " + kTokenizerRecordFile + ") is missing");
        std::string bytes = fs::read_file(p);
        ST_CHECK(fs::sha256_hex(bytes) == sha, p.string() + " changed since it was written (sha256 differs from " +
                                                   kTokenizerRecordFile + "'s)");
        files.emplace_back(name, std::move(bytes));
      }
      if (o.model) files.emplace_back(kGenerationConfig, generation_config(src->record, o.base));
      TokenizerRecordFile rf;
      rf.record = src->record;
      HfFolderResult r;
      write_all(to, files, rf, r);
      write_record_file(to, rf);
      return r;
    } catch (const std::exception& e) {
      log::warn(std::string(e.what()) + ": writing the tokenizer files from those the data was prepared with instead");
    }
  }
  return write_hf_tokenizer_files(to, src->record, o);
}

}  // namespace shardtune::exporter
