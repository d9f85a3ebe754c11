// The precomputed DPO reference: one no-grad pass over every pair of both splits (rank r takes pairs
// r, r + world, ...), an all-reduce of the zero-filled table, and the file pair that keeps it with the run.
#include "shardtune/train/reference_cache.h"

#include <torch/csrc/autograd/grad_mode.h>

#include <nlohmann/json.hpp>

#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/dist/communicator.h"
#include "shardtune/model/io.h"
#include "shardtune/model/logps.h"
#include "shardtune/model/runtime.h"
#include "shardtune/train/preference.h"

namespace shardtune::train {

namespace stdfs = std::filesystem;

namespace {

// What the reference log-probs depend on: the starting model, the pairs, truncation, numerics, and the
// method (QLoRA's reference is the NF4 base), the full copy's dtype. Not the loss, beta or the optimizer.
std::string identity(const TrainConfig& cfg, const data::ShardSet& train, const data::ShardSet& val) {
  nlohmann::json j;
  std::error_code ec;
  const stdfs::path model = cfg.model;
  if (stdfs::is_directory(model, ec)) {
    for (const auto& e : stdfs::directory_iterator(model))
      if (e.is_regular_file()) {
        const auto name = e.path().filename().string();
        j["model_files"][name] = name == "config.json" ? fs::sha256_file(e.path()) : std::to_string(e.file_size());
      }
  } else {
    j["model_file"] = std::to_string(stdfs::file_size(model, ec));
  }
  j["model"] = stdfs::absolute(model).lexically_normal().string();
  j["data_manifest_sha256"] = fs::sha256_file(stdfs::path(cfg.data) / "manifest.json");
  j["pairs"] = {train.size(), val.size()};
  j["seq_len"] = cfg.seq_len;
  j["precision"] = cfg.precision;
  j["method"] = cfg.method;
  j["base_dtype"] = cfg.base_dtype;
  j["compute_dtype"] = cfg.compute_dtype;
  j["double_quant"] = cfg.double_quant;
  // full fine-tuning: the pass's reference copy is held in fp32 or bf16 (--ref-dtype, resolved)
  if (cfg.method == "full") j["ref_dtype"] = reference_dtype(cfg) == at::kBFloat16 ? "bf16" : "fp32";
  return j.dump();
}

// This rank's share of one split: [2 x pairs], zero where another rank computes.
at::Tensor compute_split(model::CausalLM& ref, bool lora_off, data::ShardSet& set, const LoaderPlan& plan) {
  const int64_t n = set.size();
  at::Tensor out = at::zeros({2 * n}, at::kDouble);
  std::vector<int64_t> mine;
  for (int64_t i = plan.rank; i < n; i += plan.world) mine.push_back(i);
  const size_t per = size_t(std::max<int64_t>(1, plan.micro_batch));
  for (size_t a = 0; a < mine.size(); a += per) {
    const size_t k = std::min(per, mine.size() - a);
    std::vector<data::PairSample> pairs(k);
    for (size_t i = 0; i < k; ++i) set.read_pair(mine[a + i], pairs[i]);
    const data::HostBatch hb = data::make_pair_batch(pairs, plan.seq_len, plan.pad_id);
    at::Tensor ids = at::from_blob(const_cast<int64_t*>(hb.ids.data()), {hb.B, hb.T}, at::kLong).clone();
    at::Tensor mask = at::from_blob(const_cast<uint8_t*>(hb.mask.data()), {hb.B, hb.T}, at::kByte).clone();
    if (hb.T < 2) {  // the model needs two positions; a pad column changes nothing
      ids = at::cat({ids, at::full({hb.B, 1}, plan.pad_id, ids.options())}, 1);
      mask = at::cat({mask, at::zeros({hb.B, 1}, mask.options())}, 1);
    }
    // The target positions from the host mask (no nonzero() on the device), the batch on the model's device.
    const at::Tensor m8 = mask.contiguous();
    const at::Tensor idx = at::tensor(model::target_index(std::vector<uint8_t>(m8.data_ptr<uint8_t>(),
                                                                               m8.data_ptr<uint8_t>() + m8.numel()),
                                                          {}, m8.size(0), m8.size(1)),
                                      at::kLong);
    const at::Device device = ref.lm_head_weight().device();
    ids = model::host_to_device(ids, device);
    mask = model::host_to_device(mask, device);
    at::Tensor lp;
    if (lora_off) {
      model::LoraDisabled off(ref);
      lp = model::sequence_logps(ref, ids, mask, 0, idx);
    } else {
      lp = model::sequence_logps(ref, ids, mask, 0, idx);
    }
    lp = lp.to(at::kCPU, at::kDouble);
    for (size_t i = 0; i < k; ++i) {
      out[2 * mine[a + i]] = lp[int64_t(i)];
      out[2 * mine[a + i] + 1] = lp[int64_t(k + i)];
    }
  }
  return out;
}

std::shared_ptr<const std::vector<float>> to_vector(const at::Tensor& t) {
  const at::Tensor f = t.to(at::kFloat).contiguous();
  return std::make_shared<const std::vector<float>>(f.data_ptr<float>(), f.data_ptr<float>() + f.numel());
}

}  // namespace

ReferenceTable precompute_reference(const TrainConfig& cfg, model::CausalLM& policy, data::ShardSet& train,
                                    data::ShardSet& val, const LoaderPlan& plan, dist::Communicator& comm,
                                    const stdfs::path& dir) {
  ReferenceTable t;
  t.file = dir / "reference_logps.safetensors";
  const stdfs::path record = dir / "reference_logps.json";
  const std::string id = identity(cfg, train, val);
  // Reuse only what this run would compute, and only a complete, unaltered pair of files.
  std::string reuse_ok = "0";
  if (comm.rank() == 0) {
    std::error_code ec;
    try {
      if (stdfs::is_regular_file(record, ec) && stdfs::is_regular_file(t.file, ec)) {
        const auto j = nlohmann::json::parse(fs::read_file(record));
        if (j.at("identity").get<std::string>() == id && j.at("sha256").get<std::string>() == fs::sha256_file(t.file))
          reuse_ok = "1";
      }
    } catch (const std::exception&) {
      reuse_ok = "0";  // a damaged record is recomputed, not trusted
    }
  }
  reuse_ok = comm.runtime().broadcast(reuse_ok, 0);
  at::Tensor tr, va;
  if (reuse_ok == "1") {
    // Rank 0 reads the file and sends it: the checkpoint folder need not be shared by every node.
    tr = at::zeros({2 * train.size()}, at::kFloat);
    va = at::zeros({2 * val.size()}, at::kFloat);
    std::string err;
    if (comm.rank() == 0) {
      const auto m = model::read_safetensors(t.file);
      const auto a = m.find("train"), b = m.find("val");
      if (a == m.end() || b == m.end() || a->second.numel() != tr.numel() || b->second.numel() != va.numel())
        err = "'" + t.file.string() + "' does not hold one chosen and one rejected log-prob per pair of this data";
      else {
        tr.copy_(a->second.reshape({-1}));
        va.copy_(b->second.reshape({-1}));
      }
    }
    err = comm.runtime().broadcast(err, 0);
    ST_CHECK(err.empty(), err, "remove it (and reference_logps.json) to have the run compute it again");
    if (tr.numel() > 0) comm.broadcast(tr, 0);
    if (va.numel() > 0) comm.broadcast(va, 0);
    t.reused = true;
  } else {
    torch::NoGradGuard no_grad;
    const bool was_training = policy.is_training();
    policy.eval();
    // On the training device, under its autocast: the same numerics as the live reference would have.
    const at::Device device = policy.lm_head_weight().device();
    model::AutocastGuard autocast(device, model::parse_precision(cfg.precision));
    std::shared_ptr<model::CausalLM> copy;
    if (!policy.has_lora()) copy = load_reference_copy(cfg, device);  // in --ref-dtype; freed on return: training holds none
    model::CausalLM& ref = copy ? *copy : policy;
    tr = compute_split(ref, !copy, train, plan);
    va = compute_split(ref, !copy, val, plan);
    if (was_training) policy.train();
    tr = tr.to(at::kFloat);
    va = va.to(at::kFloat);
    // each pair was computed by exactly one rank: the sum (with zeros) is exact
    if (tr.numel() > 0) comm.all_reduce_sum(tr);
    if (va.numel() > 0) comm.all_reduce_sum(va);
    if (comm.rank() == 0) {
      stdfs::create_directories(dir);
      const stdfs::path tmp = t.file.string() + ".tmp";
      model::write_safetensors(tmp, {{"train", tr}, {"val", va}});
      stdfs::rename(tmp, t.file);
      nlohmann::json j = {{"identity", id}, {"sha256", fs::sha256_file(t.file)}};
      fs::write_file_atomic(record, j.dump(2) + "\n");
    }
    comm.runtime().barrier();
  }
  t.train = to_vector(tr);
  t.val = to_vector(va);
  return t;
}

}  // namespace shardtune::train
