// Model layer unit tests: loader error paths, loss convention, fused cross-entropy, LoRA merge, dtypes.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/model/io.h"
#include "shardtune/model/runtime.h"

namespace sm = shardtune::model;
namespace stdfs = std::filesystem;

namespace {

stdfs::path tmp_dir(const std::string& name) {
  const stdfs::path d = stdfs::path(ST_BINARY_DIR) / "test_tmp" / "model" / name;
  stdfs::remove_all(d);
  stdfs::create_directories(d);
  return d;
}

sm::ModelConfig tiny_llama() {
  nlohmann::json j = {{"model_type", "llama"},     {"vocab_size", 32},          {"hidden_size", 16},
                      {"intermediate_size", 24},   {"num_hidden_layers", 2},    {"num_attention_heads", 4},
                      {"num_key_value_heads", 2},  {"rms_norm_eps", 1e-5},      {"max_position_embeddings", 64}};
  return sm::ModelConfig::from_json(j, "test config");
}

std::string load_error(const std::string& path) {
  try {
    sm::load_model(path);
  } catch (const shardtune::Error& e) {
    return std::string(e.what()) + " | HINT " + e.hint();
  }
  return "";
}

stdfs::path saved_tiny(const std::string& name) {
  const auto d = tmp_dir(name);
  sm::CausalLM m(tiny_llama());
  m.init_random(1);
  sm::save_hf(m, d);
  return d;
}

void rewrite(const stdfs::path& file, const std::function<void(std::map<std::string, at::Tensor>&)>& edit) {
  auto t = sm::read_safetensors(file);
  edit(t);
  std::vector<std::pair<std::string, at::Tensor>> v(t.begin(), t.end());
  sm::write_safetensors(file, v);
}

}  // namespace

TEST(model_unit, UnknownArchitectureNamesConfigFile) {
  const auto d = saved_tiny("unknown_arch");
  std::ofstream(d / "config.json") << R"({"model_type": "mamba", "architectures": ["MambaForCausalLM"]})";
  const std::string msg = load_error(d.string());
  EXPECT_NE(msg.find("config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("unknown architecture"), std::string::npos) << msg;
  EXPECT_NE(msg.find("mamba"), std::string::npos) << msg;
  EXPECT_NE(msg.find("HINT supported"), std::string::npos) << msg;
}

TEST(model_unit, MissingTensorNamesFileTensorAndShape) {
  const auto d = saved_tiny("missing_tensor");
  rewrite(d / "model.safetensors", [](auto& t) { t.erase("model.layers.1.mlp.up_proj.weight"); });
  const std::string msg = load_error(d.string());
  EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.layers.1.mlp.up_proj.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[24, 16]"), std::string::npos) << msg;
}

TEST(model_unit, WrongShapeNamesExpectedAndFound) {
  const auto d = saved_tiny("wrong_shape");
  rewrite(d / "model.safetensors", [](auto& t) { t["model.layers.0.self_attn.k_proj.weight"] = at::zeros({16, 16}); });
  const std::string msg = load_error(d.string());
  EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.layers.0.self_attn.k_proj.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[16, 16]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("expected [8, 16]"), std::string::npos) << msg;
}

TEST(model_unit, TruncatedWeightsAndLlama2cFiles) {
  const auto d = saved_tiny("truncated");
  stdfs::resize_file(d / "model.safetensors", stdfs::file_size(d / "model.safetensors") - 100);
  std::string msg = load_error(d.string());
  EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;

  const stdfs::path bin = d / "tiny.bin";
  const int32_t h[7] = {16, 24, 2, 4, 2, 32, 64};
  std::ofstream(bin, std::ios::binary).write(reinterpret_cast<const char*>(h), sizeof h);
  msg = load_error(bin.string());
  EXPECT_NE(msg.find("tiny.bin"), std::string::npos) << msg;
  EXPECT_NE(msg.find("expected"), std::string::npos) << msg;

  std::ofstream(d / "pickle.bin", std::ios::binary) << "\x80\x02}q";
  msg = load_error((d / "pickle.bin").string());
  EXPECT_NE(msg.find("pickle"), std::string::npos) << msg;
  EXPECT_NE(load_error((d / "nowhere").string()).find("no such file"), std::string::npos);
}

TEST(model_unit, Bf16SaveReloadIsBitExact) {
  const auto d = tmp_dir("bf16");
  sm::CausalLM m(tiny_llama());
  m.init_random(2);
  sm::SaveOptions o;
  o.dtype = "BF16";
  sm::save_hf(m, d, o);
  auto a = sm::load_model(d.string());
  sm::save_hf(*a, d / "again");  // keeps BF16 because that is what it was loaded from
  auto b = sm::read_safetensors(d / "model.safetensors");
  auto c = sm::read_safetensors(d / "again" / "model.safetensors");
  ASSERT_EQ(b.size(), c.size());
  for (auto& [k, v] : b) {
    EXPECT_EQ(c[k].scalar_type(), at::kBFloat16) << k;
    EXPECT_TRUE(at::equal(v, c[k])) << k;
  }
  auto cfg = nlohmann::json::parse(std::ifstream(d / "config.json"));
  EXPECT_EQ(cfg["torch_dtype"], "bfloat16");
  EXPECT_EQ(cfg["architectures"][0], "LlamaForCausalLM");
}

TEST(model_unit, PositionsRestartPerDocument) {
  const at::Tensor doc = at::tensor({0, 0, 0, 1, 1, 2, 2, 2, 2}, at::kLong).view({1, -1});
  const at::Tensor pos = sm::positions_from_doc_ids(doc);
  EXPECT_TRUE(at::equal(pos, at::tensor({0, 1, 2, 0, 1, 0, 1, 2, 3}, at::kLong).view({1, -1})));
}

TEST(model_unit, FusedCrossEntropyMatchesNaiveWithGradients) {
  at::manual_seed(0);
  const at::Tensor h0 = at::randn({37, 16}, at::kDouble).to(at::kFloat), w0 = at::randn({50, 16}).mul(0.3);
  const at::Tensor tg = at::randint(0, 50, {37}, at::kLong);
  at::Tensor h1 = h0.clone().requires_grad_(true), w1 = w0.clone().requires_grad_(true);
  at::Tensor h2 = h0.clone().requires_grad_(true), w2 = w0.clone().requires_grad_(true);
  const at::Tensor fused = sm::linear_cross_entropy_sum(h1, w1, tg, 5, at::kFloat);
  const at::Tensor naive = at::cross_entropy_loss(at::mm(h2, w2.t()), tg, {}, at::Reduction::Sum);
  EXPECT_NEAR(fused.item<double>(), naive.item<double>(), 1e-4);
  (fused * 0.5).backward();
  (naive * 0.5).backward();
  EXPECT_TRUE(at::allclose(h1.grad(), h2.grad(), 1e-5, 1e-6));
  EXPECT_TRUE(at::allclose(w1.grad(), w2.grad(), 1e-5, 1e-6));
}

TEST(model_unit, LossMaskConventionAndDocumentBoundaries) {
  sm::CausalLM m(tiny_llama());
  m.init_random(3, 0.2);
  const at::Tensor ids = at::randint(0, 32, {1, 8}, at::kLong);
  at::Tensor mask = at::zeros({1, 8}, at::kLong);
  mask[0][3] = 1;  // only token 3 is a target, predicted from position 2
  const auto r = m.loss(ids, mask);
  EXPECT_EQ(r.count, 1);
  const at::Tensor logits = m.logits(ids);
  const double expect = at::cross_entropy_loss(logits[0][2].unsqueeze(0), ids[0][3].unsqueeze(0)).item<double>();
  EXPECT_NEAR(r.sum.item<double>(), expect, 1e-5);
  // Document starts are never targets of the previous document.
  sm::Packing pk;
  pk.doc_ids = at::tensor({0, 0, 0, 0, 1, 1, 1, 1}, at::kLong).view({1, -1});
  EXPECT_EQ(m.loss(ids, {}, pk).count, 6);
}

TEST(model_unit, LoraAdapterMergesIntoWeights) {
  const auto d = tmp_dir("lora");
  sm::CausalLM m(tiny_llama());
  m.init_random(4);
  const at::Tensor before = m.param("model.layers.0.self_attn.q_proj.weight").detach().clone();
  const at::Tensor A = at::randn({2, 16}), B = at::randn({16, 2});
  sm::write_safetensors(d / "adapter_model.safetensors",
                        {{"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", A},
                         {"base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", B}});
  std::ofstream(d / "adapter_config.json") << R"({"peft_type": "LORA", "r": 2, "lora_alpha": 4})";
  EXPECT_EQ(sm::merge_lora(m, d), 1);
  EXPECT_TRUE(at::allclose(m.param("model.layers.0.self_attn.q_proj.weight"), before + 2.0 * at::mm(B, A)));
}

TEST(model_unit, ParametersAreRepointable) {
  // The trainer re-points parameters into one flat buffer; forward must follow.
  sm::CausalLM m(tiny_llama());
  m.init_random(5);
  const at::Tensor ids = at::randint(0, 32, {2, 6}, at::kLong);
  const at::Tensor ref = m.logits(ids).detach();
  int64_t total = 0;
  for (auto& [n, p] : m.hf_parameters()) total += p.numel();
  at::Tensor flat = at::empty({total});
  int64_t off = 0;
  for (auto& [n, p] : m.hf_parameters()) {
    at::Tensor view = flat.narrow(0, off, p.numel()).view(p.sizes());
    view.copy_(p.detach());
    p.set_data(view);
    off += p.numel();
  }
  EXPECT_TRUE(at::allclose(m.logits(ids), ref));
  flat.zero_();
  EXPECT_EQ(m.logits(ids).abs().max().item<double>(), 0.0);
}

namespace {
// Writes `edit`ed config.json into a saved tiny model and returns the load error.
std::string config_error(const std::string& name, const std::function<void(nlohmann::json&)>& edit) {
  const auto d = saved_tiny(name);
  nlohmann::json j = nlohmann::json::parse(shardtune::fs::read_file(d / "config.json"));
  edit(j);
  std::ofstream(d / "config.json") << j.dump();
  return load_error(d.string());
}
}  // namespace

TEST(model_unit, ConfigIsCheckedAgainstTheWeightsBeforeAllocating) {
  // 100000 layers of this size would be ~6 GB: the header check must refuse it first.
  std::string msg = config_error("layers", [](auto& j) { j["num_hidden_layers"] = 4000; });
  EXPECT_NE(msg.find("config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("num_hidden_layers is 4000 but the weights hold 2 layer(s)"), std::string::npos) << msg;
  msg = config_error("vocab", [](auto& j) { j["vocab_size"] = 64; });
  EXPECT_NE(msg.find("'model.embed_tokens.weight'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("config key vocab_size gives 64"), std::string::npos) << msg;
  msg = config_error("kv", [](auto& j) { j["num_key_value_heads"] = 4; });
  EXPECT_NE(msg.find("'model.layers.0.self_attn.k_proj.weight'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("num_key_value_heads x head_dim gives 16"), std::string::npos) << msg;
  msg = config_error("tied", [](auto& j) { j["tie_word_embeddings"] = false; j["vocab_size"] = 32; });
  EXPECT_EQ(msg, "");  // tiny_llama is untied already: a consistent config still loads
  msg = config_error("untied", [](auto& j) { j["mlp_bias"] = true; });
  EXPECT_NE(msg.find("'model.layers.0.mlp.gate_proj.bias'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("is missing"), std::string::npos) << msg;
}

TEST(model_unit, HugeLayerCountIsRefusedWithoutAllocating) {
  const std::string msg = config_error("layers100k", [](auto& j) { j["num_hidden_layers"] = 100000; });
  EXPECT_NE(msg.find("config.json: num_hidden_layers is 100000"), std::string::npos) << msg;
}

TEST(model_unit, ConfigValuesAreRangeChecked) {
  const std::vector<std::pair<std::function<void(nlohmann::json&)>, std::string>> cases = {
      {[](auto& j) { j["rms_norm_eps"] = -1; }, "rms_norm_eps is -1"},
      {[](auto& j) { j["rms_norm_eps"] = 0; }, "rms_norm_eps is 0"},
      {[](auto& j) { j["num_attention_heads"] = 3; }, "hidden_size 16 is not a multiple of num_attention_heads 3"},
      {[](auto& j) { j["num_attention_heads"] = -4; }, "num_attention_heads is -4"},
      {[](auto& j) { j["vocab_size"] = 0; }, "vocab_size is 0"},
      {[](auto& j) { j["hidden_size"] = int64_t(1) << 40; }, "hidden_size is 1099511627776"},
      {[](auto& j) { j["rope_theta"] = -5.0; }, "rope_theta is -5"},
      {[](auto& j) { j["num_key_value_heads"] = 3; }, "not a multiple of num_key_value_heads 3"},
  };
  int i = 0;
  for (const auto& [edit, want] : cases) {
    const std::string msg = config_error("range" + std::to_string(i++), edit);
    EXPECT_NE(msg.find("config.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find(want), std::string::npos) << "want '" << want << "' in: " << msg;
  }
}

TEST(model_unit, DeeplyNestedConfigIsRefused) {
  const auto d = saved_tiny("nested");
  std::ofstream(d / "config.json") << "{\"model_type\": \"llama\", \"x\": " << std::string(300000, '[')
                                   << std::string(300000, ']') << "}";
  const std::string msg = load_error(d.string());
  EXPECT_NE(msg.find("config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("nested deeper than"), std::string::npos) << msg;
}

TEST(model_unit, ExpectedTensorsMatchTheModelsParameters) {
  std::vector<sm::ModelConfig> cfgs = {tiny_llama()};
  nlohmann::json j = tiny_llama().to_json();
  j["tie_word_embeddings"] = true;
  j["attention_bias"] = true;
  j["mlp_bias"] = true;
  cfgs.push_back(sm::ModelConfig::from_json(j, "biased"));
  j["model_type"] = "qwen2";
  j["attention_bias"] = false;
  cfgs.push_back(sm::ModelConfig::from_json(j, "qwen2"));
  cfgs.push_back(sm::ModelConfig::from_json({{"model_type", "gpt2"}, {"vocab_size", 40}, {"n_embd", 16}, {"n_layer", 2},
                                             {"n_head", 2}, {"n_positions", 32}}, "gpt2"));
  for (const auto& c : cfgs) {
    sm::CausalLM m(c);
    const auto params = m.hf_parameters();
    const auto expected = c.expected_tensors();
    ASSERT_EQ(params.size(), expected.size()) << c.model_type;
    for (size_t i = 0; i < params.size(); ++i) {
      EXPECT_EQ(params[i].first, expected[i].name);
      EXPECT_EQ(params[i].second.sizes().vec(), expected[i].shape) << expected[i].name;
      EXPECT_EQ(expected[i].dim_keys.size(), expected[i].shape.size());
    }
  }
}

TEST(model_unit, Llama2cHeaderIsRangeCheckedBeforeItsSize) {
  const auto d = tmp_dir("llama2c_header");
  const stdfs::path bin = d / "huge.bin";
  const int32_t h[7] = {4096, 11008, 100000, 32, 32, 32000, 2048};
  std::ofstream(bin, std::ios::binary).write(reinterpret_cast<const char*>(h), sizeof h);
  const std::string msg = load_error(bin.string());
  EXPECT_NE(msg.find("huge.bin: num_hidden_layers is 100000"), std::string::npos) << msg;
}

TEST(model_unit, IntegerKeysAreCheckedNotConverted) {
  auto err = [](nlohmann::json j) {
    try {
      sm::ModelConfig::from_json(j, "cfg.json");
    } catch (const shardtune::Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  nlohmann::json gpt2 = {{"model_type", "gpt2"}, {"vocab_size", 40}, {"n_embd", 16}, {"n_layer", 2}, {"n_head", 2}};
  EXPECT_EQ(err(gpt2), "");
  // Found by tools/fuzz: 4 * n_embd (the default n_inner) overflowed for n_embd = INT64_MIN.
  gpt2["n_embd"] = INT64_MIN;
  EXPECT_NE(err(gpt2).find("cfg.json: n_embd is -9223372036854775808"), std::string::npos) << err(gpt2);
  nlohmann::json llama = tiny_llama().to_json();
  llama["max_position_embeddings"] = 2048.0;  // integral floats are accepted
  EXPECT_EQ(err(llama), "");
  llama["max_position_embeddings"] = 2048.5;
  EXPECT_NE(err(llama).find("max_position_embeddings must be an integer"), std::string::npos) << err(llama);
  llama["max_position_embeddings"] = 1e300;
  EXPECT_NE(err(llama).find("max_position_embeddings must be an integer"), std::string::npos) << err(llama);
  llama["max_position_embeddings"] = "2048";
  EXPECT_NE(err(llama).find("max_position_embeddings must be an integer, found \"2048\""), std::string::npos) << err(llama);
  llama.erase("max_position_embeddings");
  llama.erase("hidden_size");
  EXPECT_NE(err(llama).find("cfg.json: missing config key 'hidden_size'"), std::string::npos) << err(llama);
  llama["hidden_size"] = 16;
  llama["model_type"] = 5;  // a wrong JSON type anywhere is our Error, not a raw library exception
  EXPECT_NE(err(llama).find("cfg.json: bad or missing config key"), std::string::npos) << err(llama);
}

// --device cuda moves the model with move_to (CPU -> CUDA, checked on a GPU by tools/gpu-check.sh). Here,
// without a GPU: a move to where the model already is changes nothing (same tensors, fused q/k/v and
// gate/up members still views of one buffer, same logits), and NF4 weights are refused before anything
// moves. (The meta device cannot stand in for a GPU: set_data refuses CPU -> meta.)
TEST(model_unit, MoveToSameDeviceKeepsEverythingAndRefusesNf4) {
  sm::CausalLM m(tiny_llama());
  m.init_random(1);
  sm::AdapterConfig c;
  c.r = 4;
  c.alpha = 8;
  c.target_modules = {"all-linear"};
  m.add_lora(c, 7);
  m.freeze_base(at::kFloat);  // re-lays q/k/v and gate/up into one buffer each
  at::NoGradGuard no_grad;
  const at::Tensor ids = at::randint(0, 32, {2, 5}, at::kLong);
  const at::Tensor before = m.logits(ids);
  const auto* q_impl = m.param("model.layers.0.self_attn.q_proj.weight").unsafeGetTensorImpl();
  m.move_to(at::Device(at::kCPU));
  EXPECT_EQ(m.param("model.layers.0.self_attn.q_proj.weight").unsafeGetTensorImpl(), q_impl);
  auto storage = [&](const std::string& n) { return m.param(n).storage().unsafeGetStorageImpl(); };
  EXPECT_EQ(storage("model.layers.0.self_attn.q_proj.weight"), storage("model.layers.0.self_attn.v_proj.weight"));
  EXPECT_EQ(storage("model.layers.1.mlp.gate_proj.weight"), storage("model.layers.1.mlp.up_proj.weight"));
  EXPECT_TRUE(at::equal(m.logits(ids), before));

  sm::CausalLM q(tiny_llama());
  q.init_random(1);
  c.target_modules = {"q_proj"};
  q.add_lora(c, 7);
  q.quantize_base(false);
  try {
    q.move_to(at::Device(at::kCUDA, 0));
    ADD_FAILURE() << "NF4 weights were not refused";
  } catch (const shardtune::Error& e) {
    EXPECT_NE(std::string(e.what()).find("q_proj"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("NF4"), std::string::npos) << e.what();
    EXPECT_NE(e.hint().find("--method lora"), std::string::npos) << e.hint();
  }
  EXPECT_EQ(q.param("model.layers.0.self_attn.o_proj.weight").device(), at::Device(at::kCPU));  // nothing moved
}
