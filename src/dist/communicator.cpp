// Communicator: MPI collectives on CPU tensors, dispatch to NCCL for CUDA tensors (nccl_backend.cpp).
#include "shardtune/dist/communicator.h"

#include <mpi.h>

#include <torch/version.h>

#include <chrono>
#include <exception>

#include "nccl_backend.h"
#include "shardtune/core/error.h"
#include "shardtune/dist/watchdog.h"

namespace shardtune::dist {
namespace {
// A blocking MPI call, watched by --collective-timeout while it runs (the call is evaluated inside).
#define watched_check(call, name) \
  do { \
    const WatchedOp watch_(name); \
    mpi_check(call, name); \
  } while (0)

using Clock = std::chrono::steady_clock;

void mpi_check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  ST_FAIL(std::string(what) + " failed: " + std::string(msg, len), "another rank probably failed first; see its message");
}

MPI_Datatype mpi_type(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return MPI_FLOAT;
    case at::kDouble: return MPI_DOUBLE;
    case at::kLong: return MPI_INT64_T;
    case at::kInt: return MPI_INT32_T;
    case at::kByte: return MPI_UINT8_T;
    case at::kBFloat16:
    case at::kHalf: return MPI_UINT16_T;  // byte moves only (broadcast / gather): check_summable refuses sums
    default:
      ST_FAIL(std::string("unsupported dtype for an MPI collective: ") + c10::toString(t.scalar_type()),
              "use float32, float64, int32, int64, uint8, bfloat16 or float16 tensors");
  }
}

// MPI sums what it is told the type is: bf16/half travel as MPI_UINT16_T (MPI has no such floats), so
// MPI_SUM would add their bit patterns, and uint8 wraps. Only types whose MPI sum is the real sum pass.
// Checked before the 1-rank shortcut, so a wrong dtype fails the same way on 1 rank as on N.
void check_summable(const at::Tensor& t, const char* what) {
  if (t.is_cuda()) return;  // NCCL sums bf16/half natively (nccl_backend.cpp maps the dtypes)
  const auto ty = t.scalar_type();
  if (ty == at::kFloat || ty == at::kDouble || ty == at::kInt || ty == at::kLong) return;
  ST_FAIL(std::string(what) + ": cannot sum a " + c10::toString(ty) + " tensor over MPI" +
              (ty == at::kBFloat16 || ty == at::kHalf
                   ? " (it travels as MPI_UINT16_T, so MPI_SUM would add bit patterns, not numbers)"
                   : " (MPI's sum of this type is not a meaningful sum)"),
          "reduce in float32: convert with .to(at::kFloat) before the collective and back after it; bf16/half "
          "may still be moved with all_gather or broadcast");
}

void check_flat(const at::Tensor& t, const char* what) {
  ST_CHECK(t.defined() && t.is_contiguous(), std::string(what) + ": tensor must be defined and contiguous");
}

int count_of(const at::Tensor& t) {
  ST_CHECK(t.numel() < (int64_t{1} << 31), "collective on more than 2^31 elements: split it into buckets");
  return static_cast<int>(t.numel());
}

}  // namespace

// An MPI request plus the tensors it must keep alive; the owning communicator accounts waiting time.
class MpiPending : public Pending {
 public:
  MpiPending(Communicator* c, MPI_Request r, std::vector<at::Tensor> keep) : comm_(c), req_(r), keep_(std::move(keep)) {}
  ~MpiPending() override {
    if (req_ == MPI_REQUEST_NULL) return;
    // Unwinding: the peers may never join this collective (they failed, or never reached it), and an
    // MPI_Wait here would keep this rank from printing its error and aborting the job.
    if (std::uncaught_exceptions() > 0) {
      abandon();
      return;
    }
    if (MPI_Wait(&req_, MPI_STATUS_IGNORE) != MPI_SUCCESS) abandon();  // cannot throw here; the state is unknown
  }
  bool done() override {
    if (req_ == MPI_REQUEST_NULL) return true;
    int flag = 0;
    checked(MPI_Test(&req_, &flag, MPI_STATUS_IGNORE), "MPI_Test");
    return flag != 0;
  }
  void wait() override {
    if (req_ == MPI_REQUEST_NULL) return;
    auto t0 = Clock::now();
    const WatchedOp watch("MPI_Wait on a gradient or parameter bucket collective");
    checked(MPI_Wait(&req_, MPI_STATUS_IGNORE), "MPI_Wait");
    comm_->blocked_s_ += std::chrono::duration<double>(Clock::now() - t0).count();
  }
  void abandon() noexcept override {
    if (req_ == MPI_REQUEST_NULL) return;
    // MPI may still read or write these buffers: keep them alive for the rest of the process (which is
    // about to abort) rather than free them under MPI. The request is neither freed nor cancelled:
    // both are erroneous for nonblocking collectives.
    new std::vector<at::Tensor>(std::move(keep_));  // NOLINT: deliberate leak
    req_ = MPI_REQUEST_NULL;
    comm_->abandoned_ = true;
  }

 private:
  Communicator* comm_;
  MPI_Request req_;
  std::vector<at::Tensor> keep_;

  // A failed test/wait leaves the request in an unknown state: abandon it, then throw.
  void checked(int rc, const char* what) {
    if (rc == MPI_SUCCESS) return;
    abandon();
    mpi_check(rc, what);
  }
};

namespace {
class DonePending : public Pending {
 public:
  bool done() override { return true; }
  void wait() override {}
};
}  // namespace

struct Communicator::Nccl {
  std::unique_ptr<NcclBackend> backend;
};

Communicator::Communicator(const MpiRuntime& rt) : rt_(rt) {}
Communicator::~Communicator() = default;

bool Communicator::has_nccl() { return nccl_available(); }

bool Communicator::torch_cuda_built() {
#ifdef SHARDTUNE_TORCH_CUDA
  return true;
#else
  return false;
#endif
}

std::string Communicator::build_summary() {
  const std::string torch = std::string("LibTorch ") + TORCH_VERSION + (torch_cuda_built() ? " with CUDA" : " (CPU only)");
  const std::string nccl = has_nccl() ? "NCCL backend: built (" + nccl_build_info() + ")" : "NCCL backend: not built";
  return torch + "; " + nccl + "; --device cuda " +
         (has_nccl() && torch_cuda_built() ? "available" : "unavailable in this build");
}

void Communicator::start_nccl(int cuda_device, double timeout_s) {
  ST_CHECK(!nccl_, "internal: start_nccl called twice");
  auto n = std::make_unique<Nccl>();
  n->backend = make_nccl_backend(rt_, cuda_device, &abandoned_, timeout_s);
  nccl_ = std::move(n);
  cuda_device_ = cuda_device;
}

Communicator::Nccl& Communicator::nccl() {
  ST_CHECK(nccl_ != nullptr, "internal: a collective on a CUDA tensor before the NCCL communicator was created",
           "call Communicator::start_nccl on the main thread at start (the trainer does so for --device cuda)");
  return *nccl_;
}

void Communicator::check_usable(const char* what) const {
  ST_CHECK(!abandoned_, std::string(what) + ": an earlier collective of this rank was abandoned (an error is being handled)",
           "no collective can follow an abandoned one: the ranks no longer agree on what is in flight; end the job");
}

double Communicator::take_blocked_seconds() {
  double s = blocked_s_;
  blocked_s_ = 0;
  return s;
}

void Communicator::all_reduce_sum(at::Tensor& t) {
  start_all_reduce_sum(t)->wait();
}

void Communicator::reduce_scatter_sum(const at::Tensor& in, at::Tensor& out) {
  start_reduce_scatter_sum(in, out)->wait();
}

void Communicator::all_gather(const at::Tensor& in, at::Tensor& out) {
  start_all_gather(in, out)->wait();
}

std::unique_ptr<Pending> Communicator::start_all_reduce_sum(at::Tensor t) {
  check_usable("all_reduce_sum");
  check_flat(t, "all_reduce_sum");
  check_summable(t, "all_reduce_sum");
  if (world() == 1) return std::make_unique<DonePending>();
  if (t.is_cuda()) return nccl().backend->all_reduce_sum(t, &blocked_s_);
  MPI_Request r;
  mpi_check(MPI_Iallreduce(MPI_IN_PLACE, t.data_ptr(), count_of(t), mpi_type(t), MPI_SUM, MPI_COMM_WORLD, &r), "MPI_Iallreduce");
  return std::make_unique<MpiPending>(this, r, std::vector<at::Tensor>{t});
}

std::unique_ptr<Pending> Communicator::start_reduce_scatter_sum(at::Tensor in, at::Tensor out) {
  check_usable("reduce_scatter_sum");
  check_flat(in, "reduce_scatter_sum");
  check_flat(out, "reduce_scatter_sum");
  check_summable(in, "reduce_scatter_sum");
  ST_CHECK(in.scalar_type() == out.scalar_type(), "reduce_scatter_sum: input and output dtypes differ");
  ST_CHECK(in.numel() == out.numel() * world(), "reduce_scatter_sum: input must be world x output");
  if (world() == 1) {
    if (out.data_ptr() != in.data_ptr()) out.copy_(in);
    return std::make_unique<DonePending>();
  }
  if (in.is_cuda()) return nccl().backend->reduce_scatter_sum(in, out, &blocked_s_);
  MPI_Request r;
  mpi_check(MPI_Ireduce_scatter_block(in.data_ptr(), out.data_ptr(), count_of(out), mpi_type(in), MPI_SUM, MPI_COMM_WORLD, &r),
            "MPI_Ireduce_scatter_block");
  return std::make_unique<MpiPending>(this, r, std::vector<at::Tensor>{in, out});
}

std::unique_ptr<Pending> Communicator::start_all_gather(at::Tensor in, at::Tensor out) {
  check_usable("all_gather");
  check_flat(in, "all_gather");
  check_flat(out, "all_gather");
  ST_CHECK(in.scalar_type() == out.scalar_type(), "all_gather: input and output dtypes differ");
  ST_CHECK(out.numel() == in.numel() * world(), "all_gather: output must be world x input");
  if (world() == 1) {
    if (out.data_ptr() != in.data_ptr()) out.copy_(in);
    return std::make_unique<DonePending>();
  }
  if (in.is_cuda()) return nccl().backend->all_gather(in, out, &blocked_s_);
  MPI_Request r;
  // In place when `in` is this rank's slice of `out`.
  const void* send = in.data_ptr() == static_cast<char*>(out.data_ptr()) + rank() * in.nbytes() ? MPI_IN_PLACE : in.data_ptr();
  mpi_check(MPI_Iallgather(send, count_of(in), mpi_type(in), out.data_ptr(), count_of(in), mpi_type(out), MPI_COMM_WORLD, &r),
            "MPI_Iallgather");
  return std::make_unique<MpiPending>(this, r, std::vector<at::Tensor>{in, out});
}

void Communicator::all_to_all(const at::Tensor& in, at::Tensor& out) { start_all_to_all(in, out)->wait(); }

std::unique_ptr<Pending> Communicator::start_all_to_all(at::Tensor in, at::Tensor out) {
  check_usable("all_to_all");
  check_flat(in, "all_to_all");
  check_flat(out, "all_to_all");
  ST_CHECK(in.scalar_type() == out.scalar_type(), "all_to_all: input and output dtypes differ");
  ST_CHECK(in.numel() == out.numel() && in.numel() % world() == 0,
           "all_to_all: input and output must have the same numel, a multiple of the world size");
  ST_CHECK(in.data_ptr() != out.data_ptr(), "all_to_all: input and output must not be the same buffer");
  if (world() == 1) {
    out.copy_(in);
    return std::make_unique<DonePending>();
  }
  if (in.is_cuda()) return nccl().backend->all_to_all(in, out, &blocked_s_);
  MPI_Request r;
  const int chunk = count_of(in) / world();
  mpi_check(MPI_Ialltoall(in.data_ptr(), chunk, mpi_type(in), out.data_ptr(), chunk, mpi_type(out), MPI_COMM_WORLD, &r),
            "MPI_Ialltoall");
  return std::make_unique<MpiPending>(this, r, std::vector<at::Tensor>{in, out});
}

void Communicator::broadcast(at::Tensor& t, int root) {
  check_usable("broadcast");
  check_flat(t, "broadcast");
  ST_CHECK(root >= 0 && root < world(), "broadcast: root " + std::to_string(root) + " is not a rank of a world of " +
                                            std::to_string(world()));
  if (world() == 1) return;
  if (t.is_cuda()) return nccl().backend->broadcast(t, root, &blocked_s_);
  auto t0 = Clock::now();
  watched_check(MPI_Bcast(t.data_ptr(), count_of(t), mpi_type(t), root, MPI_COMM_WORLD), "MPI_Bcast");
  blocked_s_ += std::chrono::duration<double>(Clock::now() - t0).count();
}

double Communicator::all_reduce(double value, ReduceOp op) {
  check_usable("all_reduce");
  if (world() == 1) return value;
  double out = value;
  auto t0 = Clock::now();  // waiting here is waiting for the slowest rank: it counts as blocked time
  watched_check(MPI_Allreduce(&value, &out, 1, MPI_DOUBLE, op == ReduceOp::Sum ? MPI_SUM : MPI_MAX, MPI_COMM_WORLD), "MPI_Allreduce");
  blocked_s_ += std::chrono::duration<double>(Clock::now() - t0).count();
  return out;
}

}  // namespace shardtune::dist
