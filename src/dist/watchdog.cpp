// The collective watchdog (see dist/watchdog.h): one thread polling the start time of the blocking
// collective in progress; lock-free state, async-signal-free exit (_exit) when the limit passes.
#include "shardtune/dist/watchdog.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>

namespace shardtune::dist {

namespace {

std::atomic<int64_t> g_since_ms{0};  // 0: no collective in progress
std::atomic<const char*> g_what{nullptr};
std::atomic<int> g_depth{0};
std::atomic<int64_t> g_limit_ms{0};
std::atomic<bool> g_started{false};
int g_rank = 0;

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void watch() {
  for (;;) {
    const int64_t limit = g_limit_ms.load();
    std::this_thread::sleep_for(std::chrono::milliseconds(limit > 0 ? std::min<int64_t>(1000, limit / 4 + 1) : 1000));
    const int64_t since = g_since_ms.load();
    if (limit <= 0 || since == 0 || now_ms() - since < limit) continue;
    const char* what = g_what.load();
    std::fprintf(stderr,
                 "shardtune [rank %d]: %s has not completed after %.0f s: another rank died or hangs; ending this "
                 "rank (exit %d) so the job fails now instead of holding its allocation (--collective-timeout)\n",
                 g_rank, what ? what : "a collective", double(now_ms() - since) / 1000.0, kCollectiveTimeoutExit);
    std::fflush(stderr);
    std::fflush(stdout);
    ::_exit(kCollectiveTimeoutExit);
  }
}

}  // namespace

void start_watchdog(double timeout_s, int rank) {
  g_rank = rank;
  g_limit_ms.store(static_cast<int64_t>(timeout_s * 1000));
  if (timeout_s > 0 && !g_started.exchange(true)) std::thread(watch).detach();
}

double collective_timeout_s() { return double(g_limit_ms.load()) / 1000.0; }

WatchedOp::WatchedOp(const char* what) {
  if (g_depth.fetch_add(1) == 0) {
    g_what.store(what);
    g_since_ms.store(now_ms());
  }
}

WatchedOp::~WatchedOp() {
  if (g_depth.fetch_sub(1) == 1) g_since_ms.store(0);
}

}  // namespace shardtune::dist
