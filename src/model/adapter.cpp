// PEFT LoRA adapter folders: adapter_config.json parsing/writing, adapter_model.safetensors reading/writing
// with PEFT's key layout, the merge delta, and the check that an adapter fits a base model's weights.
#include "shardtune/model/adapter.h"

#include <cctype>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/core/json_depth.h"
#include "shardtune/model/io.h"
#include "shardtune/model/safetensors.h"

namespace shardtune::model {

namespace stdfs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kConfigName = "adapter_config.json";
constexpr const char* kWeightsName = "adapter_model.safetensors";
constexpr const char* kPrefix = "base_model.model.";
constexpr const char* kSuffixA = ".lora_A.weight";
constexpr const char* kSuffixB = ".lora_B.weight";

const std::string kLayoutHint =
    "an adapter folder holds adapter_config.json and adapter_model.safetensors, as PEFT's "
    "save_pretrained(safe_serialization=True) or shardtune's trainer write them";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

std::string shape_str(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// A target_modules entry we can match by name: a module name or dotted suffix ("q_proj",
// "self_attn.q_proj"). PEFT reads a *string* target_modules as a regex (re.fullmatch on the module
// path); we accept a string only when it is such a plain name or "all-linear".
bool plain_module_name(const std::string& s) {
  if (s.empty() || s.front() == '.' || s.back() == '.') return false;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.')) return false;
  return true;
}

double number_key(const json& j, const char* key, double fallback, const std::string& file) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  ST_CHECK(j[key].is_number(), file + ": key \"" + key + "\" is " + j[key].dump() + ", expected a number",
           "fix adapter_config.json (PEFT writes numbers here)");
  const double v = j[key].get<double>();
  ST_CHECK(std::isfinite(v), file + ": key \"" + key + "\" is not finite", "fix adapter_config.json");
  return v;
}

bool bool_key(const json& j, const char* key, bool fallback, const std::string& file) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  ST_CHECK(j[key].is_boolean(), file + ": key \"" + key + "\" is " + j[key].dump() + ", expected true or false",
           "fix adapter_config.json");
  return j[key].get<bool>();
}

// A PEFT option that changes the weights' meaning (per-module ranks, DoRA, trained biases) and that we
// cannot honour: refusing it is better than merging a different model.
void refuse_if_set(const json& j, const char* key, const std::string& file, const std::string& why) {
  if (!j.contains(key)) return;
  const json& v = j[key];
  const bool set = !(v.is_null() || (v.is_boolean() && !v.get<bool>()) || (v.is_object() && v.empty()) ||
                     (v.is_array() && v.empty()) || (v.is_string() && v.get<std::string>() == "none"));
  ST_CHECK(!set, file + ": key \"" + key + "\" is " + v.dump() + ": " + why + " is not supported",
           "only plain LoRA adapters are read (one r and lora_alpha for every module, bias \"none\", no DoRA); "
           "retrain without this option or merge the adapter with PEFT");
}

}  // namespace

double AdapterConfig::scale() const { return use_rslora ? alpha / std::sqrt(double(r)) : alpha / double(r); }

AdapterConfig read_adapter_config(const stdfs::path& dir) {
  const stdfs::path path = dir / kConfigName;
  const std::string file = path.string();
  std::error_code ec;
  ST_CHECK(stdfs::is_directory(dir, ec), dir.string() + ": no such adapter folder", kLayoutHint);
  ST_CHECK(stdfs::exists(path, ec), dir.string() + ": no " + kConfigName, kLayoutHint);
  json j;
  const std::string text = fs::read_file(path);
  check_json_depth(text, file);
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    ST_FAIL(file + ": not valid JSON (" + e.what() + ")", "fix or rewrite adapter_config.json");
  }
  ST_CHECK(j.is_object(), file + ": expected one JSON object of keys", "fix or rewrite adapter_config.json");

  ST_CHECK(j.contains("peft_type"), file + ": key \"peft_type\" is missing", "a LoRA adapter's config says \"peft_type\": \"LORA\"");
  ST_CHECK(j["peft_type"].is_string() && j["peft_type"].get<std::string>() == "LORA",
           file + ": peft_type is " + j["peft_type"].dump() + ", only \"LORA\" is supported",
           "this is not a LoRA adapter (prefix tuning, IA3, ... adapters cannot be merged or trained here)");

  AdapterConfig cfg;
  ST_CHECK(j.contains("r"), file + ": key \"r\" (the LoRA rank) is missing", "fix adapter_config.json");
  const double r = number_key(j, "r", 0, file);
  ST_CHECK(r >= 1 && r <= (1 << 20) && r == std::floor(r),
           file + ": key \"r\" is " + j["r"].dump() + ", expected a positive integer", "fix adapter_config.json");
  cfg.r = int64_t(r);
  cfg.alpha = number_key(j, "lora_alpha", 8.0, file);  // PEFT's default when absent
  cfg.dropout = number_key(j, "lora_dropout", 0.0, file);
  ST_CHECK(cfg.dropout >= 0 && cfg.dropout < 1, file + ": key \"lora_dropout\" is " + j["lora_dropout"].dump() +
                                                   ", expected a number in [0, 1)", "fix adapter_config.json");
  cfg.use_rslora = bool_key(j, "use_rslora", false, file);
  cfg.fan_in_fan_out = bool_key(j, "fan_in_fan_out", false, file);

  if (j.contains("target_modules") && !j["target_modules"].is_null()) {
    const json& t = j["target_modules"];
    const std::string regex_hint =
        "write target_modules as a list of module names, e.g. [\"q_proj\", \"v_proj\"], or as \"all-linear\"";
    if (t.is_string()) {
      const std::string s = t.get<std::string>();
      ST_CHECK(s == "all-linear" || plain_module_name(s),
               file + ": target_modules is the regular expression \"" + s + "\", which is not supported", regex_hint);
      cfg.target_modules = {s};
    } else {
      ST_CHECK(t.is_array(), file + ": key \"target_modules\" is " + t.dump() + ", expected a list of module names",
               regex_hint);
      for (const json& e : t) {
        ST_CHECK(e.is_string() && !e.get<std::string>().empty(),
                 file + ": target_modules entry " + e.dump() + " is not a module name", regex_hint);
        cfg.target_modules.push_back(e.get<std::string>());
      }
    }
  }
  if (j.contains("base_model_name_or_path") && !j["base_model_name_or_path"].is_null()) {
    ST_CHECK(j["base_model_name_or_path"].is_string(), file + ": key \"base_model_name_or_path\" is not a string",
             "fix adapter_config.json");
    cfg.base_model_name_or_path = j["base_model_name_or_path"].get<std::string>();
  }
  if (j.contains("init_lora_weights") && !j["init_lora_weights"].is_null()) {
    const json& v = j["init_lora_weights"];
    ST_CHECK(v.is_boolean() || v.is_string(),
             file + ": key \"init_lora_weights\" is " + v.dump() + ", expected true, false or a method name",
             "fix adapter_config.json");
    cfg.init = v.is_boolean() ? (v.get<bool>() ? "true" : "false") : v.get<std::string>();
  }
  refuse_if_set(j, "rank_pattern", file, "a rank per module");
  refuse_if_set(j, "alpha_pattern", file, "a lora_alpha per module");
  refuse_if_set(j, "use_dora", file, "DoRA");
  refuse_if_set(j, "bias", file, "training biases");
  return cfg;
}

void write_adapter_config(const stdfs::path& dir, const AdapterConfig& cfg) {
  ST_CHECK(cfg.r > 0 && std::isfinite(cfg.alpha) && std::isfinite(cfg.dropout),
           "adapter config to write has r " + std::to_string(cfg.r) + ", lora_alpha " + std::to_string(cfg.alpha) +
               ", lora_dropout " + std::to_string(cfg.dropout));
  nlohmann::ordered_json j;
  j["peft_type"] = "LORA";
  j["task_type"] = "CAUSAL_LM";
  j["r"] = cfg.r;
  if (cfg.alpha == std::floor(cfg.alpha) && std::abs(cfg.alpha) < 1e15) j["lora_alpha"] = int64_t(cfg.alpha);
  else j["lora_alpha"] = cfg.alpha;
  j["lora_dropout"] = cfg.dropout;
  // PEFT expands "all-linear" only when target_modules is that string, not a list holding it.
  if (cfg.target_modules.size() == 1 && cfg.target_modules[0] == "all-linear") j["target_modules"] = "all-linear";
  else j["target_modules"] = cfg.target_modules;
  j["bias"] = "none";
  j["fan_in_fan_out"] = cfg.fan_in_fan_out;
  j["use_rslora"] = cfg.use_rslora;
  if (cfg.base_model_name_or_path.empty()) j["base_model_name_or_path"] = nullptr;
  else j["base_model_name_or_path"] = cfg.base_model_name_or_path;
  if (cfg.init == "true" || cfg.init == "false") j["init_lora_weights"] = cfg.init == "true";
  else j["init_lora_weights"] = cfg.init;
  stdfs::create_directories(dir);
  fs::write_file_atomic(dir / kConfigName, j.dump(2) + "\n");
}

AdapterWeights read_adapter_weights(const stdfs::path& dir, const AdapterConfig& cfg) {
  const stdfs::path path = dir / kWeightsName;
  const std::string file = path.string();
  std::error_code ec;
  if (!stdfs::exists(path, ec)) {
    ST_CHECK(!stdfs::exists(dir / "adapter_model.bin", ec),
             dir.string() + ": holds adapter_model.bin (a pickle), which shardtune never reads",
             "re-save the adapter with PEFT's save_pretrained(dir, safe_serialization=True)");
    ST_FAIL(dir.string() + ": no " + kWeightsName, kLayoutHint);
  }
  const std::string cfg_file = (dir / kConfigName).string();
  const std::string key_hint =
      "only plain LoRA weights are read: base_model.model.<module>.lora_A.weight / .lora_B.weight, no adapter name, "
      "modules_to_save, embedding adapters, DoRA magnitudes or biases";
  // A reward model's adapter also holds its head (modules_to_save ["score"], task_type SEQ_CLS): not a LoRA
  // weight, read by the reward objective (train/reward.h), so skipped here only when the config lists it.
  bool score_saved = false;
  {
    std::ifstream in(cfg_file);
    const json j = json::parse(in, nullptr, false);
    if (j.is_object() && j.contains("modules_to_save") && j["modules_to_save"].is_array())
      for (const auto& m : j["modules_to_save"]) score_saved |= m.is_string() && m.get<std::string>() == "score";
  }
  st::File f(path);
  AdapterWeights out;
  std::set<std::string> has_a, has_b;
  for (const st::TensorInfo& t : f.tensors()) {
    if (score_saved && t.name == std::string(kPrefix) + "score.weight") continue;
    const bool is_a = ends_with(t.name, kSuffixA), is_b = ends_with(t.name, kSuffixB);
    ST_CHECK(starts_with(t.name, kPrefix) && (is_a || is_b) &&
                 t.name.size() > std::string(kPrefix).size() + std::string(kSuffixA).size(),
             file + ": tensor '" + t.name + "' is not a LoRA weight (expected base_model.model.<module>.lora_A.weight or "
                    ".lora_B.weight)",
             key_hint);
    const std::string module = t.name.substr(std::string(kPrefix).size(),
                                             t.name.size() - std::string(kPrefix).size() - std::string(kSuffixA).size());
    ST_CHECK(t.dtype == st::DType::F32 || t.dtype == st::DType::BF16 || t.dtype == st::DType::F16 ||
                 t.dtype == st::DType::F64,
             file + ": tensor '" + t.name + "' has dtype " + st::dtype_name(t.dtype) + ", expected a float dtype",
             "LoRA weights are F32, BF16 or F16");
    ST_CHECK(t.shape.size() == 2,
             file + ": tensor '" + t.name + "' has shape " + shape_str(t.shape) + ", expected 2-D (" +
                 (is_a ? "[r, in]" : "[out, r]") + ")",
             "the file is not a LoRA adapter for linear layers, or it is corrupt");
    const int64_t rank_dim = is_a ? t.shape[0] : t.shape[1];
    ST_CHECK(rank_dim == cfg.r,
             file + ": tensor '" + t.name + "' has shape " + shape_str(t.shape) + ", whose rank dimension " +
                 std::to_string(rank_dim) + " is not r = " + std::to_string(cfg.r) + " of " + cfg_file,
             "adapter_config.json and adapter_model.safetensors do not belong together");
    at::Tensor v = to_tensor(f, t).to(at::kFloat);
    ST_CHECK(at::isfinite(v).all().item<bool>(), file + ": tensor '" + t.name + "' holds NaN or Inf values",
             "the adapter is broken (training diverged?); use an earlier checkpoint");
    LoraPair& p = out[module];
    (is_a ? p.A : p.B) = std::move(v);
    (is_a ? has_a : has_b).insert(module);
  }
  ST_CHECK(!out.empty(), file + ": holds no LoRA weights", kLayoutHint);
  for (const auto& [module, p] : out) {
    const std::string base = kPrefix + module;
    ST_CHECK(has_a.count(module), file + ": tensor '" + base + kSuffixB + "' has no matching '" + base + kSuffixA + "'",
             "the adapter file is incomplete; re-save it");
    ST_CHECK(has_b.count(module), file + ": tensor '" + base + kSuffixA + "' has no matching '" + base + kSuffixB + "'",
             "the adapter file is incomplete; re-save it");
  }
  return out;
}

void write_adapter_weights(const stdfs::path& dir, const AdapterWeights& w) {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& [module, p] : w) {
    ST_CHECK(p.A.defined() && p.B.defined() && p.A.dim() == 2 && p.B.dim() == 2 && p.A.size(0) == p.B.size(1),
             "LoRA pair of '" + module + "' to write is not [r, in] and [out, r]");
    tensors.emplace_back(kPrefix + module + kSuffixA, p.A.detach().to(at::kFloat));
    tensors.emplace_back(kPrefix + module + kSuffixB, p.B.detach().to(at::kFloat));
  }
  stdfs::create_directories(dir);
  write_safetensors(dir / kWeightsName, tensors);  // atomic: temporary sibling + rename
}

at::Tensor read_adapter_score(const stdfs::path& dir) {
  const auto tensors = read_safetensors(dir / kWeightsName);
  auto it = tensors.find(std::string(kPrefix) + "score.weight");
  return it == tensors.end() ? at::Tensor() : it->second.to(at::kFloat);
}

at::Tensor lora_delta(const LoraPair& p, double scale, bool fan_in_fan_out) {
  ST_CHECK(p.A.dim() == 2 && p.B.dim() == 2 && p.B.size(1) == p.A.size(0),
           "LoRA pair " + shape_str(p.A.sizes()) + " (A) and " + shape_str(p.B.sizes()) + " (B) do not form B @ A");
  // As PEFT's get_delta_weight: (B @ A) in fp32, transposed for Conv1D, then scaled.
  at::Tensor d = at::mm(p.B.to(at::kFloat), p.A.to(at::kFloat));
  if (fan_in_fan_out) d = d.t();
  return d.mul(scale).contiguous();
}

std::map<std::string, std::string> match_adapter_to_base(const AdapterConfig& cfg, const AdapterWeights& w,
                                                         const std::map<std::string, std::vector<int64_t>>& base,
                                                         bool conv1d_arch, const stdfs::path& adapter_dir,
                                                         const std::string& base_what) {
  const std::string cfg_file = (adapter_dir / kConfigName).string();
  const std::string w_file = (adapter_dir / kWeightsName).string();
  const std::string other_model =
      "the adapter was trained for a different model" +
      (cfg.base_model_name_or_path.empty() ? std::string() : " (its base_model_name_or_path is '" + cfg.base_model_name_or_path + "')") +
      "; merge it into the base it was trained on";
  ST_CHECK(cfg.fan_in_fan_out == conv1d_arch,
           cfg_file + ": fan_in_fan_out is " + (cfg.fan_in_fan_out ? "true" : "false") + " but " + base_what +
               (conv1d_arch ? " is GPT-2, whose Conv1D weights are stored [in, out] (PEFT sets fan_in_fan_out: true)"
                            : " stores its linear weights [out, in] (fan_in_fan_out must be false)"),
           other_model);
  std::map<std::string, std::string> out;
  for (const auto& [module, p] : w) {
    const std::string pair = "lora_A " + shape_str(p.A.sizes()) + ", lora_B " + shape_str(p.B.sizes());
    // GPT-2 checkpoints on disk may drop the "transformer." prefix PEFT's module paths carry.
    std::vector<std::string> names = {module + ".weight"};
    if (starts_with(module, "transformer.")) names.push_back(module.substr(12) + ".weight");
    else names.push_back("transformer." + module + ".weight");
    auto it = base.end();
    for (const auto& n : names)
      if ((it = base.find(n)) != base.end()) break;
    ST_CHECK(it != base.end(),
             w_file + ": module '" + module + "' (" + pair + ") has no weight '" + module + ".weight' in " + base_what,
             other_model);
    const std::vector<int64_t> want =
        conv1d_arch ? std::vector<int64_t>{p.A.size(1), p.B.size(0)} : std::vector<int64_t>{p.B.size(0), p.A.size(1)};
    ST_CHECK(it->second == want,
             w_file + ": module '" + module + "' (" + pair + ") gives a delta of shape " + shape_str(want) +
                 (conv1d_arch ? " ([in, out], fan_in_fan_out)" : " ([out, in])") + " but weight '" + it->first +
                 "' of " + base_what + " has shape " + shape_str(it->second),
             other_model + " (another size or architecture)");
    out[module] = it->first;
  }
  return out;
}

}  // namespace shardtune::model
