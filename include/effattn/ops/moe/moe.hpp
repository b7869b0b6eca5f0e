// Sparse mixture of experts: top-k gating, expert dispatch and the MoE feed-forward.
//
//   moe_gate        logits [N, E] -> topk_idx [N, k], topk_weight [N, k]     (gating.hpp)
//   router_stats    load-balancing loss (+ HF form), z-loss, per-expert counts  (gating.hpp)
//   combine_weights dense [N, E] routing weights                               (gating.hpp)
//   make_dispatch_plan / dispatch_rows / combine_rows                          (dispatch.hpp)
//   moe_ffn         SwiGLU experts on the gate's choice, capacity, shared expert (moe_ffn.hpp)
//   moe_layer       logits = x W_router, then moe_gate and moe_ffn             (here)
//   naive::         the references the tests compare against                  (naive.hpp)
// Routings and capacity rules are described in params.hpp.
#pragma once

#include <cstdint>

#include "effattn/core/tensor.hpp"
#include "effattn/ops/common/gemm.hpp"
#include "effattn/ops/moe/dispatch.hpp"
#include "effattn/ops/moe/gating.hpp"
#include "effattn/ops/moe/moe_ffn.hpp"
#include "effattn/ops/moe/naive.hpp"
#include "effattn/ops/moe/params.hpp"

namespace effattn::moe {

struct MoeLayerParams {
  GateParams gate;
  MoeFfnParams ffn;
};

// A whole MoE layer: x [N, d], w_router [d, E] (logits = x w_router), bias [E] (sigmoid routing,
// may be empty), experts, optional shared expert -> y [N, d]. topk_idx / topk_weight [N, k]
// receive the routing when given (may be empty views); plan_out what capacity dropped.
template <class T, class W>
void moe_layer(TensorView<const T> x, TensorView<const T> w_router, TensorView<const T> bias,
               const ExpertWeights<W>& ex, const SharedExpertWeights<W>& sh, TensorView<T> y,
               const MoeLayerParams& p, TensorView<int32_t> topk_idx = {},
               TensorView<T> topk_weight = {}, DispatchPlan* plan_out = nullptr,
               MoeWorkspace<T>* ws = nullptr) {
  check_shape("moe_layer", "x", x, {-1, -1}, "[N, d]");
  const int64_t N = x.size(0), d = x.size(1);
  check_shape("moe_layer", "w_router", w_router, {d, -1}, "[d, E]");
  const int64_t E = w_router.size(1), k = p.gate.top_k;
  check(!ex.w_gate.empty() && ex.w_gate.ndim() == 3 && ex.w_gate.size(0) == E, "moe_layer: w_gate ",
        ex.w_gate.empty() ? std::string("<none>") : ex.w_gate.shape().str(), " must have E = ", E,
        " experts (w_router ", w_router.shape().str(), ")");
  Tensor<T> logits({N, E});
  gemm(x, Trans::kNo, w_router, Trans::kNo, logits.view());
  Tensor<int32_t> idx_local;
  Tensor<T> w_local;
  if (topk_idx.empty()) {
    idx_local = Tensor<int32_t>({N, k});
    topk_idx = idx_local.view();
  }
  if (topk_weight.empty()) {
    w_local = Tensor<T>({N, k});
    topk_weight = w_local.view();
  }
  moe_gate<T>(logits.view(), bias, topk_idx, topk_weight, p.gate);
  moe_ffn<T, W>(x, topk_idx, topk_weight, ex, sh, y, p.ffn, plan_out, ws);
}

}  // namespace effattn::moe
