// Stand-in when shardtune is built without CUDA/NCCL: CUDA tensors cannot be communicated.
#include "nccl_backend.h"
#include "shardtune/core/error.h"

namespace shardtune::dist {
bool nccl_available() { return false; }
std::string nccl_build_info() { return {}; }
std::unique_ptr<NcclBackend> make_nccl_backend(const MpiRuntime&, int, bool*, double) {
  ST_FAIL("this shardtune was built without the NCCL backend, so CUDA tensors cannot be communicated",
          "rebuild with CUDA and NCCL available (-DSHARDTUNE_WITH_CUDA=ON, NCCL_HOME=...) or train on CPU");
}
}  // namespace shardtune::dist
