// Chunk form (prefill): per (sequence, head), chunks of C tokens, in order. For a chunk with
// rows i, j in [0, n), chunk-local cumulative log-gates G (chunk_gates.hpp), state S [Kf, V] at
// the chunk start and Q = scale phi(q), K = phi(k):
//
//   A[i, j]   = Q_i . (K_j * exp(G_i - G_j))           j <= i, 0 above     (intra, masked)
//   O         = (Q * exp(G)) S + A V                                          (output)
//   S        <- exp(G_last) * S + (K * exp(G_last - G))^T V                   (state passing)
//
// Stages per chunk (causal_chunk): gather (feature map; the identity map reads q / k in place
// and folds its scale into the products), gate cumsum, intra scores A, then output and state
// passing fused per column block of S (chunk_output_and_state in common/chunk_kernels.hpp: the
// two output products accumulate together, the block of S stays in cache for its update, the
// register tiles above the diagonal of A are skipped). C = 16 by default: the state products
// (4 K V per token) are the same for any C, the intra products grow with C, and the small fused
// products lose little at n = 16.
//
// Tasks (chunk_heads): a task runs a group of neighbouring heads of one sequence in lockstep, a
// block of tokens at a time (each head a chunk at a time over the block), and prefetches the
// next block's rows of all its heads meanwhile. In [B, T, H, K] the rows of one head are H K
// elements apart (a new 4 KB page per row at H = 16, K = 64): a head alone turns a long prefill
// into one TLB miss and one short prefetch stream per row, and its cost grew faster than T;
// the group reads each token row of its heads as one contiguous piece.
//
// Scores: with a scalar gate exp(G_i - G_j) is a mask on A: e_i / e_j with e = exp(G) (n exps,
// not n^2 / 2) when |G| <= kSpanLimit in the chunk, else exp per element (apply_decay_mask).
// With a per-channel gate (GLA) the decay sits inside the dot product, so A is a product of
// factored rows Q_i exp(G_i - R) and K_j exp(R - G_j) against a reference R:
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
#include <type_traits>
#include <vector>

#include "effattn/core/parallel.hpp"
#include "effattn/ops/common/chunk_gates.hpp"
#include "effattn/ops/common/chunk_kernels.hpp"
#include "effattn/ops/common/gemm.hpp"
#include "effattn/ops/linear_attention/common.hpp"
#include "effattn/ops/linear_attention/feature_maps.hpp"
#include "effattn/simd/simd.hpp"

#if EFFATTN_HAS_SIMD && defined(__AVX512F__)
#include <immintrin.h>
#endif

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

// y[i] = a x[i]
template <class T>
inline void scale_to(T a, const T* x, T* y, int64_t n) {
  int64_t i = 0;
#if EFFATTN_HAS_SIMD
  constexpr int64_t L = simd::kLanes<T>;
  const simd::Vec<T> va(a);
  for (; i + L <= n; i += L) simd::store(y + i, va * simd::load(x + i));
#endif
  for (; i < n; ++i) y[i] = a * x[i];
}

// y[i] *= a r[i]
template <class T>
inline void scale_mul(T a, const T* r, T* y, int64_t n) {
  int64_t i = 0;
#if EFFATTN_HAS_SIMD
  constexpr int64_t L = simd::kLanes<T>;
  const simd::Vec<T> va(a);
  for (; i + L <= n; i += L) simd::store(y + i, simd::load(y + i) * (va * simd::load(r + i)));
#endif
  for (; i < n; ++i) y[i] *= a * r[i];
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

// Scratch of the chunk form, shared by the heads of a task.
template <class T>
struct ChunkScratch {
  std::vector<T> Q, K, Vc, A, G, Qe, Kr, Kd, inv, Gl, KrT, KdT, row;
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
      Gl.resize(sz(Kf));
    }
    inv.resize(sz(C));
    row.resize(sz(std::max(C, Kf)));
  }
};

// dst [cols, rows] (ld ldd) = src [rows, cols] (ld lds)^T. Whole 16 x 16 float blocks go
// through registers with AVX-512 (the score product and the state update want the K factors as
// rows over the chunk's tokens); the rest element by element.
template <class T>
void transpose(int64_t rows, int64_t cols, const T* src, int64_t lds, T* dst, int64_t ldd) {
  int64_t r0 = 0, c0 = 0;
#if EFFATTN_HAS_SIMD && defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    for (; r0 + 16 <= rows; r0 += 16) {
      for (c0 = 0; c0 + 16 <= cols; c0 += 16) {
        __m512 r[16], t[16];
        for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + (r0 + i) * lds + c0);
        // Pairs of rows interleaved within 128-bit lanes: t[2i] = (a0 b0 a1 b1 | a4 b4 ..).
        for (int i = 0; i < 8; ++i) {
          t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
          t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        // Quads: r[4i + m] lane l = column 4 l + m of rows 4i .. 4i + 3.
        for (int i = 0; i < 4; ++i) {
          const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 2]);
          const __m512d c = _mm512_castps_pd(t[4 * i + 1]), d = _mm512_castps_pd(t[4 * i + 3]);
          r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
          r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
          r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
          r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
        }
        // 4 x 4 transpose of the 128-bit lanes: output row 4 l + m = lane l of r[m], r[4 + m],
        // r[8 + m], r[12 + m].
        for (int m = 0; m < 4; ++m) {
          const __m512 v0 = _mm512_shuffle_f32x4(r[m], r[4 + m], 0x44);
          const __m512 v1 = _mm512_shuffle_f32x4(r[m], r[4 + m], 0xEE);
          const __m512 v2 = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0x44);
          const __m512 v3 = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0xEE);
          _mm512_storeu_ps(dst + (c0 + m) * ldd + r0, _mm512_shuffle_f32x4(v0, v2, 0x88));
          _mm512_storeu_ps(dst + (c0 + 4 + m) * ldd + r0, _mm512_shuffle_f32x4(v0, v2, 0xDD));
          _mm512_storeu_ps(dst + (c0 + 8 + m) * ldd + r0, _mm512_shuffle_f32x4(v1, v3, 0x88));
          _mm512_storeu_ps(dst + (c0 + 12 + m) * ldd + r0, _mm512_shuffle_f32x4(v1, v3, 0xDD));
        }
      }
      for (int64_t i = r0; i < r0 + 16; ++i)  // columns past the last whole block
        for (int64_t j = c0; j < cols; ++j) dst[j * ldd + i] = src[i * lds + j];
    }
  }
#endif
  for (int64_t i = r0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) dst[j * ldd + i] = src[i * lds + j];
  (void)c0;
}

// Factored rows of a chunk whose log-decay span is at most kSpanLimit (see the file comment):
// Qe [n, Kf] = qs Q * exp(G), KrT [Kf, n] (ld ldt) = (K * exp(-G))^T, transposed so that the
// score product and the state update read it as contiguous rows. Q, K rows at stride ldq, ldk
// (read in place for the identity map); Kr [n, Kf] is scratch.
template <class T>
void channel_factors(int64_t n, int64_t Kf, const T* Q, int64_t ldq, T qs, const T* K, int64_t ldk,
                     const T* G, T* Qe, T* Kr, T* KrT, int64_t ldt) {
  for (int64_t i = 0; i < n; ++i) {
    const T *q = Q + i * ldq, *kk = K + i * ldk, *g = G + i * Kf;
    T *qe = Qe + i * Kf, *kr = Kr + i * Kf;
    int64_t k = 0;
#if EFFATTN_HAS_SIMD
    constexpr int64_t L = simd::kLanes<T>;
    const simd::Vec<T> vqs(qs);
    for (; k + L <= Kf; k += L) {
      const simd::Vec<T> e = simd::exp(simd::load(g + k));  // e = exp(G_i) in (0, 1]
      simd::store(qe + k, simd::load(q + k) * (vqs * e));   // Qe_i = qs Q_i e
      simd::store(kr + k, simd::load(kk + k) / e);          // Kr_i = K_i / e <= K_i e^span
    }
#endif
    for (; k < Kf; ++k) {
      const T e = simd::exp_scalar(g[k]);
      qe[k] = q[k] * (qs * e);
      kr[k] = kk[k] / e;
    }
  }
  transpose(n, Kf, Kr, Kf, KrT, ldt);
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
// a scalar or no decay, rows i, j <= i filled. Q, Kc: rows of qs phi(q) and phi(k) at stride
// ldq, ldk (the gathered rows, or q / k in place for the identity map). Based computes them
// K-wide from q.k: A = scale (1 + s + s^2 / 2), s = q.k / sqrt(K).
template <class T>
void chunk_scores(const Problem<T>& p, const HeadIO<T>& io, int64_t c0, int64_t n, const T* Q,
                  int64_t ldq, T qs, const T* Kc, int64_t ldk, T* A, int64_t lda) {
  if (p.fm == FeatureMap::kBasedTaylor) {
    gemm<T>(n, n, p.K, io.q + c0 * io.q_st, io.q_st, Trans::kNo, io.k + c0 * io.k_st, io.k_st,
            Trans::kYes, A, lda);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j <= i; ++j)
        A[i * lda + j] = p.scale * feature_kernel_from_dot(p.fm, A[i * lda + j], p.K);
  } else {
    gemm<T>(n, n, p.Kf, Q, ldq, Trans::kNo, Kc, ldk, Trans::kYes, A, lda, qs);
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
        T* A = sh.buf.data() + item * C * C;
        if (p.fm == FeatureMap::kIdentity) {
          chunk_scores(p, io, c0, len, io.q + c0 * io.q_st, io.q_st, p.scale, io.k + c0 * io.k_st,
                       io.k_st, A, C);
          return;
        }
        std::vector<T> Q(static_cast<size_t>(len * p.Kf)), Kc(Q.size());
        for (int64_t i = 0; i < len; ++i) {
          apply_feature_map(p.fm, io.q + (c0 + i) * io.q_st, p.K, p.scale, Q.data() + i * p.Kf);
          apply_feature_map(p.fm, io.k + (c0 + i) * io.k_st, p.K, T(1), Kc.data() + i * p.Kf);
        }
        chunk_scores(p, io, c0, len, Q.data(), p.Kf, T(1), Kc.data(), p.Kf, A, C);
      },
      threads);
  return sh;
}

// Per-head state of the chunk form: S [Kf, V] and z [Kf], loaded from s0 / z0 (or 0).
template <class T>
struct HeadState {
  HeadIO<T> io;
  const T* shared = nullptr;  // this head's shared chunk_scores (chunk c at shared + c C^2)
  std::vector<T> S, z;
  void load(const Problem<T>& p, const HeadIO<T>& io_, const T* shared_) {
    io = io_;
    shared = shared_;
    S.assign(static_cast<size_t>(p.Kf * p.V), T(0));
    z.assign(static_cast<size_t>(p.Kf), T(0));
    for (int64_t i = 0; i < p.Kf; ++i) {
      if (io.z0) z[i] = io.z0[i * io.z0_st];
      if (io.s0)
        for (int64_t j = 0; j < p.V; ++j) S[i * p.V + j] = io.s0[i * io.s0_k + j * io.s0_v];
    }
  }
  void store(const Problem<T>& p) const {
    for (int64_t i = 0; i < p.Kf; ++i) {
      if (io.zT) io.zT[i * io.zT_st] = z[i];
      if (io.sT)
        for (int64_t j = 0; j < p.V; ++j) io.sT[i * io.sT_k + j * io.sT_v] = S[i * p.V + j];
    }
  }
};

// Gathers chunk [c0, c0 + n) of one head: Q = scale phi(q), Kc = phi(k) (when asked) and the
// v rows (vptr / ldv: in place, or dt-scaled into w.Vc for SSD).
template <class T>
void gather_chunk(const Problem<T>& p, const HeadIO<T>& io, ChunkScratch<T>& w, int64_t c0,
                  int64_t n, bool need_q, bool need_k, const T*& vptr, int64_t& ldv) {
  for (int64_t i = 0; i < n; ++i) {
    if (need_q)
      apply_feature_map(p.fm, io.q + (c0 + i) * io.q_st, p.K, p.scale, w.Q.data() + i * p.Kf);
    if (need_k)
      apply_feature_map(p.fm, io.k + (c0 + i) * io.k_st, p.K, T(1), w.K.data() + i * p.Kf);
  }
  if (io.vs) {
    T* Vc = w.Vc.data();  // [C, V] = dt_t v_t
    for (int64_t i = 0; i < n; ++i) {
      const T c = io.vs[(c0 + i) * io.vs_st];
      const T* vr = io.v + (c0 + i) * io.v_st;
      for (int64_t j = 0; j < p.V; ++j) Vc[i * p.V + j] = c * vr[j];
    }
    vptr = Vc;
    ldv = p.V;
  } else {
    vptr = io.v + c0 * io.v_st;
    ldv = io.v_st;
  }
}

// Divides the output rows O [n, V] (ld ldo) by scale phi(q).z + eps, den_i = Qe_i . z +
// sum_{j <= i} A_ij (A [n, n] ld lda, may be null).
template <class T>
void normalize_rows(const Problem<T>& p, int64_t n, const T* Qe, const T* z, const T* A,
                    int64_t lda, T* O, int64_t ldo) {
  for (int64_t i = 0; i < n; ++i) {
    T d = simd::dot(Qe + i * p.Kf, z, p.Kf);
    if (A) d += simd::reduce_sum(A + i * lda, i + 1);
    simd::scale(T(1) / (d + p.eps), O + i * ldo, p.V);
  }
}

// Non-causal form of one (sequence, head): S = S0 + K^T V over the whole sequence, then O = Q S.
template <class T>
void noncausal_head(const Problem<T>& p, HeadState<T>& hs, ChunkScratch<T>& w) {
  const HeadIO<T>& io = hs.io;
  const int64_t C = p.chunk, Kf = p.Kf, V = p.V;
  T *S = hs.S.data(), *z = hs.z.data();
  for (int64_t c0 = 0; c0 < io.len; c0 += C) {
    const int64_t n = std::min(C, io.len - c0);
    const T* vp;
    int64_t ldv;
    gather_chunk(p, io, w, c0, n, false, true, vp, ldv);
    const T* Kc = w.K.data();
    gemm<T>(Kf, V, n, Kc, Kf, Trans::kYes, vp, ldv, Trans::kNo, S, V, T(1), T(1));
    if (p.normalize)
      for (int64_t i = 0; i < n; ++i) simd::axpy(T(1), Kc + i * Kf, z, Kf);
  }
  for (int64_t c0 = 0; c0 < io.len; c0 += C) {
    const int64_t n = std::min(C, io.len - c0);
    const T* vp;
    int64_t ldv;
    gather_chunk(p, io, w, c0, n, true, false, vp, ldv);
    T* O = io.o + c0 * io.o_st;
    gemm<T>(n, V, Kf, w.Q.data(), Kf, Trans::kNo, S, V, Trans::kNo, O, io.o_st);
    if (p.normalize)
      normalize_rows(p, n, w.Q.data(), z, static_cast<const T*>(nullptr), 0, O, io.o_st);
  }
}

// Chunk [c0, c0 + n) of one (sequence, head), causal: advances hs.S / hs.z over it and writes
// its output rows. `pf` (may be null): prefetches issued between the products.
template <class T>
void causal_chunk(const Problem<T>& p, HeadState<T>& hs, ChunkScratch<T>& w, int64_t c0,
                  PrefetchRows* pf) {
  const HeadIO<T>& io = hs.io;
  const int64_t C = p.chunk, Kf = p.Kf, n = std::min(C, io.len - c0);
  const bool channel = p.decay == DecayKind::kChannel, scalar = p.decay == DecayKind::kScalar;
  T *S = hs.S.data(), *z = hs.z.data();
  T* Q = w.Q.data();    // [C, Kf]
  T* Kc = w.K.data();   // [C, Kf]
  T* A = w.A.data();    // [C, C]
  T* G = w.G.data();    // [C] or [C, Kf]
  T* Kd = w.Kd.data();  // [C, Kf] decayed keys for the state update
  const T* vp;
  int64_t ldv;
  // phi(q) / phi(k) rows: q and k in place for the identity map (its scale qs folded into the
  // products), else gathered (Q = scale phi(q), Kc = phi(k)).
  const bool in_place = p.fm == FeatureMap::kIdentity;
  gather_chunk(p, io, w, c0, n, !in_place, !in_place, vp, ldv);
  const T* qp = in_place ? io.q + c0 * io.q_st : Q;
  const T* kp = in_place ? io.k + c0 * io.k_st : Kc;
  const int64_t ldq = in_place ? io.q_st : Kf, ldk = in_place ? io.k_st : Kf;
  const T qs = in_place ? p.scale : T(1);
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
  // Intra-chunk scores A [n, n], the output's query rows Qe = qs phi(q) exp(G) and the decayed
  // keys of the state update Kd_j = phi(k_j) exp(G_last - G_j) (element k of Kd_j at
  // Kuse[k * kd_k + j * kd_j]): S <- diag(gamma) S + Kd^T V (gamma null: beta for all rows).
  T* Qe = Q;
  const T* Kuse = Kd;
  int64_t kd_k = 1, kd_j = Kf;
  T beta = T(1);
  const T* gamma = nullptr;
  if (channel) {
    Qe = w.Qe.data();
    const T* gl = G + (n - 1) * Kf;
    T* el = w.Gl.data();  // exp(G_last) [Kf]
    simd::exp(gl, el, Kf);
    gamma = el;
    if (channel_span(n, Kf, G) <= kSpanLimit<T>) {
      // A = tril(Qe Kr^T): only the register tiles on or below the diagonal.
      channel_factors(n, Kf, qp, ldq, qs, kp, ldk, G, Qe, w.Kr.data(), w.KrT.data(), C);
      const ProductTerm<T> qk{Qe, Kf, 1, w.KrT.data(), C, Kf, false};
      product_sum(n, 0, n, &qk, 1, A, C, true, static_cast<const T*>(nullptr), T(1), true);
      for (int64_t k = 0; k < Kf; ++k)  // Kd^T[k, :] = Kr^T[k, :] exp(G_last[k]): no exps
        scale_to(el[k], w.KrT.data() + k * C, w.KdT.data() + k * C, n);
      Kuse = w.KdT.data();
      kd_k = C;
      kd_j = 1;
    } else {
      if (in_place) gather_chunk(p, io, w, c0, n, true, true, vp, ldv);
      intra_channel_blocked(n, Kf, Q, Kc, G, A, C, Qe, w.Kr.data());
      for (int64_t j = 0; j < n; ++j) mul_exp_diff(Kc + j * Kf, gl, G + j * Kf, Kd + j * Kf, Kf);
    }
  } else {
    if (hs.shared) {  // copy the shared scores, lower triangle
      const T* src = hs.shared + (c0 / C) * C * C;
      for (int64_t i = 0; i < n; ++i) std::copy(src + i * C, src + i * C + i + 1, A + i * C);
    } else {
      chunk_scores(p, io, c0, n, qp, ldq, qs, kp, ldk, A, C);
    }
    T* e = w.row.data();  // e_i = exp(G_i) (1 without decay)
    const T gl = scalar ? G[n - 1] : T(0);
    T gmin = T(0), gmax = T(0);
    for (int64_t i = 0; i < n; ++i) {
      e[i] = scalar ? simd::exp_scalar(G[i]) : T(1);
      gmin = std::min(gmin, scalar ? G[i] : T(0));
      gmax = std::max(gmax, scalar ? G[i] : T(0));
    }
    // A_ij *= exp(G_i - G_j) = e_i / e_j when both factors are bounded by exp(kSpanLimit).
    if (scalar && gmin >= -kSpanLimit<T> && gmax <= kSpanLimit<T>) {
      T* r = w.inv.data();
      for (int64_t j = 0; j < n; ++j) r[j] = T(1) / e[j];
      for (int64_t i = 0; i < n; ++i) scale_mul(e[i], r, A + i * C, i + 1);
      apply_decay_mask(A, C, n, static_cast<const T*>(nullptr));  // 0 above the diagonal
    } else {
      apply_decay_mask(A, C, n, scalar ? G : static_cast<const T*>(nullptr));
    }
    for (int64_t i = 0; i < n; ++i)  // Qe_i = qs phi(q_i) e_i
      scale_to(qs * e[i], qp + i * ldq, Qe + i * Kf, Kf);
    if (scalar) {
      for (int64_t j = 0; j < n; ++j)  // Kd_j = phi(k_j) exp(G_last - G_j)
        scale_to(simd::exp_scalar(gl - G[j]), kp + j * ldk, Kd + j * Kf, Kf);
      beta = simd::exp_scalar(gl);
    } else {
      Kuse = kp;
      kd_j = ldk;
    }
  }
  // O = Qe S + A V (written straight into o's rows), then the state passing.
  T* O = io.o + c0 * io.o_st;
  chunk_output_and_state(n, Kf, p.V, Qe, Kf, A, C, vp, ldv, Kuse, kd_k, kd_j, gamma, beta, S, O,
                         io.o_st, pf);
  if (p.normalize) {
    normalize_rows(p, n, Qe, z, A, C, O, io.o_st);  // reads z before this chunk
    for (int64_t k = 0; k < Kf; ++k) z[k] *= gamma ? gamma[k] : beta;
    for (int64_t k = 0; k < Kf; ++k)  // z += sum_j Kd_j
      for (int64_t j = 0; j < n; ++j) z[k] += Kuse[k * kd_k + j * kd_j];
  }
}

// Heads per task of the chunk form. One task runs heads [h0, h1) of one sequence in lockstep,
// a block of tokens at a time: the rows of neighbouring heads are adjacent in [B, T, H, K], so
// the task reads each token row of its heads as one contiguous piece (one page and one
// prefetch stream instead of one per head; a head alone reads H K elements apart, a new page
// per row at K = 64, H = 16). The heads' states must stay in L2 between blocks
// (kGroupStateBytes), and there must be a task per thread.
inline constexpr double kGroupStateBytes = 256.0 * 1024;
template <class T>
int64_t heads_per_task(const Problem<T>& p, int threads) {
  const double state = double(p.Kf) * double(p.V) * sizeof(T);
  const int64_t by_cache = std::max<int64_t>(1, static_cast<int64_t>(kGroupStateBytes / state));
  int64_t groups = std::max<int64_t>((p.H + by_cache - 1) / by_cache, (threads + p.N - 1) / p.N);
  if (p.N == 1) groups = (groups + threads - 1) / threads * threads;  // a multiple of threads
  groups = std::min(groups, p.H);
  return (p.H + groups - 1) / groups;
}

// Tokens per block of a task: the next block's rows of all its heads (prefetched during this
// block) fill about kBlockBytes, in whole chunks.
inline constexpr double kBlockBytes = 192.0 * 1024;
template <class T>
int64_t block_tokens(const Problem<T>& p, int64_t heads) {
  const bool channel = p.decay == DecayKind::kChannel;
  const double row = double(heads) * sizeof(T) * (2.0 * p.K + 2.0 * p.V + (channel ? p.Kf : 0));
  const int64_t chunks = static_cast<int64_t>(kBlockBytes / (row * double(p.chunk)));
  return std::max<int64_t>(1, chunks) * p.chunk;
}

// The chunk form of heads [h0, h1) of sequence n (see heads_per_task). `shared`: the scores
// shared by the v heads of a q/k head (may be empty).
template <class T>
void chunk_heads(const Problem<T>& p, int64_t n, int64_t h0, int64_t h1,
                 const SharedScores<T>& shared) {
  const int64_t len = p.len_of(n), nh = h1 - h0;
  const bool channel = p.decay == DecayKind::kChannel;
  ChunkScratch<T> w(p.chunk, p.Kf, p.V, channel, !p.v_scale.empty());
  std::vector<HeadState<T>> heads(static_cast<size_t>(nh));
  for (int64_t h = h0; h < h1; ++h) heads[h - h0].load(p, head_io(p, n, h), shared.at(p, n, h));
  if (!p.causal) {
    for (auto& hs : heads) {
      noncausal_head(p, hs, w);
      hs.store(p);
    }
    return;
  }
  // The rows of all the task's heads, token t at base + t * stride: q / k of q/k heads
  // [qk_head(h0), qk_head(h1 - 1)], v / o / g of heads [h0, h1).
  const HeadIO<T>& first = heads[0].io;
  const int64_t e = sizeof(T), nqk = p.qk_head(h1 - 1) - p.qk_head(h0) + 1;
  const int64_t Tb = block_tokens(p, nh);
  for (int64_t b0 = 0; b0 < len; b0 += Tb) {
    const int64_t b1 = std::min(len, b0 + Tb);
    PrefetchRows pf;  // the next block's rows, spread over this block's chunks
    if (b1 < len) {
      pf.rows = std::min(Tb, len - b1);
      // One piece per row when the heads are packed ([.., H, width] contiguous), else only the
      // first head's row (a strided view with heads far apart).
      auto span = [&](const auto& t, int64_t heads, int64_t width) {
        return (t.stride(2) == width ? heads : 1) * width * e;
      };
      pf.add(first.q + b1 * first.q_st, first.q_st * e, span(p.q, nqk, p.K));
      pf.add(first.k + b1 * first.k_st, first.k_st * e, span(p.k, nqk, p.K));
      if (channel) pf.add(first.g + b1 * first.g_st, first.g_st * e, span(p.g, nh, p.Kf));
      pf.add(first.v + b1 * first.v_st, first.v_st * e, span(p.v, nh, p.V));
      pf.add(first.o + b1 * first.o_st, first.o_st * e, span(p.o, nh, p.V));
    }
    const int64_t steps = nh * ((b1 - b0 + p.chunk - 1) / p.chunk);
    int64_t step = 0;
    for (auto& hs : heads)
      for (int64_t c0 = b0; c0 < b1; c0 += p.chunk) {
        pf.end = pf.rows * ++step / steps;  // rows to issue by the end of this chunk
        causal_chunk(p, hs, w, c0, &pf);
      }
  }
  for (auto& hs : heads) hs.store(p);
}

}  // namespace linattn_detail
}  // namespace effattn
