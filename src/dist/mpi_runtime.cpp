// MPI runtime: the only place outside the trainer's communicator that includes <mpi.h>.
#include "shardtune/dist/mpi_runtime.h"

#include <mpi.h>

#include <cstdlib>

#include "shardtune/core/error.h"

namespace shardtune::dist {
namespace {
void mpi_check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  ST_FAIL(std::string("MPI call ") + what + " failed: " + std::string(msg, len),
          "another rank probably failed first; see its message above");
}
}  // namespace

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "MPI_LOCALNRANKS"})
    if (std::getenv(v)) return true;
  return false;
}

MpiRuntime::MpiRuntime(int* argc, char*** argv) {
  if (!launched_by_mpi()) return;
  int provided = 0;
  mpi_check(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  active_ = true;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &world_);
}

MpiRuntime::~MpiRuntime() {
  if (active_) MPI_Finalize();
}

void MpiRuntime::barrier() const {
  if (active_) mpi_check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
}

std::vector<int64_t> MpiRuntime::allgather(int64_t value) const {
  std::vector<int64_t> out(world_, value);
  if (active_) mpi_check(MPI_Allgather(&value, 1, MPI_INT64_T, out.data(), 1, MPI_INT64_T, MPI_COMM_WORLD), "MPI_Allgather");
  return out;
}

int64_t MpiRuntime::allreduce_sum(int64_t value) const {
  int64_t out = value;
  if (active_) mpi_check(MPI_Allreduce(&value, &out, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
  return out;
}

int64_t MpiRuntime::allreduce_max(int64_t value) const {
  int64_t out = value;
  if (active_) mpi_check(MPI_Allreduce(&value, &out, 1, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD), "MPI_Allreduce");
  return out;
}

std::vector<std::string> MpiRuntime::allgather(const std::string& value) const {
  if (!active_) return {value};
  std::vector<int64_t> lens64 = allgather(static_cast<int64_t>(value.size()));
  std::vector<int> lens(world_), displs(world_);
  int total = 0;
  for (int r = 0; r < world_; ++r) {
    lens[r] = static_cast<int>(lens64[r]);
    displs[r] = total;
    total += lens[r];
  }
  std::string all(total, '\0');
  mpi_check(MPI_Allgatherv(value.data(), static_cast<int>(value.size()), MPI_CHAR, all.data(), lens.data(),
                           displs.data(), MPI_CHAR, MPI_COMM_WORLD), "MPI_Allgatherv");
  std::vector<std::string> out;
  for (int r = 0; r < world_; ++r) out.push_back(all.substr(displs[r], lens[r]));
  return out;
}

std::string MpiRuntime::broadcast(const std::string& value, int root) const {
  if (!active_) return value;
  int64_t n = static_cast<int64_t>(value.size());
  mpi_check(MPI_Bcast(&n, 1, MPI_INT64_T, root, MPI_COMM_WORLD), "MPI_Bcast");
  std::string out = rank_ == root ? value : std::string(n, '\0');
  mpi_check(MPI_Bcast(out.data(), static_cast<int>(n), MPI_CHAR, root, MPI_COMM_WORLD), "MPI_Bcast");
  return out;
}

void MpiRuntime::abort(int code) const {
  if (active_) MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);
}

}  // namespace shardtune::dist
