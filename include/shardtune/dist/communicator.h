// Collectives on flat, contiguous tensors: the only way trainer code talks to other ranks.
// CPU tensors go over MPI; CUDA tensors over NCCL (when built with it). Sums of float32/float64 (and
// int32/int64) tensors, byte moves of any supported dtype (bf16/half included), plus host scalars.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <vector>

#include "shardtune/dist/mpi_runtime.h"

namespace shardtune::dist {

enum class ReduceOp { Sum, Max };

// A started nonblocking collective; `done()` polls, `wait()` blocks. MPI has no progress thread, so
// callers poll done() on outstanding work from compute hooks (the autograd hooks) to keep it moving.
//
// Destroying an unfinished MPI Pending waits for it, except while an exception unwinds the stack
// (std::uncaught_exceptions() > 0) or after abandon(): then it never blocks, so a failing rank reaches
// its error message and MPI_Abort instead of hanging on peers that will never join. An abandoned
// collective's buffers are leaked on purpose (MPI may still write them; the process is about to end).
// (The NCCL backend's event-based Pending does not do this yet: its destructor synchronizes.)
class Pending {
 public:
  virtual ~Pending() = default;
  virtual bool done() = 0;
  virtual void wait() = 0;
  // Gives up on this collective without waiting (only on the way to an abort). After it the owning
  // Communicator refuses every further collective: the ranks no longer agree on what is in flight.
  virtual void abandon() noexcept {}
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

  // Blocking collectives. Tensors must be contiguous. The sums accept float32/float64/int32/int64 only:
  // bf16/half travel over MPI as MPI_UINT16_T, whose sum would add bit patterns (refused, with a hint).
  void all_reduce_sum(at::Tensor& t);
  void reduce_scatter_sum(const at::Tensor& in, at::Tensor& out);  // in.numel() == world * out.numel()
  void all_gather(const at::Tensor& in, at::Tensor& out);           // out.numel() == world * in.numel()
  void broadcast(at::Tensor& t, int root);
  double all_reduce(double value, ReduceOp op);

  // Nonblocking variants; the tensors must stay alive and untouched until the Pending completes.
  std::unique_ptr<Pending> start_all_reduce_sum(at::Tensor t);
  std::unique_ptr<Pending> start_reduce_scatter_sum(at::Tensor in, at::Tensor out);
  std::unique_ptr<Pending> start_all_gather(at::Tensor in, at::Tensor out);
  // All-to-all byte move of any dtype: in and out have the same numel, a multiple of world; chunk j of
  // `in` goes to rank j, chunk i of `out` comes from rank i. (The bf16-communication reduce-scatter with
  // fp32 accumulation is built on it: grad_sync.cpp.)
  std::unique_ptr<Pending> start_all_to_all(at::Tensor in, at::Tensor out);
  void all_to_all(const at::Tensor& in, at::Tensor& out);

  // Creates the NCCL communicator now, on the calling (main) thread, for CUDA device `cuda_device`:
  // collective over all ranks (rank 0's ncclUniqueId goes out by MPI_Bcast). CUDA tensors can be
  // communicated only after it; without it their collectives throw (never a lazy init inside an
  // autograd hook). Throws where the build has no NCCL.
  void start_nccl(int cuda_device);
  bool nccl_started() const { return nccl_ != nullptr; }

  // Seconds spent blocked in wait()/blocking collectives since the last call (communication that was
  // not hidden behind compute). Resets the counter.
  double take_blocked_seconds();

  // Whether the NCCL backend was compiled in (CUDA tensors need it).
  static bool has_nccl();

  // Whether a collective of this communicator was abandoned (Pending::abandon or unwinding): every
  // further collective then throws.
  bool abandoned() const { return abandoned_; }

 private:
  friend class MpiPending;
  const MpiRuntime& rt_;
  double blocked_s_ = 0;
  bool abandoned_ = false;
  void check_usable(const char* what) const;
  struct Nccl;
  std::unique_ptr<Nccl> nccl_;
  Nccl& nccl();
};

}  // namespace shardtune::dist
