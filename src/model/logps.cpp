// Per-sequence target log-probabilities: a chunked linear + log-softmax + gather whose backward
// recomputes each chunk's logits (the gradient of each token's log-prob is scaled by its own incoming
// gradient, so unlike the CE sum it cannot be precomputed in forward), then a per-row sum.
#include "shardtune/model/logps.h"

#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>

#include "shardtune/core/error.h"
#include "shardtune/model/runtime.h"

namespace shardtune::model {

namespace {

struct LinearTargetLogps : public torch::autograd::Function<LinearTargetLogps> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& h, const at::Tensor& w,
                            const at::Tensor& targets, int64_t chunk, int64_t compute_dtype) {
    const auto cd = static_cast<at::ScalarType>(compute_dtype);
    const int64_t N = h.size(0);
    const at::Tensor wc = w.to(cd);
    at::Tensor out = at::empty({N}, h.options().dtype(at::kFloat));
    for (int64_t i = 0; i < N; i += chunk) {
      const int64_t n = std::min(chunk, N - i);
      const at::Tensor logp = at::log_softmax(at::mm(h.narrow(0, i, n).to(cd), wc.t()), 1, at::kFloat);
      out.narrow(0, i, n).copy_(logp.gather(1, targets.narrow(0, i, n).unsqueeze(1)).squeeze(1));
    }
    ctx->save_for_backward({h, w, targets});
    ctx->saved_data["chunk"] = chunk;
    ctx->saved_data["cd"] = compute_dtype;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &h = saved[0], &w = saved[1], &targets = saved[2];
    const int64_t chunk = ctx->saved_data["chunk"].toInt();
    const auto cd = static_cast<at::ScalarType>(ctx->saved_data["cd"].toInt());
    const bool need_h = ctx->needs_input_grad(0), need_w = ctx->needs_input_grad(1);
    const at::Tensor g = grad_out[0].to(at::kFloat);
    const int64_t N = h.size(0);
    const at::Tensor wc = w.to(cd);
    at::Tensor gh, gw;
    if (need_h) gh = at::empty(h.sizes(), h.options().dtype(at::kFloat));
    if (need_w) gw = at::zeros(w.sizes(), w.options().dtype(at::kFloat));
    for (int64_t i = 0; i < N; i += chunk) {
      const int64_t n = std::min(chunk, N - i);
      const at::Tensor hc = h.narrow(0, i, n).to(cd);
      const at::Tensor tc = targets.narrow(0, i, n).unsqueeze(1);
      const at::Tensor gc = g.narrow(0, i, n).unsqueeze(1);  // [n,1]
      // d logp[target] / d logits = onehot(target) - softmax, times this token's incoming gradient
      at::Tensor d = at::softmax(at::mm(hc, wc.t()), 1, at::kFloat);
      d.mul_(-gc);
      d.scatter_add_(1, tc, gc);
      const at::Tensor dc = d.to(cd);
      if (need_h) gh.narrow(0, i, n).copy_(at::mm(dc, wc));
      if (need_w) gw.add_(at::mm(dc.t(), hc));
    }
    return {need_h ? gh.to(h.scalar_type()) : at::Tensor(), need_w ? gw.to(w.scalar_type()) : at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor linear_target_logps(const at::Tensor& h, const at::Tensor& w, const at::Tensor& targets, int64_t chunk_tokens,
                               at::ScalarType compute_dtype) {
  ST_CHECK(h.dim() == 2 && w.dim() == 2 && h.size(1) == w.size(1) && targets.dim() == 1 &&
               targets.size(0) == h.size(0),
           "linear_target_logps: shapes h [N,C], w [V,C], targets [N] expected");
  ST_CHECK(chunk_tokens > 0, "chunk_tokens must be positive");
  return LinearTargetLogps::apply(h, w, targets.to(at::kLong), chunk_tokens, static_cast<int64_t>(compute_dtype));
}

at::Tensor sequence_logps(CausalLM& m, const at::Tensor& ids_in, const at::Tensor& loss_mask, int64_t chunk_tokens,
                          const at::Tensor& target_index) {
  const at::Tensor w = m.lm_head_weight();
  const at::Tensor ids = ids_in.to(w.device(), at::kLong);
  ST_CHECK(ids.dim() == 2 && ids.size(1) >= 2, "sequence_logps needs ids [B,T] with T >= 2");
  const int64_t B = ids.size(0), T = ids.size(1);
  const at::Tensor target = loss_mask.to(ids.device()).to(at::kBool);
  ST_CHECK(target.sizes() == ids.sizes(), "sequence_logps: loss_mask must have the shape of ids [B,T]");
  at::Tensor idx;
  if (target_index.defined()) {  // known on the host: no nonzero() (a device-to-host read on a GPU)
    ST_CHECK(target_index.dim() == 1 && target_index.scalar_type() == at::kLong,
             "internal: sequence_logps' target_index must be 1-D int64");
    idx = target_index.device() == ids.device() ? target_index : host_to_device(target_index.contiguous(), ids.device());
  } else {
    // valid[b,t]: hidden state t predicts token t+1, a target.
    at::Tensor valid = at::zeros({B, T}, target.options());
    valid.narrow(1, 0, T - 1).copy_(target.narrow(1, 1, T - 1));
    idx = valid.reshape({-1}).nonzero().reshape({-1});
  }
  const at::Tensor h = m.hidden(ids);
  if (idx.numel() == 0) return h.sum() * 0.0 + at::zeros({B}, h.options().dtype(at::kFloat));
  const at::Tensor hsel = h.reshape({B * T, h.size(2)}).index_select(0, idx);
  const at::Tensor tsel = ids.reshape({-1}).index_select(0, idx + 1);
  if (chunk_tokens <= 0) chunk_tokens = std::max<int64_t>(64, (int64_t(1) << 24) / m.config().vocab_size);
  const at::Tensor tok = linear_target_logps(hsel, w, tsel, chunk_tokens, autocast_dtype(ids.device().type()));
  const at::Tensor row = at::div(idx, T, "floor");
  return at::zeros({B}, tok.options()).index_add(0, row, tok);
}

}  // namespace shardtune::model
