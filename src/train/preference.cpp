// DPO objective: one forward of the policy over the 2n rows of a pair batch (chosen, then rejected), one
// no-grad forward of the reference, per-sequence target log-probs (model/logps.h), the per-pair loss and
// the TRL-named metrics (summed here; the trainer divides by the global pair count); the full-fine-tuning
// reference copy (fp32 or bf16) and what the run says of its reference.
#include "shardtune/train/preference.h"

#include <torch/csrc/autograd/grad_mode.h>

#include "shardtune/core/error.h"
#include "shardtune/core/log.h"
#include "shardtune/data/dataset.h"
#include "shardtune/model/io.h"
#include "shardtune/model/logps.h"
#include "shardtune/model/runtime.h"
#include "shardtune/train/reward.h"

namespace shardtune::train {

at::Tensor dpo_losses(const DpoOptions& o, const at::Tensor& pc, const at::Tensor& pr, const at::Tensor& rc,
                      const at::Tensor& rr) {
  const double b = o.beta, ls = o.label_smoothing;
  if (o.loss == "simpo") {  // SimPO (Meng et al. eq. 6) on averaged log-probs; ls as TRL's CPOTrainer
    const at::Tensor z = b * (pc - pr) - o.simpo_gamma;
    return -at::log_sigmoid(z) * (1 - ls) - at::log_sigmoid(-z) * ls;
  }
  if (o.loss == "orpo") {  // ORPO (Hong et al. eq. 6-7): NLL of chosen + beta x odds-ratio term, per pair
    const at::Tensor log_odds = (pc - pr) - (at::log1p(-at::exp(pc)) - at::log1p(-at::exp(pr)));
    return -pc - b * at::log_sigmoid(log_odds);
  }
  const at::Tensor logits = (pc - pr) - (rc - rr);
  if (o.loss == "sigmoid")  // DPO (Rafailov et al. eq. 7); ls > 0: cDPO (Mitchell), as TRL
    return -at::log_sigmoid(b * logits) * (1 - ls) - at::log_sigmoid(-b * logits) * ls;
  if (o.loss == "robust")  // rDPO (Chowdhury et al.), TRL's "robust"
    return (-at::log_sigmoid(b * logits) * (1 - ls) + at::log_sigmoid(-b * logits) * ls) / (1 - 2 * ls);
  if (o.loss == "hinge")  // SLiC-style hinge, TRL's "hinge"
    return at::relu(1 - b * logits);
  if (o.loss == "ipo")  // IPO (Azar et al. eq. 17) on length-averaged log-probs (the caller averages), as TRL
    return (logits - 1 / (2 * b)).pow(2);
  ST_FAIL("internal: unknown --dpo-loss '" + o.loss + "'");
}

DpoObjective::DpoObjective(DpoOptions o, std::shared_ptr<model::CausalLM> reference, bool precomputed)
    : o_(std::move(o)), reference_(std::move(reference)), precomputed_(precomputed) {}

int64_t DpoObjective::units(const data::HostBatch& hb) const { return hb.B / 2; }

std::vector<std::string> DpoObjective::metric_names() const {
  return {"rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin", "logps/chosen", "logps/rejected"};
}

Objective::Result DpoObjective::forward(model::CausalLM& m, const at::Tensor& ids, const at::Tensor& mask,
                                        const data::HostBatch& hb) {
  const int64_t n = hb.B / 2;
  ST_CHECK(hb.B == 2 * n && n > 0, "internal: a DPO batch holds 2n rows (chosen, then rejected), got " +
                                       std::to_string(hb.B));
  // The target positions are known on the host: no nonzero() on the device (it would synchronize a GPU).
  const std::vector<int64_t> targets = model::target_index(hb.mask, {}, hb.B, hb.T);
  const at::Tensor idx = targets.empty() ? at::empty({0}, ids.options().dtype(at::kLong))
                                         : model::host_to_device(at::tensor(targets, at::kLong), ids.device());
  at::Tensor logps = model::sequence_logps(m, ids, mask, 0, idx);  // [2n] fp32
  at::Tensor ref;
  if (precomputed_) {
    ST_CHECK(int64_t(hb.ref_logps.size()) == hb.B, "internal: --precompute-ref but the batch carries " +
                                                        std::to_string(hb.ref_logps.size()) + " reference log-probs for " +
                                                        std::to_string(hb.B) + " rows");
    ref = model::host_to_device(at::from_blob(const_cast<float*>(hb.ref_logps.data()), {hb.B}, at::kFloat),
                                logps.device());
  } else if (!o_.reference_free()) {
    torch::NoGradGuard no_grad;
    if (reference_) {
      ref = model::sequence_logps(*reference_, ids, mask, 0, idx);
    } else {
      ST_CHECK(m.has_lora(), "internal: DPO without a reference model needs LoRA adapters to disable");
      model::LoraDisabled off(m);
      ref = model::sequence_logps(m, ids, mask, 0, idx);
    }
  }
  if (o_.length_averaged()) {
    // TRL: IPO, SimPO, ORPO on the mean log-prob per response token (targets: mask 1 at positions >= 1).
    std::vector<float> count(size_t(hb.B), 0.f);
    for (int64_t b = 0; b < hb.B; ++b)
      for (int64_t t = 1; t < hb.T; ++t) count[size_t(b)] += hb.mask[size_t(b * hb.T + t)] ? 1.f : 0.f;
    at::Tensor c = model::host_to_device(at::from_blob(count.data(), {hb.B}, at::kFloat), logps.device()).clamp_min(1);
    logps = logps / c;
    if (ref.defined()) ref = ref / c;
  }
  const at::Tensor pc = logps.narrow(0, 0, n), pr = logps.narrow(0, n, n);
  at::Tensor rc, rr;
  if (ref.defined()) {
    rc = ref.narrow(0, 0, n);
    rr = ref.narrow(0, n, n);
  }
  Result r;
  r.sum = dpo_losses(o_, pc, pr, rc, rr).sum();
  torch::NoGradGuard no_grad;
  // Rewards: beta x the log-ratio to the reference; reference-free, beta x the (averaged) log-prob (TRL).
  const at::Tensor chosen = o_.beta * (ref.defined() ? pc.detach() - rc : pc.detach());
  const at::Tensor rejected = o_.beta * (ref.defined() ? pr.detach() - rr : pr.detach());
  // fp32 sums widened to float64 (as item<double>() did), stacked on the device: no host read here.
  auto sum = [](const at::Tensor& t) { return t.sum().to(at::kDouble); };
  r.metric_sums = at::stack({sum(chosen), sum(rejected), sum((chosen > rejected).to(at::kFloat)),
                             sum(chosen - rejected), sum(pc.detach()), sum(pr.detach())});
  return r;
}

at::ScalarType reference_dtype(const TrainConfig& cfg) {
  const bool bf16 = cfg.ref_dtype == "bf16" ||
                    (cfg.ref_dtype == "auto" && model::parse_precision(cfg.precision) == model::Precision::BF16);
  return bf16 ? at::kBFloat16 : at::kFloat;
}

std::shared_ptr<model::CausalLM> load_reference_copy(const TrainConfig& cfg, at::Device device) {
  auto reference = model::load_model(cfg.model);
  if (reference_dtype(cfg) == at::kBFloat16) {
    reference->freeze_base(at::kBFloat16);
  } else {
    // fp32: the weights as loaded, laid out as the policy's (no fused q/k/v buffers), so before the first
    // update the reference's log-probs are the policy's bit for bit (rewards exactly 0, the loss log 2).
    for (auto& [name, t] : reference->hf_parameters()) t.set_requires_grad(false);
  }
  reference->eval();
  if (device != at::Device(at::kCPU)) reference->move_to(device);  // on the policy's device, as its inputs
  return reference;
}

int64_t weight_bytes(const model::CausalLM& m) {
  int64_t n = 0;
  for (const auto& [name, t] : m.hf_parameters()) n += t.numel() * int64_t(t.element_size());
  return n;
}

std::shared_ptr<Objective> make_objective(const TrainConfig& cfg, const model::CausalLM& policy) {
  if (cfg.objective == "sft") return nullptr;
  if (cfg.objective == "reward") return std::make_shared<RewardObjective>(cfg.center_rewards);
  ST_CHECK(cfg.objective == "dpo", "internal: unknown --objective '" + cfg.objective + "'");
  DpoOptions o{cfg.dpo_loss, cfg.dpo_beta, cfg.label_smoothing, cfg.simpo_gamma};
  std::shared_ptr<model::CausalLM> reference;
  // Full fine-tuning: a frozen copy of the starting model (--model, also when resuming), loaded once.
  if (!policy.has_lora() && !o.reference_free() && !cfg.precompute_ref)
    reference = load_reference_copy(cfg, policy.lm_head_weight().device());
  return std::make_shared<DpoObjective>(o, std::move(reference), cfg.precompute_ref);
}

ReferenceInfo reference_info(const TrainConfig& cfg, const model::CausalLM& policy, const Objective* objective) {
  ReferenceInfo r;
  if (cfg.objective != "dpo") return r;
  const std::string head = "--objective dpo --dpo-loss " + cfg.dpo_loss + ": reference model ";
  const auto* dpo = dynamic_cast<const DpoObjective*>(objective);
  if (cfg.dpo_loss == "simpo" || cfg.dpo_loss == "orpo") {
    r.kind = "none";
    r.line = head + "none (reference-free loss)";
  } else if (cfg.precompute_ref) {
    r.kind = "precomputed";
    r.line = head + "precomputed: its log-probs of every pair in one pass before training (no reference held)";
    if (!policy.has_lora())
      r.line += std::string("; the pass's copy of --model in ") + (reference_dtype(cfg) == at::kBFloat16 ? "bf16" : "fp32");
  } else if (policy.has_lora()) {
    r.kind = "adapters_disabled";
    r.line = head + "= the base with the adapters disabled (no second copy)";
  } else {
    ST_CHECK(dpo && dpo->reference(), "internal: a full-fine-tuning DPO run without its reference copy");
    r.kind = "copy";
    r.dtype = reference_dtype(cfg) == at::kBFloat16 ? "bf16" : "fp32";
    r.bytes = weight_bytes(*dpo->reference());
    r.line = head + "= a frozen copy of --model, loaded once per rank: " + r.dtype + " weights, " +
             log::human_bytes(double(r.bytes)) + " (" + std::to_string(r.bytes) + " bytes) per rank" +
             (cfg.ref_dtype == "auto" ? " (--ref-dtype auto)" : "");
  }
  return r;
}

}  // namespace shardtune::train
