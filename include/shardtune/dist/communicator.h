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
// A CUDA tensor's Pending (NCCL) never blocks the host: done() polls its completion event, wait() makes
// the caller's compute stream wait for it and returns at once (the results are then safe to use on that
// stream); destroying an unfinished one does the same, or abandons it while unwinding.
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
  // autograd hook). Throws where the build has no NCCL. Creation is bounded by `timeout_s` (0: unbounded;
  // --device cuda passes --collective-timeout). Also starts the communicator's watchdog (NCCL errors, and
  // operations older than the limit dist::start_watchdog set, end the job naming rank and operation).
  void start_nccl(int cuda_device, double timeout_s = 0);
  bool nccl_started() const { return nccl_ != nullptr; }
  // The CUDA device given to start_nccl, or -1 before it.
  int cuda_device() const { return cuda_device_; }

  // Seconds spent blocked in wait()/blocking collectives since the last call (communication that was
  // not hidden behind compute). Resets the counter.
  double take_blocked_seconds();

  // Whether the NCCL backend was compiled in (CUDA tensors need it).
  static bool has_nccl();
  // Whether the LibTorch this was built against has CUDA (CMake found its CUDA libraries).
  static bool torch_cuda_built();
  // One line for --version and the start log: LibTorch version and CUDA, NCCL backend and its versions.
  static std::string build_summary();

  // Whether a collective of this communicator was abandoned (Pending::abandon or unwinding): every
  // further collective then throws.
  bool abandoned() const { return abandoned_; }

 private:
  friend class MpiPending;
  const MpiRuntime& rt_;
  double blocked_s_ = 0;
  bool abandoned_ = false;
  int cuda_device_ = -1;
  void check_usable(const char* what) const;
  struct Nccl;
  std::unique_ptr<Nccl> nccl_;
  Nccl& nccl();
};

// --device cuda, on the main thread before the model loads (collective: every rank calls it): checks
// the build (NCCL backend, CUDA LibTorch), picks this rank's GPU by its place on the node (one rank per
// GPU), and creates the NCCL communicator on it (comm.start_nccl, bounded by `timeout_s`). Every rank
// hears of the first rank's problem, so all stop with the same Error before any GPU work. Returns the
// CUDA device index.
int start_cuda(Communicator& comm, double timeout_s);

}  // namespace shardtune::dist
