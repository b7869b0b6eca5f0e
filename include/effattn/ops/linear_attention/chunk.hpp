// Chunk form (prefill): per (sequence, head), chunks of C tokens, in order. For a chunk with
// rows i, j in [0, n), chunk-local cumulative log-gates G (chunk_gates.hpp), state S [Kf, V] at
// the chunk start and Q = scale phi(q), K = phi(k):
//
//   A[i, j]   = Q_i . (K_j * exp(G_i - G_j))           j <= i, 0 above     (intra, masked)
//   O         = (Q * exp(G)) S + A V                                          (output)
//   S        <- exp(G_last) * S + (K * exp(G_last - G))^T V                   (state passing)
//
// Stages per chunk: gather (feature map), gate cumsum, intra scores A, then output and state
// passing fused per column block of S (chunk_output_and_state in common/chunk_kernels.hpp: the
// two output products accumulate together, the block of S stays in cache for its update, the
// register tiles above the diagonal of A are skipped). The next chunk's rows are prefetched
// meanwhile. C = 16 by default: the state products (4 K V per token) are the same for any C,
// the intra products grow with C, and the small fused products lose little at n = 16.
//
// Scores: with a scalar gate exp(G_i - G_j) is a mask on A (apply_decay_mask). With a
// per-channel gate (GLA) the decay sits inside the dot product, so A is a product of factored
// rows Q_i exp(G_i - R) and K_j exp(R - G_j) against a reference R:
//   - R = the gate before the chunk (0) for the whole chunk when the chunk's total log-decay
//     span is at most kSpanLimit: the K factor is then at most exp(kSpanLimit) (no overflow)
//     and the Q factor at least exp(-kSpanLimit) (no harmful underflow); each product term is
//     the exact term up to rounding, so precision is that of the direct formula. The K factors
//     are stored transposed (channel_factors), so the score product and the state update
//     (Kd^T = Kr^T exp(G_last), no exp per element) read them as contiguous rows;
//   - otherwise sub-blocks of 16 rows with R = the gate just before the sub-block: the
//     blocks left of the diagonal have both factors <= 1, and a diagonal block whose own span
//     still exceeds the limit is evaluated term by term with exp(G_i - G_j), j <= i.
// No exponent the forms evaluate is positive except the bounded K factor above, so strong
// decay (g = -20) and long sequences stay finite; factors that underflow to 0 are exactly the
// contributions that are below the working precision.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "effattn/core/parallel.hpp"
#include "effattn/ops/common/chunk_gates.hpp"
#include "effattn/ops/common/chunk_kernels.hpp"
#include "effattn/ops/common/gemm.hpp"
#include "effattn/ops/linear_attention/common.hpp"
#include "effattn/ops/linear_attention/feature_maps.hpp"
#include "effattn/simd/simd.hpp"

namespace effattn {
namespace linattn_detail {

template <class T>
inline constexpr T kSpanLimit = sizeof(T) == 4 ? T(30) : T(300);
inline constexpr int64_t kSubBlock = 16;

// y[i] = x[i] * exp(a[i] - b[i])   (a or b null = 0)
template <class T>
inline void mul_exp_diff(const T* x, const T* a, const T* b, T* y, int64_t n) {
  int64_t i = 0;
#if EFFATTN_HAS_SIMD
  constexpr int64_t L = simd::kLanes<T>;
  const simd::Vec<T> zero(T(0));
  for (; i + L <= n; i += L) {
    const simd::Vec<T> va = a ? simd::load(a + i) : zero, vb = b ? simd::load(b + i) : zero;
    simd::store(y + i, simd::load(x + i) * simd::exp(va - vb));
  }
#endif
  for (; i < n; ++i) y[i] = x[i] * simd::exp_scalar((a ? a[i] : T(0)) - (b ? b[i] : T(0)));
}

// sum_k x[k] y[k] exp(a[k] - b[k])
template <class T>
inline T dot_exp_diff(const T* x, const T* y, const T* a, const T* b, int64_t n) {
  int64_t i = 0;
  T acc = T(0);
#if EFFATTN_HAS_SIMD
  constexpr int64_t L = simd::kLanes<T>;
  simd::Vec<T> s(T(0));
  for (; i + L <= n; i += L)
    s = xsimd::fma(simd::load(x + i) * simd::load(y + i),
                   simd::exp(simd::load(a + i) - simd::load(b + i)), s);
  acc = simd::hsum(s);
#endif
  for (; i < n; ++i) acc += x[i] * y[i] * simd::exp_scalar(a[i] - b[i]);
  return acc;
}

// Per-head scratch of the chunk form, sized once per call.
template <class T>
struct ChunkScratch {
  std::vector<T> Q, K, Vc, A, G, Qe, Kr, Kd, S, z, den, Gl, KrT, KdT, row;
  ChunkScratch(int64_t C, int64_t Kf, int64_t V, bool channel, bool vscale) {
    auto sz = [](int64_t n) { return static_cast<size_t>(n); };
    Q.resize(sz(C * Kf));
    K.resize(sz(C * Kf));
    if (vscale) Vc.resize(sz(C * V));
    A.resize(sz(C * C));
    G.resize(sz(channel ? C * Kf : C));
    Kd.resize(sz(C * Kf));
    if (channel) {
      Qe.resize(sz(C * Kf));
      Kr.resize(sz(C * Kf));
      KrT.resize(sz(Kf * C));
      KdT.resize(sz(Kf * C));
      row.resize(sz(Kf));
      Gl.resize(sz(Kf));
    }
    S.resize(sz(Kf * V));
    z.resize(sz(Kf));
    den.resize(sz(C));
  }
};

// Factored rows of a chunk whose log-decay span is at most kSpanLimit (see the file comment):
// Qe [n, Kf] = Q * exp(G), KrT [Kf, n] (ld ldt) = (K * exp(-G))^T, transposed so that the score
// product and the state update read it as contiguous rows. `row` [Kf] is scratch.
template <class T>
void channel_factors(int64_t n, int64_t Kf, const T* Q, const T* K, const T* G, T* Qe, T* KrT,
                     int64_t ldt, T* row) {
  for (int64_t i = 0; i < n; ++i) {
    const T *q = Q + i * Kf, *kk = K + i * Kf, *g = G + i * Kf;
    T* qe = Qe + i * Kf;
    int64_t k = 0;
#if EFFATTN_HAS_SIMD
    constexpr int64_t L = simd::kLanes<T>;
    for (; k + L <= Kf; k += L) {
      const simd::Vec<T> e = simd::exp(simd::load(g + k));  // e = exp(G_i) in (0, 1]
      simd::store(qe + k, simd::load(q + k) * e);           // Qe_i = Q_i e
      simd::store(row + k, simd::load(kk + k) / e);         // Kr_i = K_i / e <= K_i e^span
    }
#endif
    for (; k < Kf; ++k) {
      const T e = simd::exp_scalar(g[k]);
      qe[k] = q[k] * e;
      row[k] = kk[k] / e;
    }
    for (k = 0; k < Kf; ++k) KrT[k * ldt + i] = row[k];
  }
}

// The chunk's largest total log-decay, -min_k G_last[k].
template <class T>
T channel_span(int64_t n, int64_t Kf, const T* G) {
  T span = T(0);
  for (int64_t k = 0; k < Kf; ++k) span = std::max(span, -G[(n - 1) * Kf + k]);
  return span;
}

// Intra-chunk scores with per-channel gates for a chunk whose span exceeds kSpanLimit: A [n, n]
// (ld lda) from Q, K, G [n, Kf] (ld Kf) in 16-row sub-blocks (see the file comment). Also
// leaves Qe = Q * exp(G) [n, Kf] for the output product. Kr [n, Kf] is scratch.
template <class T>
void intra_channel_blocked(int64_t n, int64_t Kf, const T* Q, const T* K, const T* G, T* A,
                           int64_t lda, T* Qe, T* Kr) {
  const int64_t bs = std::min(kSubBlock, n);
  for (int64_t i0 = 0; i0 < n; i0 += bs) {
    const int64_t i1 = std::min(i0 + bs, n), ni = i1 - i0;
    const T* R = i0 == 0 ? nullptr : G + (i0 - 1) * Kf;  // reference gate row (null = 0)
    // Qr rows: Q_i exp(G_i - R) <= |Q_i|; for the first block this is Qe itself.
    T* Qr = Qe + i0 * Kf;
    for (int64_t i = i0; i < i1; ++i) mul_exp_diff(Q + i * Kf, G + i * Kf, R, Qe + i * Kf, Kf);
    T bspan = T(0);
    for (int64_t k = 0; k < Kf; ++k)
      bspan = std::max(bspan, (R ? R[k] : T(0)) - G[(i1 - 1) * Kf + k]);
    const int64_t jend = bspan <= kSpanLimit<T> ? i1 : i0;  // columns done by the product
    for (int64_t j = 0; j < jend; ++j) mul_exp_diff(K + j * Kf, R, G + j * Kf, Kr + j * Kf, Kf);
    if (jend > 0)  // A[I, 0:jend] = Qr Kr^T
      gemm<T>(ni, jend, Kf, Qr, Kf, Trans::kNo, Kr, Kf, Trans::kYes, A + i0 * lda, lda);
    for (int64_t i = i0; i < i1; ++i) {
      T* a = A + i * lda;
      if (jend == i0)  // diagonal block term by term: exponents G_i - G_j <= 0
        for (int64_t j = i0; j <= i; ++j)
          a[j] = dot_exp_diff(Q + i * Kf, K + j * Kf, G + i * Kf, G + j * Kf, Kf);
      std::fill(a + i + 1, a + n, T(0));
    }
    if (i0 > 0) {  // Qr was relative to R: restore Qe = Q exp(G) for these rows
      for (int64_t i = i0; i < i1; ++i)
        mul_exp_diff<T>(Q + i * Kf, G + i * Kf, nullptr, Qe + i * Kf, Kf);
    }
  }
}

// Unmasked, undecayed intra-chunk scores A[i, j] = scale phi(q_i).phi(k_j) [n, n] (ld lda) for
// a scalar or no decay, rows i, j <= i filled. Q, Kc [n, Kf] are the gathered scale phi(q),
// phi(k). Based computes them K-wide from q.k: A = scale (1 + s + s^2 / 2), s = q.k / sqrt(K).
template <class T>
void chunk_scores(const Problem<T>& p, const HeadIO<T>& io, int64_t c0, int64_t n, const T* Q,
                  const T* Kc, T* A, int64_t lda) {
  if (p.fm == FeatureMap::kBasedTaylor) {
    gemm<T>(n, n, p.K, io.q + c0 * io.q_st, io.q_st, Trans::kNo, io.k + c0 * io.k_st, io.k_st,
            Trans::kYes, A, lda);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j <= i; ++j)
        A[i * lda + j] = p.scale * feature_kernel_from_dot(p.fm, A[i * lda + j], p.K);
  } else {
    gemm<T>(n, n, p.Kf, Q, p.Kf, Trans::kNo, Kc, p.Kf, Trans::kYes, A, lda);
  }
}

// Scores shared by the v heads of one q/k head (SSD's groups): [Hqk, chunks, C, C], chunk c of
// sequence n at base[n] + c. Empty when not worth it or too big.
template <class T>
struct SharedScores {
  std::vector<T> buf;
  std::vector<int64_t> base;  // [N + 1] first global chunk of each sequence
  int64_t chunks = 0;
  const T* at(const Problem<T>& p, int64_t n, int64_t h) const {
    if (buf.empty()) return nullptr;
    return buf.data() + (p.qk_head(h) * chunks + base[n]) * p.chunk * p.chunk;
  }
};

// One (sequence, head), causal or not. `shared` (may be null): this head's precomputed
// chunk_scores, chunk c at shared + c C^2.
template <class T>
void chunk_head(const Problem<T>& p, const HeadIO<T>& io, const T* shared = nullptr) {
  const int64_t C = p.chunk, Kf = p.Kf, V = p.V, K = p.K;
  const bool channel = p.decay == DecayKind::kChannel, scalar = p.decay == DecayKind::kScalar;
  ChunkScratch<T> w(C, Kf, V, channel, io.vs != nullptr);
  T* S = w.S.data();  // [Kf, V]
  T* z = w.z.data();  // [Kf]
  for (int64_t i = 0; i < Kf; ++i) {
    z[i] = io.z0 ? io.z0[i * io.z0_st] : T(0);
    for (int64_t j = 0; j < V; ++j) S[i * V + j] = io.s0 ? io.s0[i * io.s0_k + j * io.s0_v] : T(0);
  }
  T* Q = w.Q.data();    // [C, Kf]
  T* Kc = w.K.data();   // [C, Kf]
  T* A = w.A.data();    // [C, C]
  T* G = w.G.data();    // [C] or [C, Kf]
  T* Kd = w.Kd.data();  // [C, Kf] decayed keys for the state update

  auto gather = [&](int64_t c0, int64_t n, bool need_q, bool need_k, const T*& vptr, int64_t& ldv) {
    for (int64_t i = 0; i < n; ++i) {
      if (need_q) apply_feature_map(p.fm, io.q + (c0 + i) * io.q_st, K, p.scale, Q + i * Kf);
      if (need_k) apply_feature_map(p.fm, io.k + (c0 + i) * io.k_st, K, T(1), Kc + i * Kf);
    }
    if (io.vs) {
      T* Vc = w.Vc.data();  // [C, V] = dt_t v_t
      for (int64_t i = 0; i < n; ++i) {
        const T c = io.vs[(c0 + i) * io.vs_st];
        const T* vr = io.v + (c0 + i) * io.v_st;
        for (int64_t j = 0; j < V; ++j) Vc[i * V + j] = c * vr[j];
      }
      vptr = Vc;
      ldv = V;
    } else {
      vptr = io.v + c0 * io.v_st;
      ldv = io.v_st;
    }
  };
  // The next chunk's input (and output) rows, prefetched during this chunk's products.
  auto next_chunk_rows = [&](int64_t c0) {
    PrefetchRows pf;
    if (c0 >= io.len) return pf;
    const int64_t e = sizeof(T);
    pf.rows = std::min(C, io.len - c0);
    pf.add(io.q + c0 * io.q_st, io.q_st * e, K * e);
    pf.add(io.k + c0 * io.k_st, io.k_st * e, K * e);
    if (channel) pf.add(io.g + c0 * io.g_st, io.g_st * e, Kf * e);
    pf.add(io.v + c0 * io.v_st, io.v_st * e, V * e);
    pf.add(io.o + c0 * io.o_st, io.o_st * e, V * e);
    return pf;
  };
  // Divides the output rows by scale phi(q).z + eps, den_i = Qe_i . z + sum_j A_ij.
  auto normalize_rows = [&](int64_t n, const T* Qe, const T* Ause, T* O) {
    for (int64_t i = 0; i < n; ++i) {
      T d = simd::dot(Qe + i * Kf, z, Kf);
      if (Ause) d += simd::reduce_sum(Ause + i * C, i + 1);
      simd::scale(T(1) / (d + p.eps), O + i * io.o_st, V);
    }
  };

  if (!p.causal) {
    // S = S0 + K^T V over the whole sequence, then O = Q S.
    for (int64_t c0 = 0; c0 < io.len; c0 += C) {
      const int64_t n = std::min(C, io.len - c0);
      const T* vp;
      int64_t ldv;
      gather(c0, n, false, true, vp, ldv);
      gemm<T>(Kf, V, n, Kc, Kf, Trans::kYes, vp, ldv, Trans::kNo, S, V, T(1), T(1));
      if (p.normalize)
        for (int64_t i = 0; i < n; ++i) simd::axpy(T(1), Kc + i * Kf, z, Kf);
    }
    for (int64_t c0 = 0; c0 < io.len; c0 += C) {
      const int64_t n = std::min(C, io.len - c0);
      const T* vp;
      int64_t ldv;
      gather(c0, n, true, false, vp, ldv);
      T* O = io.o + c0 * io.o_st;
      gemm<T>(n, V, Kf, Q, Kf, Trans::kNo, S, V, Trans::kNo, O, io.o_st);
      if (p.normalize) normalize_rows(n, Q, nullptr, O);
    }
  } else {
    for (int64_t c0 = 0; c0 < io.len; c0 += C) {
      const int64_t n = std::min(C, io.len - c0);
      const T* vp;
      int64_t ldv;
      gather(c0, n, true, true, vp, ldv);
      PrefetchRows pf = next_chunk_rows(c0 + C);
      // Gates: G = chunk-local inclusive cumsum of the log-gates.
      if (scalar) {
        if (io.g) {
          chunk_local_cumsum(io.g + c0 * io.g_st, n, io.g_st, n, G);
          if (io.gmul != T(1)) simd::scale(io.gmul, G, n);
        } else {
          for (int64_t i = 0; i < n; ++i) G[i] = io.gamma * T(i + 1);
        }
      } else if (channel) {
        chunk_local_cumsum(io.g + c0 * io.g_st, n, Kf, io.g_st, n, G, Kf);
      }
      // Intra-chunk scores A [n, n].
      const T* Qe = Q;
      bool one_block = false;
      if (channel) {
        Qe = w.Qe.data();
        one_block = channel_span(n, Kf, G) <= kSpanLimit<T>;
        if (one_block) {  // A = tril(Qe Kr^T): only the register tiles on or below the diagonal
          channel_factors(n, Kf, Q, Kc, G, w.Qe.data(), w.KrT.data(), C, w.row.data());
          const ProductTerm<T> qk{Qe, Kf, 1, w.KrT.data(), C, Kf, false};
          product_sum(n, 0, n, &qk, 1, A, C, true, static_cast<const T*>(nullptr), T(1), true);
        } else {
          intra_channel_blocked(n, Kf, Q, Kc, G, A, C, w.Qe.data(), w.Kr.data());
        }
      } else {
        if (shared) {  // copy the shared scores, lower triangle
          const T* src = shared + (c0 / C) * C * C;
          for (int64_t i = 0; i < n; ++i) std::copy(src + i * C, src + i * C + i + 1, A + i * C);
        } else {
          chunk_scores(p, io, c0, n, Q, Kc, A, C);
        }
        apply_decay_mask(A, C, n, scalar ? G : static_cast<const T*>(nullptr));
        if (scalar)  // Qe_i = Q_i exp(G_i)
          for (int64_t i = 0; i < n; ++i) simd::scale(simd::exp_scalar(G[i]), Q + i * Kf, Kf);
      }
      // Decayed keys and the state's decay: S <- diag(gamma) S + Kd^T V, Kd_j = K_j exp(G_last -
      // G_j).
      const T* Kuse = Kc;  // Kd_j[k] at Kuse[k * kd_k + j * kd_j]
      int64_t kd_k = 1, kd_j = Kf;
      T beta = T(1);
      const T* gamma = nullptr;
      if (scalar) {
        const T gl = G[n - 1];
        for (int64_t j = 0; j < n; ++j) {
          const T e = simd::exp_scalar(gl - G[j]);
          for (int64_t k = 0; k < Kf; ++k) Kd[j * Kf + k] = e * Kc[j * Kf + k];
        }
        Kuse = Kd;
        beta = simd::exp_scalar(gl);
      } else if (channel) {
        const T* gl = G + (n - 1) * Kf;
        T* el = w.Gl.data();  // exp(G_last) [Kf]
        simd::exp(gl, el, Kf);
        if (one_block) {  // Kd^T[k, :] = Kr^T[k, :] exp(G_last[k]): no exp per element
          for (int64_t k = 0; k < Kf; ++k) {
            const T *src = w.KrT.data() + k * C, ek = el[k];
            T* dst = w.KdT.data() + k * C;
            for (int64_t j = 0; j < n; ++j) dst[j] = ek * src[j];
          }
          Kuse = w.KdT.data();
          kd_k = C;
          kd_j = 1;
        } else {
          for (int64_t j = 0; j < n; ++j)
            mul_exp_diff(Kc + j * Kf, gl, G + j * Kf, Kd + j * Kf, Kf);
          Kuse = Kd;
        }
        gamma = el;
      }
      // O = Qe S + A V (written straight into o's rows), then the state passing.
      T* O = io.o + c0 * io.o_st;
      chunk_output_and_state(n, Kf, V, Qe, Kf, A, C, vp, ldv, Kuse, kd_k, kd_j, gamma, beta, S, O,
                             io.o_st, &pf);
      if (p.normalize) {
        normalize_rows(n, Qe, A, O);  // reads z before this chunk
        for (int64_t k = 0; k < Kf; ++k) z[k] *= gamma ? gamma[k] : beta;
        for (int64_t k = 0; k < Kf; ++k)  // z += sum_j Kd_j
          for (int64_t j = 0; j < n; ++j) z[k] += Kuse[k * kd_k + j * kd_j];
      }
    }
  }
  if (io.sT)
    for (int64_t i = 0; i < Kf; ++i)
      for (int64_t j = 0; j < V; ++j) io.sT[i * io.sT_k + j * io.sT_v] = S[i * V + j];
  if (io.zT)
    for (int64_t i = 0; i < Kf; ++i) io.zT[i * io.zT_st] = z[i];
}

// Precomputes the scores once per q/k head when several v heads share it (H > Hqk), the decay
// is scalar or none and the buffer stays under kSharedScoresMaxBytes; parallel over
// (q/k head, chunk).
inline constexpr double kSharedScoresMaxBytes = 256.0 * (1 << 20);
template <class T>
SharedScores<T> shared_scores(const Problem<T>& p, int threads) {
  SharedScores<T> sh;
  if (p.H == p.Hqk || p.decay == DecayKind::kChannel || !p.causal) return sh;
  const int64_t C = p.chunk;
  sh.base.assign(static_cast<size_t>(p.N + 1), 0);
  for (int64_t n = 0; n < p.N; ++n) sh.base[n + 1] = sh.base[n] + (p.len_of(n) + C - 1) / C;
  sh.chunks = sh.base[p.N];
  const double bytes = double(p.Hqk) * double(sh.chunks) * double(C * C) * sizeof(T);
  if (sh.chunks == 0 || bytes > kSharedScoresMaxBytes) return sh;
  sh.buf.resize(static_cast<size_t>(p.Hqk * sh.chunks * C * C));
  const int64_t group = p.H / p.Hqk;
  parallel_for(
      0, p.Hqk * sh.chunks,
      [&](int64_t item) {
        const int64_t hq = item / sh.chunks, gc = item % sh.chunks;
        const int64_t n = static_cast<int64_t>(
            std::upper_bound(sh.base.begin(), sh.base.end(), gc) - sh.base.begin() - 1);
        const HeadIO<T> io = head_io(p, n, hq * group);
        const int64_t c0 = (gc - sh.base[n]) * C, len = std::min(C, io.len - c0);
        std::vector<T> Q(static_cast<size_t>(len * p.Kf)), Kc(Q.size());
        for (int64_t i = 0; i < len; ++i) {
          apply_feature_map(p.fm, io.q + (c0 + i) * io.q_st, p.K, p.scale, Q.data() + i * p.Kf);
          apply_feature_map(p.fm, io.k + (c0 + i) * io.k_st, p.K, T(1), Kc.data() + i * p.Kf);
        }
        chunk_scores(p, io, c0, len, Q.data(), Kc.data(), sh.buf.data() + item * C * C, C);
      },
      threads);
  return sh;
}

}  // namespace linattn_detail
}  // namespace effattn
