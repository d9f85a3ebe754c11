// Collectives on flat, contiguous tensors: the only way trainer code talks to other ranks.
// CPU tensors go over MPI; CUDA tensors over NCCL (when built with it). Float32 sums, plus host scalars.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <vector>

#include "shardtune/dist/mpi_runtime.h"

namespace shardtune::dist {

enum class ReduceOp { Sum, Max };

// A started nonblocking collective; `done()` polls, `wait()` blocks. MPI has no progress thread, so
// callers poll outstanding work (Communicator::progress) from compute hooks to keep it moving.
class Pending {
 public:
  virtual ~Pending() = default;
  virtual bool done() = 0;
  virtual void wait() = 0;
};

class Communicator {
 public:
  explicit Communicator(const MpiRuntime& rt);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rt_.rank(); }
  int world() const { return rt_.world(); }
  const MpiRuntime& runtime() const { return rt_; }

  // Blocking collectives. Tensors must be contiguous; float32 for reductions.
  void all_reduce_sum(at::Tensor& t);
  void reduce_scatter_sum(const at::Tensor& in, at::Tensor& out);  // in.numel() == world * out.numel()
  void all_gather(const at::Tensor& in, at::Tensor& out);           // out.numel() == world * in.numel()
  void broadcast(at::Tensor& t, int root);
  double all_reduce(double value, ReduceOp op);

  // Nonblocking variants; the tensors must stay alive and untouched until the Pending completes.
  std::unique_ptr<Pending> start_all_reduce_sum(at::Tensor t);
  std::unique_ptr<Pending> start_reduce_scatter_sum(at::Tensor in, at::Tensor out);
  std::unique_ptr<Pending> start_all_gather(at::Tensor in, at::Tensor out);

  // Seconds spent blocked in wait()/blocking collectives since the last call (communication that was
  // not hidden behind compute). Resets the counter.
  double take_blocked_seconds();

  // Whether the NCCL backend was compiled in (CUDA tensors need it).
  static bool has_nccl();

 private:
  friend class MpiPending;
  const MpiRuntime& rt_;
  double blocked_s_ = 0;
  struct Nccl;
  std::unique_ptr<Nccl> nccl_;
  Nccl& nccl();
};

}  // namespace shardtune::dist
