// Logging: rank-0 info lines, rank-tagged warnings, and a progress line (redrawn on a TTY, plain lines otherwise).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace shardtune::log {

// Set once by the program after it knows its rank (dist/ or prep's MPI init); default rank 0 of 1.
void set_rank(int rank, int world);
int rank();
int world();

void info(const std::string& line);  // rank 0 only
void warn(const std::string& line);  // every rank, tagged "[rank r]" when world > 1

// Progress over a known total (bytes, samples, steps). Only rank 0 prints. On a TTY it redraws one
// line with rate and ETA at most 10x/s; otherwise it prints a plain line every `plain_every_s` seconds.
class Progress {
 public:
  Progress(std::string label, uint64_t total, std::string unit, double plain_every_s = 10.0);
  void update(uint64_t done);
  void finish();

 private:
  void print(bool final);
  std::string label_, unit_;
  uint64_t total_, done_ = 0;
  bool tty_, finished_ = false;
  double plain_every_s_;
  std::chrono::steady_clock::time_point start_, last_;
};

std::string human_bytes(double bytes);
std::string human_duration(double seconds);

}  // namespace shardtune::log
