// Depthwise causal conv1d (the short convolution of Mamba and most recurrent layers), prefill
// and decode, vectorised along the contiguous channel axis.
//
//   xx = concat(initial_state (or zeros) [W-1, D], x [T, D]) along time
//   y_t[d] = act(bias[d] + sum_{i<W} weight[d, i] xx[t+i, d]),  final_state = xx[T : T+W-1]
//
// Memory-bound: each input row is read once and each output row written once. Work items are
// (sequence, block of kConvTimeBlock tokens); inside one, a register of L channels walks the
// tokens with the W weights and a sliding window of the last W inputs in registers (one load,
// W FMAs, one store per token and register). The final states are written after every item has
// read the initial state, so final_state may be initial_state (in place): that is
// causal_conv1d_update, the decode form.
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
inline constexpr int kConvMaxW = 8;             // widths with a register kernel; wider: scalar

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
// Whole registers of channels; returns the first channel left for the scalar tail.
template <class T, int W>
int64_t conv_tile_simd(const T* const* rows, int64_t nt, const TensorView<const T>& w,
                       const T* bias, bool silu, int64_t D, T* y, int64_t y_stride) {
  constexpr int64_t L = simd::kLanes<T>;
  using V = simd::Vec<T>;
  const V zero(T(0));
  int64_t d0 = 0;
  for (; d0 + L <= D; d0 += L) {
    // weight[d0 : d0+L, :] is L rows of W: transpose it into W registers of L channels.
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
#endif

// One work item: tokens [ta, tb) of sequence q, all channels.
template <class T>
void conv_item(const ConvArgs& a, const Seq& q, int64_t ta, int64_t tb,
               const TensorView<const T>& x, const TensorView<const T>& w, const T* bias,
               const TensorView<const T>& state_in, const TensorView<T>& y, bool silu) {
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
  switch (a.W) {
    case 1: d = conv_tile_simd<T, 1>(r, nt, w, bias, silu, a.D, y0, ys); break;
    case 2: d = conv_tile_simd<T, 2>(r, nt, w, bias, silu, a.D, y0, ys); break;
    case 3: d = conv_tile_simd<T, 3>(r, nt, w, bias, silu, a.D, y0, ys); break;
    case 4: d = conv_tile_simd<T, 4>(r, nt, w, bias, silu, a.D, y0, ys); break;
    case 5: d = conv_tile_simd<T, 5>(r, nt, w, bias, silu, a.D, y0, ys); break;
    case 6: d = conv_tile_simd<T, 6>(r, nt, w, bias, silu, a.D, y0, ys); break;
    case 7: d = conv_tile_simd<T, 7>(r, nt, w, bias, silu, a.D, y0, ys); break;
    case 8: d = conv_tile_simd<T, 8>(r, nt, w, bias, silu, a.D, y0, ys); break;
    default: break;
  }
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
  if (threads == 1) {
    for (const Seq& q : a.seqs)
      for (int64_t ta = 0; ta < q.len; ta += kConvTimeBlock)
        conv_item(a, q, ta, std::min(q.len, ta + kConvTimeBlock), x, weight, b, state_in, y,
                  silu);
  } else {
    struct Item {
      int64_t seq, ta, tb;
    };
    std::vector<Item> items;
    for (std::size_t s = 0; s < a.seqs.size(); ++s)
      for (int64_t ta = 0; ta < a.seqs[s].len; ta += kConvTimeBlock)
        items.push_back({static_cast<int64_t>(s), ta, std::min(a.seqs[s].len, ta + kConvTimeBlock)});
    parallel_for(
        0, static_cast<int64_t>(items.size()),
        [&](int64_t i) {
          const Item& it = items[static_cast<std::size_t>(i)];
          conv_item(a, a.seqs[static_cast<std::size_t>(it.seq)], it.ta, it.tb, x, weight, b,
                    state_in, y, silu);
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
  detail::ssm::causal_conv1d_impl("causal_conv1d", x, weight, bias, initial_state, y,
                                  final_state, p);
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
