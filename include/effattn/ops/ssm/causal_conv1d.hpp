// Depthwise causal conv1d (the short convolution of Mamba and most recurrent layers), prefill
// and decode, vectorised along the contiguous channel axis.
//
//   xx = concat(initial_state (or zeros) [W-1, D], x [T, D]) along time
//   y_t[d] = act(bias[d] + sum_{i<W} weight[d, i] xx[t+i, d]),  final_state = xx[T : T+W-1]
//
// Memory-bound: each input row is read once and each output row written once. Work items are
// (sequence, block of kConvTimeBlock tokens), spread over threads. Prefill sweeps each output
// row along D with the weights transposed once per call to [W, D] (rows stream through memory in
// order); decode (a few tokens) keeps a register's W weights and a sliding window of its last
// W inputs in registers. The final states are written after every item has read the initial
// state, so final_state may be initial_state (in place): that is causal_conv1d_update.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "effattn/core/parallel.hpp"
#include "effattn/core/tensor.hpp"
#include "effattn/ops/ssm/naive.hpp"
#include "effattn/simd/math.hpp"
#include "effattn/simd/vec.hpp"

namespace effattn {

namespace detail::ssm {

inline constexpr int64_t kConvTimeBlock = 256;  // tokens per work item
inline constexpr int kConvMaxW = 8;             // widths with a SIMD kernel; wider: scalar
inline constexpr int64_t kConvRowsMinLen = 16;  // longer sequences take the row-streaming tile
inline constexpr int64_t kConvRowTile = 512;    // channels per row sweep (L1-sized working set)
inline constexpr int kConvStep = 4;             // tokens per row sweep

// Channels [d_lo, d_hi) of nt tokens, scalar. rows[k] = xx row k of the tile (nullptr = zeros),
// k < nt + W - 1; output row t at y + t * y_stride.
template <class T>
void conv_tile_scalar(const T* const* rows, int64_t nt, int64_t W, const TensorView<const T>& w,
                      const T* bias, bool silu, int64_t d_lo, int64_t d_hi, T* y,
                      int64_t y_stride) {
  for (int64_t d = d_lo; d < d_hi; ++d) {
    const T* wd = w.ptr(d);  // [W]
    for (int64_t t = 0; t < nt; ++t) {
      T acc = bias ? bias[d] : T(0);
      for (int64_t i = 0; i < W; ++i)
        if (rows[t + i]) acc += wd[i] * rows[t + i][d];
      y[t * y_stride + d] = silu ? simd::silu_scalar(acc) : acc;
    }
  }
}

#if EFFATTN_HAS_SIMD
// Decode tiles (a few tokens): one register of L channels walks the tokens with its W weights
// and a sliding window of the last W inputs in registers. Returns the first channel left for
// the scalar tail.
template <class T, int W>
int64_t conv_tile_window(const T* const* rows, int64_t nt, const TensorView<const T>& w,
                         const T* bias, bool silu, int64_t D, T* y, int64_t y_stride) {
  constexpr int64_t L = simd::kLanes<T>;
  using V = simd::Vec<T>;
  const V zero(T(0));
  int64_t d0 = 0;
  for (; d0 + L <= D; d0 += L) {
    // weight[d0 : d0+L, :] is L rows of W: transpose it into W registers of L channels (as
    // fast as a gather here; this, not the arithmetic, is the cost of a decode token).
    alignas(64) T wt[W * L];
    for (int64_t l = 0; l < L; ++l) {
      const T* wr = w.ptr(d0 + l);
      for (int i = 0; i < W; ++i) wt[i * L + l] = wr[i];
    }
    V wv[W], xs[W];
#pragma GCC unroll 8
    for (int i = 0; i < W; ++i) {
      wv[i] = simd::load(wt + i * L);
      xs[i] = (i < W - 1 && rows[i]) ? simd::load(rows[i] + d0) : zero;
    }
    const V bv = bias ? simd::load(bias + d0) : zero;
    for (int64_t t = 0; t < nt; ++t) {
      // xs holds xx[t .. t+W-1]; rows t+W-1 and later are inputs, never null.
      xs[W - 1] = simd::load(rows[t + W - 1] + d0);
      V acc = bv;
#pragma GCC unroll 8
      for (int i = 0; i < W; ++i) acc = xsimd::fma(wv[i], xs[i], acc);  // acc += w[:,i] xx[t+i]
      simd::store(y + t * y_stride + d0, silu ? simd::silu(acc) : acc);
#pragma GCC unroll 8
      for (int i = 0; i + 1 < W; ++i) xs[i] = xs[i + 1];
    }
  }
  return d0;
}

// Prefill tiles: kConvStep tokens at a time, each group of output rows swept along a tile of
// kConvRowTile channels, so x and y stream through memory in order (a walk down one column
// starts a new page every row: no prefetch, latency-bound). Per register of L channels, the
// kConvStep outputs share the W weight loads and the kConvStep + W - 1 input loads (loads, not
// FMAs, bound this loop). The tile keeps the working set (weights, input and output rows) in L1.
// wT [W, D] are the transposed weights; null rows read `zeros` [D].
template <class T, int W, int TT>
void conv_rows_step(const T* const* r, const T* wT, const T* bias, bool silu, int64_t D, int64_t c0,
                    int64_t c1, T* y, int64_t y_stride) {
  constexpr int64_t L = simd::kLanes<T>;
  using V = simd::Vec<T>;
  for (int64_t d0 = c0; d0 < c1; d0 += L) {
    V w[W], acc[TT];
#pragma GCC unroll 8
    for (int i = 0; i < W; ++i) w[i] = simd::load(wT + i * D + d0);
#pragma GCC unroll 8
    for (int j = 0; j < TT; ++j) acc[j] = bias ? simd::load(bias + d0) : V(T(0));
#pragma GCC unroll 16
    for (int k = 0; k < TT + W - 1; ++k) {
      const V xv = simd::load(r[k] + d0);  // xx[t + k]
#pragma GCC unroll 8
      for (int j = 0; j < TT; ++j) {
        const int i = k - j;  // y_{t+j} += w[:, i] xx[t+j+i]
        if (i >= 0 && i < W) acc[j] = xsimd::fma(w[i], xv, acc[j]);
      }
    }
#pragma GCC unroll 8
    for (int j = 0; j < TT; ++j)
      simd::store(y + j * y_stride + d0, silu ? simd::silu(acc[j]) : acc[j]);
  }
}

template <class T, int W>
int64_t conv_tile_rows(const T* const* rows, int64_t nt, const T* wT, const T* zeros, const T* bias,
                       bool silu, int64_t D, T* y, int64_t y_stride) {
  constexpr int64_t L = simd::kLanes<T>;
  const int64_t Dv = D / L * L;
  const T* r[kConvTimeBlock + kConvMaxW];
  for (int64_t k = 0; k < nt + W - 1; ++k) r[k] = rows[k] ? rows[k] : zeros;
  for (int64_t c0 = 0; c0 < Dv; c0 += kConvRowTile) {
    const int64_t c1 = std::min(Dv, c0 + kConvRowTile);
    int64_t t = 0;
    for (; t + kConvStep <= nt; t += kConvStep)
      conv_rows_step<T, W, kConvStep>(r + t, wT, bias, silu, D, c0, c1, y + t * y_stride, y_stride);
    for (; t < nt; ++t)
      conv_rows_step<T, W, 1>(r + t, wT, bias, silu, D, c0, c1, y + t * y_stride, y_stride);
  }
  return Dv;
}
#endif

#if EFFATTN_HAS_SIMD
// The SIMD tiles for a runtime width <= kConvMaxW (one instantiation per width): the prefill
// tile when wT is given, else the decode tile. Returns the first channel left for the scalar
// loop (0 for wider W).
template <class T, int W = 1>
int64_t conv_simd(int64_t width, const T* const* r, int64_t nt, const TensorView<const T>& w,
                  const T* wT, const T* zeros, const T* bias, bool silu, int64_t D, T* y,
                  int64_t ys) {
  if constexpr (W > kConvMaxW) {
    return 0;
  } else {
    if (width != W) return conv_simd<T, W + 1>(width, r, nt, w, wT, zeros, bias, silu, D, y, ys);
    return wT ? conv_tile_rows<T, W>(r, nt, wT, zeros, bias, silu, D, y, ys)
              : conv_tile_window<T, W>(r, nt, w, bias, silu, D, y, ys);
  }
}
#endif

// One work item: tokens [ta, tb) of sequence q, all channels. With wT (transposed weights
// [W + 1, D], last row zeros) the row-streaming prefill tile, else the decode tile.
template <class T>
void conv_item(const ConvArgs& a, const Seq& q, int64_t ta, int64_t tb,
               const TensorView<const T>& x, const TensorView<const T>& w, const T* wT,
               const T* bias, const TensorView<const T>& state_in, const TensorView<T>& y,
               bool silu) {
  const int64_t W1 = a.W - 1, nt = tb - ta;
  // rows[k] = xx[ta + k]: the state (or zeros) below W-1, the input above.
  const T* rows[kConvTimeBlock + kConvMaxW];
  std::vector<const T*> rows_big;  // only for W > kConvMaxW
  const T** r = rows;
  if (a.W > kConvMaxW) {
    rows_big.resize(static_cast<std::size_t>(nt + W1));
    r = rows_big.data();
  }
  for (int64_t k = 0; k < nt + W1; ++k) {
    const int64_t row = ta + k;
    if (row >= W1) {
      r[k] = x.ptr(q.b, q.t0 + row - W1);
    } else {
      r[k] = state_in.empty() ? nullptr : state_in.ptr(q.s, row);
    }
  }
  T* y0 = y.ptr(q.b, q.t0 + ta);
  const int64_t ys = y.stride(1);
  int64_t d = 0;
#if EFFATTN_HAS_SIMD
  d = conv_simd<T>(a.W, r, nt, w, wT, wT ? wT + a.W * a.D : nullptr, bias, silu, a.D, y0, ys);
#else
  (void)wT;
#endif
  conv_tile_scalar(r, nt, a.W, w, bias, silu, d, a.D, y0, ys);
}

template <class T>
void causal_conv1d_impl(const char* op, const TensorView<const T>& x,
                        const TensorView<const T>& weight, const TensorView<const T>& bias,
                        const TensorView<const T>& state_in, const TensorView<T>& y,
                        const TensorView<T>& state_out, const CausalConv1dParams& p) {
  const ConvArgs a = check_causal_conv1d(op, x, weight, bias, state_in, y, state_out, p);
  const bool silu = p.activation == ConvActivation::kSilu;
  const T* b = bias.empty() ? nullptr : bias.data();
  // Small calls (decode) stay on the calling thread: waking another costs more than the work.
  const int64_t work = a.batch * a.T * a.D * a.W;
  const int threads = work < (int64_t(1) << 16) ? 1 : get_num_threads(p.num_threads);
  // Prefill (a sequence of more than kConvRowsMinLen tokens) streams rows with the weights
  // transposed once per call; decode transposes a register's weights on the fly.
  int64_t max_len = 0;
  for (const Seq& q : a.seqs) max_len = std::max(max_len, q.len);
  Tensor<T> wT;
  if (EFFATTN_HAS_SIMD && max_len > kConvRowsMinLen && a.W <= kConvMaxW) {
    wT = Tensor<T>({a.W + 1, a.D});  // [W, D] weights, then a row of zeros
    for (int64_t d = 0; d < a.D; ++d)
      for (int64_t i = 0; i < a.W; ++i) wT(i, d) = weight(d, i);
  }
  const T* wTp = wT.empty() ? nullptr : wT.data();
  if (threads == 1) {
    for (const Seq& q : a.seqs)
      for (int64_t ta = 0; ta < q.len; ta += kConvTimeBlock)
        conv_item(a, q, ta, std::min(q.len, ta + kConvTimeBlock), x, weight, wTp, b, state_in, y,
                  silu);
  } else {
    struct Item {
      int64_t seq, ta, tb;
    };
    std::vector<Item> items;
    for (int64_t s = 0; s < a.S; ++s)
      for (int64_t ta = 0; ta < a.seqs[s].len; ta += kConvTimeBlock)
        items.push_back({s, ta, std::min(a.seqs[s].len, ta + kConvTimeBlock)});
    parallel_for(
        0, static_cast<int64_t>(items.size()),
        [&](int64_t i) {
          const Item& it = items[static_cast<std::size_t>(i)];
          conv_item(a, a.seqs[it.seq], it.ta, it.tb, x, weight, wTp, b, state_in, y, silu);
        },
        threads);
  }
  if (!state_out.empty())
    for (const Seq& q : a.seqs) conv_final_state(a, q, x, state_in, state_out);
}

}  // namespace detail::ssm

// Causal conv1d over x [B,T,D] (or packed sequences with params.cu_seqlens): writes y [B,T,D]
// and, if given, final_state [B,W-1,D]. bias and initial_state may be empty views.
// final_state may be the same view as initial_state; y must not overlap any input.
template <class T>
void causal_conv1d(TensorView<const T> x, TensorView<const T> weight, TensorView<const T> bias,
                   TensorView<const T> initial_state, TensorView<T> y,
                   TensorView<T> final_state = {}, const CausalConv1dParams& p = {}) {
  detail::ssm::causal_conv1d_impl("causal_conv1d", x, weight, bias, initial_state, y, final_state,
                                  p);
}

// Decode: the T tokens of x [B,T,D] (typically 1) continue from conv_state [B,W-1,D], which is
// updated in place. Writes y [B,T,D]. No allocation for W <= 8.
template <class T>
void causal_conv1d_update(TensorView<const T> x, TensorView<const T> weight,
                          TensorView<const T> bias, TensorView<T> conv_state, TensorView<T> y,
                          const CausalConv1dParams& p = {}) {
  check(!conv_state.empty(), "causal_conv1d_update: conv_state is required ([B, W-1, D])");
  detail::ssm::causal_conv1d_impl("causal_conv1d_update", x, weight, bias,
                                  TensorView<const T>(conv_state), y, conv_state, p);
}

}  // namespace effattn
