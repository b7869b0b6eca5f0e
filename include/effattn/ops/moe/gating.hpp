// MoE gating, fast path: logits [N, E] -> topk_idx [N, k], topk_weight [N, k] for every routing
// of params.hpp, plus the router's training figures and the dense combine weights.
//
// Per token, one pass over E keeps the k best in a small sorted list (partial selection,
// O(E) for typical rows, never a sort of E). Softmax routing selects on the logits (the softmax
// is monotone, so the order is the same, and ties are exact rather than rounded); the full
// softmax is only formed when its denominator is needed (no renormalisation) or `probs` is
// asked for. Mixtral's "softmax over the k kept logits" is the renormalised form and is computed
// that way: w_j = exp(l_j - l_max) / sum_{kept} exp(l_i - l_max).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "effattn/core/parallel.hpp"
#include "effattn/core/tensor.hpp"
#include "effattn/ops/moe/params.hpp"
#include "effattn/simd/simd.hpp"

namespace effattn::moe {

namespace detail {

// The k largest (value, index) pairs pushed so far, descending; among equal values the one
// pushed first stays ahead, so pushing in ascending index order gives "ties to the lower index".
template <class T>
class TopK {
 public:
  TopK(T* val, int32_t* idx, int64_t k) : val_(val), idx_(idx), k_(k) {}
  void push(T v, int32_t i) {
    if (n_ == k_ && !(v > val_[k_ - 1])) return;  // the common case: not in the top k
    int64_t j = n_ < k_ ? n_++ : k_ - 1;
    for (; j > 0 && v > val_[j - 1]; --j) {
      val_[j] = val_[j - 1];
      idx_[j] = idx_[j - 1];
    }
    val_[j] = v;
    idx_[j] = i;
  }
  int64_t size() const { return n_; }

 private:
  T* val_;
  int32_t* idx_;
  int64_t k_, n_ = 0;
};

// Per-thread scratch of the gate: E-long score rows and k-long selections.
template <class T>
struct GateScratch {
  std::vector<T> score, crit, val, gscore;
  std::vector<int32_t> idx, gidx;
  GateScratch(int64_t E, int64_t k, int64_t n_group)
      : score(E), crit(E), val(std::max(k, n_group)), gscore(n_group), idx(k), gidx(n_group) {}
};

// One token of softmax routing. l [E] -> idx [k], w [k]; prob [E] (nullable).
template <class T>
void softmax_gate_row(const T* l, int64_t n, int64_t E, const GateParams& p, int32_t* idx, T* w,
                      T* prob, GateScratch<T>& s) {
  const int64_t k = p.top_k;
  TopK<T> top(s.val.data(), idx, k);
  for (int64_t e = 0; e < E; ++e) {
    check_logit("moe_gate", l[e], n, e);
    top.push(l[e], static_cast<int32_t>(e));
  }
  const T m = s.val[0];  // the row max: the best kept logit
  const T scale = static_cast<T>(p.routed_scaling_factor);
  if (m == -std::numeric_limits<T>::infinity()) {  // every expert masked: nothing to weigh
    for (int64_t j = 0; j < k; ++j) w[j] = T(0);
    if (prob) std::fill(prob, prob + E, T(0));
    return;
  }
  T z = 0;  // z = sum_e exp(l_e - m), only when needed
  if (prob || !p.renormalize) {
    T* buf = prob ? prob : s.score.data();
    z = simd::exp_sub_sum(l, m, buf, E);
    if (prob) simd::scale(T(1) / z, prob, E);
  }
  T kept = 0;
  for (int64_t j = 0; j < k; ++j) {
    w[j] = simd::exp_scalar(s.val[j] - m);
    kept += w[j];
  }
  // Mixtral / renormalised: softmax over the kept logits; else p[idx] = exp(l - m) / z.
  const T inv = (p.renormalize ? (kept > 0 ? T(1) / kept : T(0)) : T(1) / z) * scale;
  for (int64_t j = 0; j < k; ++j) w[j] *= inv;
}

// One token of sigmoid (DeepSeek-V3) routing. l [E], bias [E] (nullable) -> idx [k], w [k];
// prob [E] (nullable) receives the sigmoid scores.
template <class T>
void sigmoid_gate_row(const T* l, const T* bias, int64_t n, int64_t E, const GateParams& p,
                      int32_t* idx, T* w, T* prob, GateScratch<T>& s) {
  const int64_t k = p.top_k;
  for (int64_t e = 0; e < E; ++e) check_logit("moe_gate", l[e], n, e);
  T* sc = prob ? prob : s.score.data();  // s = sigmoid(l)
  simd::sigmoid(l, sc, E);
  T* sb = s.crit.data();  // selection criterion s + bias
  if (bias) {
    for (int64_t e = 0; e < E; ++e) sb[e] = sc[e] + bias[e];
  } else {
    std::copy(sc, sc + E, sb);
  }
  TopK<T> top(s.val.data(), idx, k);
  if (p.n_group <= 1) {
    for (int64_t e = 0; e < E; ++e) top.push(sb[e], static_cast<int32_t>(e));
  } else {
    // Group score = sum of its two largest biased scores; keep the topk_group best groups and
    // select among their experts only, scanning them in ascending index order.
    const int64_t G = p.n_group, gs = E / G;
    const T kNegInf = -std::numeric_limits<T>::infinity();
    for (int64_t g = 0; g < G; ++g) {
      T a = kNegInf, b = kNegInf;
      for (int64_t e = g * gs; e < (g + 1) * gs; ++e) {
        if (sb[e] > a) {
          b = a;
          a = sb[e];
        } else if (sb[e] > b) {
          b = sb[e];
        }
      }
      s.gscore[g] = gs > 1 ? a + b : a;
    }
    TopK<T> gtop(s.val.data(), s.gidx.data(), p.topk_group);
    for (int64_t g = 0; g < G; ++g) gtop.push(s.gscore[g], static_cast<int32_t>(g));
    std::sort(s.gidx.begin(), s.gidx.begin() + p.topk_group);  // topk_group <= n_group entries
    for (int64_t j = 0; j < p.topk_group; ++j) {
      const int64_t g = s.gidx[j];
      for (int64_t e = g * gs; e < (g + 1) * gs; ++e) top.push(sb[e], static_cast<int32_t>(e));
    }
  }
  T sum = 0;
  for (int64_t j = 0; j < k; ++j) {
    w[j] = sc[idx[j]];  // the unbiased score
    sum += w[j];
  }
  const T inv = (p.renormalize ? (sum > 0 ? T(1) / sum : T(0)) : T(1)) *
                static_cast<T>(p.routed_scaling_factor);
  for (int64_t j = 0; j < k; ++j) w[j] *= inv;
}

}  // namespace detail

// logits [N, E], bias [E] (sigmoid routing; may be empty) -> topk_idx [N, k] (int32),
// topk_weight [N, k], both in descending order of the selection criterion, ties to the lower
// expert index; probs [N, E] optional (softmax over all E, or the sigmoid scores).
// Raises effattn::Error on bad shapes or options (k > E, n_group not dividing E,
// topk_group > n_group, ...) and on NaN / +inf logits.
template <class T>
void moe_gate(TensorView<const T> logits, TensorView<const T> bias, TensorView<int32_t> topk_idx,
              TensorView<T> topk_weight, const GateParams& p, TensorView<T> probs = {}) {
  detail::check_gate_args("moe_gate", logits, bias, topk_idx, topk_weight, probs, p);
  const int64_t N = logits.size(0), E = logits.size(1), k = p.top_k;
  if (N == 0) return;
  Tensor<T> bias_c;  // contiguous copy of a strided bias
  const T* bias_p = nullptr;
  if (!bias.empty()) {
    bias_c = Tensor<T>::from(bias);
    bias_p = bias_c.data();
  }
  // ~16K scores per thread at least: smaller gates are not worth waking a thread for.
  const int threads = static_cast<int>(
      std::min<int64_t>(get_num_threads(p.num_threads), std::max<int64_t>(1, N * E / 16384)));
  parallel_for_range(
      0, N,
      [&](int64_t lo, int64_t hi) {
        detail::GateScratch<T> s(E, k, p.n_group);
        std::vector<T> w(k);
        for (int64_t n = lo; n < hi; ++n) {
          const T* l = logits.ptr(n);
          T* prob = probs.empty() ? nullptr : probs.ptr(n);
          if (p.score_func == ScoreFunc::kSoftmax) {
            detail::softmax_gate_row(l, n, E, p, s.idx.data(), w.data(), prob, s);
          } else {
            detail::sigmoid_gate_row(l, bias_p, n, E, p, s.idx.data(), w.data(), prob, s);
          }
          for (int64_t j = 0; j < k; ++j) {
            topk_idx(n, j) = s.idx[j];
            topk_weight(n, j) = w[j];
          }
        }
      },
      threads);
}

// Dense routing weights: combine [N, E] = 0 except combine[n, idx[n, j]] += w[n, j].
template <class T>
void combine_weights(TensorView<const int32_t> topk_idx, TensorView<const T> topk_weight,
                     TensorView<T> combine) {
  check_shape("combine_weights", "topk_idx", topk_idx, {-1, -1}, "[N, k]");
  const int64_t N = topk_idx.size(0), k = topk_idx.size(1);
  check_shape("combine_weights", "topk_weight", topk_weight, {N, k}, "[N, k]");
  check_shape("combine_weights", "combine", combine, {N, -1}, "[N, E]");
  const int64_t E = combine.size(1);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t e = 0; e < E; ++e) combine(n, e) = T(0);
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = topk_idx(n, j);
      check(e >= 0 && e < E, "combine_weights: topk_idx[", n, ", ", j, "] = ", e,
            " out of range [0, E = ", E, ")");
      combine(n, e) += topk_weight(n, j);
    }
  }
}

// Load-balancing loss, its HF form, router z-loss and per-expert counts (see RouterStats in
// params.hpp) from the logits and the selection the gate made.
template <class T>
RouterStats<T> router_stats(TensorView<const T> logits, TensorView<const int32_t> topk_idx,
                            const GateParams& p) {
  check_shape("router_stats", "logits", logits, {-1, -1}, "[N, E]");
  check_inner_contiguous("router_stats", "logits", logits);
  const int64_t N = logits.size(0), E = logits.size(1);
  check_shape("router_stats", "topk_idx", topk_idx, {N, -1}, "[N, k]");
  const int64_t k = topk_idx.size(1);
  RouterStats<T> r;
  r.counts.assign(E, 0);
  r.fraction.assign(E, T(0));
  r.mean_prob.assign(E, T(0));
  std::vector<T> buf(E);
  for (int64_t n = 0; n < N; ++n) {
    const T* l = logits.ptr(n);
    for (int64_t e = 0; e < E; ++e) detail::check_logit("router_stats", l[e], n, e);
    const T m = simd::reduce_max(l, E);
    const T z = simd::exp_sub_sum(l, m, buf.data(), E);  // buf = exp(l - m)
    const T lse = m + std::log(z);
    r.z_loss += lse * lse;
    if (p.score_func == ScoreFunc::kSoftmax) {
      simd::axpy(T(1) / z, buf.data(), r.mean_prob.data(), E);  // P += softmax(l)
    } else {
      simd::sigmoid(l, buf.data(), E);  // P += s / sum(s)
      simd::axpy(T(1) / simd::reduce_sum(buf.data(), E), buf.data(), r.mean_prob.data(), E);
    }
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = topk_idx(n, j);
      check(e >= 0 && e < E, "router_stats: topk_idx[", n, ", ", j, "] = ", e,
            " out of range [0, E = ", E, ")");
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

}  // namespace effattn::moe
