// Delta rule, chunked form (prefill): per chunk of c <= C tokens the WY / UT representation,
// then the state passes from chunk to chunk with dense products (register tiles below).
//
// Within a chunk (rows i, j = 0..c-1, Gc = chunk-local inclusive cumsum of the log-gates,
// per channel for KDA, S0 the state entering the chunk):
//   A  = strict_lower(diag(beta) [k_i . (exp(Gc_i - Gc_j) k_j)])          [c, c]
//   P  = lower      (scale [q_i . (exp(Gc_i - Gc_j) k_j)])                [c, c]
//   T  = (I + A)^{-1}                      forward substitution           [c, c]
//   U  = T (diag(beta) V - diag(beta) (K * exp(Gc)) S0)                   [c, V]  (the u_t)
//   O  = scale (Q * exp(Gc)) S0 + P U                                     [c, V]
//   S  = diag(exp(Gc_last)) S0 + (K * exp(Gc_last - Gc))^T U              [K, V]
// (U = U0 - W S0 with W = T diag(beta) (K * exp(Gc)) in the usual WY form; multiplying T into
// the bracket instead skips the c^2 K product that forms W.)
// Every exponent above is <= 0, except the per-channel (KDA) factorisation of A and P:
//   exp(Gc_i - Gc_j) = exp(Gc_i - ref) exp(ref - Gc_j),  ref = per-channel midpoint of Gc
// which turns A and P into plain products. Its factors stay within exp(+-kSafe/2) because a KDA
// chunk ends early when some channel's decay within it would exceed kSafe (strong decay: shorter
// chunks, never overflow).
//
// Cost per token and value head: the state products (beta K e^Gc) S0, Q S0, K^T U are 6 K V
// FLOPs whatever C is (the recurrent form does 7 K V); the intra-chunk products add about
// C (2K + 2V) with the triangles partly skipped (T and P stop at their diagonal, A' and P' at
// the vector that holds it).
// The state pass walks S in column blocks of 2 vectors ([K, 32] floats, L1-resident) and does
// the four block products on a block before the next (Y = beta V - beta K e^Gc S; U = T Y;
// O = Qd S + P U in one register tile, written straight to o; S = decay S + Kr^T U), so S is
// read from L2 once per chunk.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "effattn/core/parallel.hpp"
#include "effattn/ops/common/chunk_gates.hpp"
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

// ---- Small dense products on row-major tiles (the chunk form's products) ----
//
// Every product of a chunk is small (rows <= C, inner K or c) and one of its operands is
// already in L1, so a register tile that broadcasts A and streams rows of B beats a packed
// GEMM (no packing, no allocation, and the triangular operands T and P stop early). Measured
// with everything else unchanged, GDN T = 2048, H = 16, K = V = 128: ops/common/gemm.hpp
// 44.8 ms (1 thread) / 25.1 ms (2) -> tiles 32.8 / 17.4 ms.
#if EFFATTN_HAS_SIMD
template <class T>
using Lanes = simd::Vec<T>;
template <class T>
inline Lanes<T> lanes_fma(const Lanes<T>& a, const Lanes<T>& b, const Lanes<T>& c) {
  return xsimd::fma(a, b, c);
}
#else
template <class T>
using Lanes = T;
template <class T>
inline T lanes_fma(T a, T b, T c) {
  return a * b + c;
}
#endif
template <class T>
inline Lanes<T> lanes_load(const T* p) {
#if EFFATTN_HAS_SIMD
  return simd::load(p);
#else
  return *p;
#endif
}
template <class T>
inline void lanes_store(T* p, const Lanes<T>& v) {
#if EFFATTN_HAS_SIMD
  simd::store(p, v);
#else
  *p = v;
#endif
}
template <class T>
inline Lanes<T> lanes_exp(const Lanes<T>& x) {
#if EFFATTN_HAS_SIMD
  return simd::exp(x);
#else
  return simd::exp_scalar(x);
#endif
}
template <class T>
inline Lanes<T> lanes_min(const Lanes<T>& a, const Lanes<T>& b) {
#if EFFATTN_HAS_SIMD
  return xsimd::min(a, b);
#else
  return std::min(a, b);
#endif
}

// Non-temporal store of one vector (64-byte aligned p): the chunk form's output rows are
// written once and not read back, so they skip the read-for-ownership and do not evict the
// next chunk's prefetched inputs from L2. Plain store where there is no 64-byte vector.
template <class T>
inline void lanes_store_stream(T* p, const Lanes<T>& v) {
#if EFFATTN_HAS_SIMD && defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float> && simd::kLanes<T> == 16) {
    _mm512_stream_ps(p, v);
    return;
  } else if constexpr (std::is_same_v<T, double> && simd::kLanes<T> == 8) {
    _mm512_stream_pd(p, v);
    return;
  }
#endif
  lanes_store(p, v);
}

// One product C = init + A B (+ A2 B2) on row-major storage:
//   A(m, kk) = a[m * ars + kk * acs]   (any strides: a row-major matrix or a transposed one)
//   B[kk, j] = b[kk * ldb + j],  C[m, j] = c[m * ldc + j]
//   init[m, j] = s_m * c0[m * ldc0 + j] with s_m = rs[m] (rs given) or s;  0 when c0 is null.
//   A2(m, kk) = a2[m * ars2 + kk], B2[kk, j] = b2[kk * ldb2 + j]: an optional second term
//   (O = Qd S + P U in one tile, no init), its inner length given per row tile.
// c0 may be c (in-place update: each tile reads its rows before it writes them). stream: C is
// written with non-temporal stores (c and ldc must keep every vector 64-byte aligned).
template <class T>
struct Tile {
  const T* a;
  int64_t ars, acs;
  const T* b;
  int64_t ldb;
  T* c;
  int64_t ldc;
  const T* c0 = nullptr;
  int64_t ldc0 = 0;
  const T* rs = nullptr;
  T s = T(1);
  const T* a2 = nullptr;
  int64_t ars2 = 0;
  const T* b2 = nullptr;
  int64_t ldb2 = 0;
  bool stream = false;
};

constexpr int kTileRows = 8;  // rows per register tile (8 x 2 vectors = 16 accumulators)

// Which tile_kernel: C = A B, C = init + A B (kInitT: A's columns contiguous, ars = 1), C = A B +
// A2 B2 (plain or streamed stores).
enum class TileKind { kPlain, kInit, kInitT, kTwo, kTwoStream };

// MR rows x NV vectors of C, inner length kn >= 1 (and kn2 >= 1 for the second term): A
// broadcast, one load of B per vector and kk. kInit adds s_m c0 after the loop. Written so
// that GCC keeps the accumulators in registers: fields copied to locals (a float store to c
// could alias Tile::s), zero start, no runtime branch between the loops and the stores (any
// of these made GCC 12 keep acc[][] on the stack, ~60 extra loads and stores per tile).
template <class T, int MR, int NV, TileKind kKind>
inline void tile_kernel(const Tile<T>& t, int64_t kn, int64_t kn2) {
  using VT = Lanes<T>;
  constexpr int64_t L = simd::kLanes<T>;
  constexpr bool kTwo = kKind == TileKind::kTwo || kKind == TileKind::kTwoStream;
  constexpr bool kInit = kKind == TileKind::kInit || kKind == TileKind::kInitT;
  const T* a = t.a;
  const T* b = t.b;
  T* c = t.c;
  const T* c0 = t.c0;
  // A's row stride as a constant when 1 (the S update's Kr^T): one address register for the
  // MR broadcasts instead of MR, which left GCC 12 two registers short in that loop (spilled
  // to xmm inside it).
  const int64_t ars = kKind == TileKind::kInitT ? 1 : t.ars;
  const int64_t acs = t.acs, ldb = t.ldb, ldc = t.ldc, ldc0 = t.ldc0;
  const T s = t.s;
  const T* rs = t.rs != nullptr ? t.rs : &s;  // row m's scale rs[m * rstep]
  const int64_t rstep = t.rs != nullptr ? 1 : 0;
  VT acc[MR][NV];
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < NV; ++j) acc[m][j] = VT(T(0));
  int64_t kk = 0;
  do {
    VT bv[NV];
    for (int j = 0; j < NV; ++j) bv[j] = lanes_load(b + kk * ldb + j * L);
    const T* ak = a + kk * acs;
    for (int m = 0; m < MR; ++m) {
      const VT am(ak[m * ars]);  // C[m, :] += A(m, kk) B[kk, :]
      for (int j = 0; j < NV; ++j) acc[m][j] = lanes_fma(am, bv[j], acc[m][j]);
    }
  } while (++kk < kn);
  if constexpr (kTwo) {
    const T* a2 = t.a2;
    const T* b2 = t.b2;
    const int64_t ars2 = t.ars2, ldb2 = t.ldb2;
    kk = 0;
    do {
      VT bv[NV];
      for (int j = 0; j < NV; ++j) bv[j] = lanes_load(b2 + kk * ldb2 + j * L);
      for (int m = 0; m < MR; ++m) {
        const VT am(a2[m * ars2 + kk]);  // C[m, :] += A2(m, kk) B2[kk, :]
        for (int j = 0; j < NV; ++j) acc[m][j] = lanes_fma(am, bv[j], acc[m][j]);
      }
    } while (++kk < kn2);
  }
  for (int m = 0; m < MR; ++m) {
    for (int j = 0; j < NV; ++j) {
      if constexpr (kInit)  // C[m, :] = s_m C0[m, :] + acc (c0 may be c)
        acc[m][j] = lanes_fma(VT(rs[m * rstep]), lanes_load(c0 + m * ldc0 + j * L), acc[m][j]);
      if constexpr (kKind == TileKind::kTwoStream) {
        lanes_store_stream(c + m * ldc + j * L, acc[m][j]);
      } else {
        lanes_store(c + m * ldc + j * L, acc[m][j]);
      }
    }
  }
}

// tile_kernel for a runtime row count mr in [1, R].
template <class T, int NV, TileKind kKind, int R = kTileRows>
inline void tile_rows(int mr, const Tile<T>& t, int64_t kn, int64_t kn2) {
  if (mr == R) return tile_kernel<T, R, NV, kKind>(t, kn, kn2);
  if constexpr (R > 1) tile_rows<T, NV, kKind, R - 1>(mr, t, kn, kn2);
}

template <class T, int NV>
inline void tile_dispatch(int mr, const Tile<T>& t, int64_t kn, int64_t kn2) {
  if (t.a2 != nullptr) {
    if (t.stream) return tile_rows<T, NV, TileKind::kTwoStream>(mr, t, kn, kn2);
    return tile_rows<T, NV, TileKind::kTwo>(mr, t, kn, kn2);
  }
  if (t.c0 != nullptr) {
    if (t.ars == 1) return tile_rows<T, NV, TileKind::kInitT>(mr, t, kn, kn2);
    return tile_rows<T, NV, TileKind::kInit>(mr, t, kn, kn2);
  }
  tile_rows<T, NV, TileKind::kPlain>(mr, t, kn, kn2);
}

// C[M, N] = init + A B (+ A2 B2) with N a multiple of the lane count, in column blocks of 2
// vectors (the block of B stays in L1 across the row tiles). Rows [m0, m0 + mr) use the inner
// lengths kn(m0, mr) and kn2(m0, mr) (a lower-triangular A ends at its diagonal) and need only
// the columns below ncol(m0, mr) (a lower-triangular C; the columns past it are left as they
// are).
template <class T, class Kn, class Ncol, class Kn2>
void tile_product(int64_t M, int64_t N, const Tile<T>& t, Kn&& kn, Ncol&& ncol, Kn2&& kn2) {
  constexpr int64_t L = simd::kLanes<T>;
  for (int64_t j0 = 0; j0 < N; j0 += 2 * L) {
    for (int64_t m0 = 0; m0 < M; m0 += kTileRows) {
      const int mr = static_cast<int>(std::min<int64_t>(kTileRows, M - m0));
      const int64_t nc = ncol(m0, mr);
      if (j0 >= nc) continue;
      const bool two = j0 + 2 * L <= N && nc > j0 + L;
      Tile<T> s = t;
      s.a += m0 * t.ars;
      s.b += j0;
      s.c += m0 * t.ldc + j0;
      if (t.c0 != nullptr) s.c0 += m0 * t.ldc0 + j0;
      if (t.rs != nullptr) s.rs += m0;
      if (t.a2 != nullptr) {
        s.a2 += m0 * t.ars2;
        s.b2 += j0;
      }
      if (two) {
        tile_dispatch<T, 2>(mr, s, kn(m0, mr), kn2(m0, mr));
      } else {
        tile_dispatch<T, 1>(mr, s, kn(m0, mr), kn2(m0, mr));
      }
    }
  }
}
template <class T, class Kn, class Ncol>
void tile_product(int64_t M, int64_t N, const Tile<T>& t, Kn&& kn, Ncol&& ncol) {
  tile_product(M, N, t, kn, ncol, [](int64_t, int) { return int64_t(0); });
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

#if EFFATTN_HAS_SIMD && defined(__AVX512F__)
// dst[x * ldd + i] = src[i * lds + x] for a 16 x 16 float block: four rounds of in-register
// shuffles (pairs, quads, 128-bit lanes twice) instead of 256 scalar stores 64+ bytes apart.
inline void transpose16(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * lds);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    for (int j = 0; j < 2; ++j) {
      const __m512d lo = _mm512_castps_pd(t[i + j]), hi = _mm512_castps_pd(t[i + j + 2]);
      r[i + 2 * j] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo, hi));
      r[i + 2 * j + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo, hi));
    }
  }
  for (int i = 0; i < 16; i += 8) {
    for (int j = 0; j < 4; ++j) {
      t[i + j] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0x88);
      t[i + j + 4] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0xdd);
    }
  }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
    r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xdd);
  }
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + i * ldd, r[i]);
}
#endif

// dst[x * ldd + i] = src[i * lds + x] for i < rows, x < cols (k^T of a chunk's key rows).
template <class T>
void transpose_rows(const T* src, int64_t lds, int64_t rows, int64_t cols, T* dst, int64_t ldd) {
  int64_t i0 = 0;
#if EFFATTN_HAS_SIMD && defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    for (; i0 + 16 <= rows; i0 += 16) {
      int64_t x0 = 0;
      for (; x0 + 16 <= cols; x0 += 16)
        transpose16(src + i0 * lds + x0, lds, dst + x0 * ldd + i0, ldd);
      for (; x0 < cols; ++x0)
        for (int64_t i = i0; i < i0 + 16; ++i) dst[x0 * ldd + i] = src[i * lds + x0];
    }
  }
#endif
  for (int64_t i = i0; i < rows; ++i)
    for (int64_t x = 0; x < cols; ++x) dst[x * ldd + i] = src[i * lds + x];
}

// T = (I + A)^{-1} for strictly lower A [c, c] (row stride ld >= round_up(c, lanes)) by forward
// substitution: row i of (I + A) T = I gives T_i = e_i - sum_{j<i} A_ij T_j. T_j is zero past
// column j, so the vector of columns [x0, x0 + L) only takes the rows j >= x0. Rows of T are
// left zero up to column c (the triangular products read a few columns past the diagonal).
template <class T>
void unit_lower_inverse(const T* A, T* Tm, int64_t ld, int64_t c) {
  using VT = Lanes<T>;
  constexpr int64_t L = simd::kLanes<T>;
  for (int64_t i = 0; i < c; ++i) {
    T* ti = Tm + i * ld;
    const int64_t w = round_up(i + 1, L);
    std::fill(ti, ti + std::max(c, w), T(0));
    ti[i] = T(1);
    const T* ai = A + i * ld;
    for (int64_t x0 = 0; x0 < w; x0 += L) {
      VT acc0 = lanes_load(ti + x0), acc1 = VT(T(0));
      int64_t j = x0;
      for (; j + 1 < i; j += 2) {  // two chains: T_i -= A_ij T_j
        acc0 = lanes_fma(VT(-ai[j]), lanes_load(Tm + j * ld + x0), acc0);
        acc1 = lanes_fma(VT(-ai[j + 1]), lanes_load(Tm + (j + 1) * ld + x0), acc1);
      }
      if (j < i) acc0 = lanes_fma(VT(-ai[j]), lanes_load(Tm + j * ld + x0), acc0);
      lanes_store(ti + x0, acc0 + acc1);
    }
  }
}

// max over ch < n of max(mx[ch], g[ch]) - min(mn[ch], g[ch]): the widest per-channel range of
// the log-gate cumsum if row g joins a KDA chunk. Vector max / min: the scalar loop was one
// dependent max per channel, 8% of the KDA chunk form.
template <class T>
T channel_range(const T* mn, const T* mx, const T* g, int64_t n) {
  T worst = T(0);
  int64_t ch = 0;
#if EFFATTN_HAS_SIMD
  using VT = Lanes<T>;
  constexpr int64_t L = simd::kLanes<T>;
  if (n >= L) {
    VT w(T(0));
    for (; ch + L <= n; ch += L) {
      const VT gv = lanes_load(g + ch);
      w = xsimd::max(w, xsimd::max(lanes_load(mx + ch), gv) - xsimd::min(lanes_load(mn + ch), gv));
    }
    worst = simd::hmax(w);
  }
#endif
  for (; ch < n; ++ch) worst = std::max(worst, std::max(mx[ch], g[ch]) - std::min(mn[ch], g[ch]));
  return worst;
}

// dst row i = f_i src_i for the n rows src[i] of length K, with f_i = mul / sqrt(|src_i|^2 +
// eps) when l2 (else mul); f [n] receives the f_i. The sums of squares of all rows are formed
// first and reduced L rows at a time by hsum_rows: one row at a time (TokenReader's q_row /
// k_row) each row waited on its own dot -> sqrt -> divide chain, 7.6% of the GDN chunk form.
template <class T>
void scaled_rows(const T* const* src, int64_t n, int64_t K, T mul, bool l2, T eps, T* dst,
                 int64_t ldd, T* f) {
  int64_t i0 = 0;
  if (!l2) {
    std::fill(f, f + n, mul);
    i0 = n;
  }
#if EFFATTN_HAS_SIMD
  using VT = Lanes<T>;
  constexpr int64_t L = simd::kLanes<T>;
  for (; i0 + L <= n; i0 += L) {
    VT ss[L];
    alignas(64) T tail[L];
    for (int64_t r = 0; r < L; ++r) {
      const T* s = src[i0 + r];
      VT a0(T(0)), a1(T(0));
      int64_t x = 0;
      for (; x + 2 * L <= K; x += 2 * L) {
        const VT u = lanes_load(s + x), w = lanes_load(s + x + L);
        a0 = lanes_fma(u, u, a0);
        a1 = lanes_fma(w, w, a1);
      }
      if (x + L <= K) {
        const VT u = lanes_load(s + x);
        a0 = lanes_fma(u, u, a0);
        x += L;
      }
      T t = T(0);
      for (; x < K; ++x) t += s[x] * s[x];
      tail[r] = t;
      ss[r] = a0 + a1;
    }
    const VT tot = simd::hsum_rows(ss) + VT::load_aligned(tail) + VT(eps);
    lanes_store(f + i0, VT(mul) / xsimd::sqrt(tot));
  }
#endif
  for (; i0 < n; ++i0) f[i0] = mul / std::sqrt(simd::dot(src[i0], src[i0], K) + eps);
  for (int64_t i = 0; i < n; ++i) {
    const T fi = f[i];
    const T* __restrict s = src[i];
    T* __restrict d = dst + i * ldd;
    for (int64_t x = 0; x < K; ++x) d[x] = fi * s[x];
  }
}

template <class T, DeltaRuleGate G>
void chunk_impl(const TensorView<const T>& q, const TensorView<const T>& k,
                const TensorView<const T>& v, const TensorView<const T>& beta,
                const TensorView<const T>& g, const TensorView<T>& o,
                const TensorView<const T>& initial_state, const TensorView<T>& final_state,
                const DeltaRuleParams<T>& p, const Problem& pr) {
  const TokenReader<T> rd(q, k, v, beta, g, pr, p);
  constexpr int64_t L = simd::kLanes<T>;
  const int64_t K = pr.K, V = pr.V, C = p.chunk_size;
  // Padded widths: rows of the scratch buffers below are whole vectors (pads stay zero).
  const int64_t Kp = round_up(K, L), Vp = round_up(V, L), Cp = round_up(C, L), KVp = Kp + Vp;
  const T scale = default_scale(p, K);
  const T safe = kda_safe_range<T>();
  constexpr bool kChan = G == DeltaRuleGate::kChannel;
  const int64_t GK = kChan ? K : 1;  // gate row length

  parallel_for(
      0, pr.N * pr.HV,
      [&](int64_t task) {
        const int64_t n = task / pr.HV, hv = task % pr.HV, b = pr.batch(n);
        // Per-task scratch, allocated once.
        // [K, lds] state. Rows one vector longer than Vp when Vp spans whole 64-byte lines: at a
        // row stride of 512 B (V = 128 floats) a column block's 256 lines fall into 16 of L1's 64
        // sets, 16 per set against 12 ways; at 576 B they spread over all 64.
        const int64_t lds = Vp + (Vp * int64_t(sizeof(T)) % 256 == 0 ? L : 0);
        std::vector<T> S(K * lds, T(0));
        std::vector<T> LQ(2 * C *
                          K);  // [2C, K] rows 0..c: k (KDA: k e^(Gc-ref)), C..C+c: scale q (..)
        std::vector<T> KT(K * Cp, T(0));       // [K, Cp] k^T (KDA: (k e^(ref-Gc))^T)
        std::vector<T> Kf(kChan ? C * K : 0);  // [C, K] KDA: k e^(ref-Gc), transposed to KT
        std::vector<T> Qd(G == DeltaRuleGate::kNone ? 0 : C * K);  // [C, K] scale q e^Gc
        std::vector<T> Kr(G == DeltaRuleGate::kNone ? 0 : C * K);  // [C, K] k e^(Gc_last-Gc)
        std::vector<T> BKV(C * KVp, T(0));  // [C, Kp + Vp] -beta k e^Gc | beta v
        std::vector<T> U(C * Vp, T(0));     // [C, Vp] the chunk's u rows
        std::vector<T> Yb(C * 2 * L);       // [C, 2L] beta v - beta k e^Gc S (one block)
        std::vector<T> AP(2 * C * Cp);      // [2C, Cp] rows 0..c: A, C..C+c: P
        std::vector<T> Tm(C * Cp, T(0));    // [C, Cp] (I + A)^{-1}
        std::vector<T> Ob(C * 2 * L);       // [C, 2L] output tile past V's last whole vector
        // [C] or [C, K] log-gates and their chunk-local cumsum (scalar Gc padded to Cp).
        std::vector<T> Gr(C * GK), Gc(std::max(C * GK, Cp), T(0));
        std::vector<T> eg(Cp), er(Cp);  // scalar gate: e^Gc_i, e^(Gc_last - Gc_i)
        std::vector<T> bt(C), e1(std::max(K, C)), e2(K), ref(K), mn(K), mx(K), dec(K);
        std::vector<const T*> rows(C);  // the chunk's raw q or k rows
        if (!initial_state.empty())
          copy_state(initial_state.ptr(n, hv), initial_state.stride(2), S.data(), lds, K, V);
        // Query side of Q S: scale q e^Gc (DeltaNet: scale q).
        // Y's init beta v reads v's rows in place when they are whole vectors (else a copy
        // padded to Vp).
        const bool v_rows = V % L == 0;
        const T* Qdp = G == DeltaRuleGate::kNone ? LQ.data() + C * K : Qd.data();
        // o's rows are written with non-temporal stores when o is large (the op never reads
        // them back; past a core's L2 they would not stay cached anyway) and every vector
        // is 64-byte aligned. GDN T = 2048, H = 16, K = V = 128 (o 16 MB): 23.7 -> 22.8-22.9
        // ms (1 thread), 12.5-12.7 -> 11.8-11.9 (2 threads).
        const int64_t ldo = o.stride(1);
        const bool o_stream = simd::kLanes<T> * int64_t(sizeof(T)) == 64 &&
                              pr.B * pr.T * pr.HV * V * int64_t(sizeof(T)) >= (int64_t(4) << 20) &&
                              reinterpret_cast<std::uintptr_t>(o.data()) % 64 == 0 &&
                              (ldo * int64_t(sizeof(T))) % 64 == 0 &&
                              (o.stride(2) * int64_t(sizeof(T))) % 64 == 0 &&
                              (o.stride(0) * int64_t(sizeof(T))) % 64 == 0;
        const T* Krp = G == DeltaRuleGate::kNone ? LQ.data() : Kr.data();

        const int64_t t_begin = pr.begin(n), t_end = pr.end(n);
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
            std::fill(Gc.begin() + c, Gc.begin() + Cp, Gc[c - 1]);  // pads: finite, masked later
            for (int64_t i = 0; i < c; ++i) er[i] = Gc[c - 1] - Gc[i];
            simd::exp(Gc.data(), eg.data(), c);
            simd::exp(er.data(), er.data(), c);
          }
          if constexpr (kChan) {
            for (int64_t i = 0; i < c; ++i) rd.gate_row(b, t0 + i, hv, Gr.data() + i * K);
            chunk_local_cumsum(Gr.data(), c, K, K, c, Gc.data(), K);
            std::copy(Gc.begin(), Gc.begin() + K, mn.begin());
            std::copy(Gc.begin(), Gc.begin() + K, mx.begin());
            for (int64_t i = 1; i < c; ++i) {
              if (!(channel_range(mn.data(), mx.data(), Gc.data() + i * K, K) <= safe)) {
                c = i;
                break;
              }
              for (int64_t ch = 0; ch < K; ++ch) {
                mn[ch] = std::min(mn[ch], Gc[i * K + ch]);
                mx[ch] = std::max(mx[ch], Gc[i * K + ch]);
              }
            }
            for (int64_t ch = 0; ch < K; ++ch) ref[ch] = T(0.5) * (mn[ch] + mx[ch]);
          }
          const T* g_last = Gc.data() + (c - 1) * GK;

          // Gather the chunk's rows in the forms the products read. v's rows (read in place by
          // Y's init) are asked into L1 first: they were asked into L2 a chunk ahead, yet the
          // first reads of v stalled (~7% of the time at 1 thread); GDN T = 2048: -0.3-0.5 ms.
          for (int64_t i = 0; i < c; ++i) {
            const char* vr = reinterpret_cast<const char*>(v.ptr(b, t0 + i, hv));
            for (int64_t x = 0; x < V * int64_t(sizeof(T)); x += 64)
              __builtin_prefetch(vr + x, 0, 3);
          }
          // Rows 0..c of LQ: k (normalised if asked), rows C..C+c: scale q (the same).
          const int64_t h = rd.qk_head(hv);
          for (int64_t i = 0; i < c; ++i) rows[i] = k.ptr(b, t0 + i, h);
          scaled_rows(rows.data(), c, K, T(1), p.use_qk_l2norm, p.l2norm_eps, LQ.data(), K,
                      e1.data());
          for (int64_t i = 0; i < c; ++i) rows[i] = q.ptr(b, t0 + i, h);
          scaled_rows(rows.data(), c, K, scale, p.use_qk_l2norm, p.l2norm_eps, LQ.data() + C * K, K,
                      e1.data());
          for (int64_t i = 0; i < c; ++i) {
            const int64_t t = t0 + i;
            T* lk = LQ.data() + i * K;        // key side of A and P
            T* lq = LQ.data() + (C + i) * K;  // query side of P
            const T bi = rd.beta(b, t, hv);
            bt[i] = bi;
            const T* vi = rd.v_row(b, t, hv);
            T* bkv = BKV.data() + i * KVp;
            if (!v_rows)
              for (int64_t x = 0; x < V; ++x) bkv[Kp + x] = bi * vi[x];  // beta v
            if constexpr (G == DeltaRuleGate::kNone) {
              for (int64_t x = 0; x < K; ++x) bkv[x] = -bi * lk[x];  // -beta k
            }
            if constexpr (G == DeltaRuleGate::kScalar) {
              const T ri = er[i], nb = -bi * eg[i], ei = eg[i];
              T* __restrict kr = Kr.data() + i * K;
              T* __restrict qd = Qd.data() + i * K;
              T* __restrict bk = bkv;
              const T* __restrict lkr = lk;
              const T* __restrict lqr = lq;
              for (int64_t x = 0; x < K; ++x) {
                kr[x] = ri * lkr[x];  // k e^(Gc_last - Gc)
                bk[x] = nb * lkr[x];  // -beta k e^Gc
                qd[x] = ei * lqr[x];  // scale q e^Gc
              }
            }
            if constexpr (kChan) {
              const T* gi = Gc.data() + i * K;
              T* qd = Qd.data() + i * K;
              T* kr = Kr.data() + i * K;
              // e1 = exp(Gc_i), e2 = exp(Gc_last - Gc_i): both <= 1
              for (int64_t x = 0; x < K; ++x) e2[x] = g_last[x] - gi[x];
              simd::exp(gi, e1.data(), K);
              simd::exp(e2.data(), e2.data(), K);
              for (int64_t x = 0; x < K; ++x) {
                qd[x] = e1[x] * lq[x];
                kr[x] = e2[x] * lk[x];
                bkv[x] = -bi * e1[x] * lk[x];
              }
              // e1 = exp(Gc_i - ref) in [exp(-safe/2), exp(safe/2)]
              for (int64_t x = 0; x < K; ++x) e1[x] = gi[x] - ref[x];
              simd::exp(e1.data(), e1.data(), K);
              T* kf = Kf.data() + i * K;
              for (int64_t x = 0; x < K; ++x) {
                kf[x] = lk[x] / e1[x];
                lk[x] *= e1[x];
                lq[x] *= e1[x];
              }
            }
          }
          // KT = Kf^T: the key rows of A' and P' (k itself without per-channel decay)
          transpose_rows(kChan ? Kf.data() : LQ.data(), K, c, K, KT.data(), Cp);

          // [A'; P'] = [Kl; Ql] Kf^T, lower triangles only: rows [m0, m0 + mr) need the
          // columns below m0 + mr.
          const int64_t cc = round_up(c, L);
          auto full_k = [K](int64_t, int) { return K; };
          auto lower = [](int64_t m0, int mr) { return m0 + mr; };
          T* A = AP.data();
          T* P = AP.data() + C * Cp;
          tile_product(c, cc, Tile<T>{LQ.data(), K, 1, KT.data(), Cp, A, Cp}, full_k, lower);
          tile_product(c, cc, Tile<T>{LQ.data() + C * K, K, 1, KT.data(), Cp, P, Cp}, full_k,
                       lower);
          // Masks: A = diag(beta) strict_lower(A' (.) decay), P = lower(P' (.) decay), over
          // the whole vectors A' and P' hold for row i (the columns past i are zeroed after).
          for (int64_t i = 0; i < c; ++i) {
            T* ai = A + i * Cp;
            T* pi = P + i * Cp;
            const int64_t wi = round_up(i + 1, L);
            if constexpr (G == DeltaRuleGate::kScalar) {
              using VT = Lanes<T>;
              const VT gi(Gc[i]), bi(bt[i]), zero(T(0));
              for (int64_t x0 = 0; x0 < wi; x0 += L) {
                // d_j = exp(min(Gc_i - Gc_j, 0)) (j > i: exponent clamped, masked below)
                const VT d = lanes_exp<T>(lanes_min<T>(gi - lanes_load(Gc.data() + x0), zero));
                lanes_store(pi + x0, lanes_load(pi + x0) * d);
                lanes_store(ai + x0, lanes_load(ai + x0) * (bi * d));
              }
            } else {
              simd::scale(bt[i], ai, i);
            }
            std::fill(ai + i, ai + std::max(c, wi), T(0));
            std::fill(pi + i + 1, pi + std::max(c, wi), T(0));
          }

          // WY / UT: T = (I + A)^{-1}; U = T (beta v - beta k e^Gc S) is formed in the state
          // pass (T times the bracket, not W = T beta k e^Gc then W S: saves the c^2 K product).
          unit_lower_inverse(A, Tm.data(), Cp, c);
          auto tri = [c](int64_t m0, int mr) { return std::min<int64_t>(c, m0 + mr); };

          // State pass, one column block of S at a time (the block stays in L1):
          //   Y  = beta v - beta k e^Gc S    U = T Y  (T lower: row tiles stop at the diagonal)
          //   O  = Qd S + P U                S = decay S + Kr^T U  (decay e^(Gc_last), per row
          //                                  for KDA)
          T* out = o.ptr(b, t0, hv);
          T dec_s = T(1);
          const T* dec_rows = nullptr;
          if constexpr (G == DeltaRuleGate::kScalar) dec_s = std::exp(g_last[0]);
          if constexpr (kChan) {
            simd::exp(g_last, dec.data(), K);
            dec_rows = dec.data();
          }
          for (int64_t j0 = 0; j0 < Vp; j0 += 2 * L) {
            const int64_t w = std::min(2 * L, Vp - j0);
            T* Sb = S.data() + j0;
            T* Ub = U.data() + j0;
            const bool direct = j0 + w <= V;  // whole vectors of o: write in place
            T* Obk = direct ? out + j0 : Ob.data();
            const int64_t ldob = direct ? ldo : 2 * L;
            auto cols = [w](int64_t, int) { return w; };
            // The next chunk's input rows are prefetched into L2, 1/nb of them per block,
            // while this block computes, so the gather finds them in cache.
            const int64_t nb = (Vp + 2 * L - 1) / (2 * L), blk = j0 / (2 * L);
            const int64_t lo = t0 + c + C * blk / nb;
            const int64_t hi = std::min(t0 + c + C * (blk + 1) / nb, t_end);
            for (int64_t t = lo; t < hi; ++t) rd.prefetch_l2(b, t, hv);
            // Y = beta v + (-beta k e^Gc) S, then U = T Y
            tile_product(c, w,
                         v_rows ? Tile<T>{BKV.data(), KVp, 1, Sb, lds, Yb.data(), 2 * L,
                                          v.ptr(b, t0, hv) + j0, v.stride(1), bt.data()}
                                : Tile<T>{BKV.data(), KVp, 1, Sb, lds, Yb.data(), 2 * L,
                                          BKV.data() + Kp + j0, KVp},
                         full_k, cols);
            tile_product(c, w, Tile<T>{Tm.data(), Cp, 1, Yb.data(), 2 * L, Ub, Vp}, tri, cols);
            // O = Qd S + P U, one tile (P lower: its term stops at the diagonal)
            Tile<T> ot{Qdp, K, 1, Sb, lds, Obk, ldob};
            ot.a2 = P;
            ot.ars2 = Cp;
            ot.b2 = Ub;
            ot.ldb2 = Vp;
            ot.stream = direct && o_stream;
            tile_product(c, w, ot, full_k, cols, tri);
            // S = decay S + Kr^T U
            auto chunk_len = [c](int64_t, int) { return c; };
            tile_product(K, w, Tile<T>{Krp, 1, K, Ub, Vp, Sb, lds, Sb, lds, dec_rows, dec_s},
                         chunk_len, cols);
            if (!direct) {
              for (int64_t i = 0; i < c; ++i)
                std::copy(Ob.data() + i * 2 * L, Ob.data() + i * 2 * L + (V - j0),
                          out + i * ldo + j0);
            }
          }

          t0 += c;
          const int64_t done = t0 - t_begin;
          if (p.snapshot_every > 0 && done % p.snapshot_every == 0) {
            copy_state(S.data(), lds, p.snapshots.ptr(n, done / p.snapshot_every - 1, hv),
                       p.snapshots.stride(3), K, V);
          }
        }
#if EFFATTN_HAS_SIMD && defined(__AVX512F__)
        if (o_stream) _mm_sfence();  // the streamed rows are visible before the task ends
#endif
        if (!final_state.empty())
          copy_state(S.data(), lds, final_state.ptr(n, hv), final_state.stride(2), K, V);
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
