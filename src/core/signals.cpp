// Stop-signal handlers: only async-signal-safe work inside the handler (write(2) of a preformatted
// prefix and hand-formatted numbers, lock-free atomics); everything else happens between steps.
#include "shardtune/core/signals.h"

#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>
#include <string>

namespace shardtune::signals {
namespace {

static_assert(std::atomic<int64_t>::is_always_lock_free, "signal handler needs lock-free 64-bit atomics");
std::atomic<int> g_signal{0};
std::atomic<int64_t> g_step{0}, g_total{0};
char g_prefix[128] = "";  // "shardtune [rank 1]: "
char g_note[256] = "";

void put(const char* s) {
  size_t n = std::strlen(s);
  while (n > 0) {
    ssize_t w = ::write(STDERR_FILENO, s, n);
    if (w <= 0) return;
    s += w;
    n -= static_cast<size_t>(w);
  }
}

void put_int(int64_t v) {
  char buf[24];
  int i = sizeof buf - 1;
  buf[i] = '\0';
  const bool neg = v < 0;
  uint64_t u = neg ? 0 - static_cast<uint64_t>(v) : static_cast<uint64_t>(v);
  do {
    buf[--i] = static_cast<char>('0' + u % 10);
    u /= 10;
  } while (u > 0 && i > 1);
  if (neg) buf[--i] = '-';
  put(buf + i);
}

void on_signal(int signo) {
  int expected = 0;
  g_signal.compare_exchange_strong(expected, signo);
  put(g_prefix);
  put("received ");
  put(name(signo));
  const int64_t total = g_total.load();
  if (total > 0) {
    put(" at step ");
    put_int(g_step.load());
    put(" of ");
    put_int(total);
  } else {
    put(" before training started");
  }
  put("; stopping; ");
  put(g_note);
  put("\n");
}

}  // namespace

const char* name(int signo) {
  switch (signo) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGUSR1: return "SIGUSR1";
    default: return "a signal";
  }
}

void install_stop_handlers(const char* program, int rank, int world, const char* note) {
  std::string prefix = std::string(program) + (world > 1 ? " [rank " + std::to_string(rank) + "]" : "") + ": ";
  std::strncpy(g_prefix, prefix.c_str(), sizeof g_prefix - 1);
  std::strncpy(g_note, note, sizeof g_note - 1);
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESETHAND | SA_RESTART;  // a second signal: the default action (end now)
  for (int s : {SIGTERM, SIGINT, SIGUSR1}) sigaction(s, &sa, nullptr);
}

void set_progress(int64_t step, int64_t total) {
  g_step.store(step);
  g_total.store(total);
}

int received() { return g_signal.load(); }

void quiet() {
  for (int s : {SIGTERM, SIGINT, SIGUSR1}) std::signal(s, SIG_DFL);
}

}  // namespace shardtune::signals
