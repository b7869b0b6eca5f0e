// Delta-rule family front: DeltaNet, Gated DeltaNet (Qwen3-Next), Kimi Delta Attention.
//
//   delta_rule(q, k, v, beta, o, S0, S1, params)           no decay
//   gated_delta_rule(q, k, v, beta, g, o, S0, S1, params)  g [B, T, HV]      scalar decay
//   kda(q, k, v, beta, g, o, S0, S1, params)               g [B, T, HV, K]   per-channel decay
//   delta_rule_forward(...)                                g of any of the three forms
//
// q, k [B, T, H, K]; v [B, T, HV, V] (HV % H == 0); beta [B, T, HV]; o [B, T, HV, V];
// initial_state S0 / final_state S1 [N, HV, K, V] optional (S1 may be S0: updated in place).
// Options (DeltaRuleParams): scale, L2 norm of q/k, beta as logits, gate from raw input
// (A_log, dt_bias), varlen cu_seqlens, snapshots every n tokens, chunk size, the form to run.
// See params.hpp for the exact math; naive.hpp, recurrent.hpp, chunk.hpp for the three forms.
#pragma once

#include "effattn/ops/delta_rule/chunk.hpp"
#include "effattn/ops/delta_rule/naive.hpp"
#include "effattn/ops/delta_rule/params.hpp"
#include "effattn/ops/delta_rule/recurrent.hpp"

namespace effattn {

// Dispatches to the form params.algo names. kAuto runs the chunked form for sequences of >= 8
// tokens on average and the recurrent form for decode and short speculative verification. GDN,
// H = 16, K = V = 128, 2 threads, state updated in place, chunk / recurrent (us): T = 1 46 / 16,
// T = 4 64 / 42, T = 6 57 / 50-60, T = 8 65 / 78, T = 16 97 / 154, T = 32 172 / 300 (KDA
// alike); T = 2048 10 ms / 22 ms.
template <class T>
void delta_rule_forward(TensorView<const T> q, TensorView<const T> k, TensorView<const T> v,
                        TensorView<const T> beta, TensorView<const T> g, TensorView<T> o,
                        TensorView<const T> initial_state = {}, TensorView<T> final_state = {},
                        const DeltaRuleParams<T>& p = {}) {
  DeltaRuleAlgo algo = p.algo;
  if (algo == DeltaRuleAlgo::kAuto) {
    const int64_t T_ = q.ndim() == 4 ? q.size(1) : 0;
    const int64_t seqs = p.cu_seqlens.empty() ? 1 : int64_t(p.cu_seqlens.size()) - 1;
    const int64_t avg_len = seqs > 0 ? T_ / seqs : 0;
    algo = avg_len < 8 ? DeltaRuleAlgo::kRecurrent : DeltaRuleAlgo::kChunk;
  }
  switch (algo) {
    case DeltaRuleAlgo::kNaive:
      delta_rule_naive(q, k, v, beta, g, o, initial_state, final_state, p);
      break;
    case DeltaRuleAlgo::kRecurrent:
      delta_rule_recurrent(q, k, v, beta, g, o, initial_state, final_state, p);
      break;
    default:
      delta_rule_chunk(q, k, v, beta, g, o, initial_state, final_state, p);
      break;
  }
}

// DeltaNet: no decay.
template <class T>
void delta_rule(TensorView<const T> q, TensorView<const T> k, TensorView<const T> v,
                TensorView<const T> beta, TensorView<T> o, TensorView<const T> initial_state = {},
                TensorView<T> final_state = {}, const DeltaRuleParams<T>& p = {}) {
  check(p.A_log.empty(), "delta_rule: A_log is given but DeltaNet has no gate");
  delta_rule_forward(q, k, v, beta, TensorView<const T>{}, o, initial_state, final_state, p);
}

// Gated DeltaNet: S <- exp(g_t) S, g [B, T, HV] (log space, or the raw x with params.A_log).
template <class T>
void gated_delta_rule(TensorView<const T> q, TensorView<const T> k, TensorView<const T> v,
                      TensorView<const T> beta, TensorView<const T> g, TensorView<T> o,
                      TensorView<const T> initial_state = {}, TensorView<T> final_state = {},
                      const DeltaRuleParams<T>& p = {}) {
  check(!g.empty() && g.ndim() == 3, "gated_delta_rule: g has shape ",
        g.empty() ? std::string("<none>") : g.shape().str(), ", expected [B, T, HV]");
  delta_rule_forward(q, k, v, beta, g, o, initial_state, final_state, p);
}

// Kimi Delta Attention: S <- diag(exp(g_t)) S, g [B, T, HV, K].
template <class T>
void kda(TensorView<const T> q, TensorView<const T> k, TensorView<const T> v,
         TensorView<const T> beta, TensorView<const T> g, TensorView<T> o,
         TensorView<const T> initial_state = {}, TensorView<T> final_state = {},
         const DeltaRuleParams<T>& p = {}) {
  check(!g.empty() && g.ndim() == 4, "kda: g has shape ",
        g.empty() ? std::string("<none>") : g.shape().str(), ", expected [B, T, HV, K]");
  delta_rule_forward(q, k, v, beta, g, o, initial_state, final_state, p);
}

}  // namespace effattn
