// Device selection and the NCCL watchdog's decisions, without a GPU: pick_cuda_device's cases (enough
// GPUs, more ranks per node than GPUs, no GPU), the build checks of --device cuda, and the watchdog's
// verdict, messages and polling period (nccl_watch.h).
#include <gtest/gtest.h>

#include <string>

#include "shardtune/core/error.h"
#include "shardtune/dist/device.h"
#include "shardtune/dist/nccl_watch.h"

namespace sd = shardtune::dist;

namespace {

// The Error's message and hint, or "" when `f` does not throw one.
template <class F>
std::pair<std::string, std::string> error_of(F&& f) {
  try {
    f();
  } catch (const shardtune::Error& e) {
    return {e.what(), e.hint()};
  }
  return {};
}

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

sd::NodePlace place(int local_rank, int local_size, const std::string& host = "gpu07") {
  sd::NodePlace p;
  p.local_rank = local_rank;
  p.local_size = local_size;
  p.host = host;
  return p;
}

TEST(PickCudaDevice, LocalRankWhenEnoughGpus) {
  EXPECT_EQ(sd::pick_cuda_device(0, place(0, 1), 1), 0);
  EXPECT_EQ(sd::pick_cuda_device(5, place(1, 4), 4), 1);
  EXPECT_EQ(sd::pick_cuda_device(11, place(3, 4), 8), 3);  // fewer ranks than GPUs: the first ones
  EXPECT_EQ(sd::pick_cuda_device(7, place(7, 8), 8), 7);
}

TEST(PickCudaDevice, MoreRanksPerNodeThanGpusNamesHostRanksGpusAndLaunchHint) {
  const auto [msg, hint] = error_of([] { sd::pick_cuda_device(6, place(2, 8, "gpu07"), 4); });
  ASSERT_FALSE(msg.empty()) << "8 ranks on a node with 4 GPUs must be refused";
  EXPECT_TRUE(has(msg, "rank 6")) << msg;
  EXPECT_TRUE(has(msg, "gpu07")) << msg;
  EXPECT_TRUE(has(msg, "8 ranks share this node")) << msg;
  EXPECT_TRUE(has(msg, "only 4 CUDA device(s)")) << msg;
  EXPECT_TRUE(has(hint, "srun --ntasks-per-node=4")) << hint;
  EXPECT_TRUE(has(hint, "CUDA_VISIBLE_DEVICES")) << hint;
  // Every rank of the node is refused, not only those past the last GPU: the node is misconfigured.
  EXPECT_FALSE(error_of([] { sd::pick_cuda_device(4, place(0, 8), 4); }).first.empty());
}

TEST(PickCudaDevice, OneVisibleGpuPerRankIsDeviceZero) {
  // srun --gpus-per-task=1: every rank of the node sees exactly its own GPU, as device 0.
  EXPECT_EQ(sd::pick_cuda_device(3, place(3, 4), 1), 0);
  EXPECT_EQ(sd::pick_cuda_device(0, place(0, 4), 1), 0);
}

TEST(SharedGpu, FindsTwoRanksOnOnePhysicalGpu) {
  using P = std::pair<int, int>;
  EXPECT_EQ(sd::shared_gpu({"n1|0000:3B:00.0", "n1|0000:5E:00.0", "n2|0000:3B:00.0"}), P(-1, -1));
  EXPECT_EQ(sd::shared_gpu({"n1|0000:3B:00.0", "n1|0000:5E:00.0", "n1|0000:3B:00.0"}), P(0, 2));
  EXPECT_EQ(sd::shared_gpu({"n1|", "n1|"}), P(-1, -1));  // bus ids unknown: nothing claimed
  EXPECT_EQ(sd::shared_gpu({}), P(-1, -1));
}

TEST(PickCudaDevice, NoGpuVisible) {
  const auto [msg, hint] = error_of([] { sd::pick_cuda_device(0, place(0, 1, "login1"), 0); });
  ASSERT_FALSE(msg.empty());
  EXPECT_TRUE(has(msg, "rank 0 on login1")) << msg;
  EXPECT_TRUE(has(msg, "no CUDA device is visible")) << msg;
  EXPECT_TRUE(has(hint, "--gpus-per-task=1")) << hint;
  EXPECT_TRUE(has(hint, "--device cpu")) << hint;
  // Not under MPI: no host known, the message still names the rank.
  EXPECT_TRUE(has(error_of([] { sd::pick_cuda_device(0, sd::NodePlace{}, 0); }).first, "rank 0:"));
}

TEST(CheckCudaBuild, NamesWhatIsMissing) {
  EXPECT_TRUE(error_of([] { sd::check_cuda_build(true, true, "2.11.0"); }).first.empty());
  const auto [no_nccl, no_nccl_hint] = error_of([] { sd::check_cuda_build(false, true, "2.11.0"); });
  EXPECT_TRUE(has(no_nccl, "built without the NCCL backend")) << no_nccl;
  EXPECT_TRUE(has(no_nccl_hint, "-DSHARDTUNE_WITH_CUDA=ON")) << no_nccl_hint;
  const auto [cpu, cpu_hint] = error_of([] { sd::check_cuda_build(true, false, "1.13.0"); });
  EXPECT_TRUE(has(cpu, "LibTorch 1.13.0")) << cpu;
  EXPECT_TRUE(has(cpu, "CPU-only")) << cpu;
  EXPECT_TRUE(has(cpu_hint, "torch.utils.cmake_prefix_path")) << cpu_hint;
  // Both missing: the NCCL backend is named first (rebuilding for it also means a CUDA LibTorch).
  EXPECT_TRUE(has(error_of([] { sd::check_cuda_build(false, false, "1.13.0"); }).first, "NCCL backend"));
}

TEST(NcclWatch, Verdict) {
  using V = sd::WatchVerdict;
  EXPECT_EQ(sd::watch_verdict(false, -1, 300), V::Ok);       // nothing in flight
  EXPECT_EQ(sd::watch_verdict(false, 299.9, 300), V::Ok);
  EXPECT_EQ(sd::watch_verdict(false, 300, 300), V::TimedOut);
  EXPECT_EQ(sd::watch_verdict(false, 1e6, 0), V::Ok);        // --collective-timeout 0: no limit
  EXPECT_EQ(sd::watch_verdict(true, -1, 300), V::Failed);    // an error with nothing in flight
  EXPECT_EQ(sd::watch_verdict(true, 1e6, 300), V::Failed);   // an error wins over a timeout
  EXPECT_EQ(sd::watch_verdict(true, 0, 0), V::Failed);       // errors are looked for without a limit too
}

TEST(NcclWatch, Messages) {
  const sd::NcclOpInfo op{"AllReduce", 4097, "float32"};
  EXPECT_EQ(sd::nccl_failure_message(3, op, "unhandled system error (remote process exited)"),
            "rank 3: NCCL AllReduce (4097 elements, float32) failed: unhandled system error (remote process exited)");
  EXPECT_EQ(sd::nccl_timeout_message(1, op, 300.7), "rank 1: NCCL AllReduce (4097 elements, float32) timed out after 300 s");
  EXPECT_EQ(sd::nccl_timeout_message(0, {"CommInitRank (4 ranks, CUDA device 0)"}, 60),
            "rank 0: NCCL CommInitRank (4 ranks, CUDA device 0) timed out after 60 s");
  EXPECT_EQ(sd::nccl_failure_message(2, {"ReduceScatter", 0, "bfloat16"}, ""),
            "rank 2: NCCL ReduceScatter (0 elements, bfloat16) failed: unknown error");
}

TEST(NcclWatch, PeriodIsAQuarterOfTheLimitWithinBounds) {
  EXPECT_DOUBLE_EQ(sd::watch_period_s(0), 1.0);
  EXPECT_DOUBLE_EQ(sd::watch_period_s(300), 1.0);
  EXPECT_DOUBLE_EQ(sd::watch_period_s(2), 0.5);
  EXPECT_DOUBLE_EQ(sd::watch_period_s(0.1), 0.1);
}

}  // namespace
