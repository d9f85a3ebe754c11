// --objective dpo: Direct Preference Optimization and its variants on (chosen, rejected) pairs, as a
// trainer Objective (trainer.h). The formulas follow TRL's DPOTrainer (docs/PREFERENCE.md says which
// version where papers and TRL differ). The reference model: with LoRA/QLoRA the policy itself with its
// adapters disabled (model::LoraDisabled, no second copy); with full fine-tuning a frozen copy of --model.
#pragma once

#include <memory>
#include <string>

#include "shardtune/model/model.h"
#include "shardtune/train/config.h"
#include "shardtune/train/trainer.h"

namespace shardtune::train {

struct DpoOptions {
  std::string loss = "sigmoid";  // sigmoid | ipo | hinge | robust | simpo | orpo
  double beta = 0.1, label_smoothing = 0.0;
  double simpo_gamma = 0.5;  // SimPO's target margin
  // simpo and orpo need no reference model; ipo, simpo and orpo use length-averaged log-probs (as TRL).
  bool reference_free() const { return loss == "simpo" || loss == "orpo"; }
  bool length_averaged() const { return loss == "ipo" || reference_free(); }
};

// Per-pair DPO losses from the four per-sequence log-probs ([n] each, fp32): the formulas of
// docs/PREFERENCE.md. (logits = (pc - pr) - (rc - rr).) Reference-free losses ignore rc, rr (may be undefined).
at::Tensor dpo_losses(const DpoOptions& o, const at::Tensor& policy_chosen, const at::Tensor& policy_rejected,
                      const at::Tensor& ref_chosen, const at::Tensor& ref_rejected);

class DpoObjective : public Objective {
 public:
  // `reference` null: the policy with its LoRA adapters disabled is the reference (the policy must have LoRA);
  // `precomputed`: every batch carries its reference log-probs (HostBatch::ref_logps, --precompute-ref).
  DpoObjective(DpoOptions o, std::shared_ptr<model::CausalLM> reference, bool precomputed = false);
  int64_t units(const data::HostBatch& hb) const override;
  Result forward(model::CausalLM& m, const at::Tensor& ids, const at::Tensor& mask, const data::HostBatch& hb) override;
  std::vector<std::string> metric_names() const override;

 private:
  DpoOptions o_;
  std::shared_ptr<model::CausalLM> reference_;
  bool precomputed_ = false;
};

// The objective cfg.objective names for this (already method-applied) policy: null for sft; for dpo the
// reference as the method allows (full: --model loaded once more here, frozen).
std::shared_ptr<Objective> make_objective(const TrainConfig& cfg, const model::CausalLM& policy);

// One log line saying what the reference model is for this run ("" for sft).
std::string reference_summary(const TrainConfig& cfg, const model::CausalLM& policy);

}  // namespace shardtune::train
