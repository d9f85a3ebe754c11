// Rank-aware logging and progress lines.
#include "shardtune/core/log.h"

#include <unistd.h>

#include <cstdio>

namespace shardtune::log {
namespace {
int g_rank = 0;
int g_world = 1;
}  // namespace

void set_rank(int r, int w) {
  g_rank = r;
  g_world = w;
}
int rank() { return g_rank; }
int world() { return g_world; }

void info(const std::string& line) {
  if (g_rank != 0) return;
  std::fprintf(stdout, "%s\n", line.c_str());
  std::fflush(stdout);
}

void warn(const std::string& line) {
  if (g_world > 1)
    std::fprintf(stderr, "[rank %d] warning: %s\n", g_rank, line.c_str());
  else
    std::fprintf(stderr, "warning: %s\n", line.c_str());
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (b >= 1000.0 && u < 4) {
    b /= 1000.0;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", b, units[u]);
  return buf;
}

std::string human_duration(double s) {
  char buf[32];
  if (s < 0 || s > 1e7) return "?";
  int t = static_cast<int>(s + 0.5);
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%dh%02dm", t / 3600, (t / 60) % 60);
  else
    std::snprintf(buf, sizeof buf, "%dm%02ds", t / 60, t % 60);
  return buf;
}

Progress::Progress(std::string label, uint64_t total, std::string unit, double plain_every_s)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      total_(total),
      tty_(isatty(fileno(stderr)) != 0),
      plain_every_s_(plain_every_s),
      start_(std::chrono::steady_clock::now()),
      last_(start_) {}

void Progress::update(uint64_t done) {
  done_ = done;
  auto now = std::chrono::steady_clock::now();
  double since = std::chrono::duration<double>(now - last_).count();
  if (since < (tty_ ? 0.1 : plain_every_s_)) return;
  last_ = now;
  print(false);
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  done_ = total_ > done_ ? done_ : total_;
  print(true);
}

void Progress::print(bool final) {
  if (g_rank != 0) return;
  double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  double rate = el > 0 ? done_ / el : 0;
  double pct = total_ ? 100.0 * done_ / total_ : 100.0;
  std::string rate_s = unit_ == "B" ? human_bytes(rate) + "/s" : std::to_string(static_cast<long long>(rate)) + " " + unit_ + "/s";
  std::string eta = rate > 0 && total_ > done_ ? human_duration((total_ - done_) / rate) : "0m00s";
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s: %5.1f%%  %s  ETA %s  elapsed %s", label_.c_str(), pct, rate_s.c_str(),
                final ? "done" : eta.c_str(), human_duration(el).c_str());
  if (tty_)
    std::fprintf(stderr, "\r\033[K%s%s", buf, final ? "\n" : "");
  else
    std::fprintf(stderr, "%s\n", buf);
  std::fflush(stderr);
}

}  // namespace shardtune::log
