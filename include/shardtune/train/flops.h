// Model FLOPs per trained token: the one definition behind the trainer's mfu and the flops_per_token it
// writes to its metrics (tools/bench/train_report.py reads that field instead of recomputing it).
#pragma once

#include <cstdint>

#include "shardtune/model/model.h"

namespace shardtune::train {

// 6 FLOPs per matmul parameter and token (forward 2, backward 4) plus attention, 12 * L * C * T for rows
// of T tokens. Embedding lookups are no matmuls: the input embedding counts only when it is tied to the
// output head, learned positions never. `trained_params` is the number of parameters the step updates.
// With LoRA the frozen base counts 4 per parameter (no weight gradient) and the adapters 6.
double flops_per_token(const model::CausalLM& model, int64_t trained_params, int64_t row_len);

}  // namespace shardtune::train
