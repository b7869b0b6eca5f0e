// Mamba-1 selective scan, recurrent form: one token at a time from a state, for decode.
//
// The state h [S,D,N] keeps the N states of a channel contiguous, so a token updates each
// channel's row with vectors along N and reduces y_t[d] = C_t . h_t[d] with one horizontal sum.
// selective_scan_step() updates the state in place and allocates nothing; its cost per token
// is O(D N) whatever came before. Channels are split across threads when the call is big enough
// to pay for waking them.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "effattn/ops/ssm/naive.hpp"
#include "effattn/simd/math.hpp"
#include "effattn/simd/vec.hpp"

namespace effattn {

namespace detail::ssm {

inline constexpr int64_t kRecurrentBlock = 16;  // channels per work item

// Runs tokens [q.t0, q.t0 + q.len) of channels [d_lo, d_hi) (at most kRecurrentBlock) of one
// sequence, on the state rows h(d) = state + (d - d_lo) * state_stride (already holding the
// initial state), writing y. The per-channel scalars (softplus, D skip, silu gate) are
// computed for the whole block with the array kernels; the state update runs along N.
template <class T>
void scan_channels_recurrent(const ScanArgs<T>& a, const Seq& q, int64_t d_lo, int64_t d_hi,
                             const TensorView<const T>& u, const TensorView<const T>& delta,
                             const TensorView<const T>& A, const TensorView<const T>& Dskip,
                             const TensorView<const T>& z, const TensorView<const T>& delta_bias,
                             bool softplus, T* state, int64_t state_stride,
                             const TensorView<T>& y) {
  const int64_t N = a.N, dpg = a.D / a.G, nb = d_hi - d_lo;
  T dt[kRecurrentBlock], acc[kRecurrentBlock], gate[kRecurrentBlock];
  const T* bias = delta_bias.empty() ? nullptr : delta_bias.ptr(d_lo);  // [nb]
  const T* dskip = Dskip.empty() ? nullptr : Dskip.ptr(d_lo);           // [nb]
  const T* A0 = A.ptr(d_lo);                                            // [nb, N]
  const int64_t a_stride = A.stride(0), g_stride = a.B4.stride(2);
  int64_t
      goff[kRecurrentBlock];  // offset of channel j's group in B, C [G, N] (no division per token)
  for (int64_t j = 0; j < nb; ++j) goff[j] = (d_lo + j) / dpg * g_stride;
#if EFFATTN_HAS_SIMD
  using V = simd::Vec<T>;
  constexpr int64_t L = simd::kLanes<T>;
  const bool whole = N % L == 0;  // N in whole registers: the block's channels reduce together
#endif
  for (int64_t t = q.t0; t < q.t0 + q.len; ++t) {
    const T* drow = delta.ptr(q.b, t, d_lo);  // [nb]
    const T* urow = u.ptr(q.b, t, d_lo);      // [nb]
    const T* B0 = a.B4.ptr(q.b, t);           // [G, N]
    const T* C0 = a.C4.ptr(q.b, t);           // [G, N]
    for (int64_t j = 0; j < nb; ++j) dt[j] = drow[j] + (bias ? bias[j] : T(0));
    if (softplus) simd::softplus(dt, dt, nb);  // dt = softplus(delta + delta_bias)
    // h[n] = exp(dt A[d,n]) h[n] + dt u B[n];  acc[d] = sum_n h[n] C[n]
    int64_t j = 0;
#if EFFATTN_HAS_SIMD
    // L channels at a time, their L partial-sum registers reduced by one transposing sum (a
    // horizontal sum per channel was a third of the time at N = 16).
    for (; whole && j + L <= nb; j += L) {
      V part[L];
      for (int64_t c = 0; c < L; ++c) {
        const int64_t jc = j + c;
        T* h = state + jc * state_stride;
        const T* Ad = A0 + jc * a_stride;
        const T* Bt = B0 + goff[jc];
        const T* Ct = C0 + goff[jc];
        const V vdt(dt[jc]), vdtu(dt[jc] * urow[jc]);
        V vacc(T(0));
        for (int64_t n = 0; n < N; n += L) {
          const V hn = xsimd::fma(simd::exp(vdt * simd::load(Ad + n)), simd::load(h + n),
                                  vdtu * simd::load(Bt + n));
          simd::store(h + n, hn);
          vacc = xsimd::fma(hn, simd::load(Ct + n), vacc);
        }
        part[c] = vacc;
      }
      simd::store(acc + j, simd::hsum_rows(part));
    }
#endif
    for (; j < nb; ++j) {
      T* h = state + j * state_stride;  // [N]
      const T* Ad = A0 + j * a_stride;  // [N]
      const T* Bt = B0 + goff[j];       // [N]
      const T* Ct = C0 + goff[j];       // [N]
      const T dtj = dt[j], dtu = dtj * urow[j];
      T sum = 0;
      int64_t n = 0;
#if EFFATTN_HAS_SIMD
      if (N >= L) {
        const V vdt(dtj), vdtu(dtu);
        V vacc(T(0));
        for (; n + L <= N; n += L) {
          const V hn = xsimd::fma(simd::exp(vdt * simd::load(Ad + n)), simd::load(h + n),
                                  vdtu * simd::load(Bt + n));
          simd::store(h + n, hn);
          vacc = xsimd::fma(hn, simd::load(Ct + n), vacc);
        }
        sum = simd::hsum(vacc);
      }
#endif
      for (; n < N; ++n) {
        h[n] = simd::exp_scalar(dtj * Ad[n]) * h[n] + dtu * Bt[n];
        sum += h[n] * Ct[n];
      }
      acc[j] = sum;
    }
    if (dskip)
      for (int64_t jj = 0; jj < nb; ++jj) acc[jj] += dskip[jj] * urow[jj];
    T* yrow = y.ptr(q.b, t, d_lo);
    if (!z.empty()) {
      simd::silu(z.ptr(q.b, t, d_lo), gate, nb);  // y *= silu(z)
      for (int64_t j = 0; j < nb; ++j) yrow[j] = acc[j] * gate[j];
    } else {
      for (int64_t j = 0; j < nb; ++j) yrow[j] = acc[j];
    }
  }
}

// Threads for a call of `work` state updates: waking a second thread costs a few microseconds
// (more on a busy machine); an update (one exp, three FMAs on a 512-bit register shared by 16)
// costs ~0.6 ns on Zen 4, so 2^14 updates (~10 us) pay for it.
inline int recurrent_threads(int requested, int64_t work) {
  return work < (int64_t(1) << 14) ? 1 : get_num_threads(requested);
}

}  // namespace detail::ssm

// Selective scan, token by token (any T; meant for decode). Same arguments and meaning as
// selective_scan_naive. final_state may be the same view as initial_state (in place).
template <class T>
void selective_scan_recurrent(TensorView<const T> u, TensorView<const T> delta,
                              TensorView<const T> A, TensorView<const T> B, TensorView<const T> C,
                              TensorView<const T> D, TensorView<const T> z,
                              TensorView<const T> delta_bias, TensorView<const T> initial_state,
                              TensorView<T> y, TensorView<T> final_state = {},
                              const SelectiveScanParams& p = {}) {
  using namespace detail::ssm;
  const ScanArgs<T> a = check_selective_scan("selective_scan_recurrent", u, delta, A, B, C, D, z,
                                             delta_bias, initial_state, y, final_state, p);
  const int threads = recurrent_threads(p.num_threads, a.T * a.batch * a.D * a.N);
  // Work items: (sequence, block of kRecurrentBlock channels).
  const int64_t kBlock = kRecurrentBlock, nblk = (a.D + kBlock - 1) / kBlock;
  parallel_for_range(
      0, a.S * nblk,
      [&](int64_t lo, int64_t hi) {
        // Without a final_state view, the state lives in per-range scratch [kBlock, N].
        std::vector<T> scratch(final_state.empty() ? static_cast<std::size_t>(kBlock * a.N) : 0);
        for (int64_t it = lo; it < hi; ++it) {
          const Seq q = a.seqs[it / nblk];
          const int64_t d_lo = (it % nblk) * kBlock, d_hi = std::min(a.D, d_lo + kBlock);
          T* base;
          int64_t stride;
          if (final_state.empty()) {
            base = scratch.data();
            stride = a.N;
          } else {
            base = final_state.ptr(q.s, d_lo);
            stride = final_state.stride(1);
          }
          for (int64_t d = d_lo; d < d_hi; ++d) {
            T* h = base + (d - d_lo) * stride;
            if (initial_state.empty()) {
              std::fill(h, h + a.N, T(0));
            } else {
              const T* h0 = initial_state.ptr(q.s, d);
              if (h0 != h) std::copy(h0, h0 + a.N, h);
            }
          }
          scan_channels_recurrent(a, q, d_lo, d_hi, u, delta, A, D, z, delta_bias, p.delta_softplus,
                                  base, stride, y);
        }
      },
      threads);
}

// Decode: runs the tokens of u [B,T,D] (typically T = 1) from `state` [B,D,N] and leaves the
// final state in `state`. Writes y [B,T,D]. No allocation.
template <class T>
void selective_scan_step(TensorView<const T> u, TensorView<const T> delta, TensorView<const T> A,
                         TensorView<const T> B, TensorView<const T> C, TensorView<const T> D,
                         TensorView<const T> z, TensorView<const T> delta_bias, TensorView<T> state,
                         TensorView<T> y, const SelectiveScanParams& p = {}) {
  check(!state.empty(), "selective_scan_step: state is required ([B, D, N], updated in place)");
  selective_scan_recurrent<T>(u, delta, A, B, C, D, z, delta_bias, state, y, state, p);
}

}  // namespace effattn
