// --method: full fine-tuning as loaded, or LoRA/QLoRA surgery on the base (see train/method.h).
#include "shardtune/train/method.h"

#include <cinttypes>
#include <cstdio>

#include "shardtune/core/error.h"
#include "shardtune/model/adapter.h"
#include "shardtune/model/nf4.h"

namespace shardtune::train {

namespace {

std::string with_commas(int64_t v) {
  std::string s = std::to_string(v), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return out;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ",") + x;
  return s;
}

}  // namespace

std::vector<std::string> lora_targets(const TrainConfig& cfg, const model::ModelConfig& mc) {
  if (!cfg.lora_targets.empty()) return cfg.lora_targets;
  if (mc.arch == model::Arch::GPT2) return {"c_attn"};
  return {"q_proj", "v_proj"};
}

MethodSummary apply_method(model::CausalLM& m, const TrainConfig& cfg, model::Precision precision) {
  MethodSummary s;
  if (cfg.method != "full") {
    if (!cfg.adapter.empty()) {
      const model::AdapterConfig ac = model::read_adapter_config(cfg.adapter);
      m.load_lora(ac, model::read_adapter_weights(cfg.adapter, ac), cfg.adapter);
    } else {
      model::AdapterConfig ac;
      ac.r = cfg.lora_r;
      ac.alpha = cfg.lora_alpha;
      ac.dropout = cfg.lora_dropout;
      ac.use_rslora = cfg.use_rslora;
      ac.fan_in_fan_out = m.config().arch == model::Arch::GPT2;
      ac.target_modules = lora_targets(cfg, m.config());
      ac.base_model_name_or_path = cfg.model;
      ac.init = cfg.lora_init == "gaussian" ? "gaussian" : "true";
      m.add_lora(ac, cfg.seed);
    }
    if (cfg.method == "qlora") {
      s.quant = m.quantize_base(cfg.double_quant);
      if (cfg.compute_dtype != "auto")
        m.set_quantized_compute_dtype(cfg.compute_dtype == "bf16" ? at::kBFloat16 : at::kFloat);
    }
    const bool bf16 = cfg.base_dtype == "bf16" || (cfg.base_dtype == "auto" && precision == model::Precision::BF16);
    m.freeze_base(bf16 ? at::kBFloat16 : at::kFloat);
    const auto& ac = m.lora_config();
    int64_t modules = 0;
    for (const auto* p : m.projections()) modules += p->lora_a.defined();
    char buf[512];
    std::snprintf(buf, sizeof buf, "%s: r %" PRId64 ", alpha %g (scale %g%s), dropout %g, %" PRId64 " modules (%s)%s; base %s",
                  cfg.method == "qlora" ? "QLoRA" : "LoRA", ac.r, ac.alpha, ac.scale(), ac.use_rslora ? ", rsLoRA" : "",
                  ac.dropout, modules, join(ac.target_modules).c_str(),
                  cfg.adapter.empty() ? "" : (", continued from " + cfg.adapter).c_str(), bf16 ? "bf16" : "fp32");
    s.detail = buf;
    if (cfg.method == "qlora") {
      std::snprintf(buf, sizeof buf,
                    "; NF4 (%s) over %" PRId64 " weights, %s parameters: %.4f bytes per parameter measured (heap "
                    "growth), %.4f held by the NF4 tensors",
                    cfg.double_quant ? "double-quantized absmax" : "fp32 absmax", s.quant.tensors,
                    with_commas(s.quant.params).c_str(), double(s.quant.measured_bytes) / double(std::max<int64_t>(1, s.quant.params)),
                    double(s.quant.storage_bytes) / double(std::max<int64_t>(1, s.quant.params)));
      s.detail += buf;
    }
  }
  for (const auto& [name, t] : m.trainable_parameters()) s.trainable += t.numel();
  s.total = m.base_param_count() + (m.has_lora() ? s.trainable : 0);
  char line[200];
  std::snprintf(line, sizeof line, "trainable params: %s || all params: %s || trainable%%: %.4f",
                with_commas(s.trainable).c_str(), with_commas(s.total).c_str(),
                100.0 * double(s.trainable) / double(std::max<int64_t>(1, s.total)));
  s.line = line;
  return s;
}

}  // namespace shardtune::train
