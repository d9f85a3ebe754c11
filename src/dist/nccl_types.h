// at::ScalarType -> NCCL data type, and the dtype names the NCCL messages use (internal to dist/; built
// only with NCCL; unit-tested by tests/dist/nccl_unit_test.cpp).
#pragma once

#include <c10/core/ScalarType.h>
#include <nccl.h>

namespace shardtune::dist {

// Throws an Error naming the dtype and the supported ones for a type NCCL cannot move or sum.
ncclDataType_t nccl_type(at::ScalarType t);

// "float32", "bfloat16", ...: torch's Python names, as users know them.
const char* dtype_name(at::ScalarType t);

}  // namespace shardtune::dist
