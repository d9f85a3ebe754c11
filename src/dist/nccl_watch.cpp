// The NCCL watchdog's pure decisions and messages (see dist/nccl_watch.h).
#include "shardtune/dist/nccl_watch.h"

#include <algorithm>
#include <cmath>

namespace shardtune::dist {

WatchVerdict watch_verdict(bool async_error, double oldest_age_s, double limit_s) {
  if (async_error) return WatchVerdict::Failed;
  if (limit_s > 0 && oldest_age_s >= limit_s) return WatchVerdict::TimedOut;
  return WatchVerdict::Ok;
}

std::string nccl_op_label(int rank, const NcclOpInfo& op) {
  std::string s = "rank " + std::to_string(rank) + ": NCCL " + (op.op.empty() ? std::string("operation") : op.op);
  if (op.count >= 0) s += " (" + std::to_string(op.count) + " elements, " + (op.dtype.empty() ? "?" : op.dtype) + ")";
  return s;
}

std::string nccl_failure_message(int rank, const NcclOpInfo& op, const std::string& reason) {
  return nccl_op_label(rank, op) + " failed: " + (reason.empty() ? std::string("unknown error") : reason);
}

std::string nccl_timeout_message(int rank, const NcclOpInfo& op, double seconds) {
  // Whole seconds: the limit is given in seconds and the watchdog looks at most once a second.
  return nccl_op_label(rank, op) + " timed out after " + std::to_string(static_cast<long long>(std::floor(seconds))) + " s";
}

double watch_period_s(double limit_s) {
  if (!(limit_s > 0)) return 1.0;
  return std::clamp(limit_s / 4, 0.1, 1.0);
}

}  // namespace shardtune::dist
