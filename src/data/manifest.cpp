// Checked manifest.json reader (see manifest.h): every field access goes through one typed getter.
#include "shardtune/data/manifest.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/core/json_depth.h"

namespace shardtune::data {

namespace stdfs = std::filesystem;
using json = nlohmann::json;

namespace {

const char* kRerun = "the manifest is damaged or was not written by shardtune-prep; re-run shardtune-prep";

// The field `key` of object `obj` (at `where`, e.g. "shards[3]"), of the JSON type `want`.
const json& field(const json& obj, const std::string& key, json::value_t want, const std::string& mpath,
                  const std::string& where) {
  const std::string name = where.empty() ? key : where + "." + key;
  auto it = obj.find(key);
  ST_CHECK(it != obj.end(), mpath + ": field '" + name + "' is missing", kRerun);
  const bool ok = want == json::value_t::number_integer ? it->is_number_integer() : it->type() == want;
  ST_CHECK(ok, mpath + ": field '" + name + "' has the wrong type (" + it->type_name() + ")", kRerun);
  return *it;
}

std::string get_string(const json& obj, const std::string& key, const std::string& mpath, const std::string& where) {
  return field(obj, key, json::value_t::string, mpath, where).get<std::string>();
}

int64_t get_int(const json& obj, const std::string& key, const std::string& mpath, const std::string& where,
                int64_t min_value) {
  const json& v = field(obj, key, json::value_t::number_integer, mpath, where);
  ST_CHECK(v.is_number_unsigned() ? v.get<uint64_t>() <= uint64_t(INT64_MAX) : true,
           mpath + ": field '" + (where.empty() ? key : where + "." + key) + "' is too large", kRerun);
  const int64_t x = v.get<int64_t>();
  ST_CHECK(x >= min_value, mpath + ": field '" + (where.empty() ? key : where + "." + key) + "' is " +
                               std::to_string(x) + ", must be >= " + std::to_string(min_value), kRerun);
  return x;
}

// Optional integer id: absent or null means -1 (none).
int64_t get_id(const json& obj, const std::string& key, const std::string& mpath, const std::string& where) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return -1;
  return get_int(obj, key, mpath, where, -1);
}

}  // namespace

const char* kind_name(DataKind k) { return k == DataKind::Preference ? "preference" : "sequence"; }

void check_relative_path(const std::string& file, const std::string& where) {
  const stdfs::path p(file);
  ST_CHECK(!file.empty() && !p.is_absolute() && !p.has_root_path(),
           where + ": shard path '" + file + "' is " + (file.empty() ? "empty" : "absolute"),
           "shard paths in manifest.json are relative to the data folder; re-run shardtune-prep");
  for (const auto& part : p)
    ST_CHECK(part != "..", where + ": shard path '" + file + "' has a '..' component (points outside the data folder)",
             "shard paths in manifest.json must stay inside the data folder; re-run shardtune-prep");
}

Manifest read_manifest(const std::string& dir) {
  Manifest m;
  m.path = (stdfs::path(dir) / "manifest.json").string();
  // Name the actual mistake: a path that does not exist, or a file given for the folder, is not
  // "a folder without manifest.json".
  ST_CHECK(stdfs::exists(dir), "data folder '" + dir + "' does not exist",
           "pass the --output folder of shardtune-prep");
  ST_CHECK(stdfs::is_directory(dir), "data folder '" + dir + "' is a file, not a folder",
           stdfs::path(dir).filename() == "manifest.json" || stdfs::path(dir).extension() == ".h5"
               ? "pass the folder that holds it: " + stdfs::absolute(dir).lexically_normal().parent_path().string()
               : "pass the --output folder of shardtune-prep");
  ST_CHECK(stdfs::is_regular_file(m.path), "data folder '" + dir + "' has no manifest.json",
           "pass a folder written by shardtune-prep (an interrupted prep leaves none)");
  const std::string text = fs::read_file(m.path);
  check_json_depth(text, m.path);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    ST_FAIL("'" + m.path + "' is not valid JSON: " + e.what(), "re-run shardtune-prep");
  }
  ST_CHECK(j.is_object(), m.path + ": not a JSON object", kRerun);
  ST_CHECK(get_string(j, "format", m.path, "") == "shardtune-manifest" && get_int(j, "format_version", m.path, "", 0) == 1,
           "'" + m.path + "' is not a version-1 shardtune manifest", "re-run shardtune-prep with this version");
  if (j.contains("kind")) {
    const std::string kind = get_string(j, "kind", m.path, "");
    ST_CHECK(kind == "sequence" || kind == "preference",
             m.path + ": field 'kind' is '" + kind + "', this build reads 'sequence' and 'preference'",
             "re-run shardtune-prep with this version of shardtune");
    m.kind = kind == "preference" ? DataKind::Preference : DataKind::Sequence;
  }
  const json& t = field(j, "tokenizer", json::value_t::object, m.path, "");
  m.tokenizer_name = get_string(t, "name", m.path, "tokenizer");
  m.tokenizer_hash = get_string(t, "hash", m.path, "tokenizer");
  m.tokenizer_source = t.contains("source") ? get_string(t, "source", m.path, "tokenizer") : "";
  m.vocab_size = get_int(t, "vocab_size", m.path, "tokenizer", 1);
  m.bos_id = get_id(t, "bos_id", m.path, "tokenizer");
  m.eos_id = get_id(t, "eos_id", m.path, "tokenizer");
  m.pad_id = get_id(t, "pad_id", m.path, "tokenizer");
  m.unk_id = get_id(t, "unk_id", m.path, "tokenizer");
  if (t.contains("add_bos")) m.add_bos = field(t, "add_bos", json::value_t::boolean, m.path, "tokenizer").get<bool>();
  for (auto [key, dst] : {std::pair{"bos_token", &m.bos_token}, {"eos_token", &m.eos_token}, {"pad_token", &m.pad_token},
                          {"unk_token", &m.unk_token}})
    if (t.contains(key) && !t[key].is_null()) *dst = get_string(t, key, m.path, "tokenizer");
  if (t.contains("files")) {
    const json& files = field(t, "files", json::value_t::array, m.path, "tokenizer");
    for (size_t i = 0; i < files.size(); ++i) {
      const std::string where = "tokenizer.files[" + std::to_string(i) + "]";
      ST_CHECK(files[i].is_object(), m.path + ": field '" + where + "' is not an object", kRerun);
      m.tokenizer_files.push_back({get_string(files[i], "path", m.path, where), get_string(files[i], "sha256", m.path, where)});
    }
  }
  if (j.contains("template")) {
    const json& tpl = field(j, "template", json::value_t::object, m.path, "");
    if (tpl.contains("name")) m.template_name = get_string(tpl, "name", m.path, "template");
    if (tpl.contains("chat_template")) m.chat_template = get_string(tpl, "chat_template", m.path, "template");
  }
  const json& shards = field(j, "shards", json::value_t::array, m.path, "");
  for (size_t i = 0; i < shards.size(); ++i) {
    const std::string where = "shards[" + std::to_string(i) + "]";
    const json& s = shards[i];
    ST_CHECK(s.is_object(), m.path + ": field '" + where + "' is not an object", kRerun);
    ManifestShard sh;
    sh.file = get_string(s, "file", m.path, where);
    check_relative_path(sh.file, m.path + ": " + where);
    sh.path = (stdfs::path(dir) / sh.file).string();
    sh.split = get_string(s, "split", m.path, where);
    sh.samples = get_int(s, "samples", m.path, where, 0);
    sh.tokens = get_int(s, "tokens", m.path, where, 0);
    sh.loss_tokens = get_int(s, "loss_tokens", m.path, where, 0);
    sh.kind = m.kind;
    ST_CHECK(sh.samples <= INT64_MAX / 2, m.path + ": field '" + where + ".samples' is too large", kRerun);
    sh.sequences = m.kind == DataKind::Preference ? 2 * sh.samples : sh.samples;
    if (s.contains("sha256")) sh.sha256 = get_string(s, "sha256", m.path, where);
    m.shards.push_back(std::move(sh));
  }
  return m;
}

}  // namespace shardtune::data
