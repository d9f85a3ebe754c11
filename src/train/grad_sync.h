// Gradient synchronization, one class per ZeRO stage behind one interface: which gradient buffers a
// stage keeps, which collective each bucket starts during backward, what the optimizer updates and how
// the parameters are made whole again afterwards. Private to the trainer (src/train/).
//
// Shared invariant (GradSync): buckets start strictly in index order on every rank. Nonblocking
// collectives must start in the same order everywhere, and a rank whose autograd graph differs (a
// micro-batch without targets skips the head matmul) must not reorder them; so a bucket whose gradients
// are complete waits for every lower-numbered bucket before it starts.
//
// Sizes below: P = layout.total (all trainable elements, padded), S = layout.shard_size() = P / N,
// B = one bucket (layout.buckets[b].size), s = its slice B / N. Elements are fp32 (4 bytes).
//
// --grad-reduce-dtype bf16 (ReduceDtype::BF16, more than one rank): a bucket's reduce-scatter sends bf16
// and accumulates in fp32: the fp32 bucket is cast to bf16 (2B bytes), moved by all-to-all (chunk j to
// rank j; 2B bytes received), and the world's N bf16 chunks of this rank's slice are summed in fp32 into
// the fp32 destination, when the all-to-all is done (from the same polling as every other collective, so
// it overlaps backward as before). Every stage keeps its fp32 buffers; what it gathers afterwards (DDP:
// the summed fp32 gradient slices; ZeRO-1/2: the updated parameters) travels in fp32, so every rank ends
// with identical values. On one rank nothing travels and nothing is rounded (identical to fp32).
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "shardtune/dist/communicator.h"
#include "shardtune/optim/layout.h"

namespace shardtune::train {

enum class ZeroStage { Ddp = 0, Zero1 = 1, Zero2 = 2 };

ZeroStage zero_stage_from_int(int zero);  // Error naming --zero when out of range

// The dtype gradient buckets travel in (--grad-reduce-dtype); sums are fp32 either way.
enum class ReduceDtype { FP32, BF16 };
ReduceDtype reduce_dtype_from_string(const std::string& s);  // Error naming --grad-reduce-dtype

// What every stage works on; all owned by the trainer and alive as long as the GradSync.
struct FlatModel {
  const optim::FlatLayout& layout;
  std::vector<at::Tensor>& params;  // in layout.params order, views into flat_params
  at::Tensor& flat_params;          // [P], every rank holds all parameters
  dist::Communicator& comm;
  ReduceDtype reduce_dtype = ReduceDtype::FP32;
};

class GradSync {
 public:
  explicit GradSync(FlatModel m);
  virtual ~GradSync() = default;
  GradSync(const GradSync&) = delete;
  GradSync& operator=(const GradSync&) = delete;

  // A new optimizer step: accumulated gradients are zeroed.
  virtual void begin_step() = 0;
  // Before one micro-batch's backward; `last_micro`: the step's gradients are complete after it.
  void begin_backward(bool last_micro);
  // Autograd hook: one parameter of `bucket` has its gradient for this backward.
  void on_grad_ready(int bucket);
  // After backward() returned: starts the buckets not started yet (parameters without a gradient
  // included), waits for every collective of this backward.
  void finish_backward();

  // The gradient the optimizer reads: [P] (DDP) or this rank's owned shard [S] (ZeRO-1/2).
  virtual at::Tensor& grad() = 0;
  bool grad_is_sharded() const { return sharded_; }  // then its squared norm is summed over ranks
  // What the optimizer updates: the pieces of flat_params whose gradient grad() holds, with
  // shard_offset indexing grad() and flat_offset indexing flat_params (FlatAdamW::step_in_place).
  virtual std::vector<optim::OwnedRange> optimizer_ranges() const = 0;
  int64_t optimizer_elems() const { return grad_is_sharded() ? m_.layout.shard_size() : m_.layout.total; }
  // After the optimizer updated its ranges in place: makes every rank's flat_params whole again.
  virtual void after_optimizer() {}

  virtual int64_t grad_buffer_bytes() const = 0;  // persistent gradient memory of this rank

 protected:
  struct Op {
    std::unique_ptr<dist::Pending> pending;
    int bucket = 0;
    at::Tensor temp;  // reduce-scatter output where the stage needs one
    at::Tensor out;   // where the reduced fp32 slice goes (temp, or the stage's own buffer)
    at::Tensor wire_in, wire_out;  // BF16: the bf16 bucket sent and the world's chunks received
  };
  // Starts one bucket's reduce-scatter: `in` [B] (fp32; bf16 when the stage packed it so for a bf16
  // wire) summed over ranks, this rank's slice into `out` [s] fp32. FP32: one reduce-scatter straight
  // into `out`. BF16 wire: `in` as bf16 goes out by all-to-all; finish_reduce_scatter() sums.
  void start_reduce_scatter(Op& op, const at::Tensor& in, at::Tensor out);
  // After op's collective finished: `out` holds the fp32 sum (the BF16 wire sums the chunks here).
  void finish_reduce_scatter(Op& op);
  // Buckets travel in bf16 (--grad-reduce-dtype bf16 on more than one rank).
  bool bf16_wire() const { return bf16_wire_; }
  // Starts bucket b's collective (called in bucket order only).
  virtual Op launch(int b) = 0;
  // Bucket b's collective finished (called from polling in any order, or from finish_backward).
  virtual void complete(Op& op) = 0;
  // After every collective of the last micro-batch's backward finished.
  virtual void after_backward() {}
  // Makes every bucket of `flat` whole from each rank's owned slice: in place, in bucket order.
  void all_gather_buckets(at::Tensor& flat);
  // A zeroed full gradient [P]; every parameter's .grad becomes a view into it (DDP, ZeRO-1).
  at::Tensor make_flat_grad();

  FlatModel m_;
  int rank_;
  bool bf16_wire_ = false;
  bool sharded_ = false;
  bool every_backward_ = false;   // collectives after every micro-batch's backward, not only the last
  bool communicate_now_ = false;  // this backward starts collectives

 private:
  void launch_ready();
  void poll();
  std::vector<int> remaining_;  // gradients still missing per bucket in the current backward
  size_t next_launch_ = 0;      // buckets [0, next_launch_) have started
  std::vector<Op> ops_;
};

// ZeRO-0 (DDP). Keeps flat_grad [P] (4P bytes): the full gradient, accumulated over micro-batches.
// During the last backward each bucket is reduce-scattered into a temporary [s] (live while in flight);
// its summed slice goes back to this rank's slice of flat_grad, and after backward the buckets are
// all-gathered in order (an all-reduce in two halves: MPI completes these in far fewer progress calls
// than a nonblocking all-reduce). AdamW then updates all of flat_params on every rank (m, v: 8P bytes).
class DdpSync final : public GradSync {
 public:
  explicit DdpSync(FlatModel m);
  void begin_step() override;
  at::Tensor& grad() override { return flat_grad_; }
  std::vector<optim::OwnedRange> optimizer_ranges() const override;
  int64_t grad_buffer_bytes() const override { return flat_grad_.numel() * 4; }

 private:
  Op launch(int b) override;
  void complete(Op& op) override;
  void after_backward() override;
  at::Tensor flat_grad_;
};

// ZeRO-1. Keeps flat_grad [P] (the full gradient, accumulated over micro-batches: 4P bytes) and
// owned_grad [S] (4S bytes): the last backward reduce-scatters each bucket straight into owned_grad.
// AdamW updates only this rank's owned slices of flat_params, in place (m, v: 8S bytes; no fp32 master
// copy: the parameters are fp32 already), then every bucket is all-gathered in place, in order.
class Zero1Sync final : public GradSync {
 public:
  explicit Zero1Sync(FlatModel m);
  void begin_step() override;
  at::Tensor& grad() override { return owned_grad_; }
  std::vector<optim::OwnedRange> optimizer_ranges() const override;
  void after_optimizer() override { all_gather_buckets(m_.flat_params); }
  int64_t grad_buffer_bytes() const override { return (flat_grad_.numel() + owned_grad_.numel()) * 4; }

 private:
  Op launch(int b) override;
  void complete(Op& op) override;
  at::Tensor flat_grad_, owned_grad_;
};

// ZeRO-2. Keeps only owned_grad [S] (4S bytes); no full gradient. Autograd creates each parameter's
// gradient; when a bucket is complete (every micro-batch's backward), the hook packs it into a buffer
// [B], releases the parameters' gradients and reduce-scatters the buffer into a temporary [s], added into
// owned_grad when done. Packing buffers are live only while their bucket is in flight and are recycled
// (no allocation or zero-fill per bucket on the backward path). Optimizer and all-gather as ZeRO-1.
// With a bf16 wire the gradients are packed straight into bf16 buffers [B] (2B bytes, the same rounding
// as casting an fp32 bucket) and the chunks received are summed in fp32 into the temporary [s].
class Zero2Sync final : public GradSync {
 public:
  explicit Zero2Sync(FlatModel m);
  void begin_step() override;
  at::Tensor& grad() override { return owned_grad_; }
  std::vector<optim::OwnedRange> optimizer_ranges() const override;
  void after_optimizer() override { all_gather_buckets(m_.flat_params); }
  int64_t grad_buffer_bytes() const override { return owned_grad_.numel() * 4; }

 private:
  Op launch(int b) override;
  void complete(Op& op) override;
  at::Tensor take_buffer(int64_t n);
  at::Tensor owned_grad_;
  std::vector<at::Tensor> bucket_grad_;   // a bucket's packed gradient while it is reduce-scattered
  std::vector<at::Tensor> free_buffers_;  // finished packing buffers, reused by later buckets
};

std::unique_ptr<GradSync> make_grad_sync(ZeroStage stage, FlatModel m);

}  // namespace shardtune::train
