// shardtune_tokenizer.json read and written (see shardtune/export/tokenizer_record.h). The keys of the
// first version (tokenizer.name, source, hash, bos_id, eos_id) keep their meaning.
#include "shardtune/export/tokenizer_record.h"

#include <nlohmann/json.hpp>

#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/core/json_depth.h"

namespace shardtune::exporter {

namespace stdfs = std::filesystem;
using ojson = nlohmann::ordered_json;

TokenizerRecord record_from_manifest(const data::Manifest& m) {
  TokenizerRecord r;
  r.name = m.tokenizer_name;
  r.source = m.tokenizer_source;
  r.hash = m.tokenizer_hash;
  r.files = m.tokenizer_files;
  r.vocab_size = m.vocab_size;
  r.bos_id = m.bos_id;
  r.eos_id = m.eos_id;
  r.pad_id = m.pad_id;
  r.unk_id = m.unk_id;
  r.bos_token = m.bos_token;
  r.eos_token = m.eos_token;
  r.pad_token = m.pad_token;
  r.unk_token = m.unk_token;
  r.add_bos = m.add_bos;
  r.chat_template = m.chat_template;
  return r;
}

void write_record_file(const stdfs::path& dir, const TokenizerRecordFile& f) {
  const TokenizerRecord& r = f.record;
  auto token = [](const std::string& s) { return s.empty() ? ojson(nullptr) : ojson(s); };
  ojson files = ojson::array();
  for (const auto& x : r.files) files.push_back({{"path", x.path}, {"sha256", x.sha256}});
  ojson t = {{"name", r.name}, {"source", r.source}, {"hash", r.hash}, {"bos_id", r.bos_id}, {"eos_id", r.eos_id},
             {"pad_id", r.pad_id}, {"unk_id", r.unk_id}, {"vocab_size", r.vocab_size},
             {"bos_token", token(r.bos_token)}, {"eos_token", token(r.eos_token)}, {"pad_token", token(r.pad_token)},
             {"unk_token", token(r.unk_token)}, {"files", files}};
  if (r.add_bos) t["add_bos"] = *r.add_bos;
  ojson j = {{"format", "shardtune-tokenizer"}, {"format_version", 1}, {"tokenizer", t}};
  if (!r.chat_template.empty()) j["chat_template"] = r.chat_template;
  j["hf_files"] = ojson::object();
  for (const auto& [name, sha] : f.hf_files) j["hf_files"][name] = sha;
  if (!f.note.empty()) j["note"] = f.note;
  fs::write_file_atomic(dir / kTokenizerRecordFile, j.dump(2) + "\n");
}

std::optional<TokenizerRecordFile> read_record_file(const stdfs::path& dir) {
  const stdfs::path path = dir / kTokenizerRecordFile;
  std::error_code ec;
  if (!stdfs::is_regular_file(path, ec)) return std::nullopt;
  const std::string text = fs::read_file(path);
  check_json_depth(text, path.string());
  const char* hint = "the folder's shardtune_tokenizer.json is damaged; restore it or remove it";
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    ST_FAIL(path.string() + ": not valid JSON: " + e.what(), hint);
  }
  ST_CHECK(j.is_object() && j.contains("tokenizer") && j["tokenizer"].is_object(),
           path.string() + ": no \"tokenizer\" object", hint);
  TokenizerRecordFile f;
  TokenizerRecord& r = f.record;
  const nlohmann::json& t = j["tokenizer"];
  try {
    auto str = [&](const char* key, std::string& dst) {
      if (t.contains(key) && !t[key].is_null()) dst = t[key].get<std::string>();
    };
    auto id = [&](const char* key, int64_t& dst) {
      if (t.contains(key) && !t[key].is_null()) dst = t[key].get<int64_t>();
    };
    str("name", r.name);
    str("source", r.source);
    str("hash", r.hash);
    id("bos_id", r.bos_id);
    id("eos_id", r.eos_id);
    id("pad_id", r.pad_id);
    id("unk_id", r.unk_id);
    id("vocab_size", r.vocab_size);
    str("bos_token", r.bos_token);
    str("eos_token", r.eos_token);
    str("pad_token", r.pad_token);
    str("unk_token", r.unk_token);
    if (t.contains("add_bos")) r.add_bos = t["add_bos"].get<bool>();
    if (t.contains("files"))
      for (const auto& x : t["files"]) r.files.push_back({x.at("path").get<std::string>(), x.at("sha256").get<std::string>()});
    if (j.contains("chat_template")) r.chat_template = j["chat_template"].get<std::string>();
    if (j.contains("hf_files"))
      for (const auto& [name, sha] : j["hf_files"].items()) f.hf_files[name] = sha.get<std::string>();
    if (j.contains("note")) f.note = j["note"].get<std::string>();
  } catch (const nlohmann::json::exception& e) {
    ST_FAIL(path.string() + ": a field has the wrong type: " + e.what(), hint);
  }
  for (const auto& [name, sha] : f.hf_files)
    ST_CHECK(!name.empty() && name.find('/') == std::string::npos && name != "." && name != "..",
             path.string() + ": hf_files names '" + name + "', which is not a file name in the folder", hint);
  return f;
}

}  // namespace shardtune::exporter
