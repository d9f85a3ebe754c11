// Fused, chunked linear + cross-entropy: computes the loss and, in the same pass, its gradients, so the
// [N,V] logits never exist beyond one chunk and backward is two scalings (no recompute).
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>

#include "shardtune/core/error.h"
#include "shardtune/model/model.h"

namespace shardtune::model {

namespace {

struct LinearCrossEntropy : public torch::autograd::Function<LinearCrossEntropy> {
  // h [N,C], w [V,C], targets [N]; returns sum_n CE(h_n @ w^T, targets_n) as a fp32 scalar.
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& h, const at::Tensor& w,
                            const at::Tensor& targets, int64_t chunk, int64_t compute_dtype, bool need_grad,
                            bool need_grad_w) {
    const auto cd = static_cast<at::ScalarType>(compute_dtype);
    const int64_t N = h.size(0), V = w.size(0);
    const at::Tensor wc = w.to(cd);
    at::Tensor gh, gw;
    if (need_grad) {
      gh = at::empty(h.sizes(), h.options().dtype(at::kFloat));
      // A frozen head (LoRA) gets no gradient: its [V,C] GEMM per chunk, the largest of the step, is skipped.
      if (need_grad_w) gw = at::zeros(w.sizes(), w.options().dtype(at::kFloat));
    }
    at::Tensor total = at::zeros({}, h.options().dtype(at::kDouble));
    for (int64_t i = 0; i < N; i += chunk) {
      const int64_t n = std::min(chunk, N - i);
      const at::Tensor hc = h.narrow(0, i, n).to(cd);
      const at::Tensor tc = targets.narrow(0, i, n).unsqueeze(1);
      // log_softmax is one vectorized pass (logsumexp is several on LibTorch 1.13).
      at::Tensor logp = at::log_softmax(at::mm(hc, wc.t()), 1, at::kFloat);  // [n,V]
      total -= logp.gather(1, tc).sum().to(at::kDouble);
      if (!need_grad) continue;
      // d(CE)/d(logits) = softmax - onehot(target)
      logp.exp_();
      logp.scatter_add_(1, tc, at::full({n, 1}, -1.0, logp.options()));
      const at::Tensor g = logp.to(cd);
      gh.narrow(0, i, n).copy_(at::mm(g, wc));
      if (need_grad_w) gw.add_(at::mm(g.t(), hc));
    }
    (void)V;
    ctx->saved_data["gh"] = gh;
    ctx->saved_data["gw"] = gw;
    return total.to(at::kFloat);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    const at::Tensor g = grad_out[0];
    const at::Tensor gh = ctx->saved_data["gh"].toTensor();
    const at::Tensor gw = ctx->saved_data["gw"].toTensor();
    ST_CHECK(gh.defined(), "linear_cross_entropy_sum: backward without gradients computed in forward");
    return {gh * g, gw.defined() ? gw * g : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

}  // namespace

at::Tensor linear_cross_entropy_sum(const at::Tensor& h, const at::Tensor& w, const at::Tensor& targets,
                                    int64_t chunk_tokens, at::ScalarType compute_dtype) {
  ST_CHECK(h.dim() == 2 && w.dim() == 2 && h.size(1) == w.size(1) && targets.dim() == 1 &&
               targets.size(0) == h.size(0),
           "linear_cross_entropy_sum: shapes h [N,C], w [V,C], targets [N] expected");
  ST_CHECK(chunk_tokens > 0, "chunk_tokens must be positive");
  const bool grad_mode = c10::GradMode::is_enabled();
  const bool need_grad = grad_mode && (h.requires_grad() || w.requires_grad());
  return LinearCrossEntropy::apply(h, w, targets.to(at::kLong), chunk_tokens, static_cast<int64_t>(compute_dtype),
                                   need_grad, need_grad && w.requires_grad());
}

}  // namespace shardtune::model
