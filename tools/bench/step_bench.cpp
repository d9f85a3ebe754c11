// One training step (forward + masked loss + backward + AdamW) of a ~15M-parameter Llama, timed.
// Parameters and gradients live in one flat fp32 buffer each (params are views), as in the trainer,
// so AdamW is a handful of fused elementwise passes. Compare with tools/bench/step_ref.py (step.sh).
#include <CLI/CLI.hpp>
#include <c10/core/GradMode.h>

#include <chrono>
#include <cmath>
#include <algorithm>
#include <cstdio>

#include "shardtune/core/error.h"
#include "shardtune/core/hw.h"
#include "shardtune/model/model.h"
#include "shardtune/model/runtime.h"

namespace sm = shardtune::model;

static int run(int argc, char** argv) {
  int threads = 2, steps = 5, warmup = 2;
  int64_t batch = 8, seq = 256;
  std::string precision = "fp32";
  CLI::App app{"shardtune training-step benchmark"};
  app.add_option("--threads", threads)->capture_default_str();
  app.add_option("--steps", steps, "timed steps")->capture_default_str();
  app.add_option("--warmup", warmup)->capture_default_str();
  app.add_option("--batch", batch)->capture_default_str();
  app.add_option("--seq", seq)->capture_default_str();
  app.add_option("--precision", precision, "fp32 | bf16")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  sm::setup_runtime(threads);
  shardtune::hw::print_blas_status(stderr);  // stdout: the result line step.sh parses
  const sm::Precision prec = sm::parse_precision(precision);

  // Same config as step_ref.py.
  nlohmann::json j = {{"model_type", "llama"},         {"vocab_size", 8192},         {"hidden_size", 384},
                      {"intermediate_size", 1024},     {"num_hidden_layers", 6},     {"num_attention_heads", 6},
                      {"num_key_value_heads", 2},      {"max_position_embeddings", 1024},
                      {"rms_norm_eps", 1e-5},          {"tie_word_embeddings", false}};
  sm::CausalLM model(sm::ModelConfig::from_json(j, "bench config"));
  model.init_random(0);
  auto params = model.hf_parameters();
  int64_t n = 0;
  for (auto& [name, p] : params) n += p.numel();
  at::Tensor flat = at::empty({n}), flat_grad = at::zeros({n});
  {
    at::NoGradGuard ng;
    int64_t off = 0;
    for (auto& [name, p] : params) {
      at::Tensor view = flat.narrow(0, off, p.numel()).view(p.sizes());
      view.copy_(p);
      p.set_data(view);
      p.mutable_grad() = flat_grad.narrow(0, off, p.numel()).view(p.sizes());
      off += p.numel();
    }
  }
  at::Tensor m = at::zeros({n}), v = at::zeros({n});
  const double lr = 1e-4, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.01;

  at::manual_seed(0);
  const at::Tensor ids = at::randint(0, 8192, {batch, seq}, at::kLong);
  int step = 0;
  double t_fwd = 0, t_bwd = 0, t_opt = 0;
  auto now = [] { return std::chrono::steady_clock::now(); };
  auto secs = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
  auto train_step = [&]() {
    flat_grad.zero_();
    double loss_val;
    const auto a = now();
    {
      sm::AutocastGuard ac(at::kCPU, prec);
      const auto r = model.loss(ids, {});
      const at::Tensor loss = r.sum / double(r.count);
      const auto b = now();
      t_fwd += secs(a, b);
      loss.backward();
      loss_val = loss.item<double>();
      t_bwd += secs(b, now());
    }
    const auto c = now();
    at::NoGradGuard ng;
    ++step;
    const double bc1 = 1 - std::pow(b1, step), bc2 = 1 - std::pow(b2, step);
    m.mul_(b1).add_(flat_grad, 1 - b1);
    v.mul_(b2).addcmul_(flat_grad, flat_grad, 1 - b2);
    flat.mul_(1 - lr * wd);
    flat.addcdiv_(m, (v / bc2).sqrt_().add_(eps), -lr / bc1);
    t_opt += secs(c, now());
    return loss_val;
  };
  for (int i = 0; i < warmup; ++i) train_step();
  t_fwd = t_bwd = t_opt = 0;
  // tokens/s from the fastest step: the machine may be shared, and the minimum is the least disturbed.
  double loss = 0, best = 1e30, total = 0;
  for (int i = 0; i < steps; ++i) {
    const auto t0 = now();
    loss = train_step();
    const double dt = secs(t0, now());
    best = std::min(best, dt);
    total += dt;
  }
  std::printf("shardtune %s params=%lld best_step=%.3fs mean_step=%.3fs tokens/s=%.0f loss=%.4f "
              "(mean fwd %.3fs bwd %.3fs adamw %.3fs)\n",
              precision.c_str(), static_cast<long long>(n), best, total / steps, double(batch * seq) / best, loss,
              t_fwd / steps, t_bwd / steps, t_opt / steps);
  return 0;
}

int main(int argc, char** argv) {
  shardtune::hw::select_blas_core(argv);  // may re-exec with OPENBLAS_CORETYPE set
  return shardtune::run_guarded("shardtune-step-bench", run, argc, argv);
}
