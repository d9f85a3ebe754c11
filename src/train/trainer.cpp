// Trainer: flat parameter/gradient buffers, gradient hooks that launch bucket communication as soon as
// a bucket's gradients are complete (overlapping backward), global-norm clipping, AdamW on the owned
// shard and the all-gather that makes every rank's parameters whole again.
#include "shardtune/train/trainer.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/variable.h>

#include <chrono>
#include <cmath>
#include <functional>

#include "shardtune/core/error.h"
#include "shardtune/data/dataset.h"
#include "shardtune/dist/communicator.h"
#include "shardtune/model/model.h"
#include "shardtune/model/runtime.h"
#include "shardtune/optim/adamw.h"
#include "shardtune/optim/layout.h"

namespace shardtune::train {

namespace {

// Runs when a parameter's gradient accumulator has finished (its gradient is complete for this backward).
// Our own FunctionPostHook, not utils::LambdaPostHook: that header pulls in compiled-autograd (dynamo)
// headers in newer LibTorch; this interface is the same in 1.13 and 2.x.
struct GradReadyHook : torch::autograd::FunctionPostHook {
  explicit GradReadyHook(std::function<void()> fn) : fn_(std::move(fn)) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list& /*inputs*/) override {
    fn_();
    return outputs;
  }

 private:
  std::function<void()> fn_;
};

}  // namespace

using Clock = std::chrono::steady_clock;

struct Trainer::Impl {
  TrainConfig cfg;
  std::shared_ptr<model::CausalLM> model;
  dist::Communicator& comm;
  int world, rank, zero;
  at::Device device{at::kCPU};
  model::Precision precision;

  optim::FlatLayout layout;
  std::vector<at::Tensor> params;   // in layout.params order
  at::Tensor flat_params;           // [total], every rank holds all parameters
  at::Tensor flat_grad;             // [total] for ZeRO-0/1
  at::Tensor owned_grad, master;    // [shard] for ZeRO-1/2
  std::vector<at::Tensor> bucket_grad;  // ZeRO-2: a bucket's packed gradient, live only while it is reduce-scattered
  std::unique_ptr<optim::FlatAdamW> adam;

  // Hook state: gradients still missing per bucket in the current backward.
  std::vector<int> remaining;
  // Buckets start strictly in index order (nonblocking collectives must start in the same order on
  // every rank; a rank whose graph differs, e.g. a micro-batch without targets, must not reorder them).
  size_t next_launch = 0;  // buckets [0, next_launch) have started
  bool communicate_now = false;
  struct Op {
    std::unique_ptr<dist::Pending> pending;
    int bucket;
    at::Tensor temp;  // reduce-scatter output (ZeRO-0 and ZeRO-2)
  };
  std::vector<Op> ops;
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators;

  Impl(const TrainConfig& c, std::shared_ptr<model::CausalLM> m, dist::Communicator& cm)
      : cfg(c), model(std::move(m)), comm(cm), world(cm.world()), rank(cm.rank()), zero(c.zero),
        precision(model::parse_precision(c.precision)) {
    if (cfg.device == "cuda") device = at::Device(at::kCUDA);
    build_flat();
    install_hooks();
  }

  void build_flat() {
    auto named = model->hf_parameters();
    std::vector<optim::ParamSpec> specs;
    for (auto& [name, t] : named) specs.push_back({name, t.sizes().vec(), t.dim() >= 2});
    const auto bucket_elems = static_cast<int64_t>(cfg.bucket_mb * 1024 * 1024 / 4);
    layout = optim::plan_layout(specs, world, std::max<int64_t>(bucket_elems, 1));
    at::NoGradGuard no_grad;
    flat_params = at::zeros({layout.total}, at::TensorOptions().dtype(at::kFloat).device(device));
    params.resize(layout.params.size());
    for (size_t i = 0; i < layout.params.size(); ++i) {
      const auto& slot = layout.params[i];
      at::Tensor t = model->param(slot.name);
      at::Tensor view = flat_params.narrow(0, slot.offset, slot.numel).view(slot.shape);
      view.copy_(t.to(at::kFloat));
      t.set_data(view);
      t.set_requires_grad(true);
      params[i] = t;
    }
    if (zero <= 1) {
      flat_grad = at::zeros({layout.total}, flat_params.options());
      for (size_t i = 0; i < params.size(); ++i)
        params[i].mutable_grad() = flat_grad.narrow(0, layout.params[i].offset, layout.params[i].numel).view(layout.params[i].shape);
    }
    if (zero == 0) {
      std::vector<optim::OwnedRange> all;
      for (size_t i = 0; i < layout.params.size(); ++i)
        all.push_back({static_cast<int>(i), layout.params[i].offset, layout.params[i].numel, layout.params[i].offset});
      adam = std::make_unique<optim::FlatAdamW>(all, layout.total, layout.params, adam_cfg());
    } else {
      owned_grad = at::zeros({layout.shard_size()}, flat_params.options());
      master = at::empty({layout.shard_size()}, flat_params.options());
      for (size_t b = 0; b < layout.buckets.size(); ++b)
        master.narrow(0, layout.shard_offset(b), layout.slice(b)).copy_(flat_params.narrow(0, layout.owned_offset(b, rank), layout.slice(b)));
      adam = std::make_unique<optim::FlatAdamW>(layout.owned_ranges(rank), layout.shard_size(), layout.params, adam_cfg());
      bucket_grad.resize(layout.buckets.size());
    }
    remaining.assign(layout.buckets.size(), 0);
  }

  optim::AdamWConfig adam_cfg() const { return {cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay}; }

  void install_hooks() {
    for (size_t i = 0; i < params.size(); ++i) {
      auto acc = torch::autograd::impl::grad_accumulator(params[i]);
      ST_CHECK(acc != nullptr, "internal: parameter " + layout.params[i].name + " has no gradient accumulator");
      const int bucket = layout.params[i].bucket;
      acc->add_post_hook(std::make_unique<GradReadyHook>([this, bucket] {
        if (--remaining[bucket] == 0 && communicate_now) launch_ready();
        poll();
      }));
      accumulators.push_back(std::move(acc));
    }
  }

  // Prepares gradient storage and hook counters for one backward.
  void begin_backward(bool last_micro) {
    communicate_now = last_micro || zero == 2;
    for (size_t b = 0; b < layout.buckets.size(); ++b) remaining[b] = static_cast<int>(layout.buckets[b].params.size());
    next_launch = 0;
    // ZeRO-2 keeps no gradient storage between micro-steps: autograd creates each parameter's gradient,
    // and the bucket hook packs it, starts the reduce-scatter and releases it (see launch()).
  }

  // ZeRO-2 packing buffers: only buckets in flight hold one; finished ones are recycled (no allocation,
  // page faults or zero-fill per bucket on the backward path).
  std::vector<at::Tensor> free_buffers;
  at::Tensor take_buffer(int64_t n) {
    for (size_t i = 0; i < free_buffers.size(); ++i)
      if (free_buffers[i].numel() >= n) {
        at::Tensor t = std::move(free_buffers[i]);
        free_buffers.erase(free_buffers.begin() + static_cast<std::ptrdiff_t>(i));
        return t.numel() == n ? t : t.narrow(0, 0, n);
      }
    return at::empty({n}, flat_params.options());
  }

  void launch_ready() {
    while (next_launch < layout.buckets.size() && remaining[next_launch] == 0) launch(static_cast<int>(next_launch++));
  }

  // Starts every bucket not started yet, in order (includes parameters that received no gradient).
  void launch_rest() {
    while (next_launch < layout.buckets.size()) launch(static_cast<int>(next_launch++));
  }

  void launch(int b) {
    const auto& bk = layout.buckets[b];
    Op op;
    op.bucket = b;
    if (zero == 0) {
      // All-reduce as reduce-scatter then all-gather: MPI's nonblocking all-reduce needs many progress
      // calls to finish a large bucket, while these two complete in few (measured: 3x less waiting).
      op.temp = at::empty({layout.slice(b)}, flat_params.options());
      op.pending = comm.start_reduce_scatter_sum(flat_grad.narrow(0, bk.offset, bk.size), op.temp);
    } else if (zero == 1) {
      op.pending = comm.start_reduce_scatter_sum(flat_grad.narrow(0, bk.offset, bk.size),
                                                 owned_grad.narrow(0, layout.shard_offset(b), layout.slice(b)));
    } else {
      at::NoGradGuard no_grad;
      bucket_grad[b] = take_buffer(bk.size);
      int64_t filled = 0;
      for (int p : bk.params) {
        at::Tensor& g = params[p].mutable_grad();
        at::Tensor dst = bucket_grad[b].narrow(0, layout.params[p].offset - bk.offset, layout.params[p].numel);
        if (g.defined())
          dst.copy_(g.reshape({-1}));
        else
          dst.zero_();
        filled += layout.params[p].numel;
        g = at::Tensor();  // the full gradient of this bucket is dropped right here
      }
      if (filled < bk.size) bucket_grad[b].narrow(0, filled, bk.size - filled).zero_();  // padding
      op.temp = at::empty({layout.slice(b)}, flat_params.options());
      op.pending = comm.start_reduce_scatter_sum(bucket_grad[b], op.temp);
    }
    ops.push_back(std::move(op));
  }

  // A bucket's reduce-scatter finished. ZeRO-0: its summed slice goes to this rank's slice of flat_grad
  // (all-gathered after backward). ZeRO-2: it adds into the owned gradient and the packing buffer is
  // recycled. ZeRO-1 reduce-scatters straight into the owned gradient: nothing to do.
  void complete(Op& op) {
    if (zero == 1) return;
    at::NoGradGuard no_grad;
    if (zero == 0) {  // the all-gathers start in finish_backward, in bucket order on every rank
      flat_grad.narrow(0, layout.owned_offset(op.bucket, rank), layout.slice(op.bucket)).copy_(op.temp);
      op.temp = at::Tensor();
      return;
    }
    owned_grad.narrow(0, layout.shard_offset(op.bucket), layout.slice(op.bucket)).add_(op.temp);
    free_buffers.push_back(std::move(bucket_grad[op.bucket]));  // reused by a later bucket, not freed
    bucket_grad[op.bucket] = at::Tensor();
    op.temp = at::Tensor();
  }

  void poll() {
    for (auto& op : ops)
      if (op.pending && op.pending->done()) {
        op.pending.reset();
        complete(op);
      }
  }

  void finish_backward() {
    if (communicate_now) launch_rest();
    for (auto& op : ops)
      if (op.pending) {
        op.pending->wait();
        op.pending.reset();
        complete(op);
      }
    ops.clear();
    // Nonblocking collectives must start in the same order on every rank: the all-gathers go here, in
    // bucket order, never from the (timing-dependent) completion polling.
    if (zero == 0 && communicate_now) all_gather_buckets(flat_grad, nullptr);
  }

  // Makes every bucket of `flat` whole from each rank's owned slice (in place, bucket by bucket, in
  // bucket order). With `shard`, this rank's slices are first copied from it (the owned buffer layout).
  void all_gather_buckets(at::Tensor& flat, const at::Tensor* shard) {
    std::vector<std::unique_ptr<dist::Pending>> gathers;
    for (size_t b = 0; b < layout.buckets.size(); ++b) {
      const auto& bk = layout.buckets[b];
      at::Tensor mine = flat.narrow(0, layout.owned_offset(b, rank), layout.slice(b));
      if (shard) mine.copy_(shard->narrow(0, layout.shard_offset(b), layout.slice(b)));
      gathers.push_back(comm.start_all_gather(mine, flat.narrow(0, bk.offset, bk.size)));
    }
    for (auto& g : gathers) g->wait();
  }

  at::Tensor to_device(const std::vector<int64_t>& v, int64_t B, int64_t T) {
    return at::from_blob(const_cast<int64_t*>(v.data()), {B, T}, at::kLong).clone().to(device);
  }

  // Forward of one host batch: (loss sum tensor, count).
  model::LossResult forward(const data::HostBatch& hb) {
    at::Tensor ids = to_device(hb.ids, hb.B, hb.T);
    at::Tensor mask = at::from_blob(const_cast<uint8_t*>(hb.mask.data()), {hb.B, hb.T}, at::kByte).clone().to(device);
    model::Packing pack;
    if (!hb.doc_ids.empty()) pack.doc_ids = to_device(hb.doc_ids, hb.B, hb.T);
    model::AutocastGuard autocast(device, precision);
    model::LossResult r = model->loss(ids, mask, pack);
    ST_CHECK(r.count == hb.loss_tokens, "internal: batch holds " + std::to_string(hb.loss_tokens) +
                                            " target tokens but the loss counted " + std::to_string(r.count));
    return r;
  }

  StepStats step(int64_t step, int64_t total_steps, const std::vector<data::HostBatch>& micro) {
    auto t0 = Clock::now();
    comm.take_blocked_seconds();
    StepStats s;
    s.step = step;
    int64_t local_targets = 0, local_tokens = 0;
    for (const auto& hb : micro) {
      local_targets += hb.loss_tokens;
      local_tokens += hb.B * hb.T;
    }
    // Normalize by the targets of the whole global batch, so any split over ranks gives the same gradient.
    const double total = comm.all_reduce(static_cast<double>(local_targets), dist::ReduceOp::Sum);
    ST_CHECK(total > 0, "step " + std::to_string(step) + ": the global batch has no target tokens",
             "check the data (shardtune-inspect) and --seq-len");
    {
      at::NoGradGuard no_grad;
      if (zero <= 1) flat_grad.zero_();
      if (zero >= 1) owned_grad.zero_();
    }
    double loss_sum = 0;
    auto since = [](Clock::time_point& t) {
      auto now = Clock::now();
      double d = std::chrono::duration<double>(now - t).count();
      t = now;
      return d;
    };
    auto t = Clock::now();
    for (size_t a = 0; a < micro.size(); ++a) {
      begin_backward(a + 1 == micro.size());
      model::LossResult r = forward(micro[a]);
      loss_sum += r.sum.item<double>();
      s.forward_s += since(t);
      (r.sum / total).backward();
      s.backward_s += since(t);
      finish_backward();
      s.drain_s += since(t);
    }
    // Global gradient norm and clipping.
    at::NoGradGuard no_grad;
    at::Tensor& g = zero == 0 ? flat_grad : owned_grad;
    const double local_norm = g.norm().item<double>();  // no full-size temporary
    double sq = local_norm * local_norm;
    if (zero >= 1) sq = comm.all_reduce(sq, dist::ReduceOp::Sum);
    s.grad_norm = std::sqrt(sq);
    if (cfg.grad_clip > 0 && s.grad_norm > cfg.grad_clip) g.mul_(cfg.grad_clip / (s.grad_norm + 1e-6));
    s.lr = optim::lr_at(step, total_steps, cfg.warmup_steps, cfg.lr, cfg.min_lr, optim::parse_schedule(cfg.schedule));
    if (zero == 0) {
      adam->step(flat_params, flat_grad, s.lr);
      s.optim_s = since(t);
    } else {
      adam->step(master, owned_grad, s.lr);
      s.optim_s = since(t);
      all_gather_buckets(flat_params, &master);
      s.gather_s = since(t);
    }
    s.loss = comm.all_reduce(loss_sum, dist::ReduceOp::Sum) / total;
    s.loss_tokens = static_cast<int64_t>(total);
    s.tokens = static_cast<int64_t>(comm.all_reduce(static_cast<double>(local_tokens), dist::ReduceOp::Sum));
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
  double sum = 0;
  int64_t count = 0;
  for (const auto& hb : batches) {
    model::LossResult r = impl_->forward(hb);
    sum += r.sum.item<double>();
    count += r.count;
  }
  sum = impl_->comm.all_reduce(sum, dist::ReduceOp::Sum);
  count = static_cast<int64_t>(impl_->comm.all_reduce(static_cast<double>(count), dist::ReduceOp::Sum));
  return {sum, count};
}

int64_t Trainer::num_params() const {
  int64_t n = 0;
  for (const auto& p : impl_->layout.params) n += p.numel;
  return n;
}

int64_t Trainer::optimizer_state_bytes() const {
  return impl_->adam->state_bytes() + (impl_->master.defined() ? impl_->master.numel() * 4 : 0);
}

int64_t Trainer::grad_buffer_bytes() const {
  return (impl_->flat_grad.defined() ? impl_->flat_grad.numel() * 4 : 0) +
         (impl_->owned_grad.defined() ? impl_->owned_grad.numel() * 4 : 0);
}

}  // namespace shardtune::train
