// --collective-timeout: a rank whose collective has not completed after the limit (a peer died or hangs:
// SIGSTOP, a stuck file system, a lost node) says which operation on which rank, and ends its process, so
// the job fails in bounded time instead of holding the allocation until its time limit. Every blocking MPI
// call of dist/ is watched; only the outermost counts.
#pragma once

namespace shardtune::dist {

// Exit status of a rank the watchdog ended (docs/CHECKPOINTS.md lists the exit codes).
constexpr int kCollectiveTimeoutExit = 124;

// Starts the watchdog thread (once; later calls change the limit). 0 seconds: off.
void start_watchdog(double timeout_s, int rank);

// The limit start_watchdog set, in seconds (0: off, or not started yet). The NCCL backend's own watchdog
// (one thread per NCCL communicator, nccl_backend.cpp) applies it to the operations on the GPU.
double collective_timeout_s();

// RAII: marks a blocking collective in progress on this rank.
class WatchedOp {
 public:
  explicit WatchedOp(const char* what);
  ~WatchedOp();
  WatchedOp(const WatchedOp&) = delete;
  WatchedOp& operator=(const WatchedOp&) = delete;
};

}  // namespace shardtune::dist
