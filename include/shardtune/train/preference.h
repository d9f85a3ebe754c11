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
  // The frozen full copy (--method full, live reference), or null (adapters disabled, precomputed, none).
  const model::CausalLM* reference() const { return reference_.get(); }

 private:
  DpoOptions o_;
  std::shared_ptr<model::CausalLM> reference_;
  bool precomputed_ = false;
};

// The dtype --method full's frozen reference copy is held in: --ref-dtype, where auto = bf16 when --precision
// resolves to bf16 on this rank (as --base-dtype auto for LoRA's frozen base), else fp32.
at::ScalarType reference_dtype(const TrainConfig& cfg);
// A frozen copy of --model (always the starting model, also when resuming) in reference_dtype(cfg): no
// parameter requires grad; bf16 holds its matrices (embeddings, projections, head) in bf16 and its norms in
// fp32 (CausalLM::freeze_base), its forward computing in fp32 from them without autocast; the log-probs are
// summed in fp32 either way (model::sequence_logps). The live reference and the --precompute-ref pass.
// On `device` (the policy's: CausalLM::move_to), where its inputs are.
std::shared_ptr<model::CausalLM> load_reference_copy(const TrainConfig& cfg, at::Device device = at::kCPU);
// Bytes the model's weights occupy (every HF parameter: what a reference copy costs per rank).
int64_t weight_bytes(const model::CausalLM& m);

// The objective cfg.objective names for this (already method-applied) policy: null for sft; for dpo the
// reference as the method allows (full: --model loaded once more here, frozen).
std::shared_ptr<Objective> make_objective(const TrainConfig& cfg, const model::CausalLM& policy);

// What the DPO run's reference model is: the log line, and the facts of the metrics file's "reference" row.
struct ReferenceInfo {
  std::string kind;   // "" (not dpo) | copy | adapters_disabled | precomputed | none
  std::string dtype;  // copy: fp32 | bf16 (else "")
  int64_t bytes = 0;  // copy: its weights' bytes per rank; else 0 (no reference model held while training)
  std::string line;   // one log line ("" for sft and reward)
};
// `objective`: make_objective's result for this run (its reference copy is measured), may be null for sft.
ReferenceInfo reference_info(const TrainConfig& cfg, const model::CausalLM& policy, const Objective* objective);

}  // namespace shardtune::train
