// --objective reward: a reward model (the classic RLHF first stage) trained on (chosen, rejected) pairs with
// the Bradley-Terry loss, as TRL's RewardTrainer; the scalar head is HF LlamaForSequenceClassification's
// score.weight (num_labels 1) read at the last response token of each sequence (docs/PREFERENCE.md).
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "shardtune/model/model.h"
#include "shardtune/train/config.h"
#include "shardtune/train/trainer.h"

namespace shardtune::train {

// Per-pair loss -log sigmoid(r_c - r_r) + C (r_c + r_r)^2 ([n] each, fp32); its mean over the pairs is
// TRL's loss with center_rewards_coefficient C.
at::Tensor reward_losses(const at::Tensor& chosen, const at::Tensor& rejected, double center_rewards);

class RewardObjective : public Objective {
 public:
  explicit RewardObjective(double center_rewards) : center_(center_rewards) {}
  int64_t units(const data::HostBatch& hb) const override;
  Result forward(model::CausalLM& m, const at::Tensor& ids, const at::Tensor& mask, const data::HostBatch& hb) override;
  std::vector<std::string> metric_names() const override;

 private:
  double center_;
};

// The position of each row's last response token (the last mask 1): [B] int64. Error for a row without one.
at::Tensor last_response_positions(const data::HostBatch& hb);

// PEFT's key of the head in adapter_model.safetensors (modules_to_save ["score"], task_type SEQ_CLS: PEFT
// drops ".modules_to_save.default" when saving).
inline const char* kScoreAdapterKey = "base_model.model.score.weight";
// Writes score.weight beside the adapter in `dir` (adapter_model.safetensors gains kScoreAdapterKey) and
// marks adapter_config.json task_type SEQ_CLS, modules_to_save ["score"]. Call after the adapter is written.
void write_score_to_adapter(const std::filesystem::path& dir, const at::Tensor& score);
// Loads the head from an adapter folder written so into the model's score.weight; false when the folder
// holds none (a plain LoRA adapter: the head stays as initialized).
bool load_score_from_adapter(model::CausalLM& m, const std::filesystem::path& dir);

}  // namespace shardtune::train
