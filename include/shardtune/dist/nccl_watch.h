// The NCCL watchdog's decisions and messages as pure functions (no CUDA, no NCCL), so that they are
// unit-tested on machines without a GPU: when a communicator's state or its oldest unfinished operation
// ends the job, and what the rank prints when it does (nccl_backend.cpp runs them on its watchdog thread).
#pragma once

#include <cstdint>
#include <string>

namespace shardtune::dist {

// What an NCCL operation was, for messages: "AllReduce", 4097 elements, "float32". count < 0: an
// operation without an element count (communicator creation, finalize).
struct NcclOpInfo {
  std::string op;
  int64_t count = -1;
  std::string dtype;
};

enum class WatchVerdict { Ok, Failed, TimedOut };

// `async_error`: ncclCommGetAsyncError reported an error (neither ncclSuccess nor ncclInProgress).
// `oldest_age_s`: seconds since the oldest unfinished operation was issued (< 0: none in flight).
// `limit_s`: --collective-timeout (0: no limit). An error wins over a timeout.
WatchVerdict watch_verdict(bool async_error, double oldest_age_s, double limit_s);

// "rank 3: NCCL AllReduce (4097 elements, float32)"; without a count: "rank 3: NCCL CommInitRank".
std::string nccl_op_label(int rank, const NcclOpInfo& op);
// "<label> failed: <reason>"
std::string nccl_failure_message(int rank, const NcclOpInfo& op, const std::string& reason);
// "<label> timed out after 300 s"
std::string nccl_timeout_message(int rank, const NcclOpInfo& op, double seconds);

// How long the watchdog sleeps between two looks: a quarter of the limit, between 0.1 s and 1 s (async
// errors are looked for even without a limit).
double watch_period_s(double limit_s);

}  // namespace shardtune::dist
