// The one projection op of the model (dense or NF4 base weight, fused over projections that read the
// same input, plus each one's LoRA delta) and the LoRA / QLoRA surgery on a loaded CausalLM: adding or
// loading adapters, freezing and re-laying the base, NF4-quantizing the targeted weights.
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "shardtune/core/error.h"
#include "shardtune/core/mem.h"
#include "shardtune/model/model.h"
#include "shardtune/model/nf4.h"
#include "shardtune/model/runtime.h"

namespace shardtune::model {

namespace {

std::string shape_text(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

std::string short_name(const std::string& module) { return module.substr(module.rfind('.') + 1); }

bool matches(const std::string& module, const std::string& target) {
  // PEFT's rule for a list of names: the module path equals the target or ends with "." + target.
  return module == target ||
         (module.size() > target.size() && module.compare(module.size() - target.size(), target.size(), target) == 0 &&
          module[module.size() - target.size() - 1] == '.');
}

}  // namespace

std::vector<Projection*> CausalLM::mutable_projections() {
  std::vector<Projection*> out;
  for (Layer& L : layers_) {
    if (cfg_.arch == Arch::Llama)
      for (Projection* p : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) out.push_back(p);
    else
      for (Projection* p : {&L.c_attn, &L.c_proj, &L.fc, &L.mlp_proj}) out.push_back(p);
  }
  return out;
}

std::vector<const Projection*> CausalLM::projections() const {
  auto ps = const_cast<CausalLM*>(this)->mutable_projections();
  return {ps.begin(), ps.end()};
}

std::vector<std::string> CausalLM::lora_modules(const std::vector<std::string>& targets) const {
  ST_CHECK(!targets.empty(), "no LoRA target modules given", "give --lora-targets, e.g. q_proj,v_proj or all-linear");
  std::set<std::string> names;  // this architecture's short projection names, for the messages
  for (const Projection* p : projections()) names.insert(short_name(p->module));
  std::string known;
  for (const auto& n : names) known += (known.empty() ? "" : ", ") + n;
  std::vector<std::string> out;
  for (const std::string& t : targets) {
    bool any = false;
    for (const Projection* p : projections()) {
      if (t != "all-linear" && !matches(p->module, t)) continue;
      any = true;
      if (std::find(out.begin(), out.end(), p->module) == out.end()) out.push_back(p->module);
    }
    ST_CHECK(any, "LoRA target '" + t + "' matches no module of this " + cfg_.model_type + " model",
             "this architecture's linear modules are " + known + " (or all-linear)");
  }
  // Checkpoint order, whatever order the targets came in.
  std::vector<std::string> ordered;
  for (const Projection* p : projections())
    if (std::find(out.begin(), out.end(), p->module) != out.end()) ordered.push_back(p->module);
  return ordered;
}

void CausalLM::add_lora(const AdapterConfig& cfg, uint64_t seed) {
  ST_CHECK(!has_lora(), "internal: the model already has LoRA adapters");
  ST_CHECK(cfg.r > 0, "LoRA rank r must be positive (got " + std::to_string(cfg.r) + ")", "give --lora-r, e.g. 16");
  ST_CHECK(cfg.init == "true" || cfg.init == "gaussian", "unknown LoRA init '" + cfg.init + "'",
           "use --lora-init default (PEFT's Kaiming-uniform A, zero B) or gaussian");
  const auto modules = lora_modules(cfg.target_modules);
  auto gen = at::detail::createCPUGenerator(seed);
  at::NoGradGuard no_grad;
  for (Projection* p : mutable_projections()) {
    if (std::find(modules.begin(), modules.end(), p->module) == modules.end()) continue;
    at::Tensor A = at::empty({cfg.r, p->in}, at::kFloat);
    if (cfg.init == "gaussian") A.normal_(0.0, 1.0 / double(cfg.r), gen);
    else {
      // PEFT: kaiming_uniform_(A, a=sqrt(5)): gain sqrt(2 / (1 + 5)), bound gain * sqrt(3 / fan_in) = 1 / sqrt(in).
      const double bound = 1.0 / std::sqrt(double(p->in));
      A.uniform_(-bound, bound, gen);
    }
    p->lora_a = A.to(p->w.device());
    p->lora_b = at::zeros({p->out, cfg.r}, A.options().device(p->w.device()));
  }
  lora_ = cfg;
  // As PEFT saves it: the short names of the modules adapted ("all-linear" expanded; PEFT reads that
  // shorthand only as a plain string, never inside a list).
  std::set<std::string> shorts;
  for (const auto& m : modules) shorts.insert(short_name(m));
  lora_.target_modules.assign(shorts.begin(), shorts.end());
  lora_scale_ = cfg.scale();
  seed_dropout(seed, 0);  // the trainer seeds every rank's own (seed_dropout)
}

void CausalLM::load_lora(const AdapterConfig& cfg, const AdapterWeights& w, const std::string& source) {
  ST_CHECK(!has_lora(), "internal: the model already has LoRA adapters");
  ST_CHECK(!w.empty(), source + ": the adapter holds no LoRA weights", "is this a LoRA adapter folder?");
  std::map<std::string, Projection*> by_module;
  for (Projection* p : mutable_projections()) by_module[p->module] = p;
  // Everything is checked before the model changes: unknown modules first, then shapes in model order.
  for (const auto& [module, pair] : w)
    ST_CHECK(by_module.count(module),
             source + ": the adapter has weights for module '" + module + "', which this " + cfg_.model_type +
                 " model (" + std::to_string(cfg_.num_layers) + " layers) does not have",
             "the adapter was trained on another architecture or a deeper model; this model's modules are named "
             "like '" + projections().front()->module + "'");
  for (const Projection* pp : projections()) {
    auto it = w.find(pp->module);
    if (it == w.end()) continue;
    const std::string& module = pp->module;
    const LoraPair& pair = it->second;
    const Projection& p = *pp;
    ST_CHECK(pair.A.dim() == 2 && pair.B.dim() == 2 && pair.A.size(0) == cfg.r && pair.B.size(1) == cfg.r &&
                 pair.A.size(1) == p.in && pair.B.size(0) == p.out,
             source + ": the adapter's '" + module + "' has lora_A " + shape_text(pair.A.sizes()) + " and lora_B " +
                 shape_text(pair.B.sizes()) + ", but this model's module takes " + std::to_string(p.in) +
                 " inputs and gives " + std::to_string(p.out) + " outputs (so lora_A [" + std::to_string(cfg.r) +
                 ", " + std::to_string(p.in) + "] and lora_B [" + std::to_string(p.out) + ", " +
                 std::to_string(cfg.r) + "] at r = " + std::to_string(cfg.r) + ")",
             "the adapter was trained for a model of another size: use it with its own base model");
  }
  at::NoGradGuard no_grad;
  for (const auto& [module, pair] : w) {
    Projection& p = *by_module[module];
    p.lora_a = pair.A.to(at::kFloat).contiguous().clone().to(p.w.device());
    p.lora_b = pair.B.to(at::kFloat).contiguous().clone().to(p.w.device());
  }
  lora_ = cfg;
  if (lora_.target_modules.empty())
    for (const auto& [module, pair] : w) lora_.target_modules.push_back(short_name(module));
  lora_.fan_in_fan_out = cfg_.arch == Arch::GPT2;  // PEFT forces it for Conv1D and off for Linear
  lora_scale_ = cfg.scale();
  seed_dropout(0, 0);
}

AdapterWeights CausalLM::lora_weights() const {
  AdapterWeights out;
  for (const Projection* p : projections())
    if (p->lora_a.defined()) out[p->module] = {p->lora_a, p->lora_b};
  return out;
}

std::vector<std::pair<std::string, at::Tensor>> CausalLM::trainable_parameters() const {
  if (!has_lora()) return hf_parameters();
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const Projection* p : projections()) {
    if (!p->lora_a.defined()) continue;
    out.emplace_back(p->module + ".lora_A.weight", p->lora_a);
    out.emplace_back(p->module + ".lora_B.weight", p->lora_b);
  }
  // A reward model's head is trained in full beside the adapters (PEFT: modules_to_save ["score"]).
  if (score_.defined()) out.emplace_back("score.weight", score_);
  return out;
}

void CausalLM::seed_dropout(uint64_t seed, int rank) {
  dropout_gen_ = at::detail::createCPUGenerator(seed * 0x9e3779b97f4a7c15ULL + uint64_t(rank) + 1);
}

std::vector<uint8_t> CausalLM::dropout_rng_state() const {
  if (!dropout_gen_.defined()) return {};
  const at::Tensor t = dropout_gen_.get_state().contiguous();
  return {t.data_ptr<uint8_t>(), t.data_ptr<uint8_t>() + t.numel()};
}

void CausalLM::set_dropout_rng_state(const std::vector<uint8_t>& s) {
  if (s.empty() || !dropout_gen_.defined()) return;
  at::Tensor t = at::empty({int64_t(s.size())}, at::kByte);
  std::copy(s.begin(), s.end(), t.data_ptr<uint8_t>());
  dropout_gen_.set_state(t);
}

int64_t CausalLM::base_param_count() const {
  int64_t n = 0;
  for (const auto& [name, t] : params_) n += t.numel();
  for (const Projection* p : projections())
    if (p->q) n += p->in * p->out;  // its dense weight is gone
  return n;
}

QuantStats CausalLM::quantize_base(bool double_quant) {
  ST_CHECK(has_lora(), "internal: quantize_base before the LoRA adapters were added");
  std::vector<Projection*> targets;
  for (Projection* p : mutable_projections())
    if (p->lora_a.defined() && !p->q) targets.push_back(p);
  for (const Projection* p : targets)
    ST_CHECK(p->w.numel() % nf4::kBlock == 0,
             "QLoRA cannot quantize '" + p->module + ".weight' " + shape_text(p->w.sizes()) + ": its " +
                 std::to_string(p->w.numel()) + " elements are not a multiple of the NF4 block of " +
                 std::to_string(nf4::kBlock),
             "leave this module out of --lora-targets, or use --method lora");
  QuantStats st;
  at::NoGradGuard no_grad;
  for (Projection* p : targets) {
    // NF4 works on [out, in] rows like bitsandbytes' Linear4bit (transformers transposes Conv1D the same way).
    const at::Tensor w = p->conv1d ? p->w.t() : p->w;
    const int64_t before = mem::measure_memory().heap_bytes;
    auto q = std::make_shared<nf4::Quantized>(nf4::quantize(w, double_quant, p->module + ".weight"));
    const int64_t after = mem::measure_memory().heap_bytes;
    st.measured_bytes += after - before;
    st.storage_bytes += q->storage_bytes();
    st.params += p->w.numel();
    ++st.tensors;
    p->q = std::move(q);
    p->w.set_data(at::empty({0}, p->w.options()));  // frees the dense copy
  }
  return st;
}

void CausalLM::freeze_base(at::ScalarType dtype) {
  ST_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "internal: the frozen base is held in fp32 or bf16");
  at::NoGradGuard no_grad;
  for (auto& [name, t] : params_) {
    t.set_requires_grad(false);
    // A reward head (trained in full beside the adapters) keeps fp32: the trainer takes it over unrounded.
    if (dtype != at::kFloat && t.dim() >= 2 && t.numel() > 0 && name != "score.weight") t.set_data(t.to(dtype));
  }
  // One buffer per fused group, the HF parameters become views of it (same values, no copy per step).
  auto fuse = [](std::vector<Projection*> ps, at::Tensor& fused) {
    for (const Projection* p : ps)
      if (p->q || p->conv1d || p->w.numel() == 0) return;
    std::vector<at::Tensor> ws;
    for (const Projection* p : ps) ws.push_back(p->w);
    fused = at::cat(ws, 0);
    int64_t row = 0;
    for (Projection* p : ps) {
      p->w.set_data(fused.narrow(0, row, p->out));
      row += p->out;
    }
  };
  if (cfg_.arch == Arch::Llama)
    for (Layer& L : layers_) {
      fuse({&L.q, &L.k, &L.v}, L.qkv_fused);
      fuse({&L.gate, &L.up}, L.gate_up_fused);
    }
}

std::vector<at::Tensor> CausalLM::project(const std::vector<const Projection*>& ps, const at::Tensor& fused,
                                          const at::Tensor& x) {
  const at::ScalarType cd = autocast_dtype(x.device().type());
  // Without autocast a bf16 frozen base computes in fp32 (the activations' dtype).
  auto as_input = [&](const at::Tensor& t) {
    return (!t.defined() || cd != at::kFloat || t.scalar_type() == x.scalar_type()) ? t : t.to(x.scalar_type());
  };
  std::vector<int64_t> outs;
  int64_t sum_out = 0;
  bool any_q = false, all_q = true;
  for (const Projection* p : ps) {
    outs.push_back(p->out);
    sum_out += p->out;
    any_q = any_q || bool(p->q);
    all_q = all_q && bool(p->q);
  }
  at::Tensor bias;
  if (ps[0]->b.defined()) {
    std::vector<at::Tensor> bs;
    for (const Projection* p : ps) bs.push_back(p->b);
    bias = ps.size() == 1 ? ps[0]->b : at::cat(bs, 0);
  }
  // Every projection works on 2-D rows [N, in] -> [N, out] (as at::linear does for contiguous input).
  const at::Tensor x2 = x.reshape({-1, x.size(-1)});
  at::Tensor y2;  // [N, sum_out]
  if (!any_q) {
    at::Tensor w = fused;
    if (!w.defined()) {
      if (ps.size() == 1) w = ps[0]->w;
      else {
        std::vector<at::Tensor> ws;
        for (const Projection* p : ps) ws.push_back(p->w);
        w = at::cat(ws, 0);
      }
    }
    ST_CHECK(!ps[0]->conv1d || ps.size() == 1, "internal: Conv1D projections are not fused");
    const at::Tensor wt = ps[0]->conv1d ? as_input(w) : as_input(w).t();  // [in, out]
    y2 = bias.defined() ? at::addmm(as_input(bias), x2, wt) : at::mm(x2, wt);
  } else if (all_q) {
    std::vector<std::shared_ptr<const nf4::Quantized>> qs;
    for (const Projection* p : ps) qs.push_back(p->q);
    const at::ScalarType qd = nf4_compute_ != at::ScalarType::Undefined ? nf4_compute_ : cd;
    y2 = nf4::linear(x2, qs, bias.defined() ? bias.to(qd) : bias, qd);
  } else {
    std::vector<at::Tensor> parts;
    for (const Projection* p : ps) parts.push_back(project({p}, {}, x2)[0]);
    y2 = at::cat(parts, 1);
  }

  // LoRA: y += scale * (x A^T) B^T, the delta written straight into the base output by one GEMM (no
  // separate delta, scale and add passes over [N, out]: those memory-bound passes, not the thin GEMMs'
  // arithmetic, are what adapters cost on a CPU). For a fused group, x @ [A_1; A_2; ...]^T is one GEMM
  // and B is laid against the fused output: module i's rows hold B_i in its r columns, zeros elsewhere.
  std::vector<size_t> with;
  for (size_t i = 0; i < ps.size() && !lora_off_; ++i)  // lora_off_: the base alone (LoraDisabled)
    if (ps[i]->lora_a.defined()) with.push_back(i);
  if (!with.empty()) {
    const int64_t r = lora_.r, k = int64_t(with.size());
    const bool dropout = lora_.dropout > 0 && is_training() && c10::GradMode::is_enabled();
    at::Tensor xa;  // [N, k r]
    if (!dropout) {
      std::vector<at::Tensor> as;
      for (size_t i : with) as.push_back(ps[i]->lora_a);
      xa = at::mm(x2, (k == 1 ? as[0] : at::cat(as, 0)).t());
    } else {
      // PEFT: lora_B(lora_A(dropout(x))), one mask per module.
      const double keep = 1.0 - lora_.dropout;
      std::vector<at::Tensor> xas;
      for (size_t i : with) {
        // Drawn on the CPU whatever the device: the generator (and so a checkpoint's state of it) is a CPU one.
        // To a GPU through pinned memory without a host wait (a pageable copy would synchronize).
        const at::Tensor drawn = at::empty(x2.sizes(), x2.options().device(at::kCPU)).bernoulli_(keep, dropout_gen_);
        const at::Tensor mask = (x2.device().is_cpu() ? drawn : host_to_device(drawn, x2.device())) / keep;
        xas.push_back(at::mm(x2 * mask, ps[i]->lora_a.t()));
      }
      xa = k == 1 ? xas[0] : at::cat(xas, 1);
    }
    at::Tensor bf;  // [sum_out, k r]
    if (ps.size() == 1) bf = ps[0]->lora_b;
    else {
      std::vector<at::Tensor> rows;
      int64_t slot = 0;
      const auto opts = ps[with[0]]->lora_b.options();
      for (const Projection* p : ps) {
        if (!p->lora_a.defined()) {
          rows.push_back(at::zeros({p->out, k * r}, opts));
          continue;
        }
        std::vector<at::Tensor> cols;
        if (slot > 0) cols.push_back(at::zeros({p->out, slot * r}, opts));
        cols.push_back(p->lora_b);
        if (slot + 1 < k) cols.push_back(at::zeros({p->out, (k - slot - 1) * r}, opts));
        rows.push_back(cols.size() == 1 ? cols[0] : at::cat(cols, 1));
        ++slot;
      }
      bf = at::cat(rows, 0);
    }
    const auto dt = y2.scalar_type();
    y2.addmm_(xa.to(dt), bf.t().to(dt), 1.0, lora_scale_);
  }
  auto sizes = x.sizes().vec();
  sizes.back() = sum_out;
  const at::Tensor y = y2.view(sizes);
  if (ps.size() == 1) return {y};
  // split (not narrow): its backward concatenates the gradients in one pass.
  auto parts = y.split_with_sizes(outs, -1);
  return {parts.begin(), parts.end()};
}

}  // namespace shardtune::model
