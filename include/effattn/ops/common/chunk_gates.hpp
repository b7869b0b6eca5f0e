// Shared stages of the chunked gated recurrences (linear attention / GLA / SSD, delta rule):
// cumulative log-gates within a chunk and the decay-masked intra-chunk score matrix.
//
// Chunks are the fixed grid [0, C), [C, 2C), ... of a sequence's own time axis (for varlen,
// pass the pointer of the sequence's first token: chunks restart at every sequence start).
//
//   chunk_local_cumsum:  Gc[t] = sum_{s = c0 .. t} g[s],  c0 = C * floor(t / C)   (inclusive)
//
// Why within a chunk only: the decay between two tokens i >= j of one chunk is
// exp(Gc[i] - Gc[j]) <= 1, and the decay from the chunk start to token i is exp(Gc[i]) <= 1;
// every exponent the chunk form needs is a difference of two such sums taken in the right
// order, so it is <= 0 and exp never overflows, however long the sequence or strong the decay
// (g = -20 over 64 tokens gives exponents down to -1280: they underflow to 0, which is the
// right answer). A cumsum over the whole sequence would lose all precision instead.
//
// API (stable: other families build on it; new functions may be added, these stay as they are):
//   chunk_local_cumsum(g, n, g_stride, chunk, out)                       scalar gates [n]
//   chunk_local_cumsum(g, n, k, g_row_stride, chunk, out, out_row_stride) per-channel [n, k]
//   chunk_local_cumsum(TensorView g [n] or [n, k], chunk, TensorView out)  view form of both
//   apply_decay_mask(A, lda, n, G, diag)     A[i, j] *= exp(G[i] - G[j]) on the lower triangle,
//                                            0 above it (G may be null: plain causal mask)
#pragma once

#include <cmath>
#include <cstdint>

#include "effattn/core/error.hpp"
#include "effattn/core/tensor.hpp"
#include "effattn/simd/simd.hpp"

namespace effattn {

// Scalar gates, one row of g [T] with element stride `g_stride` (e.g. H for g [B, T, H] of one
// head) -> out [n] contiguous. Inclusive cumsum restarted every `chunk` tokens. In-place
// (out == g, g_stride == 1) is allowed.
template <class T>
inline void chunk_local_cumsum(const T* g, int64_t n, int64_t g_stride, int64_t chunk, T* out) {
  check(chunk > 0, "chunk_local_cumsum: chunk must be > 0 (got ", chunk, ")");
  for (int64_t c0 = 0; c0 < n; c0 += chunk) {
    const int64_t c1 = c0 + chunk < n ? c0 + chunk : n;
    T acc = T(0);
    for (int64_t t = c0; t < c1; ++t) {
      acc += g[t * g_stride];
      out[t] = acc;
    }
  }
}

// Per-channel gates g [n, k] (row stride `g_row_stride`, unit inner stride, e.g. H*K for
// g [B, T, H, K] of one head) -> out [n, k] with row stride `out_row_stride`. Inclusive cumsum
// over t, restarted every `chunk` rows, independently per channel. In-place allowed.
template <class T>
inline void chunk_local_cumsum(const T* g, int64_t n, int64_t k, int64_t g_row_stride,
                               int64_t chunk, T* out, int64_t out_row_stride) {
  check(chunk > 0, "chunk_local_cumsum: chunk must be > 0 (got ", chunk, ")");
  for (int64_t c0 = 0; c0 < n; c0 += chunk) {
    const int64_t c1 = c0 + chunk < n ? c0 + chunk : n;
    const T* prev = nullptr;  // out row t-1 within the chunk
    for (int64_t t = c0; t < c1; ++t) {
      const T* gr = g + t * g_row_stride;
      T* o = out + t * out_row_stride;
      int64_t i = 0;
      if (prev == nullptr) {
        for (; i < k; ++i) o[i] = gr[i];  // first token of the chunk: Gc = g
      } else {
#if EFFATTN_HAS_SIMD
        constexpr int64_t L = simd::kLanes<T>;
        // Gc[t, :] = Gc[t-1, :] + g[t, :]
        for (; i + L <= k; i += L) simd::store(o + i, simd::load(prev + i) + simd::load(gr + i));
#endif
        for (; i < k; ++i) o[i] = prev[i] + gr[i];
      }
      prev = o;
    }
  }
}

// View form: g is [n] (any stride) or [n, k] (unit inner stride); out has g's shape.
template <class T>
inline void chunk_local_cumsum(TensorView<const T> g, int64_t chunk, TensorView<T> out) {
  check(g.ndim() == 1 || g.ndim() == 2, "chunk_local_cumsum: g has shape ", g.shape().str(),
        ", expected [T] or [T, K]");
  check(out.shape() == g.shape(), "chunk_local_cumsum: out has shape ", out.shape().str(),
        ", expected ", g.shape().str());
  if (g.ndim() == 1) {
    if (out.stride(0) == 1 || g.size(0) <= 1) {
      chunk_local_cumsum(g.data(), g.size(0), g.stride(0), chunk, out.data());
    } else {
      check(chunk > 0, "chunk_local_cumsum: chunk must be > 0 (got ", chunk, ")");
      for (int64_t c0 = 0; c0 < g.size(0); c0 += chunk) {
        T acc = T(0);
        for (int64_t t = c0; t < g.size(0) && t < c0 + chunk; ++t) out(t) = acc += g(t);
      }
    }
    return;
  }
  check_inner_contiguous("chunk_local_cumsum", "g", g);
  check_inner_contiguous("chunk_local_cumsum", "out", out);
  chunk_local_cumsum(g.data(), g.size(0), g.size(1), g.stride(0), chunk, out.data(), out.stride(0));
}

// Which entries of the lower triangle survive the mask.
enum class MaskDiag { kInclusive, kStrict };

// Masks a square intra-chunk score matrix A [n, n] (row stride lda) in place:
//   A[i, j] *= exp(G[i] - G[j])  for j <= i (kInclusive) or j < i (kStrict),  A[i, j] = 0 else.
// G [n] are the chunk-local cumulative log-gates of the chunk (chunk_local_cumsum), or null
// for no decay. Every exponent is <= 0 (gates are <= 0), so exp cannot overflow.
template <class T>
inline void apply_decay_mask(T* A, int64_t lda, int64_t n, const T* G,
                             MaskDiag diag = MaskDiag::kInclusive) {
  const int64_t off = diag == MaskDiag::kInclusive ? 1 : 0;
  for (int64_t i = 0; i < n; ++i) {
    T* a = A + i * lda;
    const int64_t jend = i + off;  // columns [0, jend) are kept
    if (G != nullptr) {
      const T gi = G[i];
      for (int64_t j = 0; j < jend; ++j) a[j] *= simd::exp_scalar(gi - G[j]);
    }
    for (int64_t j = jend; j < n; ++j) a[j] = T(0);
  }
}

}  // namespace effattn
