// Trainer: the flat parameter buffer, autograd hooks that hand each finished gradient to the stage's
// GradSync (grad_sync.h: bucket communication overlapping backward), global-norm clipping, the
// non-finite check, AdamW in place on the parameters this rank updates, and the all-gather after it.
// Device-agnostic: the same code runs on CPU and CUDA tensors; the trainer reads the device once per
// step (its scalars, reduced in one collective), not per micro-batch or per metric.
#include "shardtune/train/trainer.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/variable.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <map>

#include "grad_sync.h"
#include "shardtune/core/error.h"
#include "shardtune/data/dataset.h"
#include "shardtune/dist/communicator.h"
#include "shardtune/model/io.h"
#include "shardtune/model/model.h"
#include "shardtune/model/runtime.h"
#include "shardtune/optim/adamw.h"
#include "shardtune/optim/layout.h"
#include "shardtune/train/launch.h"

namespace shardtune::train {

namespace {

// Runs when a parameter's gradient accumulator has finished (its gradient is complete for this backward).
// Our own FunctionPostHook, not utils::LambdaPostHook: that header pulls in compiled-autograd (dynamo)
// headers in newer LibTorch; this interface is the same in 1.13 and 2.x. The hook lives on the
// accumulator, which the model's parameter (and any autograd graph built from it) may keep beyond the
// Trainer: so it reaches the GradSync only through a weak pointer, and the Trainer also removes it.
struct GradReadyHook : torch::autograd::FunctionPostHook {
  GradReadyHook(std::weak_ptr<GradSync> sync, int bucket) : sync_(std::move(sync)), bucket_(bucket) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list& /*inputs*/) override {
    if (auto s = sync_.lock()) s->on_grad_ready(bucket_);
    return outputs;
  }

 private:
  std::weak_ptr<GradSync> sync_;
  int bucket_;
};

using Clock = std::chrono::steady_clock;

std::string value_text(double v) {
  if (std::isnan(v)) return "nan";  // not "-nan": the sign of a NaN means nothing to the user
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

}  // namespace

struct Trainer::Impl {
  TrainConfig cfg;
  std::shared_ptr<model::CausalLM> model;
  dist::Communicator& comm;
  int world, rank;
  ZeroStage stage;
  at::Device device{at::kCPU};
  model::Precision precision;

  optim::FlatLayout layout;
  std::vector<at::Tensor> params;  // in layout.params order, views into flat_params
  at::Tensor flat_params;          // [total], every rank holds all parameters
  std::shared_ptr<GradSync> sync;  // shared only so the hooks can hold a weak pointer
  std::unique_ptr<optim::FlatAdamW> adam;

  // Installed hooks: the accumulator each sits on and the key del_post_hook takes.
  std::vector<std::pair<std::shared_ptr<torch::autograd::Node>, uintptr_t>> hooks;

  int64_t skipped_total = 0, skipped_in_a_row = 0;
  // Test hook: SHARDTUNE_TEST_NAN="RANK:STEP" makes that rank's loss (and so every gradient) NaN at that
  // 0-based step, as a diverging batch would (the non-finite tests; never set in real runs).
  int64_t nan_step = -1;
  std::shared_ptr<Objective> objective;  // null: next-token CE (SFT)
  std::vector<std::pair<std::string, double>> eval_metrics;

  Impl(const TrainConfig& c, std::shared_ptr<model::CausalLM> m, dist::Communicator& cm)
      : cfg(c), model(std::move(m)), comm(cm), world(cm.world()), rank(cm.rank()), stage(zero_stage_from_int(c.zero)),
        precision(run_precision(c).precision) {
    if (cfg.device == "cuda") device = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(comm.cuda_device()));
    if (const char* v = std::getenv("SHARDTUNE_TEST_NAN")) {
      const std::string s(v), mine = std::to_string(rank) + ":";
      if (s.rfind(mine, 0) == 0) nan_step = std::stoll(s.substr(mine.size()));
    }
    model::check_weights_finite(*model, "at the start of training (as loaded from --model)",
                 "the model file holds NaN or Inf: it is damaged, or was saved from a run that diverged; "
                 "use an intact copy of the model");
    build_flat();
    install_hooks();
  }

  ~Impl() {
    for (auto& [node, key] : hooks) node->del_post_hook(key);
  }

  void build_flat() {
    // Only what the model says is trainable (all weights; with LoRA the adapters) gets a slot, a gradient
    // and optimizer state; the frozen base has requires_grad off, so backward computes no gradient for it.
    const auto named = model->trainable_parameters();
    std::vector<optim::ParamSpec> specs;
    std::map<std::string, at::Tensor> by_name;
    for (auto& [name, t] : named) {
      specs.push_back({name, t.sizes().vec(), t.dim() >= 2});
      by_name[name] = t;
    }
    const auto bucket_elems = static_cast<int64_t>(cfg.bucket_mb * 1024 * 1024 / 4);
    layout = optim::plan_layout(specs, world, std::max<int64_t>(bucket_elems, 1));
    at::NoGradGuard no_grad;
    flat_params = at::zeros({layout.total}, at::TensorOptions().dtype(at::kFloat).device(device));
    params.resize(layout.params.size());
    for (size_t i = 0; i < layout.params.size(); ++i) {
      const auto& slot = layout.params[i];
      at::Tensor t = by_name.at(slot.name);
      at::Tensor view = flat_params.narrow(0, slot.offset, slot.numel).view(slot.shape);
      view.copy_(t.to(at::kFloat));
      t.set_data(view);
      t.set_requires_grad(true);
      params[i] = t;
    }
    // Fresh adapters come from a seeded generator on every rank; rank 0's are the ones every rank trains.
    // So is a fresh reward head (score.weight).
    if ((model->has_lora() || model->has_score_head()) && world > 1) comm.broadcast(flat_params, 0);
    sync = make_grad_sync(stage, FlatModel{layout, params, flat_params, comm, reduce_dtype_from_string(cfg.grad_reduce_dtype)});
    // m and v are created where the parameters live, with their dtype (fp32): never on the CPU, then moved.
    adam = std::make_unique<optim::FlatAdamW>(sync->optimizer_ranges(), sync->optimizer_elems(), layout.params,
                                              optim::AdamWConfig{cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay},
                                              flat_params.options());
  }

  void install_hooks() {
    for (size_t i = 0; i < params.size(); ++i) {
      auto acc = torch::autograd::impl::grad_accumulator(params[i]);
      ST_CHECK(acc != nullptr, "internal: parameter " + layout.params[i].name + " has no gradient accumulator");
      const uintptr_t key = acc->add_post_hook(std::make_unique<GradReadyHook>(sync, layout.params[i].bucket));
      hooks.emplace_back(std::move(acc), key);
    }
  }

  // Host batch data on the training device (CPU: a copy, as before; CUDA: pinned staging, no host wait).
  template <typename V>
  at::Tensor to_device(const std::vector<V>& v, std::vector<int64_t> shape, at::ScalarType dtype) {
    if (v.empty()) return at::empty(shape, at::TensorOptions().dtype(dtype).device(device));
    return model::host_to_device(at::from_blob(const_cast<V*>(v.data()), shape, dtype), device);
  }

  int64_t units(const data::HostBatch& hb) const { return objective ? objective->units(hb) : hb.loss_tokens; }

  // Forward of one host batch: (loss sum tensor, count); an Objective's metric sums (float64, on the
  // device) are added into `metrics` when given.
  model::LossResult forward(const data::HostBatch& hb, at::Tensor* metrics = nullptr) {
    at::Tensor ids = to_device(hb.ids, {hb.B, hb.T}, at::kLong);
    at::Tensor mask = to_device(hb.mask, {hb.B, hb.T}, at::kByte);
    model::Packing pack;
    if (!hb.doc_ids.empty()) pack.doc_ids = to_device(hb.doc_ids, {hb.B, hb.T}, at::kLong);
    model::AutocastGuard autocast(device, precision);
    if (objective) {
      Objective::Result o = objective->forward(*model, ids, mask, hb);
      if (metrics) metrics->add_(o.metric_sums);
      return {o.sum, objective->units(hb)};
    }
    // The targets and positions are known here, on the host: the loss reads nothing back from the device.
    const std::vector<int64_t> targets = model::target_index(hb.mask, hb.doc_ids, hb.B, hb.T);
    pack.target_index = to_device(targets, {int64_t(targets.size())}, at::kLong);
    pack.max_position = model::max_position(hb.doc_ids, hb.B, hb.T);
    model::LossResult r = model->loss(ids, mask, pack);
    ST_CHECK(r.count == hb.loss_tokens, "internal: batch holds " + std::to_string(hb.loss_tokens) +
                                            " target tokens but the loss counted " + std::to_string(r.count));
    return r;
  }

  // The step's scalars live in one small float64 tensor on the parameters' device: [loss sum, metric sums
  // ..., squared gradient norm] (evaluate: [loss sum, metric sums..., count]). They are accumulated there
  // without reading anything back, summed over ranks by one collective (MPI for a CPU tensor, NCCL for a
  // CUDA one) and read to the host once: on a GPU every .item() would synchronize the device.
  at::Tensor step_scalars(size_t n_metrics) const {
    return at::zeros({static_cast<int64_t>(n_metrics) + 2}, flat_params.options().dtype(at::kDouble));
  }

  // "loss (nan) and gradient norm (nan)", plus the ranks whose own part was already non-finite when
  // that is not every rank (every rank sees the same global values, so every rank reaches this together).
  std::string describe_nonfinite(double loss, double local_loss, double grad_norm, double local_sq) {
    auto ranks_with = [&](bool bad_here) {
      std::string who;
      int n = 0;
      for (int r = 0; r < world; ++r) {  // one scalar reduction per rank, only on this failure path
        if (comm.all_reduce(r == rank && bad_here ? 1.0 : 0.0, dist::ReduceOp::Max) > 0) {
          who += (n++ ? "," : "") + std::to_string(r);
        }
      }
      return n < world ? who : std::string();
    };
    std::vector<std::string> parts;
    if (!std::isfinite(loss)) {
      std::string p = "loss (" + value_text(loss) + ")";
      if (world > 1)
        if (auto who = ranks_with(!std::isfinite(local_loss)); !who.empty()) p += " [local loss non-finite on rank " + who + "]";
      parts.push_back(p);
    }
    if (!std::isfinite(grad_norm)) {
      std::string p = "gradient norm (" + value_text(grad_norm) + ")";
      if (world > 1 && sync->grad_is_sharded())
        if (auto who = ranks_with(!std::isfinite(local_sq)); !who.empty()) p += " [gradient shard non-finite on rank " + who + "]";
      parts.push_back(p);
    }
    return parts.size() == 2 ? parts[0] + " and " + parts[1] : parts.at(0);
  }

  // Error (--on-nonfinite error) or a counted skip; the optimizer has not run.
  void handle_nonfinite(int64_t step, int64_t total_steps, const std::string& what) {
    const std::string where = "step " + std::to_string(step + 1) + " of " + std::to_string(total_steps);
    const std::string hint = "the run diverged or the data or model hold bad values: lower --lr (now " +
                             value_text(cfg.lr) + "), keep --grad-clip on (now " + value_text(cfg.grad_clip) +
                             "), check the data (shardtune-inspect --verify) and the model; or --on-nonfinite skip "
                             "to skip such steps";
    ST_CHECK(cfg.on_nonfinite == "skip", where + ": non-finite " + what + "; stopping before the optimizer "
             "applies it (nothing saved)", hint);
    ++skipped_total;
    ++skipped_in_a_row;
    ST_CHECK(skipped_in_a_row <= cfg.max_consecutive_skips,
             where + ": non-finite " + what + ", " + std::to_string(skipped_in_a_row) +
                 " steps in a row skipped, more than --max-consecutive-skips " +
                 std::to_string(cfg.max_consecutive_skips) + "; stopping (nothing saved)",
             hint);
  }

  StepStats step(int64_t step, int64_t total_steps, const std::vector<data::HostBatch>& micro) {
    auto t0 = Clock::now();
    comm.take_blocked_seconds();
    StepStats s;
    s.step = step;
    int64_t local_targets = 0, local_tokens = 0;
    for (const auto& hb : micro) {
      local_targets += units(hb);
      local_tokens += hb.B * hb.T;
    }
    // Normalize by the targets of the whole global batch, so any split over ranks gives the same gradient.
    // Both counts are host values: one host reduction (a CPU tensor travels over MPI) before backward.
    at::Tensor counts = at::tensor(std::vector<int64_t>{local_targets, local_tokens}, at::kLong);
    comm.all_reduce_sum(counts);
    const double total = static_cast<double>(counts.data_ptr<int64_t>()[0]);
    const int64_t global_tokens = counts.data_ptr<int64_t>()[1];
    ST_CHECK(total > 0, "step " + std::to_string(step) + ": the global batch has no target tokens",
             "check the data (shardtune-inspect) and --seq-len");
    sync->begin_step();
    const size_t n_metrics = objective ? objective->metric_names().size() : 0;
    at::Tensor scalars = step_scalars(n_metrics);  // [loss sum, metric sums..., squared gradient norm]
    at::Tensor loss_acc = scalars.narrow(0, 0, 1), metric_acc = scalars.narrow(0, 1, int64_t(n_metrics));
    auto since = [](Clock::time_point& t) {
      auto now = Clock::now();
      double d = std::chrono::duration<double>(now - t).count();
      t = now;
      return d;
    };
    auto t = Clock::now();
    for (size_t a = 0; a < micro.size(); ++a) {
      sync->begin_backward(a + 1 == micro.size());
      model::LossResult r = forward(micro[a], n_metrics ? &metric_acc : nullptr);
      if (step == nan_step) r.sum = r.sum * std::numeric_limits<float>::quiet_NaN();
      loss_acc.add_(r.sum.detach().to(at::kDouble));  // fp32 sum widened, as item<double>() did
      s.forward_s += since(t);
      (r.sum / total).backward();
      s.backward_s += since(t);
      sync->finish_backward();
      s.drain_s += since(t);
    }
    at::NoGradGuard no_grad;
    // Global gradient norm (no full-size temporary). A sharded gradient's squared norm is summed over the
    // ranks; a replicated one is the same on every rank, so only rank 0 adds its square (the others add
    // 0, not a multiple of theirs: NaN x 0 would be NaN), and the sum is exactly rank 0's value.
    at::Tensor& g = sync->grad();
    const at::Tensor local_norm = g.norm().to(at::kDouble);
    const at::Tensor local_sq = local_norm * local_norm;
    if (sync->grad_is_sharded() || rank == 0) scalars.narrow(0, int64_t(n_metrics) + 1, 1).copy_(local_sq);
    const at::Tensor local = world > 1 ? scalars.clone() : scalars;  // this rank's own values (diagnostics)
    comm.all_reduce_sum(scalars);
    const at::Tensor host = scalars.to(at::kCPU);  // the step's one device-to-host read
    const double* v = host.data_ptr<double>();
    s.loss = v[0] / total;
    if (objective) {
      const auto names = objective->metric_names();
      for (size_t i = 0; i < names.size(); ++i) s.metrics.emplace_back(names[i], v[1 + i] / total);
    }
    s.grad_norm = std::sqrt(v[n_metrics + 1]);
    s.lr = optim::lr_at(step, total_steps, cfg.warmup_steps, cfg.lr, cfg.min_lr, optim::parse_schedule(cfg.schedule));
    if (!std::isfinite(s.loss) || !std::isfinite(s.grad_norm)) {
      // Only on this failure path: this rank's own loss sum and squared norm, read to the host.
      const double local_loss = local[0].item<double>();
      s.nonfinite = describe_nonfinite(s.loss, local_loss, s.grad_norm, local_sq.item<double>());
      handle_nonfinite(step, total_steps, s.nonfinite);
      s.skipped = true;  // parameters unchanged (and still whole on every rank)
      s.optim_s = since(t);
    } else {
      skipped_in_a_row = 0;
      if (cfg.grad_clip > 0 && s.grad_norm > cfg.grad_clip) g.mul_(cfg.grad_clip / (s.grad_norm + 1e-6));
      adam->step_in_place(flat_params, g, s.lr);
      s.optim_s = since(t);
      sync->after_optimizer();
      s.gather_s = since(t);
    }
    s.loss_tokens = static_cast<int64_t>(total);
    s.tokens = global_tokens;
    s.comm_wait_s = comm.take_blocked_seconds();
    s.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    return s;
  }
};

Trainer::Trainer(const TrainConfig& cfg, std::shared_ptr<model::CausalLM> model, dist::Communicator& comm)
    : impl_(std::make_unique<Impl>(cfg, std::move(model), comm)) {}
Trainer::~Trainer() = default;

StepStats Trainer::train_step(int64_t step, int64_t total_steps, const std::vector<data::HostBatch>& micro) {
  return impl_->step(step, total_steps, micro);
}

std::pair<double, int64_t> Trainer::evaluate(const std::vector<data::HostBatch>& batches) {
  at::NoGradGuard no_grad;
  impl_->model->eval();  // no LoRA dropout
  struct TrainAgain {
    model::CausalLM& m;
    ~TrainAgain() { m.train(); }
  } train_again{*impl_->model};
  auto& obj = impl_->objective;
  const size_t n_metrics = obj ? obj->metric_names().size() : 0;
  at::Tensor scalars = impl_->step_scalars(n_metrics);  // [loss sum, metric sums..., count]
  at::Tensor metric_acc = scalars.narrow(0, 1, int64_t(n_metrics));
  int64_t local_count = 0;
  for (const auto& hb : batches) {
    model::LossResult r = impl_->forward(hb, n_metrics ? &metric_acc : nullptr);
    scalars.narrow(0, 0, 1).add_(r.sum.to(at::kDouble));
    local_count += r.count;
  }
  scalars.narrow(0, int64_t(n_metrics) + 1, 1).fill_(static_cast<double>(local_count));  // exact below 2^53
  impl_->comm.all_reduce_sum(scalars);
  const at::Tensor host = scalars.to(at::kCPU);  // one device-to-host read per evaluation
  const double* v = host.data_ptr<double>();
  const double sum = v[0];
  const auto count = static_cast<int64_t>(v[n_metrics + 1]);
  impl_->eval_metrics.clear();
  if (obj) {
    const auto names = obj->metric_names();
    for (size_t i = 0; i < names.size(); ++i)
      impl_->eval_metrics.emplace_back(names[i], count > 0 ? v[1 + i] / double(count) : 0.0);
  }
  return {sum, count};
}

std::vector<std::pair<std::string, double>> Trainer::eval_metrics() const { return impl_->eval_metrics; }

void Trainer::set_objective(std::shared_ptr<Objective> objective) { impl_->objective = std::move(objective); }

void Trainer::check_weights_finite(const std::string& when) const {
  model::check_weights_finite(*impl_->model, when,
                     "the run diverged in its last step: lower --lr or keep --grad-clip on");
}

int64_t Trainer::num_params() const {
  int64_t n = 0;
  for (const auto& p : impl_->layout.params) n += p.numel;
  return n;
}

int64_t Trainer::optimizer_state_bytes() const { return impl_->adam->state_bytes(); }

int64_t Trainer::grad_buffer_bytes() const { return impl_->sync->grad_buffer_bytes(); }

int64_t Trainer::skipped_steps() const { return impl_->skipped_total; }

std::vector<checkpoint::StatePiece> Trainer::optimizer_share() const {
  const auto& L = impl_->layout;
  at::Tensor& m = impl_->adam->exp_avg();
  at::Tensor& v = impl_->adam->exp_avg_sq();
  const bool sharded = impl_->sync->grad_is_sharded();  // else m/v span the whole flat buffer
  std::vector<checkpoint::StatePiece> out;
  for (const auto& r : L.owned_ranges(impl_->rank)) {
    const auto& slot = L.params[size_t(r.param)];
    const int64_t at_ = sharded ? r.shard_offset : r.flat_offset;
    out.push_back({slot.name, r.flat_offset - slot.offset, m.narrow(0, at_, r.length), v.narrow(0, at_, r.length)});
  }
  return out;
}

std::vector<checkpoint::StatePiece> Trainer::optimizer_targets() const {
  const auto& L = impl_->layout;
  at::Tensor& m = impl_->adam->exp_avg();
  at::Tensor& v = impl_->adam->exp_avg_sq();
  std::vector<checkpoint::StatePiece> out;
  for (const auto& r : impl_->sync->optimizer_ranges()) {
    const auto& slot = L.params[size_t(r.param)];
    out.push_back({slot.name, r.flat_offset - slot.offset, m.narrow(0, r.shard_offset, r.length),
                   v.narrow(0, r.shard_offset, r.length)});
  }
  return out;
}

Trainer::Counters Trainer::counters() const {
  return {impl_->adam->steps_taken(), impl_->skipped_total, impl_->skipped_in_a_row};
}

void Trainer::set_counters(const Counters& c) {
  impl_->adam->set_steps(c.optimizer_steps);
  impl_->skipped_total = c.skipped_total;
  impl_->skipped_in_a_row = c.skipped_in_a_row;
}

}  // namespace shardtune::train
