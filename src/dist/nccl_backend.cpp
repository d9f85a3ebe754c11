// NCCL backend: one non-blocking NCCL communicator over all ranks. Collectives run on a dedicated
// high-priority communication stream, ordered against the compute stream with CUDA events only (never a
// host synchronization); a watchdog thread per communicator ends the job, naming the rank and the
// operation, on an NCCL error or when an operation outlives --collective-timeout. docs/GPU.md
// "Communication" describes the design.
#include "nccl_backend.h"

#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>
#include <unistd.h>

#ifdef SHARDTUNE_TORCH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <thread>

#include "nccl_types.h"
#include "shardtune/core/error.h"
#include "shardtune/dist/nccl_watch.h"
#include "shardtune/dist/watchdog.h"

#if NCCL_VERSION_CODE < NCCL_VERSION(2, 14, 0)
#error "shardtune's NCCL backend needs NCCL 2.14 or newer (non-blocking communicators, ncclCommFinalize)"
#endif

namespace shardtune::dist {
namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kPeerHint =
    "another rank may have failed first (see its message); NCCL_DEBUG=INFO shows NCCL's own log";

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

void cuda_check(cudaError_t e, const char* what) {
  ST_CHECK(e == cudaSuccess, std::string(what) + " failed: " + cudaGetErrorString(e),
           "check CUDA_VISIBLE_DEVICES, nvidia-smi, and that every rank sees its own GPU");
}

// Makes `device` current for the calling thread and restores the previous one: autograd runs the
// gradient hooks (which issue collectives) on its own device threads.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    cuda_check(cudaGetDevice(&prev_), "cudaGetDevice");
    if (prev_ != device) cuda_check(cudaSetDevice(device), "cudaSetDevice");
    set_ = prev_ != device;
  }
  ~DeviceGuard() {
    if (set_) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
  bool set_ = false;
};

// A CUDA event recorded after one operation on the communication stream, shared by its Pending (which
// orders the compute stream after it) and the watchdog's list of operations in flight (which polls it).
class Event {
 public:
  Event() { cuda_check(cudaEventCreateWithFlags(&ev_, cudaEventDisableTiming), "cudaEventCreateWithFlags"); }
  ~Event() { cudaEventDestroy(ev_); }  // never waits: CUDA releases it once its work has completed
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  cudaEvent_t get() const { return ev_; }
  void record(cudaStream_t s) {
    cuda_check(cudaEventRecord(ev_, s), "cudaEventRecord");
    recorded_.store(true);
  }
  // cudaSuccess once the operation completed on the device; cudaErrorNotReady before, and also while the
  // operation is still being issued (an event never recorded would read as complete); else a CUDA error.
  cudaError_t query() const {
    if (!recorded_.load()) return cudaErrorNotReady;
    const cudaError_t e = cudaEventQuery(ev_);
    // "Not ready" is not an error, but the runtime keeps it as the thread's last error, which LibTorch's
    // next kernel-launch check would report as a failure of its own.
    if (e == cudaErrorNotReady) (void)cudaGetLastError();
    return e;
  }

 private:
  cudaEvent_t ev_{};
  std::atomic<bool> recorded_{false};
};

struct InFlight {
  std::shared_ptr<Event> done;
  Clock::time_point issued;
  NcclOpInfo info;
};

// The operations issued and not known to have completed, oldest first (one stream: they complete in
// order). Filled by the issuing threads, read by the watchdog.
class OpsInFlight {
 public:
  void add(InFlight op) {
    std::lock_guard<std::mutex> lock(mu_);
    drop_completed();
    ops_.push_back(std::move(op));
  }
  // The oldest unfinished operation, if any; a CUDA error seen while polling goes to *cuda_error.
  std::optional<InFlight> oldest_unfinished(std::string* cuda_error) {
    std::lock_guard<std::mutex> lock(mu_);
    const cudaError_t e = drop_completed();
    if (e != cudaSuccess && e != cudaErrorNotReady) *cuda_error = std::string("CUDA error: ") + cudaGetErrorString(e);
    if (ops_.empty()) return std::nullopt;
    return ops_.front();
  }

 private:
  std::mutex mu_;
  std::deque<InFlight> ops_;
  cudaError_t drop_completed() {
    while (!ops_.empty()) {
      const cudaError_t e = ops_.front().done->query();
      if (e != cudaSuccess) return e;
      ops_.pop_front();
    }
    return cudaSuccess;
  }
};

class Nccl;

// A started NCCL operation: its done event and the tensors it reads and writes, kept alive until the
// compute stream is ordered after it (wait) or it completed (done).
class NcclPending final : public Pending {
 public:
  NcclPending(Nccl& b, std::shared_ptr<Event> done, std::vector<at::Tensor> keep, NcclOpInfo info, double* blocked,
              bool* abandoned)
      : backend_(b), done_(std::move(done)), keep_(std::move(keep)), info_(std::move(info)), blocked_(blocked),
        abandoned_(abandoned) {}
  ~NcclPending() override {
    if (!done_) return;
    // Unwinding: the compute stream may never get past this operation (a peer is gone); nothing here
    // waits on the host anyway, but the buffers must outlive whatever NCCL still does with them.
    if (std::uncaught_exceptions() > 0) {
      abandon();
      return;
    }
    try {
      wait();  // orders the compute stream after it: host-side this returns at once
    } catch (...) {
      abandon();  // cannot throw here; the state is unknown
    }
  }
  bool done() override;
  void wait() override;
  void abandon() noexcept override {
    if (!done_) return;
    // NCCL may still read or write these buffers: keep them for the rest of the process (which is about
    // to abort) rather than hand them back to the caching allocator under a running kernel.
    new std::vector<at::Tensor>(std::move(keep_));  // NOLINT: deliberate leak
    new std::shared_ptr<Event>(std::move(done_));   // NOLINT: and the event the stream may still record
    if (abandoned_) *abandoned_ = true;
  }

 private:
  Nccl& backend_;
  std::shared_ptr<Event> done_;
  std::vector<at::Tensor> keep_;
  NcclOpInfo info_;
  double* blocked_;
  bool* abandoned_;
  void release() {
    done_.reset();
    keep_.clear();
  }
};

class Nccl final : public NcclBackend {
 public:
  Nccl(const MpiRuntime& rt, int device, bool* abandoned, double init_timeout_s)
      : rt_(rt), device_(device), rank_(rt.rank()), world_(rt.world()), abandoned_(abandoned) {
    // The calling (main) thread computes on this GPU from now on.
    cuda_check(cudaSetDevice(device), "cudaSetDevice");
    int least = 0, greatest = 0;
    cuda_check(cudaDeviceGetStreamPriorityRange(&least, &greatest), "cudaDeviceGetStreamPriorityRange");
    // Non-blocking: no implicit synchronization with the legacy default stream; highest priority: a
    // gradient bucket's kernels are scheduled before compute kernels queued at the same time.
    cuda_check(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, greatest), "cudaStreamCreateWithPriority");
    cuda_check(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming), "cudaEventCreateWithFlags");

    ncclUniqueId id{};
    if (rank_ == 0) {
      const ncclResult_t r = ncclGetUniqueId(&id);
      ST_CHECK(r == ncclSuccess, nccl_failure_message(rank_, {"GetUniqueId", -1, ""}, ncclGetErrorString(r)),
               "NCCL_SOCKET_IFNAME may have to name this node's network interface; NCCL_DEBUG=INFO shows why");
    }
    if (rt.active()) {
      const WatchedOp watch("MPI_Bcast of the NCCL unique id");
      ST_CHECK(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD) == MPI_SUCCESS,
               "rank " + std::to_string(rank_) + ": MPI_Bcast of the NCCL unique id failed", kPeerHint);
    }
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;  // every call returns; this thread polls the state with a deadline
    const NcclOpInfo info{"CommInitRank (" + std::to_string(world_) + " ranks, CUDA device " + std::to_string(device) + ")", -1, ""};
    ncclResult_t r = ncclCommInitRankConfig(&comm_, world_, id, rank_, &config);
    const auto t0 = Clock::now();
    while (r == ncclInProgress) {
      if (init_timeout_s > 0 && seconds_since(t0) >= init_timeout_s) {
        ncclCommAbort(comm_);
        comm_ = nullptr;
        ST_FAIL(nccl_timeout_message(rank_, info, seconds_since(t0)),
                "a rank did not join the NCCL communicator: it failed, or cannot reach this node (check NCCL_SOCKET_IFNAME "
                "and the network between the nodes; NCCL_DEBUG=INFO); --collective-timeout sets the limit");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      r = state();
    }
    if (r != ncclSuccess) {
      const std::string why = reason(r);
      if (comm_) ncclCommAbort(comm_);
      comm_ = nullptr;
      ST_FAIL(nccl_failure_message(rank_, info, why), kPeerHint);
    }
    watchdog_ = std::thread([this] { watch(); });
  }

  ~Nccl() override {
    {
      std::lock_guard<std::mutex> lock(stop_mu_);
      stop_ = true;
    }
    stop_cv_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
    if (!comm_) return;
    // On the way to an abort (an error unwinds, a collective was abandoned, NCCL failed) nothing may
    // block: the communicator is left to the process's end (MPI_Abort follows).
    if (failed_.load() || ending_.load() || (abandoned_ && *abandoned_) || std::uncaught_exceptions() > 0) return;
    // A normal end: flush what was issued, bounded by --collective-timeout, then free.
    ncclResult_t r = ncclCommFinalize(comm_);
    const auto t0 = Clock::now();
    const double limit = collective_timeout_s();
    while (r == ncclInProgress && !(limit > 0 && seconds_since(t0) >= limit)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      r = state();
    }
    if (r != ncclSuccess) {
      std::fprintf(stderr, "shardtune: %s\n",
                   (r == ncclInProgress ? nccl_timeout_message(rank_, {"CommFinalize", -1, ""}, seconds_since(t0))
                                        : nccl_failure_message(rank_, {"CommFinalize", -1, ""}, reason(r))).c_str());
      ncclCommAbort(comm_);
    } else {
      ncclCommDestroy(comm_);
    }
    cudaEventDestroy(ready_);
    cudaStreamDestroy(stream_);
  }

  std::unique_ptr<Pending> all_reduce_sum(at::Tensor t, double* blocked) override {
    NcclOpInfo info = describe("AllReduce", t);
    const ncclDataType_t type = nccl_type(t.scalar_type());
    auto done = issue(info, {t}, [&](cudaStream_t s) {
      return ncclAllReduce(t.data_ptr(), t.data_ptr(), size_t(t.numel()), type, ncclSum, comm_, s);
    });
    return pending(std::move(done), {t}, std::move(info), blocked);
  }

  std::unique_ptr<Pending> reduce_scatter_sum(at::Tensor in, at::Tensor out, double* blocked) override {
    NcclOpInfo info = describe("ReduceScatter", out);
    describe("ReduceScatter", in);
    const ncclDataType_t type = nccl_type(in.scalar_type());
    auto done = issue(info, {in, out}, [&](cudaStream_t s) {
      return ncclReduceScatter(in.data_ptr(), out.data_ptr(), size_t(out.numel()), type, ncclSum, comm_, s);
    });
    return pending(std::move(done), {in, out}, std::move(info), blocked);
  }

  std::unique_ptr<Pending> all_gather(at::Tensor in, at::Tensor out, double* blocked) override {
    NcclOpInfo info = describe("AllGather", in);
    describe("AllGather", out);
    const ncclDataType_t type = nccl_type(in.scalar_type());
    auto done = issue(info, {in, out}, [&](cudaStream_t s) {
      return ncclAllGather(in.data_ptr(), out.data_ptr(), size_t(in.numel()), type, comm_, s);
    });
    return pending(std::move(done), {in, out}, std::move(info), blocked);
  }

  void broadcast(at::Tensor& t, int root, double* blocked) override {
    NcclOpInfo info = describe("Broadcast (root " + std::to_string(root) + ")", t);
    const ncclDataType_t type = nccl_type(t.scalar_type());
    auto done = issue(info, {t}, [&](cudaStream_t s) {
      return ncclBroadcast(t.data_ptr(), t.data_ptr(), size_t(t.numel()), type, root, comm_, s);
    });
    pending(std::move(done), {t}, std::move(info), blocked)->wait();
  }

  std::unique_ptr<Pending> all_to_all(at::Tensor in, at::Tensor out, double* blocked) override {
    NcclOpInfo info = describe("AllToAll (grouped Send/Recv)", in);
    describe("AllToAll (grouped Send/Recv)", out);
    const size_t chunk = size_t(in.numel()) / size_t(world_), bytes = chunk * in.element_size();
    const ncclDataType_t type = nccl_type(in.scalar_type());
    auto done = issue(info, {in, out}, [&](cudaStream_t s) {
      ncclResult_t r = ncclGroupStart();
      for (int peer = 0; peer < world_ && (r == ncclSuccess || r == ncclInProgress); ++peer) {
        r = ncclSend(static_cast<char*>(in.data_ptr()) + peer * bytes, chunk, type, peer, comm_, s);
        if (r == ncclSuccess || r == ncclInProgress)
          r = ncclRecv(static_cast<char*>(out.data_ptr()) + peer * bytes, chunk, type, peer, comm_, s);
      }
      const ncclResult_t end = ncclGroupEnd();  // always closes the group, even after a failed call in it
      return r == ncclSuccess || r == ncclInProgress ? end : r;
    });
    return pending(std::move(done), {in, out}, std::move(info), blocked);
  }

  // The stream the calling thread computes on: LibTorch's current stream for the device, or the legacy
  // default stream (what LibTorch uses unless told otherwise) where LibTorch's CUDA API is not available.
  cudaStream_t compute_stream() const {
#ifdef SHARDTUNE_TORCH_CUDA
    return c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device_)).stream();
#else
    return cudaStreamLegacy;
#endif
  }

  // Makes the calling thread's compute stream wait for `done` (the host does not).
  void order_compute_after(const Event& done) {
    DeviceGuard guard(device_);
    cuda_check(cudaStreamWaitEvent(compute_stream(), done.get(), 0), "cudaStreamWaitEvent");
  }

  int rank() const { return rank_; }
  bool failed() const { return failed_.load(); }

 private:
  const MpiRuntime& rt_;
  const int device_, rank_, world_;
  bool* abandoned_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_{};  // the communication stream
  cudaEvent_t ready_{};    // recorded on the compute stream before each operation (re-recorded each time)
  OpsInFlight ops_;
  std::mutex issue_mu_;
  std::atomic<bool> failed_{false};  // an issuing thread saw an error (its exception reports it)
  std::atomic<bool> ending_{false};  // the watchdog is ending the job: the communicator is its alone
  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  bool stop_ = false;
  std::thread watchdog_;

  NcclOpInfo describe(std::string op, const at::Tensor& t) const {
    ST_CHECK(t.is_cuda() && t.get_device() == device_,
             "rank " + std::to_string(rank_) + ": NCCL " + op + " on a tensor on " + t.device().str() +
                 ", but this rank's NCCL communicator is on cuda:" + std::to_string(device_),
             "every CUDA tensor a rank communicates must live on the rank's own GPU (--device cuda picks it)");
    return {std::move(op), t.numel(), dtype_name(t.scalar_type())};
  }

  // The communicator's state: ncclSuccess, ncclInProgress (a non-blocking call still running) or an error.
  ncclResult_t state() const {
    ncclResult_t st = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm_, &st);
    return r != ncclSuccess ? r : st;
  }

  std::string reason(ncclResult_t r) const {
    std::string s = ncclGetErrorString(r);
    const char* last = ncclGetLastError(comm_);
    if (last && *last) s += std::string(" (") + last + ")";
    return s;
  }

  // Issues one operation: the communication stream waits for the compute stream's work so far (an event,
  // no host synchronization), `call` enqueues the NCCL operation on it, and its done event is recorded.
  // A non-blocking communicator may answer ncclInProgress while it sets up connections: this thread polls
  // until the operation is enqueued; the watchdog bounds that time like the operation's own.
  template <class Call>
  std::shared_ptr<Event> issue(const NcclOpInfo& info, const std::vector<at::Tensor>& tensors, Call&& call) {
    ST_CHECK(!failed_.load() && !ending_.load(), nccl_op_label(rank_, info) + ": the NCCL communicator failed earlier",
             kPeerHint);
    // One issuer at a time (the main thread, or autograd's device thread while the main one is in
    // backward): every rank must enqueue its operations in the same order, and ready_ is shared.
    std::lock_guard<std::mutex> issuing(issue_mu_);
    DeviceGuard guard(device_);
    cuda_check(cudaEventRecord(ready_, compute_stream()), "cudaEventRecord");
    cuda_check(cudaStreamWaitEvent(stream_, ready_, 0), "cudaStreamWaitEvent");
#ifdef SHARDTUNE_TORCH_CUDA
    // The caching allocator reuses a freed block for the stream that allocated it: tell it that the
    // communication stream uses these blocks too, so that a tensor freed in an unforeseen order (the
    // Pending keeps them until the compute stream is ordered after the operation) is not reused under
    // a running NCCL kernel. Blocks not from the allocator are skipped by it.
    const auto comm_stream = c10::cuda::getStreamFromExternal(stream_, static_cast<c10::DeviceIndex>(device_));
    for (const auto& t : tensors) c10::cuda::CUDACachingAllocator::recordStream(t.storage().data_ptr(), comm_stream);
#else
    (void)tensors;
#endif
    auto done = std::make_shared<Event>();
    ops_.add({done, Clock::now(), info});  // counted from now: a hang while enqueueing is a hang too
    ncclResult_t r = call(stream_);
    while (r == ncclInProgress) {
      while (ending_.load()) std::this_thread::sleep_for(std::chrono::seconds(1));  // the watchdog ends the job
      std::this_thread::sleep_for(std::chrono::microseconds(50));
      r = state();
    }
    if (r != ncclSuccess) {
      failed_.store(true);
      ST_FAIL(nccl_failure_message(rank_, info, reason(r)), kPeerHint);
    }
    done->record(stream_);
    return done;
  }

  std::unique_ptr<Pending> pending(std::shared_ptr<Event> done, std::vector<at::Tensor> keep, NcclOpInfo info,
                                   double* blocked) {
    return std::make_unique<NcclPending>(*this, std::move(done), std::move(keep), std::move(info), blocked, abandoned_);
  }

  // The watchdog: polls the communicator's asynchronous error and the age of the oldest unfinished
  // operation; an error, or an operation older than --collective-timeout, ends the job.
  void watch() {
    (void)cudaSetDevice(device_);  // events and NCCL state of this device
    for (;;) {
      const double limit = collective_timeout_s();
      {
        std::unique_lock<std::mutex> lock(stop_mu_);
        const auto period = std::chrono::duration<double>(watch_period_s(limit));
        if (stop_cv_.wait_for(lock, period, [this] { return stop_; })) return;
      }
      if (failed_.load()) continue;  // the issuing thread's exception reports it and ends the job
      const ncclResult_t st = state();
      std::string cuda_error;
      const std::optional<InFlight> oldest = ops_.oldest_unfinished(&cuda_error);
      const bool error = (st != ncclSuccess && st != ncclInProgress) || !cuda_error.empty();
      const double age = oldest ? seconds_since(oldest->issued) : -1;
      const NcclOpInfo what = oldest ? oldest->info : NcclOpInfo{"communicator (no operation in flight)", -1, ""};
      switch (watch_verdict(error, age, limit)) {
        case WatchVerdict::Ok:
          break;
        case WatchVerdict::Failed:
          end_job(nccl_failure_message(rank_, what, cuda_error.empty() ? reason(st) : cuda_error), kPeerHint, 1);
        case WatchVerdict::TimedOut:
          end_job(nccl_timeout_message(rank_, what, age),
                  "another rank died or hangs (or this GPU is stuck); the job ends now instead of holding its "
                  "allocation (--collective-timeout sets the limit)",
                  kCollectiveTimeoutExit);
      }
    }
  }

  // Called on the watchdog thread: report, abort the communicator (its kernels stop spinning), end the job.
  [[noreturn]] void end_job(const std::string& message, const char* hint, int code) {
    ending_.store(true);
    std::fprintf(stderr, "shardtune: %s; ending the job (exit %d)\n  ---> HINT: %s\n", message.c_str(), code, hint);
    std::fflush(stderr);
    std::fflush(stdout);
    // Backstop: should ncclCommAbort or MPI_Abort not return, this rank still ends in bounded time (and
    // the launcher then ends the others).
    std::thread([code] {
      std::this_thread::sleep_for(std::chrono::seconds(30));
      ::_exit(code);
    }).detach();
    ncclCommAbort(comm_);
    // MPI_Abort from this thread: under MPI_THREAD_FUNNELED only the main thread should call MPI, but the
    // main thread may be blocked for good behind the failed operation; Open MPI and MPICH abort from any
    // thread, and the backstop above covers one that does not.
    if (rt_.active()) rt_.abort(code);
    ::_exit(code);
  }
};

bool NcclPending::done() {
  if (!done_) return true;
  const cudaError_t e = done_->query();
  if (e == cudaErrorNotReady) return false;
  if (e != cudaSuccess) {
    abandon();
    ST_FAIL(nccl_failure_message(backend_.rank(), info_, std::string("CUDA error: ") + cudaGetErrorString(e)), kPeerHint);
  }
  release();  // completed on the device: the buffers may go back to the allocator
  return true;
}

void NcclPending::wait() {
  if (!done_) return;
  const auto t0 = Clock::now();
  try {
    backend_.order_compute_after(*done_);
  } catch (...) {
    abandon();
    throw;
  }
  // Host time only (next to nothing): the compute stream, not the host, waits for the operation.
  if (blocked_) *blocked_ += seconds_since(t0);
  release();
}

}  // namespace

bool nccl_available() { return true; }

std::string nccl_build_info() {
  return "NCCL " + std::to_string(NCCL_MAJOR) + "." + std::to_string(NCCL_MINOR) + "." + std::to_string(NCCL_PATCH) +
         ", CUDA runtime " + std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10);
}

std::unique_ptr<NcclBackend> make_nccl_backend(const MpiRuntime& rt, int cuda_device, bool* abandoned,
                                               double init_timeout_s) {
  return std::make_unique<Nccl>(rt, cuda_device, abandoned, init_timeout_s);
}

}  // namespace shardtune::dist
