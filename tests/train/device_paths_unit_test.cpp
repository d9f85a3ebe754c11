// The device-neutral trainer paths, checked on the CPU (no GPU here): what the host now tells the model
// instead of reading it back from the device (target indices, the largest position) gives the very
// numbers the device computation gave, bit for bit (loss, sequence log-probs, a whole trainer step);
// the checkpoint writer gives the same bytes for strided views as for contiguous tensors and the loader
// fills strided targets; host copies own their memory; --device cuda with QLoRA is refused by validate().
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <random>

#include "shardtune/checkpoint/checkpoint.h"
#include "shardtune/core/error.h"
#include "shardtune/data/dataset.h"
#include "shardtune/dist/communicator.h"
#include "shardtune/dist/mpi_runtime.h"
#include "shardtune/model/config.h"
#include "shardtune/model/logps.h"
#include "shardtune/model/model.h"
#include "shardtune/model/runtime.h"
#include "shardtune/train/config.h"
#include "shardtune/train/trainer.h"

namespace st = shardtune;
namespace stdfs = std::filesystem;

namespace {

std::shared_ptr<st::model::CausalLM> tiny(const std::string& type, uint64_t seed) {
  nlohmann::json j = type == "gpt2"
                         ? nlohmann::json{{"model_type", "gpt2"}, {"vocab_size", 40}, {"n_embd", 16}, {"n_layer", 2},
                                          {"n_head", 2}, {"n_positions", 32}}
                         : nlohmann::json{{"model_type", "llama"}, {"vocab_size", 40}, {"hidden_size", 16},
                                          {"intermediate_size", 32}, {"num_hidden_layers", 2},
                                          {"num_attention_heads", 2}, {"num_key_value_heads", 1},
                                          {"max_position_embeddings", 64}};
  auto m = std::make_shared<st::model::CausalLM>(st::model::ModelConfig::from_json(j, type));
  m->init_random(seed, 0.1);
  return m;
}

// Random variable-length samples with random masks, as make_batch gets them from the data.
st::data::HostBatch random_batch(uint64_t seed, bool pack, int64_t seq_len = 24) {
  std::mt19937 g{uint32_t(seed)};
  std::vector<std::vector<int32_t>> tokens;
  std::vector<std::vector<uint8_t>> masks;
  for (int s = 0; s < 5; ++s) {
    const int n = 2 + int(g() % 9);
    tokens.emplace_back();
    masks.emplace_back();
    for (int i = 0; i < n; ++i) {
      tokens.back().push_back(int32_t(g() % 40));
      masks.back().push_back(uint8_t(g() % 3 != 0));
    }
  }
  return st::data::make_batch(tokens, masks, seq_len, pack, 0);
}

at::Tensor ids_of(const st::data::HostBatch& hb) {
  return at::tensor(hb.ids, at::kLong).view({hb.B, hb.T});
}
at::Tensor mask_of(const st::data::HostBatch& hb) {
  return at::tensor(hb.mask, at::kByte).view({hb.B, hb.T});
}

bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() && at::equal(a, b);
}

std::string file_bytes(const stdfs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

stdfs::path temp_dir(const std::string& name) {
  const stdfs::path d = stdfs::temp_directory_path() / ("shardtune-device-paths-" + name + "-" + std::to_string(::getpid()));
  stdfs::remove_all(d);
  stdfs::create_directories(d);
  return d;
}

st::dist::MpiRuntime& runtime() {
  static int argc = 0;
  static char** argv = nullptr;
  static st::dist::MpiRuntime rt(&argc, &argv);  // not launched by mpirun: rank 0 of 1
  return rt;
}

}  // namespace

TEST(train_device_paths, HostTargets_TargetIndexAndMaxPositionEqualTheDeviceComputation) {
  for (uint64_t seed = 1; seed <= 20; ++seed)
    for (bool pack : {false, true}) {
      const auto hb = random_batch(seed, pack);
      // What loss() computes on the device: valid[b,t] = mask[b,t+1] and t+1 in t's document.
      const at::Tensor mask = mask_of(hb).to(at::kBool);
      at::Tensor next = mask.narrow(1, 1, hb.T - 1);
      at::Tensor pos = at::arange(hb.T, at::kLong).unsqueeze(0).expand({hb.B, hb.T});
      if (!hb.doc_ids.empty()) {
        const at::Tensor d = at::tensor(hb.doc_ids, at::kLong).view({hb.B, hb.T});
        next = next.logical_and(d.narrow(1, 1, hb.T - 1) == d.narrow(1, 0, hb.T - 1));
        pos = st::model::positions_from_doc_ids(d);
      }
      at::Tensor valid = at::zeros({hb.B, hb.T}, at::kBool);
      valid.narrow(1, 0, hb.T - 1).copy_(next);
      const at::Tensor want = valid.reshape({-1}).nonzero().reshape({-1});
      const auto got = st::model::target_index(hb.mask, hb.doc_ids, hb.B, hb.T);
      EXPECT_TRUE(same_bits(at::tensor(got, at::kLong), want)) << "seed " << seed << " pack " << pack;
      EXPECT_EQ(int64_t(got.size()), hb.loss_tokens) << "the batch's own target count";
      EXPECT_EQ(st::model::max_position(hb.doc_ids, hb.B, hb.T), pos.max().item<int64_t>()) << "seed " << seed;
    }
}

TEST(train_device_paths, HostTargets_LossWithHostTargetsIsBitIdentical) {
  for (const std::string type : {"llama", "gpt2"})
    for (bool pack : {false, true})
      for (uint64_t seed : {3, 4}) {
        auto m = tiny(type, 7);
        for (auto& [name, t] : m->hf_parameters()) t.set_requires_grad(true);
        const auto hb = random_batch(seed, pack);
        st::model::Packing plain;
        if (!hb.doc_ids.empty()) plain.doc_ids = at::tensor(hb.doc_ids, at::kLong).view({hb.B, hb.T});
        st::model::Packing host = plain;
        host.target_index = at::tensor(st::model::target_index(hb.mask, hb.doc_ids, hb.B, hb.T), at::kLong);
        host.max_position = st::model::max_position(hb.doc_ids, hb.B, hb.T);
        const auto a = m->loss(ids_of(hb), mask_of(hb), plain);
        const auto b = m->loss(ids_of(hb), mask_of(hb), host);
        EXPECT_EQ(a.count, b.count);
        EXPECT_TRUE(same_bits(a.sum, b.sum)) << type << " pack " << pack << ": " << a.sum.item<float>() << " vs "
                                             << b.sum.item<float>();
        a.sum.backward();
        std::map<std::string, at::Tensor> ga;
        for (auto& [name, t] : m->hf_parameters()) {
          ga[name] = t.grad().clone();
          t.mutable_grad() = at::Tensor();
        }
        b.sum.backward();
        for (auto& [name, t] : m->hf_parameters()) EXPECT_TRUE(same_bits(ga[name], t.grad())) << type << " " << name;
      }
}

TEST(train_device_paths, HostTargets_Gpt2PositionCheckUsesTheHostBound) {
  auto m = tiny("gpt2", 7);  // n_positions 32
  const auto hb = random_batch(5, /*pack=*/true, 40);  // rows of 40 tokens, documents shorter than 32
  ASSERT_EQ(hb.T, 40);
  st::model::Packing pack;
  pack.doc_ids = at::tensor(hb.doc_ids, at::kLong).view({hb.B, hb.T});
  pack.max_position = st::model::max_position(hb.doc_ids, hb.B, hb.T);
  ASSERT_LT(pack.max_position, 32);
  EXPECT_NO_THROW(m->hidden(ids_of(hb), pack));  // accepted, as the device check accepted it
  // Unpacked rows of 40 tokens reach position 39: refused without any device read.
  const at::Tensor ids = at::zeros({1, 40}, at::kLong);
  try {
    m->hidden(ids);
    FAIL() << "position 39 accepted with n_positions 32";
  } catch (const st::Error& e) {
    EXPECT_NE(std::string(e.what()).find("position 39 is beyond n_positions 32"), std::string::npos) << e.what();
  }
}

TEST(train_device_paths, HostTargets_SequenceLogpsWithHostTargetsIsBitIdentical) {
  auto m = tiny("llama", 9);
  std::vector<st::data::PairSample> pairs(3);
  std::mt19937 g(11);
  for (auto& p : pairs) {
    p.prompt_len = 3;
    for (auto* seq : {&p.chosen, &p.rejected}) {
      auto& mask = seq == &p.chosen ? p.chosen_mask : p.rejected_mask;
      const int n = 5 + int(g() % 5);
      for (int i = 0; i < n; ++i) {
        seq->push_back(int32_t(g() % 40));
        mask.push_back(uint8_t(i >= 3));
      }
    }
  }
  const auto hb = st::data::make_pair_batch(pairs, 24, 0);
  const at::Tensor idx = at::tensor(st::model::target_index(hb.mask, {}, hb.B, hb.T), at::kLong);
  const at::Tensor a = st::model::sequence_logps(*m, ids_of(hb), mask_of(hb));
  const at::Tensor b = st::model::sequence_logps(*m, ids_of(hb), mask_of(hb), 0, idx);
  EXPECT_TRUE(same_bits(a, b)) << a << b;
}

TEST(train_device_paths, HostTargets_TrainerStepLossEqualsTheModelsOwnLoss) {
  st::dist::Communicator comm(runtime());
  for (bool pack : {false, true}) {
    auto m = tiny("llama", 13), ref = tiny("llama", 13);
    const auto hb = random_batch(21, pack);
    st::model::Packing plain;
    if (!hb.doc_ids.empty()) plain.doc_ids = at::tensor(hb.doc_ids, at::kLong).view({hb.B, hb.T});
    at::Tensor want;
    {
      at::NoGradGuard no_grad;
      const auto r = ref->loss(ids_of(hb), mask_of(hb), plain);
      want = (r.sum.to(at::kDouble) / double(r.count));
    }
    st::train::TrainConfig cfg;
    cfg.precision = "fp32";
    st::train::Trainer trainer(cfg, m, comm);
    const auto s = trainer.train_step(0, 1, {hb});
    EXPECT_EQ(s.loss, want.item<double>()) << "pack " << pack;
    EXPECT_EQ(s.loss_tokens, hb.loss_tokens);
  }
}

TEST(train_device_paths, HostToDevice_CpuCopyOwnsItsMemoryAndKeepsTheValues) {
  std::vector<int64_t> v = {1, 2, 3, 4, 5, 6};
  const at::Tensor t = st::model::host_to_device(at::from_blob(v.data(), {2, 3}, at::kLong), at::kCPU);
  v.assign(6, 0);  // the copy must not see this
  EXPECT_TRUE(same_bits(t, at::tensor(std::vector<int64_t>{1, 2, 3, 4, 5, 6}, at::kLong).view({2, 3})));
  const at::Tensor base = at::arange(8, at::kFloat);
  const at::Tensor snap = st::checkpoint::host_snapshot(base.narrow(0, 2, 4));
  base.fill_(-1);
  EXPECT_TRUE(same_bits(snap, at::arange(2, 6, at::kFloat)));
  EXPECT_FALSE(st::checkpoint::host_snapshot(at::Tensor()).defined());
}

TEST(train_device_paths, CheckpointWriter_StridedPiecesWriteTheBytesOfContiguousOnes) {
  const stdfs::path d = temp_dir("writer");
  at::manual_seed(5);
  const at::Tensor m = at::randn({300}), v = at::rand({300});
  // Contiguous pieces, and the same values as strided views (every other element of a wider buffer).
  const at::Tensor wide_m = at::zeros({600}), wide_v = at::zeros({600});
  wide_m.view({300, 2}).select(1, 1).copy_(m);
  wide_v.view({300, 2}).select(1, 1).copy_(v);
  const at::Tensor sm = wide_m.view({300, 2}).select(1, 1), sv = wide_v.view({300, 2}).select(1, 1);
  ASSERT_FALSE(sm.is_contiguous());
  const std::vector<st::checkpoint::StatePiece> plain = {{"a.weight", 0, m.narrow(0, 0, 100), v.narrow(0, 0, 100)},
                                                         {"b.weight", 7, m.narrow(0, 100, 200), v.narrow(0, 100, 200)}};
  const std::vector<st::checkpoint::StatePiece> strided = {
      {"a.weight", 0, sm.narrow(0, 0, 100), sv.narrow(0, 0, 100)},
      {"b.weight", 7, sm.narrow(0, 100, 200), sv.narrow(0, 100, 200)}};
  stdfs::create_directories(d / "a");
  stdfs::create_directories(d / "b");
  const auto fa = st::checkpoint::write_optimizer_file(d / "a" / "optimizer-rank00000.safetensors", 0, 1, plain);
  const auto fb = st::checkpoint::write_optimizer_file(d / "b" / "optimizer-rank00000.safetensors", 0, 1, strided);
  EXPECT_EQ(fa.sha256, fb.sha256);
  EXPECT_EQ(fa.bytes, fb.bytes);
  EXPECT_EQ(file_bytes(d / "a" / "optimizer-rank00000.safetensors"), file_bytes(d / "b" / "optimizer-rank00000.safetensors"));
  // Another dtype is refused by name, not written as garbage.
  const std::vector<st::checkpoint::StatePiece> f64 = {{"c.weight", 0, m.to(at::kDouble), v.to(at::kDouble)}};
  EXPECT_THROW(st::checkpoint::write_optimizer_file(d / "c.safetensors", 0, 1, f64), st::Error);

  // Loading into strided targets (and across another split of the elements) gives the values back.
  const at::Tensor tm = at::zeros({600}), tv = at::zeros({600});
  const at::Tensor tsm = tm.view({300, 2}).select(1, 0), tsv = tv.view({300, 2}).select(1, 0);
  st::checkpoint::load_optimizer(d / "a", {{"a.weight", 0, tsm.narrow(0, 0, 60), tsv.narrow(0, 0, 60)},
                                           {"a.weight", 60, tsm.narrow(0, 60, 40), tsv.narrow(0, 60, 40)},
                                           {"b.weight", 7, tsm.narrow(0, 100, 200), tsv.narrow(0, 100, 200)}});
  EXPECT_TRUE(same_bits(tsm.contiguous(), m));
  EXPECT_TRUE(same_bits(tsv.contiguous(), v));
  EXPECT_TRUE(same_bits(tm.view({300, 2}).select(1, 1).contiguous(), at::zeros({300})))
      << "the elements between the targets' are untouched";
  stdfs::remove_all(d);
}

TEST(train_device_paths, DeviceConfig_CudaWithQloraIsRefusedByValidate) {
  st::train::TrainConfig cfg;
  cfg.steps = 1;  // the options a run needs besides (validate() does not look at the paths)
  cfg.device = "cuda";
  cfg.method = "qlora";
  try {
    cfg.validate();
    FAIL() << "--device cuda --method qlora accepted";
  } catch (const st::Error& e) {
    const std::string w = e.what();
    EXPECT_NE(w.find("--device cuda with --method qlora"), std::string::npos) << w;
    EXPECT_NE(e.hint().find("--method lora"), std::string::npos) << "the hint names the alternative: " << e.hint();
  }
  cfg.method = "lora";
  EXPECT_NO_THROW(cfg.validate());
  cfg.device = "cpu";
  cfg.method = "qlora";
  EXPECT_NO_THROW(cfg.validate());
}
