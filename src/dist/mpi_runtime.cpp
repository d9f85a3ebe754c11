// MPI runtime: the only place outside the trainer's communicator that includes <mpi.h>.
#include "shardtune/dist/mpi_runtime.h"

#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

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
void mpi_check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  ST_FAIL(std::string("MPI call ") + what + " failed: " + std::string(msg, len),
          "another rank probably failed first; see its message above");
}

const char* thread_level_name(int level) {
  if (level == MPI_THREAD_SINGLE) return "MPI_THREAD_SINGLE";
  if (level == MPI_THREAD_FUNNELED) return "MPI_THREAD_FUNNELED";
  if (level == MPI_THREAD_SERIALIZED) return "MPI_THREAD_SERIALIZED";
  if (level == MPI_THREAD_MULTIPLE) return "MPI_THREAD_MULTIPLE";
  return "an unknown thread level";
}

// Test hook: SHARDTUNE_TEST_MPI_THREAD_PROVIDED=single|funneled|serialized|multiple makes the runtime
// believe MPI provided that level (the failure path cannot be reached with a real Open MPI otherwise).
int provided_for_test(int provided) {
  const char* v = std::getenv("SHARDTUNE_TEST_MPI_THREAD_PROVIDED");
  if (!v) return provided;
  if (!std::strcmp(v, "single")) return MPI_THREAD_SINGLE;
  if (!std::strcmp(v, "funneled")) return MPI_THREAD_FUNNELED;
  if (!std::strcmp(v, "serialized")) return MPI_THREAD_SERIALIZED;
  if (!std::strcmp(v, "multiple")) return MPI_THREAD_MULTIPLE;
  return provided;
}

// The level we ask for: only the main thread calls MPI (the data prefetch thread does no MPI).
constexpr int kThreadLevel = MPI_THREAD_FUNNELED;
}  // namespace

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "MPI_LOCALNRANKS"})
    if (std::getenv(v)) return true;
  return false;
}

MpiRuntime::MpiRuntime(int* argc, char*** argv) {
  if (!launched_by_mpi()) return;
  int provided = 0;
  mpi_check(MPI_Init_thread(argc, argv, kThreadLevel, &provided), "MPI_Init_thread");
  active_ = true;
  // Errors return to the caller, so that mpi_check prints what failed and a hint (Open MPI's default
  // handler aborts the job with its own message first).
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  // The constructor runs before main's error handling: report here, then end the whole job.
  try {
    mpi_check(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
    mpi_check(MPI_Comm_size(MPI_COMM_WORLD, &world_), "MPI_Comm_size");
    provided = provided_for_test(provided);
    ST_CHECK(provided >= kThreadLevel,
             std::string("the MPI library provides only ") + thread_level_name(provided) + ", shardtune needs " +
                 thread_level_name(kThreadLevel) + " (MPI calls from the main thread while other threads run)",
             "use an MPI library built with thread support (Open MPI has it by default; MPICH: configure "
             "--enable-threads) and check that the environment does not cap the level (MPICH and Cray MPICH: "
             "MPICH_MAX_THREAD_SAFETY)");
  } catch (const std::exception& e) {
    const char* program = argc && *argc > 0 && argv && *argv && (*argv)[0] ? (*argv)[0] : "shardtune";
    if (const char* slash = std::strrchr(program, '/')) program = slash + 1;
    std::fprintf(stderr, "%s [rank %d]: %s\n", program, rank_, describe(e).c_str());
    std::fflush(stderr);
    abort(1);
  }
}

MpiRuntime::~MpiRuntime() {
  if (active_) MPI_Finalize();
}

void MpiRuntime::barrier() const {
  if (active_) watched_check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
}

std::vector<int64_t> MpiRuntime::allgather(int64_t value) const {
  std::vector<int64_t> out(world_, value);
  if (active_) watched_check(MPI_Allgather(&value, 1, MPI_INT64_T, out.data(), 1, MPI_INT64_T, MPI_COMM_WORLD), "MPI_Allgather");
  return out;
}

int64_t MpiRuntime::allreduce_sum(int64_t value) const {
  int64_t out = value;
  if (active_) watched_check(MPI_Allreduce(&value, &out, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
  return out;
}

int64_t MpiRuntime::allreduce_max(int64_t value) const {
  int64_t out = value;
  if (active_) watched_check(MPI_Allreduce(&value, &out, 1, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD), "MPI_Allreduce");
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
  watched_check(MPI_Allgatherv(value.data(), static_cast<int>(value.size()), MPI_CHAR, all.data(), lens.data(),
                           displs.data(), MPI_CHAR, MPI_COMM_WORLD), "MPI_Allgatherv");
  std::vector<std::string> out;
  for (int r = 0; r < world_; ++r) out.push_back(all.substr(displs[r], lens[r]));
  return out;
}

std::string MpiRuntime::broadcast(const std::string& value, int root) const {
  if (!active_) return value;
  int64_t n = static_cast<int64_t>(value.size());
  watched_check(MPI_Bcast(&n, 1, MPI_INT64_T, root, MPI_COMM_WORLD), "MPI_Bcast");
  std::string out = rank_ == root ? value : std::string(n, '\0');
  watched_check(MPI_Bcast(out.data(), static_cast<int>(n), MPI_CHAR, root, MPI_COMM_WORLD), "MPI_Bcast");
  return out;
}

void MpiRuntime::abort(int code) const {
  if (active_) MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);
}

}  // namespace shardtune::dist
