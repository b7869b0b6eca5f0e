// Reference MoE: obviously-correct forms the tests compare the fast path against. Any scalar T.
//
//   gate      full softmax / sigmoid of every row, then a full (stable) sort of all E experts
//   stats     load-balancing loss, z-loss and counts by direct sums
//   moe_ffn   a per-token loop over the token's selected experts, every product a plain loop,
//             with the capacity rule of params.hpp applied by its own loop
//
// Slow on purpose (O(E log E) per token, O(d f) scalar loops per token and expert).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "effattn/core/tensor.hpp"
#include "effattn/ops/moe/params.hpp"

namespace effattn::moe::naive {

// logits [N, E], bias [E] (sigmoid routing, optional) -> topk_idx [N, k], topk_weight [N, k],
// probs [N, E] (optional: the softmax over all E, or the sigmoid scores).
template <class T>
void gate(TensorView<const T> logits, TensorView<const T> bias, TensorView<int32_t> topk_idx,
          TensorView<T> topk_weight, const GateParams& p, TensorView<T> probs = {}) {
  detail::check_gate_args("moe::naive::gate", logits, bias, topk_idx, topk_weight, probs, p);
  const int64_t N = logits.size(0), E = logits.size(1), k = p.top_k;
  const T kNegInf = -std::numeric_limits<T>::infinity();
  std::vector<T> score(E), crit(E);
  std::vector<int32_t> order(E);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t e = 0; e < E; ++e) detail::check_logit("moe::naive::gate", logits(n, e), n, e);
    if (p.score_func == ScoreFunc::kSoftmax) {
      T m = kNegInf;
      for (int64_t e = 0; e < E; ++e) m = std::max(m, logits(n, e));
      T z = 0;
      for (int64_t e = 0; e < E; ++e) {
        score[e] = m == kNegInf ? T(0) : std::exp(logits(n, e) - m);
        z += score[e];
      }
      for (int64_t e = 0; e < E; ++e) score[e] = z > 0 ? score[e] / z : T(0);
      // Selection on p; the fast path selects on the logits (same order, exact ties).
      for (int64_t e = 0; e < E; ++e) crit[e] = m == kNegInf ? logits(n, e) : score[e];
    } else {
      for (int64_t e = 0; e < E; ++e) {
        score[e] = T(1) / (T(1) + std::exp(-logits(n, e)));
        crit[e] = score[e] + (bias.empty() ? T(0) : bias(e));
      }
      if (p.n_group > 1) {
        // Group score: sum of the two largest biased scores of the group (all of them if the
        // group has fewer than two experts).
        const int64_t gs = E / p.n_group;
        std::vector<T> gscore(p.n_group);
        for (int64_t g = 0; g < p.n_group; ++g) {
          std::vector<T> v(crit.begin() + g * gs, crit.begin() + (g + 1) * gs);
          std::sort(v.begin(), v.end(), [](T a, T b) { return a > b; });
          gscore[g] = v[0] + (gs > 1 ? v[1] : T(0));
        }
        std::vector<int64_t> gorder(p.n_group);
        std::iota(gorder.begin(), gorder.end(), 0);
        std::stable_sort(gorder.begin(), gorder.end(),
                         [&](int64_t a, int64_t b) { return gscore[a] > gscore[b]; });
        std::vector<bool> keep(p.n_group, false);
        for (int64_t i = 0; i < p.topk_group; ++i) keep[gorder[i]] = true;
        for (int64_t e = 0; e < E; ++e) {
          if (!keep[e / gs]) crit[e] = kNegInf;
        }
      }
    }
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return crit[a] > crit[b]; });
    T sum = 0;
    for (int64_t s = 0; s < k; ++s) sum += score[order[s]];
    for (int64_t s = 0; s < k; ++s) {
      T w = score[order[s]];
      if (p.renormalize) w = sum > 0 ? w / sum : T(0);
      topk_idx(n, s) = order[s];
      topk_weight(n, s) = w * static_cast<T>(p.routed_scaling_factor);
    }
    if (!probs.empty()) {
      for (int64_t e = 0; e < E; ++e) probs(n, e) = score[e];
    }
  }
}

// Router figures by direct sums (RouterStats in params.hpp).
template <class T>
RouterStats<T> router_stats(TensorView<const T> logits, TensorView<const int32_t> topk_idx,
                            const GateParams& p) {
  check_shape("moe::naive::router_stats", "logits", logits, {-1, -1}, "[N, E]");
  const int64_t N = logits.size(0), E = logits.size(1);
  check_shape("moe::naive::router_stats", "topk_idx", topk_idx, {N, -1}, "[N, k]");
  const int64_t k = topk_idx.size(1);
  RouterStats<T> r;
  r.counts.assign(E, 0);
  r.fraction.assign(E, T(0));
  r.mean_prob.assign(E, T(0));
  for (int64_t n = 0; n < N; ++n) {
    T m = -std::numeric_limits<T>::infinity();
    for (int64_t e = 0; e < E; ++e) m = std::max(m, logits(n, e));
    T z = 0;
    for (int64_t e = 0; e < E; ++e) z += std::exp(logits(n, e) - m);
    const T lse = m + std::log(z);
    r.z_loss += lse * lse;
    std::vector<T> prob(E);
    T sum = 0;
    for (int64_t e = 0; e < E; ++e) {
      prob[e] = p.score_func == ScoreFunc::kSoftmax ? std::exp(logits(n, e) - lse)
                                                    : T(1) / (T(1) + std::exp(-logits(n, e)));
      sum += prob[e];
    }
    for (int64_t e = 0; e < E; ++e) {
      r.mean_prob[e] += p.score_func == ScoreFunc::kSoftmax ? prob[e] : prob[e] / sum;
    }
    for (int64_t s = 0; s < k; ++s) {
      const int32_t e = topk_idx(n, s);
      check(e >= 0 && e < E, "moe::naive::router_stats: topk_idx[", n, ", ", s, "] = ", e,
            " out of range");
      ++r.counts[e];
    }
  }
  for (int64_t e = 0; e < E; ++e) {
    r.mean_prob[e] = N ? r.mean_prob[e] / T(N) : T(0);
    r.fraction[e] = N ? T(r.counts[e]) / T(N * k) : T(0);
    r.aux_loss += r.fraction[e] * r.mean_prob[e];
  }
  r.aux_loss *= T(E);
  r.aux_loss_hf = T(k) * r.aux_loss;
  r.z_loss = N ? r.z_loss / T(N) : T(0);
  return r;
}

// kept[n * k + s] = whether assignment (n, s) survives the capacity rule of params.hpp.
inline std::vector<bool> kept_assignments(TensorView<const int32_t> topk_idx, int64_t E,
                                          int64_t capacity) {
  const int64_t N = topk_idx.size(0), k = topk_idx.size(1);
  std::vector<bool> kept(N * k, true);
  if (capacity < 0) return kept;
  std::vector<int64_t> used(E, 0);
  for (int64_t s = 0; s < k; ++s) {
    for (int64_t n = 0; n < N; ++n) {
      const int32_t e = topk_idx(n, s);
      if (used[e] < capacity) {
        ++used[e];
      } else {
        kept[n * k + s] = false;
      }
    }
  }
  return kept;
}

// y[n] = sum over kept slots s of w[n, s] * expert_{idx[n, s]}(x[n])  (+ shared(x[n]))
template <class T, class W>
void moe_ffn(TensorView<const T> x, TensorView<const int32_t> topk_idx,
             TensorView<const T> topk_weight, const ExpertWeights<W>& ex,
             const SharedExpertWeights<W>& sh, TensorView<T> y, const MoeFfnParams& p = {}) {
  detail::check_ffn_args("moe::naive::moe_ffn", x, topk_idx, topk_weight, ex, sh, y, p);
  const int64_t N = x.size(0), d = x.size(1), E = ex.w_gate.size(0), f = ex.w_gate.size(2);
  const int64_t k = topk_idx.size(1);
  const std::vector<bool> kept = kept_assignments(topk_idx, E, expert_capacity(N, k, E, p));
  // One SwiGLU expert on row x_n: out = (silu(x Wg) * (x Wu)) Wd, Wg/Wu [d, F], Wd [F, d].
  auto swiglu = [&](int64_t n, const TensorView<const W>& wg, const TensorView<const W>& wu,
                    const TensorView<const W>& wd, std::vector<T>& out) {
    const int64_t F = wg.size(1);
    std::vector<T> h(F);
    for (int64_t j = 0; j < F; ++j) {
      T g = 0, u = 0;
      for (int64_t i = 0; i < d; ++i) {
        g += x(n, i) * to_compute<T>(wg(i, j));
        u += x(n, i) * to_compute<T>(wu(i, j));
      }
      h[j] = g / (T(1) + std::exp(-g)) * u;
    }
    out.assign(d, T(0));
    for (int64_t c = 0; c < d; ++c) {
      for (int64_t j = 0; j < F; ++j) out[c] += h[j] * to_compute<T>(wd(j, c));
    }
  };
  (void)f;
  std::vector<T> out;
  for (int64_t n = 0; n < N; ++n) {
    std::vector<T> acc(d, T(0));
    for (int64_t s = 0; s < k; ++s) {
      if (!kept[n * k + s]) continue;
      const int32_t e = topk_idx(n, s);
      swiglu(n, ex.w_gate.select(0, e), ex.w_up.select(0, e), ex.w_down.select(0, e), out);
      for (int64_t c = 0; c < d; ++c) acc[c] += topk_weight(n, s) * out[c];
    }
    if (!sh.empty()) {
      swiglu(n, sh.w_gate, sh.w_up, sh.w_down, out);
      for (int64_t c = 0; c < d; ++c) acc[c] += out[c];
    }
    for (int64_t c = 0; c < d; ++c) y(n, c) = acc[c];
  }
}

}  // namespace effattn::moe::naive
