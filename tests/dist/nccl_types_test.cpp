// The NCCL backend's dtype mapping (built only with NCCL; runs without a GPU): every dtype the trainer
// communicates maps to the NCCL type of the same width and kind, the names in messages are torch's, and
// a dtype NCCL has no type for is refused with the supported ones named.
#include <gtest/gtest.h>

#include <string>

#include "nccl_types.h"
#include "shardtune/core/error.h"

namespace sd = shardtune::dist;

TEST(NcclTypes, Mapping) {
  EXPECT_EQ(sd::nccl_type(at::kFloat), ncclFloat32);
  EXPECT_EQ(sd::nccl_type(at::kDouble), ncclFloat64);
  EXPECT_EQ(sd::nccl_type(at::kHalf), ncclFloat16);
  EXPECT_EQ(sd::nccl_type(at::kBFloat16), ncclBfloat16);
  EXPECT_EQ(sd::nccl_type(at::kLong), ncclInt64);
  EXPECT_EQ(sd::nccl_type(at::kInt), ncclInt32);
  EXPECT_EQ(sd::nccl_type(at::kChar), ncclInt8);
  EXPECT_EQ(sd::nccl_type(at::kByte), ncclUint8);
}

TEST(NcclTypes, Names) {
  EXPECT_STREQ(sd::dtype_name(at::kFloat), "float32");
  EXPECT_STREQ(sd::dtype_name(at::kBFloat16), "bfloat16");
  EXPECT_STREQ(sd::dtype_name(at::kHalf), "float16");
  EXPECT_STREQ(sd::dtype_name(at::kLong), "int64");
  EXPECT_STREQ(sd::dtype_name(at::kByte), "uint8");
}

TEST(NcclTypes, UnsupportedIsRefused) {
  for (const at::ScalarType t : {at::kBool, at::kShort, at::kComplexFloat}) {
    try {
      sd::nccl_type(t);
      ADD_FAILURE() << "no error for " << sd::dtype_name(t);
    } catch (const shardtune::Error& e) {
      EXPECT_NE(std::string(e.what()).find(sd::dtype_name(t)), std::string::npos) << e.what();
      EXPECT_NE(e.hint().find("bfloat16"), std::string::npos) << e.hint();
    }
  }
}
