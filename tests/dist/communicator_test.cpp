// The Communicator against plain MPI on copies of the same buffers: every op (blocking and nonblocking),
// odd sizes, several dtypes and roots, on any world size (also 1, with or without mpirun); plus the
// refusals (sums of bf16/half/uint8) and the MPI setup (errors return, thread level). Every rank runs
// this program; the verdict is OR-reduced over the ranks so that every rank agrees on pass/fail.
// Modes for the failure paths (run by faults_test.py): --abandon-unwind, --abandon-explicit.
#include <mpi.h>

#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "checker.h"
#include "shardtune/core/error.h"
#include "shardtune/dist/communicator.h"
#include "shardtune/dist/mpi_runtime.h"

namespace sd = shardtune::dist;

namespace {

const std::vector<int64_t> kSizes = {1, 3, 1023, 4097, 7919};  // 7919: prime, divisible by nothing nice

using shardtune::testing::Checker;

MPI_Datatype raw_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return MPI_FLOAT;
    case at::kDouble: return MPI_DOUBLE;
    case at::kInt: return MPI_INT32_T;
    case at::kLong: return MPI_INT64_T;
    case at::kByte: return MPI_UINT8_T;
    case at::kBFloat16:
    case at::kHalf: return MPI_UINT16_T;
    default: ST_FAIL("test: no raw MPI type for this dtype");
  }
}

// Random per-rank buffers. Floats get a wide dynamic range, so that a sum's rounding depends on its order.
at::Tensor random(int64_t n, at::ScalarType t) {
  if (t == at::kInt || t == at::kLong) return at::randint(-1000000, 1000000, {n}, at::TensorOptions().dtype(t));
  if (t == at::kByte) return at::randint(0, 256, {n}, at::TensorOptions().dtype(at::kLong)).to(at::kByte);
  at::Tensor x = at::randn({n}, at::kDouble) * at::exp(at::randn({n}, at::kDouble) * 3);
  return x.to(t);
}

// Multiples of 1/64 below 64 in magnitude: any sum of up to 2^8 of them is exact in float32, whatever
// the order, so these sums must equal the float64 reference bit for bit.
at::Tensor dyadic(int64_t n) { return at::randint(-4096, 4096, {n}, at::kLong).to(at::kFloat) / 64; }

bool same_bytes(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.numel() == b.numel() &&
         std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()) == 0;
}

std::string label(const char* op, at::ScalarType t, int64_t n, const char* how = "") {
  return std::string(op) + how + " " + c10::toString(t) + " n=" + std::to_string(n);
}

class Suite {
 public:
  Suite(sd::MpiRuntime& rt, sd::Communicator& comm, Checker& c) : rt_(rt), comm_(comm), c_(c) {}

  int world() const { return comm_.world(); }
  int rank() const { return comm_.rank(); }

  // ---- raw MPI references (identity/copy where MPI is not initialised: 1 rank without mpirun) ----
  at::Tensor raw_all_reduce(const at::Tensor& x) {
    at::Tensor y = x.clone();
    if (rt_.active())
      check(MPI_Allreduce(x.data_ptr(), y.data_ptr(), static_cast<int>(x.numel()), raw_type(x.scalar_type()), MPI_SUM,
                          MPI_COMM_WORLD));
    return y;
  }
  at::Tensor raw_reduce_scatter(const at::Tensor& in) {
    at::Tensor out = at::empty({in.numel() / world()}, in.options());
    if (!rt_.active()) return in.clone();
    check(MPI_Reduce_scatter_block(in.data_ptr(), out.data_ptr(), static_cast<int>(out.numel()), raw_type(in.scalar_type()),
                                   MPI_SUM, MPI_COMM_WORLD));
    return out;
  }
  at::Tensor raw_all_gather(const at::Tensor& in) {
    at::Tensor out = at::empty({in.numel() * world()}, in.options());
    if (!rt_.active()) return in.clone();
    const int n = static_cast<int>(in.numel());
    check(MPI_Allgather(in.data_ptr(), n, raw_type(in.scalar_type()), out.data_ptr(), n, raw_type(in.scalar_type()),
                        MPI_COMM_WORLD));
    return out;
  }
  at::Tensor raw_broadcast(const at::Tensor& x, int root) {
    at::Tensor y = x.clone();
    if (rt_.active()) check(MPI_Bcast(y.data_ptr(), static_cast<int>(y.numel()), raw_type(y.scalar_type()), root, MPI_COMM_WORLD));
    return y;
  }

  // Every rank's `x`, stacked [world, n] (for the rounding bound and the float64 reference).
  at::Tensor everyone(const at::Tensor& x) { return raw_all_gather(x.contiguous()).view({world(), x.numel()}); }

  // A sum computed by the Communicator against MPI's own (`raw`) and the float64 sum of every rank's input.
  // Exact in two cases: integers, and 2 ranks (a + b == b + a in IEEE arithmetic, whatever the
  // algorithm). With 3+ ranks Open MPI's nonblocking collectives (libnbc) and blocking ones (coll/tuned)
  // may associate the terms differently, so float results may differ in rounding: both must lie within
  // the classical bound (world - 1) * eps * sum |x_r| of the exact sum, elementwise.
  void expect_sum(const at::Tensor& got, const at::Tensor& raw, const at::Tensor& inputs, const std::string& what) {
    const auto t = got.scalar_type();
    const bool is_float = t == at::kFloat || t == at::kDouble;
    if (!is_float || world() <= 2) {
      c_.expect(same_bytes(got, raw), what + ": equals raw MPI bit for bit");
    } else {
      exact_raw_ += same_bytes(got, raw) ? 1 : 0;
      ++compared_raw_;
    }
    at::Tensor exact = inputs.to(at::kDouble).sum(0);
    if (!is_float) {
      c_.expect(at::equal(got.to(at::kDouble), exact), what + ": equals the exact integer sum");
      return;
    }
    const double eps = t == at::kFloat ? std::numeric_limits<float>::epsilon() : std::numeric_limits<double>::epsilon();
    at::Tensor bound = inputs.to(at::kDouble).abs().sum(0) * (eps * std::max(1, world() - 1)) + 1e-300;
    c_.expect(((got.to(at::kDouble) - exact).abs() <= bound).all().item<bool>(), what + ": within the rounding bound of the exact sum");
    c_.expect(((raw.to(at::kDouble) - exact).abs() <= bound).all().item<bool>(), what + ": raw MPI within the rounding bound too");
  }

  void all_reduce_sum() {
    for (auto t : {at::kFloat, at::kDouble, at::kInt, at::kLong})
      for (int64_t n : kSizes)
        for (int how = 0; how < 2; ++how) {  // blocking, nonblocking
          at::Tensor x = random(n, t);
          at::Tensor inputs = everyone(x);
          at::Tensor mine = x.clone();
          if (how == 0)
            comm_.all_reduce_sum(mine);
          else
            comm_.start_all_reduce_sum(mine)->wait();
          expect_sum(mine, raw_all_reduce(x), inputs, label("all_reduce_sum", t, n, how ? " (start)" : ""));
        }
    // Exactly representable terms: the result is the float64 sum, bit for bit, on any world size.
    for (int64_t n : kSizes) {
      at::Tensor x = dyadic(n);
      at::Tensor inputs = everyone(x);
      at::Tensor mine = x.clone();
      comm_.all_reduce_sum(mine);
      c_.expect(same_bytes(mine, raw_all_reduce(x)), label("all_reduce_sum dyadic", at::kFloat, n) + ": equals raw MPI");
      c_.expect(same_bytes(mine, inputs.to(at::kDouble).sum(0).to(at::kFloat)), label("all_reduce_sum dyadic", at::kFloat, n) + ": exact");
    }
  }

  void reduce_scatter_sum() {
    for (auto t : {at::kFloat, at::kDouble, at::kInt, at::kLong})
      for (int64_t n : kSizes)
        for (int how = 0; how < 2; ++how) {
          at::Tensor in = random(n * world(), t);
          at::Tensor inputs = everyone(in).narrow(1, rank() * n, n);  // what sums into this rank's slice
          at::Tensor mine_in = in.clone(), out = at::full({n}, 7, in.options());
          if (how == 0)
            comm_.reduce_scatter_sum(mine_in, out);
          else
            comm_.start_reduce_scatter_sum(mine_in, out)->wait();
          const std::string what = label("reduce_scatter_sum", t, n, how ? " (start)" : "");
          expect_sum(out, raw_reduce_scatter(in), inputs, what);
          c_.expect(same_bytes(mine_in, in), what + ": input untouched");
        }
    for (int64_t n : kSizes) {
      at::Tensor in = dyadic(n * world());
      at::Tensor inputs = everyone(in).narrow(1, rank() * n, n);
      at::Tensor out = at::empty({n}, in.options());
      comm_.reduce_scatter_sum(in, out);
      c_.expect(same_bytes(out, raw_reduce_scatter(in)), label("reduce_scatter_sum dyadic", at::kFloat, n) + ": equals raw MPI");
      c_.expect(same_bytes(out, inputs.to(at::kDouble).sum(0).to(at::kFloat)), label("reduce_scatter_sum dyadic", at::kFloat, n) + ": exact");
    }
  }

  // Byte moves: exact for every dtype, bf16/half included.
  void all_gather() {
    for (auto t : {at::kFloat, at::kDouble, at::kLong, at::kByte, at::kBFloat16, at::kHalf})
      for (int64_t n : kSizes)
        for (int how = 0; how < 3; ++how) {  // separate buffers, in place (in = my slice of out), nonblocking
          at::Tensor x = random(n, t);
          at::Tensor ref = raw_all_gather(x);
          at::Tensor out = random(n * world(), t);  // garbage that must be overwritten
          if (how == 0) {
            comm_.all_gather(x.clone(), out);
          } else if (how == 1) {
            at::Tensor slice = out.narrow(0, rank() * n, n);
            slice.copy_(x);
            comm_.all_gather(slice, out);
          } else {
            at::Tensor in = x.clone();
            auto p = comm_.start_all_gather(in, out);
            while (!p->done()) {
            }
          }
          const char* hows[] = {"", " (in place)", " (start, polled)"};
          c_.expect(same_bytes(out, ref), label("all_gather", t, n, hows[how]) + ": equals raw MPI");
          c_.expect(same_bytes(out.narrow(0, rank() * n, n), x), label("all_gather", t, n, hows[how]) + ": own slice is own input");
        }
  }

  void broadcast() {
    for (auto t : {at::kFloat, at::kDouble, at::kLong, at::kByte, at::kBFloat16, at::kHalf})
      for (int64_t n : kSizes)
        for (int root = 0; root < world(); ++root) {
          at::Tensor x = random(n, t);
          at::Tensor ref = raw_broadcast(x, root);
          at::Tensor mine = x.clone();
          comm_.broadcast(mine, root);
          c_.expect(same_bytes(mine, ref), label("broadcast", t, n) + " root " + std::to_string(root) + ": equals raw MPI");
          if (rank() == root) c_.expect(same_bytes(mine, x), label("broadcast", t, n) + ": root keeps its data");
        }
  }

  void scalars() {
    const double values[] = {1.0 / 3 + rank(), -1.0 - rank(), 1e300 / (rank() + 1), 0.1 * (rank() % 2 ? -1 : 1)};
    for (double v : values)
      for (auto op : {sd::ReduceOp::Sum, sd::ReduceOp::Max}) {
        double ref = v;
        if (rt_.active()) check(MPI_Allreduce(&v, &ref, 1, MPI_DOUBLE, op == sd::ReduceOp::Sum ? MPI_SUM : MPI_MAX, MPI_COMM_WORLD));
        const double got = comm_.all_reduce(v, op);
        c_.expect(std::memcmp(&got, &ref, sizeof got) == 0,
                  std::string("all_reduce(double) ") + (op == sd::ReduceOp::Sum ? "Sum" : "Max") + " of " + std::to_string(v));
      }
  }

  // Several collectives in flight at once, completed in another order than they started.
  void overlapping() {
    for (int64_t n : kSizes) {
      at::Tensor a = random(n, at::kFloat), b = random(n * world(), at::kFloat), g = random(n, at::kBFloat16);
      at::Tensor a_ref = raw_all_reduce(a), b_ref = raw_reduce_scatter(b), g_ref = raw_all_gather(g);
      at::Tensor a_in = everyone(a), b_in = everyone(b).narrow(1, rank() * n, n);
      at::Tensor a_mine = a.clone(), b_out = at::empty({n}, b.options()), g_out = at::empty({n * world()}, g.options());
      auto pa = comm_.start_all_reduce_sum(a_mine);
      auto pb = comm_.start_reduce_scatter_sum(b.clone(), b_out);
      auto pg = comm_.start_all_gather(g.clone(), g_out);
      pg->wait();
      pa->wait();
      pb.reset();  // a finished-or-not Pending destroyed normally waits
      pa.reset();
      expect_sum(a_mine, a_ref, a_in, label("overlapping all_reduce_sum", at::kFloat, n));
      expect_sum(b_out, b_ref, b_in, label("overlapping reduce_scatter_sum", at::kFloat, n));
      c_.expect(same_bytes(g_out, g_ref), label("overlapping all_gather", at::kBFloat16, n) + ": equals raw MPI");
    }
  }

  // Sums of types whose MPI sum is not a real sum are refused on every rank (before any MPI call, so the
  // ranks stay in step), naming the dtype and saying what to do; byte moves of them stay allowed above.
  void refusals() {
    for (auto t : {at::kBFloat16, at::kHalf, at::kByte}) {
      const std::string name = c10::toString(t);
      const int64_t n = 5;
      std::vector<std::pair<const char*, std::function<void()>>> ops = {
          {"all_reduce_sum", [&] { at::Tensor x = at::ones({n}, t); comm_.all_reduce_sum(x); }},
          {"start_all_reduce_sum", [&] { comm_.start_all_reduce_sum(at::ones({n}, t)); }},
          {"reduce_scatter_sum", [&] { at::Tensor o = at::ones({n}, t); comm_.reduce_scatter_sum(at::ones({n * world()}, t), o); }},
          {"start_reduce_scatter_sum", [&] { comm_.start_reduce_scatter_sum(at::ones({n * world()}, t), at::ones({n}, t)); }},
      };
      for (auto& [op, fn] : ops) {
        bool refused = false;
        try {
          fn();
        } catch (const shardtune::Error& e) {
          const std::string msg = e.what();
          refused = msg.find(name) != std::string::npos && msg.find("sum") != std::string::npos &&
                    e.hint().find("float32") != std::string::npos;
          if (!refused) std::fprintf(stderr, "rank %d: unexpected refusal text: %s\n", rank(), shardtune::describe(e).c_str());
        }
        c_.expect(refused, std::string(op) + " of " + name + ": refused with the dtype named and a hint");
      }
    }
    bool refused = false;
    try {
      at::Tensor x = at::ones({3});
      comm_.broadcast(x, world());
    } catch (const shardtune::Error&) {
      refused = true;
    }
    c_.expect(refused, "broadcast from a root outside the world: refused");
    c_.expect(!comm_.abandoned(), "refusals leave the communicator usable");
  }

  // MPI_Init_thread's provided level is at least what we need, and MPI errors return to our checks.
  void mpi_setup() {
    if (!rt_.active()) return;
    int level = 0;
    check(MPI_Query_thread(&level));
    c_.expect(level >= MPI_THREAD_FUNNELED, "MPI thread level >= MPI_THREAD_FUNNELED");
    MPI_Errhandler h;
    check(MPI_Comm_get_errhandler(MPI_COMM_WORLD, &h));
    c_.expect(h == MPI_ERRORS_RETURN, "MPI_COMM_WORLD's error handler is MPI_ERRORS_RETURN");
    MPI_Errhandler_free(&h);
  }

  int exact_raw_ = 0, compared_raw_ = 0;  // float sums on 3+ ranks that matched raw MPI bit for bit

 private:
  sd::MpiRuntime& rt_;
  sd::Communicator& comm_;
  Checker& c_;
  static void check(int rc) { ST_CHECK(rc == MPI_SUCCESS, "test: a raw MPI call failed"); }
};

// Rank 1 throws while its all-reduce is in flight, one its peers never join: it must print its error
// and abort the job, not block in ~Pending (driven by faults_test.py, which fails on a hang).
void abandon_unwind(sd::Communicator& comm) {
  if (comm.rank() == 1) {
    at::Tensor t = at::ones({1 << 20});
    auto p = comm.start_all_reduce_sum(t);
    ST_FAIL("injected failure with a collective in flight (test)");
  }
  int never = 0;  // the other ranks wait for a message that never comes, until the abort ends them
  MPI_Recv(&never, 1, MPI_INT, MPI_ANY_SOURCE, 999, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
}

// Rank 1 abandons an in-flight collective explicitly: dropping it returns at once, and the next
// collective is refused with a clear error (which ends the job).
void abandon_explicit(sd::Communicator& comm) {
  if (comm.rank() == 1) {
    at::Tensor t = at::ones({1 << 20});
    auto p = comm.start_all_reduce_sum(t);
    p->abandon();
    p.reset();
    ST_CHECK(comm.abandoned(), "test: the communicator does not know a collective was abandoned");
    comm.all_reduce(1.0, sd::ReduceOp::Sum);
    ST_FAIL("test: a collective after an abandoned one was not refused");
  }
  int never = 0;
  MPI_Recv(&never, 1, MPI_INT, MPI_ANY_SOURCE, 999, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
}

int run(int argc, char** argv, sd::MpiRuntime& rt) {
  sd::Communicator comm(rt);
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "--abandon-unwind" || mode == "--abandon-explicit") {
    ST_CHECK(rt.world() >= 2, "test: " + mode + " needs at least 2 ranks");
    mode == "--abandon-unwind" ? abandon_unwind(comm) : abandon_explicit(comm);
    return 1;  // not reached: rank 1 aborts the job
  }
  ST_CHECK(mode.empty(), "test: unknown mode " + mode);
  at::manual_seed(1234 + 7919 * rt.rank());
  Checker c;
  c.rank = rt.rank();
  Suite s(rt, comm, c);
  s.mpi_setup();
  s.all_reduce_sum();
  s.reduce_scatter_sum();
  s.all_gather();
  s.broadcast();
  s.scalars();
  s.overlapping();
  s.refusals();
  int bad = c.failures > 0 ? 1 : 0;
  if (rt.active()) MPI_Allreduce(MPI_IN_PLACE, &bad, 1, MPI_INT, MPI_LOR, MPI_COMM_WORLD);
  if (rt.rank() == 0) {
    std::printf("communicator_test: %d checks per rank on %d rank(s) (MPI %s): %s\n", c.checks, rt.world(),
                rt.active() ? "on" : "off", bad ? "FAILED" : "passed");
    if (s.compared_raw_ > 0)
      std::printf("  float sums on %d ranks equal to raw MPI bit for bit: %d of %d (the rest within the rounding bound)\n",
                  rt.world(), s.exact_raw_, s.compared_raw_);
  }
  return bad;
}

}  // namespace

int main(int argc, char** argv) {
  sd::MpiRuntime rt(&argc, &argv);
  try {
    return run(argc, argv, rt);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "communicator_test [rank %d]: %s\n", rt.rank(), shardtune::describe(e).c_str());
    std::fflush(stderr);
    rt.abort(1);
  }
}
