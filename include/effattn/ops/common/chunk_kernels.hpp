// Small fused products of the chunked recurrences (linear attention / GLA / SSD, delta rule),
// for operands that sit in L1/L2 (a chunk of C <= 128 rows, a state [K, V] with K, V <= 256):
//
//   C[i, :] = init_i + sum over terms t of  sum_{k < depth_t(i)} a_t(i, k) B_t[k, :]
//
// a_t(i, k) = a[i * a_row + k * a_col] is read one scalar at a time (broadcast), so any layout
// works (A, A^T, a strided view); B_t rows are contiguous vectors (row stride ldb). init_i is 0
// (overwrite) or row_scale[i] * C[i, :] (beta * C[i, :] with no row_scale). A term marked
// `tril` has a(i, k) = 0 for k > i: its depth is cut at the last row of each register tile, so
// a causal intra-chunk product costs about half of the square one.
//
// Why not gemm(): the chunk form's products are small (n x 128 x 128 with n <= 64) and chained
// (O = Qe S + A V, then S = diag(gamma) S + Kd^T V on the same S). A register-tiled kernel
// that reads its operands in place needs no packing, no C pre-pass, fuses the two terms of O
// into one accumulation and, called per column block of S, keeps that block in L1 between the
// output and the state update (chunk_output_and_state).
//
// API (other families may build on it):
//   ProductTerm<T>{a, a_row, a_col, b, ldb, depth, tril}
//   product_sum(m, col0, col1, terms, nterms, c, ldc, zero_init, row_scale, beta)
//   chunk_output_and_state(...)                       see below
#pragma once

#include <algorithm>
#include <cstdint>

#include "effattn/simd/simd.hpp"

namespace effattn {

template <class T>
struct ProductTerm {
  const T* a = nullptr;  // a(i, k) = a[i * a_row + k * a_col]
  int64_t a_row = 0, a_col = 0;
  const T* b = nullptr;  // B [depth, *] rows, row stride ldb
  int64_t ldb = 0;
  int64_t depth = 0;  // k range [0, depth)
  bool tril = false;  // a(i, k) == 0 for k > i
};

// Hint: bring the n bytes at p into L2 (no-op where unsupported). The chunk form calls it on the
// next chunk's input rows: one head's rows are H * K elements apart, too far for the hardware
// prefetcher to follow, and a prefill streams more than the last-level cache holds. (A volatile
// asm on x86: GCC may drop a loop of __builtin_prefetch as free of side effects.)
inline void prefetch_l2(const void* p, int64_t n) {
  const char* c = static_cast<const char*>(p);
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  for (int64_t i = 0; i < n; i += 64) __asm__ volatile("prefetcht1 %0" : : "m"(c[i]));
#elif defined(__GNUC__)
  for (int64_t i = 0; i < n; i += 64) __builtin_prefetch(c + i, 0, 2);
#else
  (void)c;
  (void)n;
#endif
}

// Rows of the next chunk's inputs, brought into L2 a few rows at a time while the current chunk
// computes (a burst of thousands of prefetches would stall like the misses it hides).
struct PrefetchRows {
  struct Stream {
    const char* p;
    int64_t stride, bytes;  // row r at p + r * stride, `bytes` long
  };
  Stream s[6];
  int ns = 0;
  int64_t rows = 0, next = 0;
  int64_t end = INT64_MAX;  // issue rows [next, min(rows, end)) by the end of the current call
  void add(const void* p, int64_t stride_bytes, int64_t row_bytes) {
    if (p && ns < 6) s[ns++] = {static_cast<const char*>(p), stride_bytes, row_bytes};
  }
  int64_t limit() const { return std::min(rows, end); }
  // Prefetches the next `count` rows of every stream (up to limit()).
  void issue(int64_t count) {
    const int64_t stop = std::min(limit(), next + count);
    for (; next < stop; ++next)
      for (int i = 0; i < ns; ++i) prefetch_l2(s[i].p + next * s[i].stride, s[i].bytes);
  }
};

namespace chunk_kernels_detail {

// Rows of a register tile and vectors per row (AVX-512 float: 8 x 32 columns, 16 accumulators).
inline constexpr int kTileRows = 8;
inline constexpr int kTileVecs = 2;

template <class T>
inline T init_scale(const T* row_scale, T beta, int64_t i) {
  return row_scale ? row_scale[i] : beta;
}

#if EFFATTN_HAS_SIMD
// One tile: rows [i0, i0 + R) x columns [col, col + NV L) of C.
template <class T, int R, int NV>
inline void tile(int64_t i0, int64_t col, const ProductTerm<T>* terms, int nterms, T* c,
                 int64_t ldc, bool zero_init, const T* row_scale, T beta) {
  using V = simd::Vec<T>;
  constexpr int64_t L = simd::kLanes<T>;
  V acc[R][NV];
  for (int r = 0; r < R; ++r) {
    const V s(zero_init ? T(0) : init_scale(row_scale, beta, i0 + r));
    for (int v = 0; v < NV; ++v)
      acc[r][v] = zero_init ? V(T(0)) : s * simd::load(c + (i0 + r) * ldc + col + v * L);
  }
  for (int t = 0; t < nterms; ++t) {
    const ProductTerm<T>& tm = terms[t];
    const int64_t depth = tm.tril ? std::min<int64_t>(tm.depth, i0 + R) : tm.depth;
    const T* a = tm.a + i0 * tm.a_row;
    const T* b = tm.b + col;
    for (int64_t k = 0; k < depth; ++k) {
      // acc[r] += a(i0 + r, k) * B[k, col : col + NV L]
      V bv[NV];
      for (int v = 0; v < NV; ++v) bv[v] = simd::load(b + k * tm.ldb + v * L);
      const T* ak = a + k * tm.a_col;
      for (int r = 0; r < R; ++r) {
        const V ar(ak[r * tm.a_row]);
        for (int v = 0; v < NV; ++v) acc[r][v] = xsimd::fma(ar, bv[v], acc[r][v]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) simd::store(c + (i0 + r) * ldc + col + v * L, acc[r][v]);
}

// Rows [i0, i0 + rows), rows < kTileRows, as one smaller tile.
template <class T, int NV>
inline void tile_tail(int64_t rows, int64_t i0, int64_t col, const ProductTerm<T>* terms,
                      int nterms, T* c, int64_t ldc, bool zero_init, const T* row_scale, T beta) {
  switch (rows) {
#define EFFATTN_TILE_CASE(r) \
  case r:                    \
    return tile<T, r, NV>(i0, col, terms, nterms, c, ldc, zero_init, row_scale, beta);
    EFFATTN_TILE_CASE(1)
    EFFATTN_TILE_CASE(2)
    EFFATTN_TILE_CASE(3)
    EFFATTN_TILE_CASE(4)
    EFFATTN_TILE_CASE(5)
    EFFATTN_TILE_CASE(6)
    EFFATTN_TILE_CASE(7)
#undef EFFATTN_TILE_CASE
    default:
      return;
  }
}

// Rows [i0, m) of the column block [col, col + NV L).
template <class T, int NV>
inline void column_block(int64_t i0, int64_t m, int64_t col, const ProductTerm<T>* terms,
                         int nterms, T* c, int64_t ldc, bool zero_init, const T* row_scale,
                         T beta) {
  for (; i0 + kTileRows <= m; i0 += kTileRows)
    tile<T, kTileRows, NV>(i0, col, terms, nterms, c, ldc, zero_init, row_scale, beta);
  if (i0 < m) tile_tail<T, NV>(m - i0, i0, col, terms, nterms, c, ldc, zero_init, row_scale, beta);
}
#endif

// Columns [col0, col1) one scalar at a time (the tail narrower than a vector, or no SIMD).
template <class T>
inline void scalar_columns(int64_t i0, int64_t m, int64_t col0, int64_t col1,
                           const ProductTerm<T>* terms, int nterms, T* c, int64_t ldc,
                           bool zero_init, const T* row_scale, T beta) {
  for (int64_t i = i0; i < m; ++i) {
    T* ci = c + i * ldc;
    for (int64_t j = col0; j < col1; ++j) {
      T acc = zero_init ? T(0) : init_scale(row_scale, beta, i) * ci[j];
      for (int t = 0; t < nterms; ++t) {
        const ProductTerm<T>& tm = terms[t];
        const int64_t depth = tm.tril ? std::min<int64_t>(tm.depth, i + 1) : tm.depth;
        for (int64_t k = 0; k < depth; ++k)
          acc += tm.a[i * tm.a_row + k * tm.a_col] * tm.b[k * tm.ldb + j];
      }
      ci[j] = acc;
    }
  }
}

}  // namespace chunk_kernels_detail

// C[i, col0:col1] = (zero_init ? 0 : s_i C[i, col0:col1]) + sum_t sum_k a_t(i, k) B_t[k, col0:col1]
// for rows i in [0, m); s_i = row_scale[i], or beta when row_scale is null. C row stride ldc;
// B_t is read at columns col0..col1 too. C must not overlap any operand. With `lower`, only the
// lower triangle of C (j <= i, m x m) is wanted: the products skip the register tiles above the
// diagonal and C is 0 above it.
template <class T>
inline void product_sum(int64_t m, int64_t col0, int64_t col1, const ProductTerm<T>* terms,
                        int nterms, T* c, int64_t ldc, bool zero_init, const T* row_scale = nullptr,
                        T beta = T(1), bool lower = false) {
  using namespace chunk_kernels_detail;
  if (m <= 0 || col1 <= col0) return;
  // First row computed for a column block starting at col: the tile holding row col.
  auto first_row = [&](int64_t col) {
    return lower ? std::min(m, col / kTileRows * kTileRows) : int64_t(0);
  };
  int64_t col = col0;
#if EFFATTN_HAS_SIMD
  constexpr int64_t L = simd::kLanes<T>;
  for (; col + kTileVecs * L <= col1; col += kTileVecs * L)
    column_block<T, kTileVecs>(first_row(col), m, col, terms, nterms, c, ldc, zero_init, row_scale,
                               beta);
  for (; col + L <= col1; col += L)
    column_block<T, 1>(first_row(col), m, col, terms, nterms, c, ldc, zero_init, row_scale, beta);
#endif
  scalar_columns(first_row(col), m, col, col1, terms, nterms, c, ldc, zero_init, row_scale, beta);
  if (lower)  // C[i, j] = 0 for j > i
    for (int64_t i = 0; i < m; ++i)
      if (i + 1 < col1) std::fill(c + i * ldc + std::max(col0, i + 1), c + i * ldc + col1, T(0));
}

// Output and state passing of one chunk of n tokens, column block by column block of S so that
// S[:, block] stays in cache between its two uses:
//
//   O = Qe S + tril(A) V                        Qe [n, K], A [n, n] (0 above the diagonal)
//   S = diag(gamma) S + Kd^T V                  Kd [n, K], gamma [K] (or beta for all rows)
//
// S [K, Vd] (ld Vd), V [n, Vd] (ld ldv), O [n, Vd] (ld ldo, overwritten); element k of Kd_j at
// Kd[k * kd_k + j * kd_j] (Kd [n, K] row-major: kd_k = 1, kd_j = K; Kd^T [K, ld]: ld, 1). A may
// be null (no intra-chunk term). `pf` (may be null): prefetches issued between the products.
template <class T>
inline void chunk_output_and_state(int64_t n, int64_t K, int64_t Vd, const T* Qe, int64_t ldq,
                                   const T* A, int64_t lda, const T* V, int64_t ldv, const T* Kd,
                                   int64_t kd_k, int64_t kd_j, const T* gamma, T beta, T* S, T* O,
                                   int64_t ldo, PrefetchRows* pf = nullptr) {
  const ProductTerm<T> out[2] = {{Qe, ldq, 1, S, Vd, K, false}, {A, lda, 1, V, ldv, n, true}};
  const ProductTerm<T> upd[1] = {{Kd, kd_k, kd_j, V, ldv, n, false}};  // a(k, j) = Kd_j[k]
  // A column block of S: [K, 32] floats = 16 KB for K = 128.
  constexpr int64_t kBlock = 32;
  const int64_t steps = 2 * ((Vd + kBlock - 1) / kBlock);
  const int64_t pf_rows = pf ? (pf->limit() - pf->next + steps - 1) / steps : 0;
  for (int64_t c0 = 0; c0 < Vd; c0 += kBlock) {
    const int64_t c1 = std::min(Vd, c0 + kBlock);
    if (pf) pf->issue(pf_rows);
    product_sum(n, c0, c1, out, A ? 2 : 1, O, ldo, true);
    if (pf) pf->issue(pf_rows);
    product_sum(K, c0, c1, upd, 1, S, Vd, false, gamma, beta);
  }
}

}  // namespace effattn
