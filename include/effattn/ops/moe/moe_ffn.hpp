// MoE feed-forward, fast path: SwiGLU experts on dispatched rows.
//
//   y[n] = sum_{kept s} w[n, s] expert_{idx[n, s]}(x[n])  (+ shared(x[n]))
//   expert_e(x) = (silu(x W_gate[e]) * (x W_up[e])) W_down[e]
//
// Stages (each a parallel loop over independent tiles, so results do not depend on the thread
// count):
//   1. plan      counting sort of the assignments by expert, capacity dropping (dispatch.hpp)
//   2. dispatch  xs [R, d] = x rows in plan order
//   3. up        per (expert, row block, column block of f):  h = silu(xs Wg) * (xs Wu)
//   4. down      per (expert, row block, column block of d):  out = h Wd
//   5. combine   y[n] = shared(x[n]) + sum_s w[n, s] out[row(n, s)]   (fixed slot order)
// An expert with many rows runs one dense product (gemm) per projection and tile. An expert with
// at most `skinny_max_rows` rows (decode: 1..8 tokens) instead streams its weights exactly once,
// whole rows in memory order (the hardware prefetcher's best case: column strips of a row-major
// matrix read far slower, worst for bf16): a tile is a chunk of ~1 MB of consecutive weight rows
// and produces a partial product over the full width for all the expert's rows; the partials
// are summed in chunk order (fixed by the sizes, not by the thread count) where they are used.
// The shared expert is one more "expert" over all N rows. Tiles of all experts share one task
// list (largest first), so experts run in parallel and both threads stay busy even when experts
// get unequal token counts.
//
// bf16 weights: the streaming kernel widens bf16 to float in registers (half the bytes of
// float weights); the gemm path widens a [kc, nb] weight tile into a float buffer per call.
// Accumulation is always in float (or double for T = double).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "effattn/core/bf16.hpp"
#include "effattn/core/parallel.hpp"
#include "effattn/core/tensor.hpp"
#include "effattn/ops/common/gemm.hpp"
#include "effattn/ops/moe/dispatch.hpp"
#include "effattn/ops/moe/params.hpp"
#include "effattn/simd/simd.hpp"

#if EFFATTN_HAS_SIMD && (defined(__AVX512F__) || defined(__AVX2__))
#include <immintrin.h>
#endif

namespace effattn::moe {

// Buffers of moe_ffn, kept between calls (decode loops reuse them instead of allocating).
template <class T>
struct MoeWorkspace {
  std::vector<T> xs, h, hs, out;  // dispatched rows [R, d], hidden [R, f], shared hidden [N, fs],
                                  // expert outputs [R, d]
  std::vector<T> parts;           // partial products of the streaming (decode) experts
};

namespace detail {

// Tile sizes. Column blocks of 256 keep Eigen's packed weight panel in L2 and give every expert
// several tiles; 512-row blocks bound the per-thread buffers. bf16 gemm tiles are widened kc rows
// at a time. Streaming tiles read ~1 MB of consecutive weight rows and prefetch 8 KB ahead.
inline constexpr int64_t kGemmCols = 256;
inline constexpr int64_t kGemmRows = 512;
inline constexpr int64_t kWidenRows = 256;
inline constexpr int64_t kStreamChunkBytes = int64_t(1) << 20;
inline constexpr int64_t kStreamPrefetchBytes = 8192;

// dst [rows, cols] (ld cols) = float(src [rows, cols] (ld lds)).
inline void widen_tile(const bf16* src, int64_t lds, int64_t rows, int64_t cols, float* dst) {
  for (int64_t i = 0; i < rows; ++i) simd::convert(src + i * lds, dst + i * cols, cols);
}

// C[m, 0:n] = sum_i A[m, i] B[i, 0:n] for m < M, i < K. B is read once, row after row over its
// full width; every weight register feeds all M rows (C stays in L1/L2: M n values).
template <int M, class T, class W>
void stream_gemm_m(int64_t n, int64_t K, const T* A, int64_t lda, const W* B, int64_t ldb, T* C,
                   int64_t ldc) {
  for (int m = 0; m < M; ++m) std::fill(C + m * ldc, C + m * ldc + n, T(0));
  for (int64_t i = 0; i < K; ++i) {
    const W* b = B + i * ldb;
    int64_t c = 0;
#if EFFATTN_HAS_SIMD
    constexpr int64_t L = simd::kLanes<T>;
    constexpr int64_t kAhead = kStreamPrefetchBytes / int64_t(sizeof(W));
    simd::Vec<T> a[M];
    for (int m = 0; m < M; ++m) a[m] = simd::Vec<T>(A[m * lda + i]);
    for (; c + L <= n; c += L) {
      __builtin_prefetch(b + c + kAhead);  // never faults, even past the end
      const simd::Vec<T> w = simd::load_as<T>(b + c);
      for (int m = 0; m < M; ++m) {  // c[m] += a[m, i] b[i]
        T* cm = C + m * ldc + c;
        simd::store(cm, xsimd::fma(a[m], w, simd::load(cm)));
      }
    }
#endif
    for (; c < n; ++c) {
      const T w = to_compute<T>(b[c]);
      for (int m = 0; m < M; ++m) C[m * ldc + c] += A[m * lda + i] * w;
    }
  }
}

// C[M, n] = A[M, K] B[K, n] for 1 <= M <= 8 (row-major, leading dims lda, ldb, ldc).
template <class T, class W>
void stream_gemm(int64_t M, int64_t n, int64_t K, const T* A, int64_t lda, const W* B, int64_t ldb,
                 T* C, int64_t ldc) {
  switch (M) {
    case 1:
      return stream_gemm_m<1>(n, K, A, lda, B, ldb, C, ldc);
    case 2:
      return stream_gemm_m<2>(n, K, A, lda, B, ldb, C, ldc);
    case 3:
      return stream_gemm_m<3>(n, K, A, lda, B, ldb, C, ldc);
    case 4:
      return stream_gemm_m<4>(n, K, A, lda, B, ldb, C, ldc);
    case 5:
      return stream_gemm_m<5>(n, K, A, lda, B, ldb, C, ldc);
    case 6:
      return stream_gemm_m<6>(n, K, A, lda, B, ldb, C, ldc);
    case 7:
      return stream_gemm_m<7>(n, K, A, lda, B, ldb, C, ldc);
    case 8:
      return stream_gemm_m<8>(n, K, A, lda, B, ldb, C, ldc);
    default:
      throw Error(effattn::detail::concat("stream_gemm: M = ", M, " not in [1, 8]"));
  }
}

// Chunks of ~kStreamChunkBytes of a [K, n] weight matrix streamed by rows; chunk q covers rows
// [q K / nq, (q + 1) K / nq). Depends on the sizes only (determinism across thread counts).
inline int64_t stream_chunks(int64_t K, int64_t n, int64_t elem_bytes) {
  const int64_t bytes = K * n * elem_bytes;
  return std::max<int64_t>(
      1, std::min<int64_t>(K, (bytes + kStreamChunkBytes - 1) / kStreamChunkBytes));
}

// Per-worker buffers: the up-projection tile and the widened bf16 weight tile.
template <class T>
struct TileScratch {
  std::unique_ptr<T[]> up, wide;
  int64_t up_n = 0, wide_n = 0;
  T* get_up(int64_t n) { return grow(up, up_n, n); }
  T* get_wide(int64_t n) { return grow(wide, wide_n, n); }

 private:
  static T* grow(std::unique_ptr<T[]>& p, int64_t& have, int64_t n) {
    if (n > have) {
      p.reset(new T[n]);  // uninitialised: every tile writes before it reads
      have = n;
    }
    return p.get();
  }
};

// C[M, n] (ldc) = A[M, K] (lda) B[K, n] (ldb) by gemm; bf16 weights through a widened float
// tile of kWidenRows rows at a time.
template <class T, class W>
void gemm_tile(int64_t M, int64_t n, int64_t K, const T* A, int64_t lda, const W* B, int64_t ldb,
               T* C, int64_t ldc, TileScratch<T>& scratch) {
  if constexpr (std::is_same_v<W, T>) {
    gemm(M, n, K, A, lda, Trans::kNo, B, ldb, Trans::kNo, C, ldc);
  } else {
    T* wide = scratch.get_wide(kWidenRows * n);  // [kc, n] float copy of B's rows
    for (int64_t k0 = 0; k0 < K; k0 += kWidenRows) {
      const int64_t kc = std::min(kWidenRows, K - k0);
      widen_tile(B + k0 * ldb, ldb, kc, n, wide);
      gemm(M, n, kc, A + k0, lda, Trans::kNo, wide, n, Trans::kNo, C, ldc, T(1),
           k0 == 0 ? T(0) : T(1));
    }
  }
}

// One SwiGLU "expert" over a contiguous block of rows.
template <class T, class W>
struct Job {
  const T* a;  // [rows, d] input rows, leading dim lda
  int64_t lda, rows;
  const W *wg, *wu;  // [d, F], leading dims ldg / ldu
  int64_t ldg, ldu;
  const W* wd;  // [F, d], leading dim ldd
  int64_t ldd, F;
  T* h;    // [rows, F] hidden, leading dim F
  T* out;  // [rows, d] output, leading dim ldo
  int64_t ldo;
  bool stream;  // decode kernel (rows <= skinny_max_rows)
  // Streaming only: chunks of the d rows of Wg / Wu and of the F rows of Wd, and where their
  // partial products live in the workspace: gate / up parts [nq_up, rows, F] at pg / pu,
  // down parts [nq_down, rows, d] at pd.
  int64_t nq_up = 0, nq_down = 0;
  T *pg = nullptr, *pu = nullptr, *pd = nullptr;
};

// A unit of work. gemm: output rows [r0, r1) x columns [c0, c1) of projection `proj`
// (0 = gate and up, 2 = down). streaming: weight rows [c0, c1) = chunk q of projection proj
// (0 gate, 1 up, 2 down).
struct Tile {
  int64_t job, r0, r1, c0, c1, q;
  int proj;
  double cost;
};

// Rows [q K / nq, (q + 1) K / nq) of chunk q.
inline int64_t chunk_begin(int64_t q, int64_t nq, int64_t K) { return q * K / nq; }

// The tiles of the up (proj 0/1) or down (proj 2) stage of every job, largest first (stable, so
// the order is deterministic). cost ~ bytes of weights streamed, or flops / 16 for gemm tiles.
template <class T, class W>
std::vector<Tile> make_tiles(const std::vector<Job<T, W>>& jobs, bool down, int64_t d) {
  std::vector<Tile> tiles;
  for (std::size_t j = 0; j < jobs.size(); ++j) {
    const Job<T, W>& job = jobs[j];
    const int64_t K = down ? job.F : d, cols = down ? d : job.F;
    if (job.stream) {
      const int64_t nq = down ? job.nq_down : job.nq_up;
      for (int proj = down ? 2 : 0; proj <= (down ? 2 : 1); ++proj) {
        for (int64_t q = 0; q < nq; ++q) {
          const int64_t k0 = chunk_begin(q, nq, K), k1 = chunk_begin(q + 1, nq, K);
          tiles.push_back({int64_t(j), 0, job.rows, k0, k1, q, proj,
                           double(k1 - k0) * double(cols) * double(sizeof(W))});
        }
      }
      continue;
    }
    for (int64_t r0 = 0; r0 < job.rows; r0 += kGemmRows) {
      for (int64_t c0 = 0; c0 < cols; c0 += kGemmCols) {
        const int64_t r1 = std::min(job.rows, r0 + kGemmRows), c1 = std::min(cols, c0 + kGemmCols);
        const double flops = 2.0 * double(r1 - r0) * double(c1 - c0) * double(K) * (down ? 1 : 2);
        tiles.push_back({int64_t(j), r0, r1, c0, c1, 0, down ? 2 : 0, flops / 16});
      }
    }
  }
  std::stable_sort(tiles.begin(), tiles.end(),
                   [](const Tile& a, const Tile& b) { return a.cost > b.cost; });
  return tiles;
}

// Runs body(tile, scratch) for every tile; workers pull tiles in list order from a shared counter.
// A tile's result never depends on which worker runs it.
template <class T, class Body>
void run_tiles(const std::vector<Tile>& tiles, int num_threads, Body&& body) {
  const int64_t n = static_cast<int64_t>(tiles.size());
  if (n == 0) return;
  const int workers = static_cast<int>(std::min<int64_t>(get_num_threads(num_threads), n));
  std::atomic<int64_t> next{0};
  auto work = [&](int64_t) {
    TileScratch<T> scratch;
    for (int64_t t; (t = next.fetch_add(1, std::memory_order_relaxed)) < n;)
      body(tiles[t], scratch);
  };
  // gemm() runs each tile's products on the worker's own thread, so the result is the same
  // for any number of workers.
  parallel_for(0, workers, work, workers);
}

}  // namespace detail

// x [N, d], topk_idx / topk_weight [N, k] (from moe_gate), experts (W = T or bf16), optional
// shared expert -> y [N, d]. Capacity and thresholds in `p` (params.hpp); `plan_out` receives
// the dispatch plan (what was dropped); `ws` keeps buffers across calls.
template <class T, class W>
void moe_ffn(TensorView<const T> x, TensorView<const int32_t> topk_idx,
             TensorView<const T> topk_weight, const ExpertWeights<W>& ex,
             const SharedExpertWeights<W>& sh, TensorView<T> y, const MoeFfnParams& p = {},
             DispatchPlan* plan_out = nullptr, MoeWorkspace<T>* ws = nullptr) {
  detail::check_ffn_args("moe_ffn", x, topk_idx, topk_weight, ex, sh, y, p);
  const int64_t N = x.size(0), d = x.size(1), E = ex.w_gate.size(0), f = ex.w_gate.size(2);
  const int64_t k = topk_idx.size(1);
  const int threads = p.num_threads;
  MoeWorkspace<T> local;
  MoeWorkspace<T>& w = ws ? *ws : local;

  DispatchPlan plan = make_dispatch_plan(topk_idx, E, expert_capacity(N, k, E, p));
  const int64_t R = plan.rows();
  auto grow = [](std::vector<T>& v, int64_t n) {
    if (int64_t(v.size()) < std::max<int64_t>(n, 1)) v.resize(std::max<int64_t>(n, 1));
    return v.data();  // never null, so that views of zero rows are still valid
  };
  T* xs = grow(w.xs, R * d);
  T* h = grow(w.h, R * f);
  T* out = grow(w.out, R * d);
  if (R > 0) dispatch_rows(x, plan, TensorView<T>(xs, {R, d}), threads);

  std::vector<detail::Job<T, W>> jobs;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = plan.offsets[e], rows = plan.expert_rows(e);
    if (rows == 0) continue;
    jobs.push_back({xs + r0 * d, d, rows, ex.w_gate.ptr(e), ex.w_up.ptr(e), ex.w_gate.stride(1),
                    ex.w_up.stride(1), ex.w_down.ptr(e), ex.w_down.stride(1), f, h + r0 * f,
                    out + r0 * d, d, rows <= p.skinny_max_rows});
  }
  const bool has_shared = !sh.empty() && N > 0;
  if (has_shared) {  // the shared expert reads x in place and writes y directly
    const int64_t fs = sh.w_gate.size(1);
    jobs.push_back({x.data(), x.stride(0), N, sh.w_gate.data(), sh.w_up.data(), sh.w_gate.stride(0),
                    sh.w_up.stride(0), sh.w_down.data(), sh.w_down.stride(0), fs,
                    grow(w.hs, N * fs), y.data(), y.stride(0), N <= p.skinny_max_rows});
  }
  // Partial products of the streaming jobs.
  int64_t parts = 0;
  for (auto& j : jobs) {
    if (!j.stream) continue;
    j.nq_up = detail::stream_chunks(d, j.F, sizeof(W));
    j.nq_down = detail::stream_chunks(j.F, d, sizeof(W));
    parts += j.rows * (2 * j.nq_up * j.F + j.nq_down * d);
  }
  T* part = grow(w.parts, parts);
  for (auto& j : jobs) {
    if (!j.stream) continue;
    j.pg = part;
    j.pu = j.pg + j.nq_up * j.rows * j.F;
    j.pd = j.pu + j.nq_up * j.rows * j.F;
    part = j.pd + j.nq_down * j.rows * d;
  }

  // up: h = silu(a Wg) * (a Wu). gemm tiles: [rows, F] blocks; streaming tiles: partial
  // products of one chunk of Wg or Wu rows (summed in the down stage).
  const auto up_tiles = detail::make_tiles(jobs, false, d);
  detail::run_tiles<T>(up_tiles, threads, [&](const detail::Tile& t, detail::TileScratch<T>& s) {
    const auto& j = jobs[t.job];
    if (j.stream) {
      const W* wt = t.proj == 0 ? j.wg : j.wu;
      const int64_t ldw = t.proj == 0 ? j.ldg : j.ldu;
      T* part_q = (t.proj == 0 ? j.pg : j.pu) + t.q * j.rows * j.F;  // [rows, F]
      detail::stream_gemm(j.rows, j.F, t.c1 - t.c0, j.a + t.c0, j.lda, wt + t.c0 * ldw, ldw, part_q,
                          j.F);
      return;
    }
    const int64_t m = t.r1 - t.r0, n = t.c1 - t.c0;
    const T* a = j.a + t.r0 * j.lda;
    T* g = j.h + t.r0 * j.F + t.c0;  // gate product, in place in h
    T* u = s.get_up(m * n);          // [m, n] up product
    detail::gemm_tile(m, n, d, a, j.lda, j.wg + t.c0, j.ldg, g, j.F, s);
    detail::gemm_tile(m, n, d, a, j.lda, j.wu + t.c0, j.ldu, u, n, s);
    for (int64_t r = 0; r < m; ++r) {
      T* gr = g + r * j.F;
      simd::silu(gr, gr, n);
      simd::mul(gr, u + r * n, gr, n);  // h = silu(g) * u
    }
  });

  // down: out = h Wd. Streaming tiles first finish their slice of h (sum of the up partials in
  // chunk order, then silu(g) * u), then stream their chunk of Wd rows into a partial output.
  const auto down_tiles = detail::make_tiles(jobs, true, d);
  detail::run_tiles<T>(down_tiles, threads, [&](const detail::Tile& t, detail::TileScratch<T>& s) {
    const auto& j = jobs[t.job];
    if (j.stream) {
      const int64_t c0 = t.c0, n = t.c1 - t.c0;
      for (int64_t r = 0; r < j.rows; ++r) {
        T* hr = j.h + r * j.F + c0;
        T* u = s.get_up(n);
        std::copy(j.pg + r * j.F + c0, j.pg + r * j.F + c0 + n, hr);
        std::copy(j.pu + r * j.F + c0, j.pu + r * j.F + c0 + n, u);
        for (int64_t q = 1; q < j.nq_up; ++q) {
          const int64_t off = (q * j.rows + r) * j.F + c0;
          simd::axpy(T(1), j.pg + off, hr, n);  // g += gate part q
          simd::axpy(T(1), j.pu + off, u, n);   // u += up part q
        }
        simd::silu(hr, hr, n);
        simd::mul(hr, u, hr, n);  // h = silu(g) * u
      }
      detail::stream_gemm(j.rows, d, n, j.h + c0, j.F, j.wd + c0 * j.ldd, j.ldd,
                          j.pd + t.q * j.rows * d, d);
      return;
    }
    detail::gemm_tile(t.r1 - t.r0, t.c1 - t.c0, j.F, j.h + t.r0 * j.F, j.F, j.wd + t.c0, j.ldd,
                      j.out + t.r0 * j.ldo + t.c0, j.ldo, s);
  });
  // Streaming jobs: out = sum of the down partials, in chunk order.
  for (const auto& j : jobs) {
    if (!j.stream) continue;
    for (int64_t r = 0; r < j.rows; ++r) {
      T* o = j.out + r * j.ldo;
      std::copy(j.pd + r * d, j.pd + r * d + d, o);
      for (int64_t q = 1; q < j.nq_down; ++q) simd::axpy(T(1), j.pd + (q * j.rows + r) * d, o, d);
    }
  }

  // combine: y = shared + sum_s w out (or just the routed sum).
  combine_rows(TensorView<const T>(out, {R, d}), topk_weight, plan, y, has_shared ? T(1) : T(0),
               threads);
  if (plan_out) *plan_out = std::move(plan);
}

}  // namespace effattn::moe
