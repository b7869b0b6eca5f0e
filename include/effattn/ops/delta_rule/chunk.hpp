// Delta rule, chunked form (prefill): per chunk of c <= C tokens the WY / UT representation,
// then the state passes from chunk to chunk with dense products (ops/common/gemm.hpp).
//
// Within a chunk (rows i, j = 0..c-1, Gc = chunk-local inclusive cumsum of the log-gates,
// per channel for KDA, S0 the state entering the chunk):
//   A  = strict_lower(diag(beta) [k_i . (exp(Gc_i - Gc_j) k_j)])          [c, c]
//   P  = lower      (scale [q_i . (exp(Gc_i - Gc_j) k_j)])                [c, c]
//   T  = (I + A)^{-1}                      forward substitution           [c, c]
//   W  = T diag(beta) (K * exp(Gc))        U = T diag(beta) V             [c, K], [c, V]
//   U <- U - W S0                                                        (the u_t of the chunk)
//   O  = scale (Q * exp(Gc)) S0 + P U                                     [c, V]
//   S  = diag(exp(Gc_last)) S0 + (K * exp(Gc_last - Gc))^T U              [K, V]
// Every exponent above is <= 0, except the per-channel (KDA) factorisation of A and P:
//   exp(Gc_i - Gc_j) = exp(Gc_i - ref) exp(ref - Gc_j),  ref = per-channel midpoint of Gc
// which turns A and P into two GEMMs. Its factors stay within exp(+-kSafe/2) because a KDA chunk
// ends early when some channel's decay within it would exceed kSafe (strong decay: shorter
// chunks, never overflow).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "effattn/core/parallel.hpp"
#include "effattn/ops/common/chunk_gates.hpp"
#include "effattn/ops/common/gemm.hpp"
#include "effattn/ops/delta_rule/params.hpp"
#include "effattn/simd/simd.hpp"

namespace effattn {
namespace delta_rule_detail {

// Largest per-channel log-decay range inside one KDA chunk: the factors exp(+-range/2) and
// their products with k (upper triangle, discarded) stay finite and normal.
template <class T>
constexpr T kda_safe_range() {
  return std::numeric_limits<T>::max_exponent > 200 ? T(600) : T(60);
}

// T = (I + A)^{-1} for strictly lower A [c, c] (row stride ld) by forward substitution:
// row i of (I + A) T = I gives T_i = e_i - sum_{j<i} A_ij T_j (T_j is zero past column j).
template <class T>
void unit_lower_inverse(const T* A, T* Tm, int64_t ld, int64_t c) {
  for (int64_t i = 0; i < c; ++i) {
    T* ti = Tm + i * ld;
    std::fill(ti, ti + c, T(0));
    ti[i] = T(1);
    const T* ai = A + i * ld;
    for (int64_t j = 0; j < i; ++j) {
      if (ai[j] != T(0)) simd::axpy(-ai[j], Tm + j * ld, ti, j + 1);
    }
  }
}

template <class T, DeltaRuleGate G>
void chunk_impl(const TensorView<const T>& q, const TensorView<const T>& k,
                const TensorView<const T>& v, const TensorView<const T>& beta,
                const TensorView<const T>& g, const TensorView<T>& o,
                const TensorView<const T>& initial_state, const TensorView<T>& final_state,
                const DeltaRuleParams<T>& p, const Problem& pr) {
  const TokenReader<T> rd(q, k, v, beta, g, pr, p);
  const int64_t K = pr.K, V = pr.V, C = p.chunk_size, KV = K + V;
  const T scale = default_scale(p, K);
  const T safe = kda_safe_range<T>();
  constexpr bool kChan = G == DeltaRuleGate::kChannel;
  const int64_t GK = kChan ? K : 1;  // gate row length

  parallel_for(
      0, pr.N * pr.HV,
      [&](int64_t task) {
        const int64_t n = task / pr.HV, hv = task % pr.HV, b = pr.batch(n);
        // Per-task scratch, allocated once.
        std::vector<T> S(K * V, T(0));  // [K, V] state
        std::vector<T> Qs(C * K);       // [C, K] scale * q
        std::vector<T> Kn(C * K);       // [C, K] k
        std::vector<T> LQ(2 * C * K);   // [2c, K] rows: k (or k exp(Gc-ref)), then scale q (...)
        std::vector<T> Kf(kChan ? C * K : 0);   // [C, K] k exp(ref - Gc) (KDA)
        std::vector<T> Qd(C * K);               // [C, K] scale q exp(Gc)
        std::vector<T> Kr(C * K);               // [C, K] k exp(Gc_last - Gc)
        std::vector<T> BKV(C * KV);             // [C, K + V] beta k exp(Gc) | beta v
        std::vector<T> WU(C * KV);              // [C, K + V] W | U
        std::vector<T> AP(2 * C * C);           // [2c, C] rows: A, then P
        std::vector<T> Tm(C * C);               // [C, C] (I + A)^{-1}
        std::vector<T> Gr(C * GK), Gc(C * GK);  // [C] or [C, K] log-gates, chunk-local cumsum
        std::vector<T> bt(C), e1(std::max(K, C)), e2(K), ref(K), mn(K), mx(K);
        if (!initial_state.empty())
          copy_state(initial_state.ptr(n, hv), initial_state.stride(2), S.data(), V, K, V);

        const int64_t t_begin = pr.begin(n), t_end = pr.end(n);
        for (int64_t t = t_begin; t < std::min(t_begin + C, t_end); ++t) rd.prefetch(b, t, hv);
        int64_t t0 = t_begin;
        while (t0 < t_end) {
          int64_t c = std::min(C, t_end - t0);
          if (p.snapshot_every > 0) {  // chunks end at every snapshot point
            const int64_t done = t0 - t_begin;
            c = std::min(c, p.snapshot_every - done % p.snapshot_every);
          }
          // Gates and their chunk-local cumsum; KDA cuts the chunk where the range gets unsafe.
          if constexpr (G == DeltaRuleGate::kScalar) {
            for (int64_t i = 0; i < c; ++i) Gr[i] = rd.gate(b, t0 + i, hv);
            chunk_local_cumsum(Gr.data(), c, int64_t(1), c, Gc.data());
          }
          if constexpr (kChan) {
            for (int64_t i = 0; i < c; ++i) rd.gate_row(b, t0 + i, hv, Gr.data() + i * K);
            chunk_local_cumsum(Gr.data(), c, K, K, c, Gc.data(), K);
            std::copy(Gc.begin(), Gc.begin() + K, mn.begin());
            std::copy(Gc.begin(), Gc.begin() + K, mx.begin());
            for (int64_t i = 1; i < c; ++i) {
              const T* gi = Gc.data() + i * K;
              T worst = 0;
              for (int64_t ch = 0; ch < K; ++ch)
                worst = std::max(worst, std::max(mx[ch], gi[ch]) - std::min(mn[ch], gi[ch]));
              if (!(worst <= safe)) {
                c = i;
                break;
              }
              for (int64_t ch = 0; ch < K; ++ch) {
                mn[ch] = std::min(mn[ch], gi[ch]);
                mx[ch] = std::max(mx[ch], gi[ch]);
              }
            }
            for (int64_t ch = 0; ch < K; ++ch) ref[ch] = T(0.5) * (mn[ch] + mx[ch]);
          }
          const T* g_last = Gc.data() + (c - 1) * GK;
          for (int64_t t = t0 + c; t < std::min(t0 + c + C, t_end); ++t) rd.prefetch(b, t, hv);

          // Gather: Qs, Kn, beta, beta v; then the decayed forms.
          for (int64_t i = 0; i < c; ++i) {
            const int64_t t = t0 + i;
            T* qi = Qs.data() + i * K;
            T* ki = Kn.data() + i * K;
            rd.q_row(b, t, hv, qi, scale);
            rd.k_row(b, t, hv, ki);
            const T bi = rd.beta(b, t, hv);
            bt[i] = bi;
            const T* vi = rd.v_row(b, t, hv);
            T* bkv = BKV.data() + i * KV;
            for (int64_t x = 0; x < V; ++x) bkv[K + x] = bi * vi[x];
            T* qd = Qd.data() + i * K;
            T* kr = Kr.data() + i * K;
            T* lk = LQ.data() + i * K;        // row i: key side of A and P
            T* lq = LQ.data() + (c + i) * K;  // row c + i: query side of P
            if constexpr (G == DeltaRuleGate::kNone) {
              std::copy(qi, qi + K, qd);
              std::copy(ki, ki + K, kr);
              for (int64_t x = 0; x < K; ++x) bkv[x] = bi * ki[x];
              std::copy(ki, ki + K, lk);
              std::copy(qi, qi + K, lq);
            }
            if constexpr (G == DeltaRuleGate::kScalar) {
              const T ei = std::exp(Gc[i]), ri = std::exp(g_last[0] - Gc[i]);
              for (int64_t x = 0; x < K; ++x) {
                qd[x] = ei * qi[x];
                kr[x] = ri * ki[x];
                bkv[x] = bi * ei * ki[x];
              }
              std::copy(ki, ki + K, lk);
              std::copy(qi, qi + K, lq);
            }
            if constexpr (kChan) {
              const T* gi = Gc.data() + i * K;
              T* kf = Kf.data() + i * K;
              // e1 = exp(Gc_i), e2 = exp(Gc_last - Gc_i): both <= 1
              for (int64_t x = 0; x < K; ++x) e2[x] = g_last[x] - gi[x];
              simd::exp(gi, e1.data(), K);
              simd::exp(e2.data(), e2.data(), K);
              for (int64_t x = 0; x < K; ++x) {
                qd[x] = e1[x] * qi[x];
                kr[x] = e2[x] * ki[x];
                bkv[x] = bi * e1[x] * ki[x];
              }
              // e1 = exp(Gc_i - ref) in [exp(-safe/2), exp(safe/2)]
              for (int64_t x = 0; x < K; ++x) e1[x] = gi[x] - ref[x];
              simd::exp(e1.data(), e1.data(), K);
              for (int64_t x = 0; x < K; ++x) {
                lk[x] = e1[x] * ki[x];
                lq[x] = e1[x] * qi[x];
                kf[x] = ki[x] / e1[x];
              }
            }
          }

          // [A'; P'] = [Kl; Ql] Kf^T  [2c, c], then masks (and, scalar gate, decays).
          const T* kf = kChan ? Kf.data() : Kn.data();
          gemm(2 * c, c, K, LQ.data(), K, Trans::kNo, kf, K, Trans::kYes, AP.data(), C);
          T* A = AP.data();
          T* P = AP.data() + c * C;
          if constexpr (G == DeltaRuleGate::kScalar) {
            // A[i, j] *= exp(Gc_i - Gc_j) (j < i), P[i, j] *= exp(Gc_i - Gc_j) (j <= i), else 0.
            // The decay row is computed once for both, with the vector exp.
            for (int64_t i = 0; i < c; ++i) {
              T* ai = A + i * C;
              T* pi = P + i * C;
              for (int64_t j = 0; j <= i; ++j) e1[j] = Gc[i] - Gc[j];
              simd::exp(e1.data(), e1.data(), i + 1);
              simd::mul(ai, e1.data(), ai, i);
              simd::mul(pi, e1.data(), pi, i + 1);
              std::fill(ai + i, ai + c, T(0));
              std::fill(pi + i + 1, pi + c, T(0));
            }
          } else {
            apply_decay_mask(A, C, c, static_cast<const T*>(nullptr), MaskDiag::kStrict);
            apply_decay_mask(P, C, c, static_cast<const T*>(nullptr), MaskDiag::kInclusive);
          }
          for (int64_t i = 0; i < c; ++i) simd::scale(bt[i], A + i * C, i);  // A = diag(beta) A'

          // WY / UT: T = (I + A)^{-1};  [W | U] = T [beta k exp(Gc) | beta v]
          unit_lower_inverse(A, Tm.data(), C, c);
          gemm(c, KV, c, Tm.data(), C, Trans::kNo, BKV.data(), KV, Trans::kNo, WU.data(), KV);
          T* W = WU.data();
          T* U = WU.data() + K;
          // U <- U - W S0
          gemm(c, V, K, W, KV, Trans::kNo, S.data(), V, Trans::kNo, U, KV, T(-1), T(1));
          // O = Qd S0 + P U   (straight into o's rows)
          T* out = o.ptr(b, t0, hv);
          const int64_t ldo = o.stride(1);
          gemm(c, V, K, Qd.data(), K, Trans::kNo, S.data(), V, Trans::kNo, out, ldo);
          gemm(c, V, c, P, C, Trans::kNo, U, KV, Trans::kNo, out, ldo, T(1), T(1));
          // S = diag(exp(Gc_last)) S0 + Kr^T U
          if constexpr (G == DeltaRuleGate::kScalar)
            simd::scale(std::exp(g_last[0]), S.data(), K * V);
          if constexpr (kChan) {
            for (int64_t r = 0; r < K; ++r) simd::scale(std::exp(g_last[r]), S.data() + r * V, V);
          }
          gemm(K, V, c, Kr.data(), K, Trans::kYes, U, KV, Trans::kNo, S.data(), V, T(1), T(1));

          t0 += c;
          const int64_t done = t0 - t_begin;
          if (p.snapshot_every > 0 && done % p.snapshot_every == 0) {
            copy_state(S.data(), V, p.snapshots.ptr(n, done / p.snapshot_every - 1, hv),
                       p.snapshots.stride(3), K, V);
          }
        }
        if (!final_state.empty())
          copy_state(S.data(), V, final_state.ptr(n, hv), final_state.stride(2), K, V);
      },
      p.num_threads);
}

}  // namespace delta_rule_detail

// Chunked form; same arguments and results as delta_rule_naive (params.chunk_size = C).
template <class T>
void delta_rule_chunk(TensorView<const T> q, TensorView<const T> k, TensorView<const T> v,
                      TensorView<const T> beta, TensorView<const T> g, TensorView<T> o,
                      TensorView<const T> initial_state = {}, TensorView<T> final_state = {},
                      const DeltaRuleParams<T>& p = {}) {
  using namespace delta_rule_detail;
  const Problem pr =
      validate("delta_rule_chunk", q, k, v, beta, g, o, initial_state, final_state, p);
  switch (pr.gate) {
    case DeltaRuleGate::kNone:
      chunk_impl<T, DeltaRuleGate::kNone>(q, k, v, beta, g, o, initial_state, final_state, p, pr);
      break;
    case DeltaRuleGate::kScalar:
      chunk_impl<T, DeltaRuleGate::kScalar>(q, k, v, beta, g, o, initial_state, final_state, p, pr);
      break;
    case DeltaRuleGate::kChannel:
      chunk_impl<T, DeltaRuleGate::kChannel>(q, k, v, beta, g, o, initial_state, final_state, p,
                                             pr);
      break;
  }
}

}  // namespace effattn
