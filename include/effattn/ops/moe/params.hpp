// Options and argument checks shared by the MoE gating reference (naive.hpp) and the fast path
// (gating.hpp, dispatch.hpp, moe_ffn.hpp).
//
// Routings, all `logits [N, E] -> topk_idx [N, k], topk_weight [N, k]`, ordered by descending
// selection criterion, ties to the lower expert index:
//   softmax  (Switch k=1, GShard, Qwen-MoE): p = softmax(logits) over all E, keep the top k,
//            w = p[idx]; with `renormalize`, w = p[idx] / sum(p[idx]). Mixtral is the
//            renormalised form, which equals a softmax over the k kept logits (how it is computed).
//   sigmoid  (DeepSeek-V3): s = sigmoid(logits), select on s + bias, optionally group-limited
//            (n_group contiguous groups of E / n_group experts; a group scores the sum of its two
//            largest biased scores; only the topk_group best groups compete), w = s[idx]
//            (unbiased), / sum(s[idx]) with `renormalize`.
// Every routing finally multiplies w by `routed_scaling_factor` (1 by default).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "effattn/core/bf16.hpp"
#include "effattn/core/error.hpp"
#include "effattn/core/tensor.hpp"

namespace effattn::moe {

enum class ScoreFunc { kSoftmax, kSigmoid };

struct GateParams {
  ScoreFunc score_func = ScoreFunc::kSoftmax;
  int64_t top_k = 2;
  bool renormalize = false;  // w = w / sum(w) over the k kept experts
  int64_t n_group = 1;       // sigmoid only: group-limited routing when > 1
  int64_t topk_group = 1;    // sigmoid only: groups kept (<= n_group)
  double routed_scaling_factor = 1.0;
  int num_threads = 0;  // 0 = global default

  // Switch Transformer: top-1 of the softmax, weight = its probability.
  static GateParams switch_top1() { return {ScoreFunc::kSoftmax, 1, false}; }
  // GShard / Qwen-MoE (norm_topk_prob = renormalize): top-k of the softmax.
  static GateParams softmax_topk(int64_t k, bool renormalize) {
    return {ScoreFunc::kSoftmax, k, renormalize};
  }
  // Mixtral: softmax over the k largest logits.
  static GateParams mixtral(int64_t k = 2) { return {ScoreFunc::kSoftmax, k, true}; }
  // DeepSeek-V3: sigmoid scores, biased group-limited selection, normalised weights * scale.
  static GateParams deepseek_v3(int64_t k = 8, int64_t n_group = 8, int64_t topk_group = 4,
                                double routed_scaling_factor = 2.5) {
    return {ScoreFunc::kSigmoid, k, true, n_group, topk_group, routed_scaling_factor};
  }
};

// Router training figures (gating.hpp router_stats):
//   counts_e     assignments (token, slot) routed to expert e, before any capacity dropping
//   f_e          counts_e / (N k)
//   P_e          mean over tokens of the routing probability: the softmax over all E for softmax
//                routing; the normalised sigmoid scores s_e / sum_j s_j (DeepSeek-V3's balance
//                loss) for sigmoid routing
//   aux_loss     E * sum_e f_e P_e  (Switch Transformer; GShard for k > 1)
//   aux_loss_hf  k * aux_loss       (HF load_balancing_loss_func counts every slot over N)
//   z_loss       mean over tokens of logsumexp(logits)^2  (ST-MoE router z-loss)
template <class T>
struct RouterStats {
  std::vector<int64_t> counts;  // [E]
  std::vector<T> fraction;      // [E] f_e
  std::vector<T> mean_prob;     // [E] P_e
  T aux_loss = 0;
  T aux_loss_hf = 0;
  T z_loss = 0;
};

// Expert weights of an MoE feed-forward, SwiGLU experts in the golden layout (x @ W):
//   expert_e(x) = (silu(x W_gate[e]) * (x W_up[e])) W_down[e]
// W is the activation type T, or bf16 (storage only; products accumulate in float).
template <class W>
struct ExpertWeights {
  TensorView<const W> w_gate;  // [E, d, f]
  TensorView<const W> w_up;    // [E, d, f]
  TensorView<const W> w_down;  // [E, f, d]
};

// Always-on shared expert(s), weight 1, no gate (DeepSeek's n_shared_experts experts are one
// SwiGLU of width n_shared * f). All three views empty = no shared expert.
template <class W>
struct SharedExpertWeights {
  TensorView<const W> w_gate;  // [d, fs]
  TensorView<const W> w_up;    // [d, fs]
  TensorView<const W> w_down;  // [fs, d]
  bool empty() const { return w_gate.empty() && w_up.empty() && w_down.empty(); }
};

// Expert capacity and token dropping (GShard / Switch policy, deterministic):
//   capacity C = ceil(capacity_factor * N * k / E)   (or `capacity` when >= 0)
//   Assignments (token t, slot s) are ranked slot-major: every token's first choice, in token
//   order, then every token's second choice, ... An expert keeps its first C assignments in that
//   order and drops the rest: a token's top-1 choice always outranks any token's top-2 choice.
//   A dropped assignment contributes nothing (its weight is not given to the other slots).
struct MoeFfnParams {
  double capacity_factor = 0;   // <= 0 (and capacity < 0): no capacity limit
  int64_t capacity = -1;        // >= 0: explicit capacity per expert, overrides capacity_factor
  int64_t skinny_max_rows = 8;  // experts with <= this many rows (1..8) stream their weights once
                                // (decode path); bigger groups go through gemm
  int num_threads = 0;          // 0 = global default
};

// Capacity per expert for N tokens, k slots, E experts; -1 = unlimited.
inline int64_t expert_capacity(int64_t N, int64_t k, int64_t E, const MoeFfnParams& p) {
  if (p.capacity >= 0) return p.capacity;
  if (!(p.capacity_factor > 0)) return -1;
  return static_cast<int64_t>(std::ceil(p.capacity_factor * double(N) * double(k) / double(E)));
}

// Storage scalar -> compute scalar.
template <class T, class W>
inline T to_compute(W w) {
  if constexpr (std::is_same_v<W, bf16>) {
    return static_cast<T>(static_cast<float>(w));
  } else {
    return static_cast<T>(w);
  }
}

namespace detail {

// Checks the gate's arguments before any memory is touched. logits [N, E], bias [E] (optional,
// sigmoid only), topk_idx / topk_weight [N, k], probs [N, E] (optional).
template <class T>
void check_gate_args(const char* op, const TensorView<const T>& logits,
                     const TensorView<const T>& bias, const TensorView<int32_t>& topk_idx,
                     const TensorView<T>& topk_weight, const TensorView<T>& probs,
                     const GateParams& p) {
  check_shape(op, "logits", logits, {-1, -1}, "[N, E]");
  const int64_t N = logits.size(0), E = logits.size(1);
  check(E >= 1 && E <= INT32_MAX, op, ": logits has shape ", logits.shape().str(),
        ", expected E >= 1 experts");
  check(p.top_k >= 1 && p.top_k <= E, op, ": top_k = ", p.top_k, " must be in [1, E = ", E,
        "] (logits ", logits.shape().str(), ")");
  check_shape(op, "topk_idx", topk_idx, {N, p.top_k}, "[N, k]");
  check_shape(op, "topk_weight", topk_weight, {N, p.top_k}, "[N, k]");
  check_inner_contiguous(op, "logits", logits);
  if (!probs.empty()) {
    check_shape(op, "probs", probs, {N, E}, "[N, E]");
    check_inner_contiguous(op, "probs", probs);
  }
  check(std::isfinite(p.routed_scaling_factor), op,
        ": routed_scaling_factor = ", p.routed_scaling_factor, " must be finite");
  if (p.score_func == ScoreFunc::kSoftmax) {
    check(bias.empty(), op, ": bias [E] is only used by sigmoid (DeepSeek-V3) routing, got ",
          bias.shape().str(), " with softmax routing");
    check(p.n_group == 1 && p.topk_group == 1, op, ": n_group = ", p.n_group,
          ", topk_group = ", p.topk_group,
          ": group-limited routing needs sigmoid scores (use n_group = 1)");
    return;
  }
  if (!bias.empty()) check_shape(op, "bias", bias, {E}, "[E]");
  check(p.n_group >= 1, op, ": n_group = ", p.n_group, " must be >= 1");
  check(E % p.n_group == 0, op, ": n_group = ", p.n_group, " does not divide E = ", E, " (logits ",
        logits.shape().str(), ")");
  check(p.topk_group >= 1 && p.topk_group <= p.n_group, op, ": topk_group = ", p.topk_group,
        " must be in [1, n_group = ", p.n_group, "]");
  check(p.top_k <= p.topk_group * (E / p.n_group), op, ": top_k = ", p.top_k,
        " exceeds the experts of the topk_group = ", p.topk_group, " kept groups of ",
        E / p.n_group);
  if (!bias.empty()) {
    for (int64_t e = 0; e < E; ++e) {
      check(std::isfinite(static_cast<double>(bias(e))), op, ": bias[", e, "] = ", bias(e),
            " is not finite");
    }
  }
}

// NaN (and +inf, which turns a softmax into NaN) logits are refused: a silent wrong routing is
// worse than an error. -inf is allowed (it masks an expert out).
template <class T>
inline void check_logit(const char* op, T v, int64_t n, int64_t e) {
  if (!(v < std::numeric_limits<T>::infinity())) {
    throw Error(effattn::detail::concat(op, ": logits[", n, ", ", e, "] = ", v,
                                        ": logits must not be NaN or +inf"));
  }
}

// Checks the feed-forward's arguments: x [N, d], topk_idx / topk_weight [N, k] (indices in
// [0, E)), expert weights, optional shared expert, y [N, d].
template <class T, class W>
void check_ffn_args(const char* op, const TensorView<const T>& x,
                    const TensorView<const int32_t>& topk_idx,
                    const TensorView<const T>& topk_weight, const ExpertWeights<W>& ex,
                    const SharedExpertWeights<W>& sh, const TensorView<T>& y,
                    const MoeFfnParams& p) {
  static_assert(std::is_same_v<W, T> || (std::is_same_v<W, bf16> && std::is_same_v<T, float>),
                "expert weights are T, or bf16 with float activations");
  check_shape(op, "x", x, {-1, -1}, "[N, d]");
  const int64_t N = x.size(0), d = x.size(1);
  check_shape(op, "w_gate", ex.w_gate, {-1, d, -1}, "[E, d, f]");
  const int64_t E = ex.w_gate.size(0), f = ex.w_gate.size(2);
  check(E >= 1, op, ": w_gate has shape ", ex.w_gate.shape().str(), ", expected E >= 1");
  check_shape(op, "w_up", ex.w_up, {E, d, f}, "[E, d, f]");
  check_shape(op, "w_down", ex.w_down, {E, f, d}, "[E, f, d]");
  check_shape(op, "topk_idx", topk_idx, {N, -1}, "[N, k]");
  const int64_t k = topk_idx.size(1);
  check(k >= 1, op, ": topk_idx has shape ", topk_idx.shape().str(), ", expected k >= 1");
  check_shape(op, "topk_weight", topk_weight, {N, k}, "[N, k]");
  check_shape(op, "y", y, {N, d}, "[N, d]");
  check_inner_contiguous(op, "x", x);
  check_inner_contiguous(op, "y", y);
  check_inner_contiguous(op, "w_gate", ex.w_gate);
  check_inner_contiguous(op, "w_up", ex.w_up);
  check_inner_contiguous(op, "w_down", ex.w_down);
  if (!sh.empty()) {
    check_shape(op, "shared w_gate", sh.w_gate, {d, -1}, "[d, fs]");
    const int64_t fs = sh.w_gate.size(1);
    check_shape(op, "shared w_up", sh.w_up, {d, fs}, "[d, fs]");
    check_shape(op, "shared w_down", sh.w_down, {fs, d}, "[fs, d]");
    check_inner_contiguous(op, "shared w_gate", sh.w_gate);
    check_inner_contiguous(op, "shared w_up", sh.w_up);
    check_inner_contiguous(op, "shared w_down", sh.w_down);
  }
  check(p.skinny_max_rows >= 0 && p.skinny_max_rows <= 8, op,
        ": skinny_max_rows = ", p.skinny_max_rows, " must be in [0, 8]");
  check(p.capacity_factor == p.capacity_factor, op, ": capacity_factor is NaN");
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t s = 0; s < k; ++s) {
      const int32_t e = topk_idx(n, s);
      check(e >= 0 && e < E, op, ": topk_idx[", n, ", ", s, "] = ", e, " out of range [0, E = ", E,
            ")");
    }
  }
  // y is written while x is still being read (shared expert, combine): they must not overlap.
  if (N > 0 && d > 0) {
    const auto xb = reinterpret_cast<std::uintptr_t>(x.data());
    const auto xe = reinterpret_cast<std::uintptr_t>(x.ptr(N - 1) + d);
    const auto yb = reinterpret_cast<std::uintptr_t>(y.data());
    const auto ye = reinterpret_cast<std::uintptr_t>(y.ptr(N - 1) + d);
    check(ye <= xb || xe <= yb, op, ": y must not overlap x");
  }
}

}  // namespace detail
}  // namespace effattn::moe
