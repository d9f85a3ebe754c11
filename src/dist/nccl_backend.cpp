// NCCL backend: one communicator over all ranks, ops on the legacy default CUDA stream (the stream
// LibTorch uses unless told otherwise), completion tracked with CUDA events.
#include "nccl_backend.h"

#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <chrono>

#include "shardtune/core/error.h"

namespace shardtune::dist {
namespace {

void cuda_check(cudaError_t e, const char* what) {
  ST_CHECK(e == cudaSuccess, std::string(what) + " failed: " + cudaGetErrorString(e),
           "check CUDA_VISIBLE_DEVICES and that every rank sees a GPU");
}
void nccl_check(ncclResult_t r, const char* what) {
  ST_CHECK(r == ncclSuccess, std::string(what) + " failed: " + ncclGetErrorString(r),
           "set NCCL_DEBUG=INFO for details; another rank may have failed first");
}

ncclDataType_t nccl_type(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return ncclFloat32;
    case at::kDouble: return ncclFloat64;
    case at::kLong: return ncclInt64;
    case at::kInt: return ncclInt32;
    case at::kByte: return ncclUint8;
    case at::kHalf: return ncclFloat16;
    case at::kBFloat16: return ncclBfloat16;
    default: ST_FAIL(std::string("unsupported dtype for NCCL: ") + c10::toString(t.scalar_type()));
  }
}

class EventPending : public Pending {
 public:
  EventPending(std::vector<at::Tensor> keep, double* blocked) : keep_(std::move(keep)), blocked_(blocked) {
    cuda_check(cudaEventCreateWithFlags(&ev_, cudaEventDisableTiming), "cudaEventCreate");
    cuda_check(cudaEventRecord(ev_, nullptr), "cudaEventRecord");
  }
  ~EventPending() override {
    cudaEventSynchronize(ev_);
    cudaEventDestroy(ev_);
  }
  bool done() override { return cudaEventQuery(ev_) == cudaSuccess; }
  void wait() override {
    auto t0 = std::chrono::steady_clock::now();
    cuda_check(cudaEventSynchronize(ev_), "cudaEventSynchronize");
    *blocked_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

 private:
  std::vector<at::Tensor> keep_;
  double* blocked_;
  cudaEvent_t ev_{};
};

class Nccl : public NcclBackend {
 public:
  Nccl(const MpiRuntime& rt, int cuda_device) {
    cuda_check(cudaSetDevice(cuda_device), "cudaSetDevice");
    ncclUniqueId id;
    if (rt.rank() == 0) nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
    nccl_check(ncclCommInitRank(&comm_, rt.world(), id, rt.rank()), "ncclCommInitRank");
  }
  ~Nccl() override { ncclCommDestroy(comm_); }

  std::unique_ptr<Pending> all_reduce_sum(at::Tensor t, double* blocked) override {
    nccl_check(ncclAllReduce(t.data_ptr(), t.data_ptr(), t.numel(), nccl_type(t), ncclSum, comm_, nullptr), "ncclAllReduce");
    return std::make_unique<EventPending>(std::vector<at::Tensor>{t}, blocked);
  }
  std::unique_ptr<Pending> reduce_scatter_sum(at::Tensor in, at::Tensor out, double* blocked) override {
    nccl_check(ncclReduceScatter(in.data_ptr(), out.data_ptr(), out.numel(), nccl_type(in), ncclSum, comm_, nullptr),
               "ncclReduceScatter");
    return std::make_unique<EventPending>(std::vector<at::Tensor>{in, out}, blocked);
  }
  std::unique_ptr<Pending> all_gather(at::Tensor in, at::Tensor out, double* blocked) override {
    nccl_check(ncclAllGather(in.data_ptr(), out.data_ptr(), in.numel(), nccl_type(in), comm_, nullptr), "ncclAllGather");
    return std::make_unique<EventPending>(std::vector<at::Tensor>{in, out}, blocked);
  }
  void broadcast(at::Tensor& t, int root, double* blocked) override {
    nccl_check(ncclBroadcast(t.data_ptr(), t.data_ptr(), t.numel(), nccl_type(t), root, comm_, nullptr), "ncclBroadcast");
    EventPending(std::vector<at::Tensor>{t}, blocked).wait();
  }
  std::unique_ptr<Pending> all_to_all(at::Tensor in, at::Tensor out, double* blocked) override {
    int world = 0;
    nccl_check(ncclCommCount(comm_, &world), "ncclCommCount");
    const size_t chunk = size_t(in.numel()) / size_t(world), bytes = chunk * in.element_size();
    nccl_check(ncclGroupStart(), "ncclGroupStart");
    for (int peer = 0; peer < world; ++peer) {
      nccl_check(ncclSend(static_cast<char*>(in.data_ptr()) + peer * bytes, chunk, nccl_type(in), peer, comm_, nullptr), "ncclSend");
      nccl_check(ncclRecv(static_cast<char*>(out.data_ptr()) + peer * bytes, chunk, nccl_type(out), peer, comm_, nullptr), "ncclRecv");
    }
    nccl_check(ncclGroupEnd(), "ncclGroupEnd");
    return std::make_unique<EventPending>(std::vector<at::Tensor>{in, out}, blocked);
  }

 private:
  ncclComm_t comm_{};
};

}  // namespace

bool nccl_available() { return true; }
std::unique_ptr<NcclBackend> make_nccl_backend(const MpiRuntime& rt, int cuda_device) {
  return std::make_unique<Nccl>(rt, cuda_device);
}

}  // namespace shardtune::dist
