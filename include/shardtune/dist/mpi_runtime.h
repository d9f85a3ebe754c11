// The MPI process runtime (init/finalize, rank, world, small host-side collectives). Torch-free, so
// shardtune-prep can use it; the trainer's tensor collectives build on it. Only dist/ includes <mpi.h>.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace shardtune::dist {

// True when this process was started by an MPI launcher (mpirun/mpiexec/srun --mpi=pmix).
bool launched_by_mpi();

// Initializes MPI when launched by an MPI launcher, otherwise runs as rank 0 of 1 without MPI.
// Finalizes on destruction. Copying is deleted: there is one runtime per process.
class MpiRuntime {
 public:
  MpiRuntime(int* argc, char*** argv);
  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;

  int rank() const { return rank_; }
  int world() const { return world_; }
  bool active() const { return active_; }

  void barrier() const;
  std::vector<int64_t> allgather(int64_t value) const;
  int64_t allreduce_sum(int64_t value) const;
  int64_t allreduce_max(int64_t value) const;
  std::vector<std::string> allgather(const std::string& value) const;
  std::string broadcast(const std::string& value, int root = 0) const;

  // Ends every rank of the job now (after the caller printed its message). Never returns.
  [[noreturn]] void abort(int code) const;

 private:
  int rank_ = 0, world_ = 1;
  bool active_ = false;
};

}  // namespace shardtune::dist
