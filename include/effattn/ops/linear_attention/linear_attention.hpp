// Linear attention, simple GLA (RetNet, Lightning) and GLA: one gated-linear-recurrence engine
// (common.hpp) with three forms that agree — naive (reference), recurrent (decode), chunk
// (prefill) — and a dispatcher choosing per sequence.
//
//   linear_attention  S_t = S_{t-1} + phi(k_t) v_t^T                  (+ normalize, non-causal)
//   simple_gla        S_t = exp(g_t) S_{t-1} + k_t v_t^T              g [B, T, H] or gamma [H]
//   gla               S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T        g [B, T, H, K]
//   o_t = scale S_t^T phi(q_t)
//
// q, k [B, T, H, K] (q/k may have fewer heads than v: Hqk divides H), v [B, T, H, V],
// o [B, T, H, V] written by the caller's view; states [N, H, Kf, V] (N = B, or the number of
// sequences with cu_seqlens), z [N, H, Kf]. Optional views may be empty. initial_state and
// final_state may be the same buffer (in-place decode); otherwise they must not overlap.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "effattn/core/error.hpp"
#include "effattn/core/parallel.hpp"
#include "effattn/core/tensor.hpp"
#include "effattn/ops/linear_attention/chunk.hpp"
#include "effattn/ops/linear_attention/common.hpp"
#include "effattn/ops/linear_attention/feature_maps.hpp"
#include "effattn/ops/linear_attention/naive.hpp"
#include "effattn/ops/linear_attention/recurrent.hpp"

namespace effattn {
namespace linattn_detail {

// Runs a validated problem with the requested form (kAuto: per sequence, by length).
template <class T>
void run(const Problem<T>& p) {
  if (p.form == LinearAttentionForm::kNaive) return run_naive(p);
  const bool force_chunk = p.form == LinearAttentionForm::kChunk || !p.causal;
  const bool force_rec = p.form == LinearAttentionForm::kRecurrent && p.causal;
  // Tiny calls (a decode step of a few small heads) run on the calling thread: waking a team
  // costs more than the work.
  const double work = double(p.B) * double(p.T_) * double(p.H) * double(p.Kf) * double(p.V);
  const int threads = work < kMinParallelWork ? 1 : p.threads;
  int64_t max_len = 0;
  for (int64_t n = 0; n < p.N; ++n) max_len = std::max(max_len, p.len_of(n));
  const bool any_chunk = !force_rec && (force_chunk || max_len >= kAutoChunkMinLen);
  const SharedScores<T> shared = any_chunk ? shared_scores(p, threads) : SharedScores<T>();
  // Tasks: groups of heads of one sequence (heads_per_task).
  const int64_t hpt = heads_per_task(p, get_num_threads(threads)), groups = (p.H + hpt - 1) / hpt;
  parallel_for(
      0, p.N * groups,
      [&](int64_t i) {
        const int64_t n = i / groups, h0 = i % groups * hpt, h1 = std::min(p.H, h0 + hpt);
        const int64_t len = p.len_of(n);
        if (force_rec || (!force_chunk && len < kAutoChunkMinLen)) {
          for (int64_t h = h0; h < h1; ++h) recurrent_head(p, head_io(p, n, h));
        } else {
          chunk_heads(p, n, h0, h1, shared);
        }
      },
      threads);
}

template <class T>
void fill_common(Problem<T>& p, const LinearAttentionParams<T>& prm) {
  p.fm = prm.feature_map;
  p.normalize = prm.normalize;
  p.causal = prm.causal;
  p.eps = prm.eps;
  p.chunk = prm.chunk_size;
  p.threads = prm.num_threads;
  p.form = prm.form;
}

template <class T>
void finish(Problem<T>& p, const LinearAttentionParams<T>& prm) {
  validate(p, prm.cu_seqlens);
  p.scale = prm.scale > T(0) ? prm.scale : T(1) / std::sqrt(T(p.Kf));
  run(p);
}

}  // namespace linattn_detail

// Linear attention (no decay): feature map, normalize with the z state, causal or not.
// States: initial_state / final_state [N, H, Kf, V], z0 / z_final [N, H, Kf] (normalize only).
template <class T>
void linear_attention(TensorView<const T> q, TensorView<const T> k, TensorView<const T> v,
                      TensorView<T> o, const LinearAttentionParams<T>& params = {},
                      TensorView<const T> initial_state = {}, TensorView<T> final_state = {},
                      TensorView<const T> z0 = {}, TensorView<T> z_final = {}) {
  linattn_detail::Problem<T> p;
  p.op = "linear_attention";
  p.q = q, p.k = k, p.v = v, p.o = o;
  p.s0 = initial_state, p.sT = final_state, p.z0 = z0, p.zT = z_final;
  p.decay = DecayKind::kNone;
  linattn_detail::fill_common(p, params);
  check(params.gamma.empty(), p.op, ": gamma is a simple_gla option");
  linattn_detail::finish(p, params);
}

// Simple GLA: scalar decay per head and token, g [B, T, H] (log space, <= 0), or, with g empty,
// a constant per-head log decay params.gamma [H] (RetNet: gamma_h = log(1 - 2^(-5-h))).
template <class T>
void simple_gla(TensorView<const T> q, TensorView<const T> k, TensorView<const T> v,
                TensorView<const T> g, TensorView<T> o, const LinearAttentionParams<T>& params = {},
                TensorView<const T> initial_state = {}, TensorView<T> final_state = {},
                TensorView<const T> z0 = {}, TensorView<T> z_final = {}) {
  linattn_detail::Problem<T> p;
  p.op = "simple_gla";
  p.q = q, p.k = k, p.v = v, p.o = o, p.g = g;
  p.s0 = initial_state, p.sT = final_state, p.z0 = z0, p.zT = z_final;
  p.decay = DecayKind::kScalar;
  linattn_detail::fill_common(p, params);
  if (g.empty()) {
    check(v.ndim() == 4 && static_cast<int64_t>(params.gamma.size()) == v.size(2), p.op,
          ": g is empty, so params.gamma must hold one log decay per head (has ",
          params.gamma.size(), ", v has shape ", linattn_detail::shape_str(v), ")");
    p.gamma = params.gamma.data();
  } else {
    check(params.gamma.empty(), p.op, ": give either g or params.gamma, not both");
  }
  linattn_detail::finish(p, params);
}

// GLA: per-channel decay g [B, T, H, K] (log space, <= 0).
template <class T>
void gla(TensorView<const T> q, TensorView<const T> k, TensorView<const T> v, TensorView<const T> g,
         TensorView<T> o, const LinearAttentionParams<T>& params = {},
         TensorView<const T> initial_state = {}, TensorView<T> final_state = {},
         TensorView<const T> z0 = {}, TensorView<T> z_final = {}) {
  linattn_detail::Problem<T> p;
  p.op = "gla";
  p.q = q, p.k = k, p.v = v, p.o = o, p.g = g;
  p.s0 = initial_state, p.sT = final_state, p.z0 = z0, p.zT = z_final;
  p.decay = DecayKind::kChannel;
  linattn_detail::fill_common(p, params);
  check(params.gamma.empty(), p.op, ": gamma is a simple_gla option");
  linattn_detail::finish(p, params);
}

// Convenience forms returning o [B, T, H, V].
template <class T>
Tensor<T> linear_attention(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                           const LinearAttentionParams<T>& params = {}) {
  check(q.ndim() == 4 && v.ndim() == 4, "linear_attention: q and v must be [B, T, H, *]");
  Tensor<T> o({q.size(0), q.size(1), v.size(2), v.size(3)});
  linear_attention<T>(q.view(), k.view(), v.view(), o.view(), params);
  return o;
}

}  // namespace effattn
