// Reward-model objective: one forward over the 2n rows of a pair batch (chosen, then rejected), the scalar
// head at each row's last response token, the Bradley-Terry loss (+ the optional centering term) summed over
// the pairs (the trainer divides by the global pair count) and the TRL-named reward metrics. Also the head's
// place in a PEFT adapter folder (modules_to_save ["score"]).
#include "shardtune/train/reward.h"

#include <torch/csrc/autograd/grad_mode.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/data/dataset.h"
#include "shardtune/model/io.h"
#include "shardtune/model/runtime.h"

namespace shardtune::train {

namespace stdfs = std::filesystem;

at::Tensor reward_losses(const at::Tensor& chosen, const at::Tensor& rejected, double center_rewards) {
  at::Tensor l = -at::log_sigmoid(chosen - rejected);
  if (center_rewards != 0) l = l + center_rewards * (chosen + rejected).pow(2);
  return l;
}

at::Tensor last_response_positions(const data::HostBatch& hb) {
  std::vector<int64_t> last(size_t(hb.B), -1);
  for (int64_t b = 0; b < hb.B; ++b)
    for (int64_t t = hb.T - 1; t >= 0 && last[size_t(b)] < 0; --t)
      if (hb.mask[size_t(b * hb.T + t)]) last[size_t(b)] = t;
  for (int64_t b = 0; b < hb.B; ++b)
    ST_CHECK(last[size_t(b)] >= 0, "--objective reward: row " + std::to_string(b) + " of a pair batch has no response "
             "token (its loss mask is all 0)", "check the data with shardtune-inspect; prepare it again with "
             "shardtune-prep --format preference");
  return at::tensor(last, at::kLong);
}

int64_t RewardObjective::units(const data::HostBatch& hb) const { return hb.B / 2; }

std::vector<std::string> RewardObjective::metric_names() const {
  return {"rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin"};
}

Objective::Result RewardObjective::forward(model::CausalLM& m, const at::Tensor& ids, const at::Tensor& /*mask*/,
                                           const data::HostBatch& hb) {
  const int64_t n = hb.B / 2;
  ST_CHECK(hb.B == 2 * n && n > 0, "internal: a reward batch holds 2n rows (chosen, then rejected), got " +
                                       std::to_string(hb.B));
  const at::Tensor r = m.rewards(ids, model::host_to_device(last_response_positions(hb), ids.device()));  // [2n] fp32
  const at::Tensor rc = r.narrow(0, 0, n), rr = r.narrow(0, n, n);
  Result out;
  out.sum = reward_losses(rc, rr, center_).sum();
  torch::NoGradGuard no_grad;
  // fp32 sums widened to float64, stacked on the device: the trainer reads them once per step.
  auto sum = [](const at::Tensor& t) { return t.sum().to(at::kDouble); };
  const at::Tensor c = rc.detach(), j = rr.detach();
  out.metric_sums = at::stack({sum(c), sum(j), sum((c > j).to(at::kFloat)), sum(c - j)});
  return out;
}

void write_score_to_adapter(const stdfs::path& dir, const at::Tensor& score) {
  const stdfs::path cfg_file = dir / "adapter_config.json", weights = dir / "adapter_model.safetensors";
  std::ifstream in(cfg_file);
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(in, nullptr, false);
  ST_CHECK(j.is_object(), "internal: " + cfg_file.string() + " to extend with the reward head is not JSON");
  j["task_type"] = "SEQ_CLS";
  j["modules_to_save"] = {"score"};
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (auto& [k, t] : model::read_safetensors(weights)) tensors.emplace_back(k, t);
  tensors.emplace_back(kScoreAdapterKey, score.detach().to(at::kFloat).contiguous());
  model::write_safetensors(weights, tensors);  // atomic
  fs::write_file_atomic(cfg_file, j.dump(2) + "\n");
}

bool load_score_from_adapter(model::CausalLM& m, const stdfs::path& dir) {
  const stdfs::path weights = dir / "adapter_model.safetensors";
  const auto tensors = model::read_safetensors(weights);
  auto it = tensors.find(kScoreAdapterKey);
  if (it == tensors.end()) return false;
  at::Tensor dst = m.param("score.weight");
  ST_CHECK(it->second.sizes() == dst.sizes(), weights.string() + ": '" + kScoreAdapterKey + "' has shape " +
           std::to_string(it->second.size(0)) + "x" + std::to_string(it->second.dim() > 1 ? it->second.size(1) : 0) +
           ", the model's score.weight is 1x" + std::to_string(dst.size(1)),
           "the adapter was trained on another base model: give its own base as --model");
  torch::NoGradGuard no_grad;
  dst.copy_(it->second.to(at::kFloat));
  return true;
}

}  // namespace shardtune::train
