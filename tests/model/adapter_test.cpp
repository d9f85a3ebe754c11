// PEFT adapter folder I/O (model/adapter.h): round trip, PEFT key and config layout, the delta, the
// base-fit check, and every error naming the file and the tensor or key at fault.
#include "shardtune/model/adapter.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <nlohmann/json.hpp>

#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/model/io.h"
#include "shardtune/model/safetensors.h"

namespace sm = shardtune::model;
namespace stdfs = std::filesystem;

namespace {

const std::string kQ = "model.layers.0.self_attn.q_proj";
const std::string kV = "model.layers.1.self_attn.v_proj";

stdfs::path tmp_dir(const std::string& name) {
  const stdfs::path d = stdfs::path(ST_BINARY_DIR) / "test_tmp" / "adapter" / name;
  stdfs::remove_all(d);
  stdfs::create_directories(d);
  return d;
}

sm::AdapterConfig config(int64_t r = 4) {
  sm::AdapterConfig c;
  c.r = r;
  c.alpha = 8;
  c.dropout = 0.05;
  c.target_modules = {"q_proj", "v_proj"};
  c.base_model_name_or_path = "tiny-llama";
  return c;
}

sm::AdapterWeights weights(int64_t r = 4) {
  sm::AdapterWeights w;
  w[kQ] = {at::randn({r, 16}), at::randn({16, r})};
  w[kV] = {at::randn({r, 16}), at::randn({8, r})};
  return w;
}

// A folder written by our writer, then `edit`ed tensor by tensor (PEFT key -> tensor).
stdfs::path folder(const std::string& name, const std::function<void(std::map<std::string, at::Tensor>&)>& edit = {}) {
  const auto d = tmp_dir(name);
  sm::write_adapter_config(d, config());
  sm::write_adapter_weights(d, weights());
  if (edit) {
    auto t = sm::read_safetensors(d / "adapter_model.safetensors");
    edit(t);
    std::vector<std::pair<std::string, at::Tensor>> v(t.begin(), t.end());
    sm::write_safetensors(d / "adapter_model.safetensors", v);
  }
  return d;
}

void write_config(const stdfs::path& d, const std::string& text) { std::ofstream(d / "adapter_config.json") << text; }

// what() + hint of the Error `f` throws ("" when it does not throw).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const shardtune::Error& e) {
    return std::string(e.what()) + " | HINT " + e.hint();
  }
  return "";
}

std::string config_error(const std::string& name, const std::string& text) {
  const auto d = tmp_dir(name);
  write_config(d, text);
  return error_of([&] { sm::read_adapter_config(d); });
}

std::string weights_error(const std::string& name, const std::function<void(std::map<std::string, at::Tensor>&)>& edit) {
  const auto d = folder(name, edit);
  return error_of([&] { sm::read_adapter_weights(d, sm::read_adapter_config(d)); });
}

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST(adapter, RoundTripKeepsConfigAndWeights) {
  const auto d = tmp_dir("round_trip");
  sm::AdapterConfig c = config();
  c.use_rslora = true;
  c.alpha = 12.5;
  c.init = "gaussian";
  const sm::AdapterWeights w = weights();
  sm::write_adapter_config(d, c);
  sm::write_adapter_weights(d, w);
  const sm::AdapterConfig c2 = sm::read_adapter_config(d);
  EXPECT_EQ(c2.r, 4);
  EXPECT_EQ(c2.alpha, 12.5);
  EXPECT_EQ(c2.dropout, 0.05);
  EXPECT_TRUE(c2.use_rslora);
  EXPECT_FALSE(c2.fan_in_fan_out);
  EXPECT_EQ(c2.target_modules, c.target_modules);
  EXPECT_EQ(c2.base_model_name_or_path, "tiny-llama");
  EXPECT_EQ(c2.init, "gaussian");
  EXPECT_DOUBLE_EQ(c2.scale(), 12.5 / 2.0);  // rslora: alpha / sqrt(r)
  const sm::AdapterWeights w2 = sm::read_adapter_weights(d, c2);
  ASSERT_EQ(w2.size(), 2u);
  for (const auto& [m, p] : w) {
    ASSERT_TRUE(w2.count(m)) << m;
    EXPECT_TRUE(at::equal(w2.at(m).A, p.A)) << m;
    EXPECT_TRUE(at::equal(w2.at(m).B, p.B)) << m;
  }
}

TEST(adapter, KeysAreExactlyPeftLayout) {
  const auto d = folder("keys");
  shardtune::st::File f(d / "adapter_model.safetensors");
  std::set<std::string> names;
  for (const auto& t : f.tensors()) {
    names.insert(t.name);
    EXPECT_EQ(t.dtype, shardtune::st::DType::F32) << t.name;
  }
  const std::set<std::string> want = {"base_model.model." + kQ + ".lora_A.weight", "base_model.model." + kQ + ".lora_B.weight",
                                      "base_model.model." + kV + ".lora_A.weight", "base_model.model." + kV + ".lora_B.weight"};
  EXPECT_EQ(names, want);
  EXPECT_EQ(f.at("base_model.model." + kV + ".lora_A.weight").shape, (std::vector<int64_t>{4, 16}));  // [r, in]
  EXPECT_EQ(f.at("base_model.model." + kV + ".lora_B.weight").shape, (std::vector<int64_t>{8, 4}));   // [out, r]
}

TEST(adapter, ConfigHasPeftKeys) {
  const auto d = folder("config_keys");
  const auto j = nlohmann::json::parse(shardtune::fs::read_file(d / "adapter_config.json"));
  std::set<std::string> keys;
  for (const auto& [k, v] : j.items()) keys.insert(k);
  const std::set<std::string> want = {"peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "target_modules", "bias",
                                      "fan_in_fan_out", "use_rslora", "base_model_name_or_path", "init_lora_weights"};
  EXPECT_EQ(keys, want);
  EXPECT_EQ(j["peft_type"], "LORA");
  EXPECT_EQ(j["task_type"], "CAUSAL_LM");
  EXPECT_EQ(j["bias"], "none");
  EXPECT_TRUE(j["r"].is_number_integer());
  EXPECT_TRUE(j["lora_alpha"].is_number_integer());  // 8, as PEFT writes an int alpha
  EXPECT_EQ(j["init_lora_weights"], true);
  EXPECT_EQ(j["target_modules"], nlohmann::json({"q_proj", "v_proj"}));
  // "all-linear" must stay a string: PEFT expands only the string form.
  sm::AdapterConfig c = config();
  c.target_modules = {"all-linear"};
  sm::write_adapter_config(d, c);
  EXPECT_EQ(nlohmann::json::parse(shardtune::fs::read_file(d / "adapter_config.json"))["target_modules"], "all-linear");
}

TEST(adapter, ReadsPeftConfigVariants) {
  const auto d = tmp_dir("variants");
  // As newer PEFT writes it: a float alpha, a string target, init false, unknown keys, null patterns.
  write_config(d, R"({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16.0,
    "target_modules": "all-linear", "init_lora_weights": false, "revision": null, "rank_pattern": {},
    "alpha_pattern": {}, "use_dora": false, "bias": "none", "megatron_config": null, "layers_to_transform": null})");
  sm::AdapterConfig c = sm::read_adapter_config(d);
  EXPECT_EQ(c.r, 8);
  EXPECT_EQ(c.alpha, 16.0);
  EXPECT_EQ(c.target_modules, std::vector<std::string>{"all-linear"});
  EXPECT_EQ(c.init, "false");
  EXPECT_DOUBLE_EQ(c.scale(), 2.0);
  // A single plain module name, int alpha; PEFT's defaults for absent keys (alpha 8, no dropout).
  write_config(d, R"({"peft_type": "LORA", "r": 4, "target_modules": "c_attn", "fan_in_fan_out": true,
                      "init_lora_weights": "pissa"})");
  c = sm::read_adapter_config(d);
  EXPECT_EQ(c.target_modules, std::vector<std::string>{"c_attn"});
  EXPECT_EQ(c.alpha, 8.0);
  EXPECT_EQ(c.dropout, 0.0);
  EXPECT_TRUE(c.fan_in_fan_out);
  EXPECT_EQ(c.init, "pissa");
  write_config(d, R"({"peft_type": "LORA", "r": 4, "target_modules": ["self_attn.q_proj", "v_proj"]})");
  EXPECT_EQ(sm::read_adapter_config(d).target_modules, (std::vector<std::string>{"self_attn.q_proj", "v_proj"}));
}

TEST(adapter, DeltaIsScaledBAOrientedLikeTheWeight) {
  const sm::LoraPair p{at::randn({3, 5}), at::randn({7, 3})};
  const at::Tensor d = sm::lora_delta(p, 0.5, false);
  EXPECT_EQ(d.sizes(), (at::IntArrayRef{7, 5}));
  EXPECT_TRUE(at::allclose(d, at::mm(p.B, p.A) * 0.5));
  const at::Tensor t = sm::lora_delta(p, 0.5, true);
  EXPECT_EQ(t.sizes(), (at::IntArrayRef{5, 7}));
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_TRUE(at::equal(t, d.t()));
}

TEST(adapter, MatchesModulesToBaseWeights) {
  const sm::AdapterWeights w = weights();
  std::map<std::string, std::vector<int64_t>> base = {{kQ + ".weight", {16, 16}}, {kV + ".weight", {8, 16}}};
  const auto m = sm::match_adapter_to_base(config(), w, base, false, "ad", "base folder");
  EXPECT_EQ(m.at(kQ), kQ + ".weight");
  // A module the base lacks: names the module, its shapes and the base.
  base.erase(kV + ".weight");
  std::string msg = error_of([&] { sm::match_adapter_to_base(config(), w, base, false, "ad", "base folder"); });
  EXPECT_TRUE(has(msg, "module '" + kV + "'") && has(msg, "lora_A [4, 16], lora_B [8, 4]") && has(msg, "base folder"))
      << msg;
  // A weight of another shape: both shapes.
  base[kV + ".weight"] = {16, 16};
  msg = error_of([&] { sm::match_adapter_to_base(config(), w, base, false, "ad", "base folder"); });
  EXPECT_TRUE(has(msg, "[8, 16]") && has(msg, "has shape [16, 16]") && has(msg, kV + ".weight")) << msg;
  // GPT-2 (Conv1D) needs fan_in_fan_out, and the delta transposed.
  base[kV + ".weight"] = {16, 8};
  msg = error_of([&] { sm::match_adapter_to_base(config(), w, base, true, "ad", "base folder"); });
  EXPECT_TRUE(has(msg, "fan_in_fan_out is false") && has(msg, "GPT-2")) << msg;
  sm::AdapterConfig c = config();
  c.fan_in_fan_out = true;
  EXPECT_EQ(sm::match_adapter_to_base(c, w, base, true, "ad", "base folder").at(kV), kV + ".weight");
  // A GPT-2 checkpoint whose names lack "transformer.".
  sm::AdapterWeights g;
  g["transformer.h.0.attn.c_attn"] = {at::randn({4, 16}), at::randn({48, 4})};
  const auto mg = sm::match_adapter_to_base(c, g, {{"h.0.attn.c_attn.weight", {16, 48}}}, true, "ad", "base");
  EXPECT_EQ(mg.at("transformer.h.0.attn.c_attn"), "h.0.attn.c_attn.weight");
}

TEST(adapter, ConfigErrorsNameFileAndKey) {
  std::string msg = error_of([&] { sm::read_adapter_config(tmp_dir("no_config")); });
  EXPECT_TRUE(has(msg, "no_config") && has(msg, "adapter_config.json")) << msg;
  msg = error_of([&] { sm::read_adapter_config(tmp_dir("x") / "absent"); });
  EXPECT_TRUE(has(msg, "absent") && has(msg, "no such adapter folder")) << msg;
  msg = config_error("bad_json", R"({"peft_type": "LORA", "r": )");
  EXPECT_TRUE(has(msg, "bad_json/adapter_config.json") && has(msg, "not valid JSON")) << msg;
  msg = config_error("deep", std::string(1000, '[') + std::string(1000, ']'));
  EXPECT_TRUE(has(msg, "deep/adapter_config.json") && has(msg, "nested")) << msg;
  msg = config_error("not_lora", R"({"peft_type": "IA3", "r": 4})");
  EXPECT_TRUE(has(msg, "not_lora/adapter_config.json") && has(msg, "peft_type") && has(msg, "IA3")) << msg;
  msg = config_error("no_type", R"({"r": 4})");
  EXPECT_TRUE(has(msg, "no_type/adapter_config.json") && has(msg, "\"peft_type\" is missing")) << msg;
  msg = config_error("no_r", R"({"peft_type": "LORA"})");
  EXPECT_TRUE(has(msg, "no_r/adapter_config.json") && has(msg, "\"r\"")) << msg;
  msg = config_error("r_zero", R"({"peft_type": "LORA", "r": 0})");
  EXPECT_TRUE(has(msg, "r_zero/adapter_config.json") && has(msg, "positive integer")) << msg;
  msg = config_error("r_frac", R"({"peft_type": "LORA", "r": 2.5})");
  EXPECT_TRUE(has(msg, "positive integer")) << msg;
  msg = config_error("alpha_str", R"({"peft_type": "LORA", "r": 4, "lora_alpha": "16"})");
  EXPECT_TRUE(has(msg, "alpha_str/adapter_config.json") && has(msg, "\"lora_alpha\"")) << msg;
  msg = config_error("alpha_inf", R"({"peft_type": "LORA", "r": 4, "lora_alpha": 1e999})");
  EXPECT_TRUE(has(msg, "alpha_inf/adapter_config.json")) << msg;  // nlohmann refuses the overflow itself
  msg = config_error("dropout", R"({"peft_type": "LORA", "r": 4, "lora_dropout": 1.5})");
  EXPECT_TRUE(has(msg, "\"lora_dropout\"")) << msg;
  msg = config_error("fifo", R"({"peft_type": "LORA", "r": 4, "fan_in_fan_out": "yes"})");
  EXPECT_TRUE(has(msg, "\"fan_in_fan_out\"")) << msg;
  msg = config_error("regex", R"({"peft_type": "LORA", "r": 4, "target_modules": ".*\\.(q_proj|v_proj)$"})");
  EXPECT_TRUE(has(msg, "regex/adapter_config.json") && has(msg, "regular expression") && has(msg, "HINT write target_modules"))
      << msg;
  msg = config_error("targets", R"({"peft_type": "LORA", "r": 4, "target_modules": [1]})");
  EXPECT_TRUE(has(msg, "target_modules entry 1")) << msg;
  msg = config_error("rank_pattern", R"({"peft_type": "LORA", "r": 4, "rank_pattern": {"q_proj": 8}})");
  EXPECT_TRUE(has(msg, "\"rank_pattern\"") && has(msg, "not supported")) << msg;
  msg = config_error("dora", R"({"peft_type": "LORA", "r": 4, "use_dora": true})");
  EXPECT_TRUE(has(msg, "\"use_dora\"") && has(msg, "DoRA")) << msg;
  msg = config_error("bias", R"({"peft_type": "LORA", "r": 4, "bias": "all"})");
  EXPECT_TRUE(has(msg, "\"bias\"")) << msg;
  msg = config_error("init", R"({"peft_type": "LORA", "r": 4, "init_lora_weights": 3})");
  EXPECT_TRUE(has(msg, "\"init_lora_weights\"")) << msg;
}

TEST(adapter, WeightErrorsNameFileAndTensor) {
  const std::string A = "base_model.model." + kQ + ".lora_A.weight", B = "base_model.model." + kQ + ".lora_B.weight";
  {  // no weights file
    const auto d = tmp_dir("no_weights");
    sm::write_adapter_config(d, config());
    std::string msg = error_of([&] { sm::read_adapter_weights(d, config()); });
    EXPECT_TRUE(has(msg, "no_weights") && has(msg, "adapter_model.safetensors")) << msg;
    std::ofstream(d / "adapter_model.bin") << "pickle";
    msg = error_of([&] { sm::read_adapter_weights(d, config()); });
    EXPECT_TRUE(has(msg, "adapter_model.bin") && has(msg, "safe_serialization=True")) << msg;
  }
  std::string msg = weights_error("a_without_b", [&](auto& t) { t.erase(B); });
  EXPECT_TRUE(has(msg, "a_without_b/adapter_model.safetensors") && has(msg, "'" + A + "' has no matching '" + B + "'")) << msg;
  msg = weights_error("b_without_a", [&](auto& t) { t.erase(A); });
  EXPECT_TRUE(has(msg, "b_without_a/adapter_model.safetensors") && has(msg, "'" + B + "' has no matching")) << msg;
  msg = weights_error("r_mismatch", [&](auto& t) { t[A] = at::randn({3, 16}); });
  EXPECT_TRUE(has(msg, "r_mismatch/adapter_model.safetensors") && has(msg, "'" + A + "'") && has(msg, "[3, 16]") &&
              has(msg, "r = 4"))
      << msg;
  msg = weights_error("r_mismatch_b", [&](auto& t) { t[B] = at::randn({16, 5}); });
  EXPECT_TRUE(has(msg, "'" + B + "'") && has(msg, "r = 4")) << msg;
  msg = weights_error("one_d", [&](auto& t) { t[A] = at::randn({64}); });
  EXPECT_TRUE(has(msg, "one_d/adapter_model.safetensors") && has(msg, "'" + A + "'") && has(msg, "2-D")) << msg;
  msg = weights_error("extra_key", [&](auto& t) { t["base_model.model.score.weight"] = at::randn({2, 16}); });
  EXPECT_TRUE(has(msg, "extra_key/adapter_model.safetensors") && has(msg, "'base_model.model.score.weight'") &&
              has(msg, "not a LoRA weight"))
      << msg;
  msg = weights_error("adapter_name", [&](auto& t) {
    t["base_model.model." + kQ + ".lora_A.default.weight"] = t[A];
    t.erase(A);
  });
  EXPECT_TRUE(has(msg, "lora_A.default.weight")) << msg;
  msg = weights_error("no_prefix", [&](auto& t) {
    t[kQ + ".lora_A.weight"] = t[A];
    t.erase(A);
  });
  EXPECT_TRUE(has(msg, "'" + kQ + ".lora_A.weight'") && has(msg, "not a LoRA weight")) << msg;
  msg = weights_error("int_dtype", [&](auto& t) { t[A] = at::zeros({4, 16}, at::kInt); });
  EXPECT_TRUE(has(msg, "'" + A + "'") && has(msg, "I32")) << msg;
  msg = weights_error("nan", [&](auto& t) { t[B][0][0] = NAN; });
  EXPECT_TRUE(has(msg, "'" + B + "'") && has(msg, "NaN")) << msg;
  msg = weights_error("empty", [&](auto& t) { t.clear(); });
  EXPECT_TRUE(has(msg, "empty/adapter_model.safetensors") && has(msg, "no LoRA weights")) << msg;
}

TEST(adapter, ReadsHalfPrecisionWeightsAsFloat) {
  const auto d = folder("bf16", [](auto& t) {
    for (auto& [k, v] : t) v = v.to(at::kBFloat16);
  });
  const auto w = sm::read_adapter_weights(d, sm::read_adapter_config(d));
  EXPECT_EQ(w.at(kQ).A.scalar_type(), at::kFloat);
}
