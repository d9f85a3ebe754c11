// Gradient synchronization per ZeRO stage: the in-order bucket launcher shared by all stages, and what
// DDP, ZeRO-1 and ZeRO-2 each start, finish and keep (see grad_sync.h for the buffers and sizes).
#include "grad_sync.h"

#include "shardtune/core/error.h"

namespace shardtune::train {

ZeroStage zero_stage_from_int(int zero) {
  ST_CHECK(zero >= 0 && zero <= 2, "--zero must be 0, 1 or 2 (got " + std::to_string(zero) + ")",
           "0 = DDP, 1 = optimizer state partitioned, 2 = + gradients partitioned");
  return static_cast<ZeroStage>(zero);
}

ReduceDtype reduce_dtype_from_string(const std::string& s) {
  if (s == "fp32") return ReduceDtype::FP32;
  if (s == "bf16") return ReduceDtype::BF16;
  ST_FAIL("unknown --grad-reduce-dtype '" + s + "'",
          "use fp32 (the default) or bf16 (buckets travel in bf16, summed in fp32: half the gradient traffic)");
}

std::unique_ptr<GradSync> make_grad_sync(ZeroStage stage, FlatModel m) {
  switch (stage) {
    case ZeroStage::Ddp: return std::make_unique<DdpSync>(m);
    case ZeroStage::Zero1: return std::make_unique<Zero1Sync>(m);
    case ZeroStage::Zero2: return std::make_unique<Zero2Sync>(m);
  }
  ST_FAIL("internal: unknown ZeRO stage");
}

// ---- the shared launcher ----

GradSync::GradSync(FlatModel m)
    : m_(m),
      rank_(m.comm.rank()),
      bf16_wire_(m.reduce_dtype == ReduceDtype::BF16 && m.comm.world() > 1),
      remaining_(m.layout.buckets.size(), 0) {}

void GradSync::start_reduce_scatter(Op& op, const at::Tensor& in, at::Tensor out) {
  op.out = out;
  if (!bf16_wire_) {
    op.pending = m_.comm.start_reduce_scatter_sum(in, std::move(out));
    return;
  }
  at::NoGradGuard no_grad;
  op.wire_in = in.scalar_type() == at::kBFloat16 ? in : in.to(at::kBFloat16);
  op.wire_out = at::empty_like(op.wire_in);
  op.pending = m_.comm.start_all_to_all(op.wire_in, op.wire_out);
}

void GradSync::finish_reduce_scatter(Op& op) {
  if (!bf16_wire_) return;
  at::NoGradGuard no_grad;
  // Chunk i of wire_out is rank i's bf16 copy of this rank's slice: summed in fp32, in rank order (the
  // same order on every rank), without a full-size fp32 temporary.
  const int64_t s = op.out.numel(), world = m_.comm.world();
  op.out.copy_(op.wire_out.narrow(0, 0, s));
  for (int64_t i = 1; i < world; ++i) op.out.add_(op.wire_out.narrow(0, i * s, s));
  op.wire_in = at::Tensor();
  op.wire_out = at::Tensor();
}

void GradSync::begin_backward(bool last_micro) {
  communicate_now_ = last_micro || every_backward_;
  for (size_t b = 0; b < m_.layout.buckets.size(); ++b) remaining_[b] = static_cast<int>(m_.layout.buckets[b].params.size());
  next_launch_ = 0;
}

void GradSync::on_grad_ready(int bucket) {
  if (--remaining_[bucket] == 0 && communicate_now_) launch_ready();
  poll();
}

void GradSync::launch_ready() {
  while (next_launch_ < m_.layout.buckets.size() && remaining_[next_launch_] == 0)
    ops_.push_back(launch(static_cast<int>(next_launch_++)));
}

void GradSync::poll() {
  for (auto& op : ops_)
    if (op.pending && op.pending->done()) {
      op.pending.reset();
      complete(op);
    }
}

void GradSync::finish_backward() {
  if (communicate_now_)
    while (next_launch_ < m_.layout.buckets.size()) ops_.push_back(launch(static_cast<int>(next_launch_++)));
  for (auto& op : ops_)
    if (op.pending) {
      op.pending->wait();
      op.pending.reset();
      complete(op);
    }
  ops_.clear();
  // Collectives started here (DDP's all-gathers) go in bucket order on every rank, never from the
  // timing-dependent completion polling.
  if (communicate_now_) after_backward();
}

at::Tensor GradSync::make_flat_grad() {
  at::Tensor flat = at::zeros({m_.layout.total}, m_.flat_params.options());
  for (size_t i = 0; i < m_.params.size(); ++i) {
    const auto& slot = m_.layout.params[i];
    m_.params[i].mutable_grad() = flat.narrow(0, slot.offset, slot.numel).view(slot.shape);
  }
  return flat;
}

void GradSync::all_gather_buckets(at::Tensor& flat) {
  std::vector<std::unique_ptr<dist::Pending>> gathers;
  for (size_t b = 0; b < m_.layout.buckets.size(); ++b) {
    const auto& bk = m_.layout.buckets[b];
    const int bi = static_cast<int>(b);
    gathers.push_back(m_.comm.start_all_gather(flat.narrow(0, m_.layout.owned_offset(bi, rank_), m_.layout.slice(bi)),
                                               flat.narrow(0, bk.offset, bk.size)));
  }
  for (auto& g : gathers) g->wait();
}

// ---- DDP ----

DdpSync::DdpSync(FlatModel m) : GradSync(m) { flat_grad_ = make_flat_grad(); }

void DdpSync::begin_step() {
  at::NoGradGuard no_grad;
  flat_grad_.zero_();
}

std::vector<optim::OwnedRange> DdpSync::optimizer_ranges() const {
  std::vector<optim::OwnedRange> all;
  for (size_t i = 0; i < m_.layout.params.size(); ++i) {
    const auto& slot = m_.layout.params[i];
    all.push_back({static_cast<int>(i), slot.offset, slot.numel, slot.offset});
  }
  return all;
}

GradSync::Op DdpSync::launch(int b) {
  const auto& bk = m_.layout.buckets[b];
  Op op;
  op.bucket = b;
  op.temp = at::empty({m_.layout.slice(b)}, m_.flat_params.options());
  start_reduce_scatter(op, flat_grad_.narrow(0, bk.offset, bk.size), op.temp);
  return op;
}

void DdpSync::complete(Op& op) {
  at::NoGradGuard no_grad;
  finish_reduce_scatter(op);
  flat_grad_.narrow(0, m_.layout.owned_offset(op.bucket, rank_), m_.layout.slice(op.bucket)).copy_(op.temp);
  op.temp = at::Tensor();
}

void DdpSync::after_backward() { all_gather_buckets(flat_grad_); }

// ---- ZeRO-1 ----

Zero1Sync::Zero1Sync(FlatModel m) : GradSync(m) {
  sharded_ = true;
  flat_grad_ = make_flat_grad();
  owned_grad_ = at::zeros({m_.layout.shard_size()}, m_.flat_params.options());
}

void Zero1Sync::begin_step() {
  at::NoGradGuard no_grad;
  flat_grad_.zero_();
  owned_grad_.zero_();
}

std::vector<optim::OwnedRange> Zero1Sync::optimizer_ranges() const { return m_.layout.owned_ranges(rank_); }

GradSync::Op Zero1Sync::launch(int b) {
  const auto& bk = m_.layout.buckets[b];
  Op op;
  op.bucket = b;
  start_reduce_scatter(op, flat_grad_.narrow(0, bk.offset, bk.size),
                       owned_grad_.narrow(0, m_.layout.shard_offset(b), m_.layout.slice(b)));
  return op;
}

void Zero1Sync::complete(Op& op) { finish_reduce_scatter(op); }

// ---- ZeRO-2 ----

Zero2Sync::Zero2Sync(FlatModel m) : GradSync(m) {
  sharded_ = true;
  every_backward_ = true;  // nothing holds a full gradient between micro-batches
  owned_grad_ = at::zeros({m_.layout.shard_size()}, m_.flat_params.options());
  bucket_grad_.resize(m_.layout.buckets.size());
}

void Zero2Sync::begin_step() {
  at::NoGradGuard no_grad;
  owned_grad_.zero_();
}

std::vector<optim::OwnedRange> Zero2Sync::optimizer_ranges() const { return m_.layout.owned_ranges(rank_); }

at::Tensor Zero2Sync::take_buffer(int64_t n) {
  for (size_t i = 0; i < free_buffers_.size(); ++i)
    if (free_buffers_[i].numel() >= n) {
      at::Tensor t = std::move(free_buffers_[i]);
      free_buffers_.erase(free_buffers_.begin() + static_cast<std::ptrdiff_t>(i));
      return t.numel() == n ? t : t.narrow(0, 0, n);
    }
  // The packing dtype is the wire's: a bf16 wire packs straight into bf16 (no fp32 copy of the bucket).
  return at::empty({n}, m_.flat_params.options().dtype(bf16_wire() ? at::kBFloat16 : at::kFloat));
}

GradSync::Op Zero2Sync::launch(int b) {
  const auto& bk = m_.layout.buckets[b];
  at::NoGradGuard no_grad;
  bucket_grad_[b] = take_buffer(bk.size);
  int64_t filled = 0;
  for (int p : bk.params) {
    at::Tensor& g = m_.params[p].mutable_grad();
    at::Tensor dst = bucket_grad_[b].narrow(0, m_.layout.params[p].offset - bk.offset, m_.layout.params[p].numel);
    if (g.defined())
      dst.copy_(g.reshape({-1}));
    else
      dst.zero_();
    filled += m_.layout.params[p].numel;
    g = at::Tensor();  // the full gradient of this bucket is dropped right here
  }
  if (filled < bk.size) bucket_grad_[b].narrow(0, filled, bk.size - filled).zero_();  // padding
  Op op;
  op.bucket = b;
  op.temp = at::empty({m_.layout.slice(b)}, m_.flat_params.options());
  start_reduce_scatter(op, bucket_grad_[b], op.temp);
  return op;
}

void Zero2Sync::complete(Op& op) {
  at::NoGradGuard no_grad;
  finish_reduce_scatter(op);
  owned_grad_.narrow(0, m_.layout.shard_offset(op.bucket), m_.layout.slice(op.bucket)).add_(op.temp);
  free_buffers_.push_back(std::move(bucket_grad_[op.bucket]));  // reused by a later bucket, not freed
  bucket_grad_[op.bucket] = at::Tensor();
  op.temp = at::Tensor();
}

}  // namespace shardtune::train
