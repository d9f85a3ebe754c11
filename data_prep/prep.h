// shardtune-prep's job as a function: options in, shard folder out (see docs/FORMAT.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace shardtune::dist {
class MpiRuntime;
}

namespace shardtune::prep {

enum class Overlong { Truncate, Drop, Split };

struct PrepOptions {
  std::vector<std::string> inputs;
  std::string output;
  std::string tokenizer;
  std::string format = "auto";
  std::string template_spec = "alpaca";
  int64_t max_seq_len = 2048;
  std::string overlong = "truncate";  // truncate | drop | split (split: text only)
  double val_fraction = 0.0;
  uint64_t seed = 1234;
  int64_t shard_tokens = 16 * 1024 * 1024;
  bool skip_invalid = false;
  int threads = 0;  // 0 = the CPUs of this rank's affinity mask
  bool quiet = false;

  void validate() const;  // throws Error naming the bad option
};

// Runs prep on every rank of `rt` (world 1 without MPI). Returns 0, or throws on this rank's error.
// All ranks return together; a data error on any rank makes every rank fail (exit code 1).
int run_prep(const PrepOptions& opt, const dist::MpiRuntime& rt);

}  // namespace shardtune::prep
