// Mamba-1 selective scan, prefill form: SIMD across channels, state in registers across time.
//
// The recurrence h_t[d,n] = exp(dt_t[d] A[d,n]) h_{t-1}[d,n] + dt_t[d] B_t[n] u_t[d] is
// independent for every (d, n); only y_t[d] = sum_n h_t[d,n] C_t[n] mixes the N states of one
// channel. So one SIMD register holds one state n of L consecutive channels (L = 16 floats with
// AVX-512) and a group of NC such registers stays in registers for a whole block of tokens.
// B_t[n] and C_t[n] are the same for all channels of a B/C group: a broadcast. No horizontal
// sums and one vector exp per (token, state, L channels): the exp is the cost of the op.
//
// Stages, for one run of consecutive channel blocks of one sequence, per block of kTimeBlock
// tokens (scratch [run, kTimeBlock, L] per quantity):
//   1. dt = softplus(delta + delta_bias), dtu = dt * u, y = D * u; lanes past the last channel
//      of a group are padded with zeros (dt A = 0 and dt u = 0 there: the padded state stays 0)
//   2. per block, per group of NC states: load h, run the tokens, accumulate y, store h
//   3. y *= silu(z), store the valid lanes
// Stages 1 and 3 sweep each token's row across the whole run, so the [T, D] inputs stream
// through memory in order. A thread takes a contiguous range of (sequence, group, channel
// block) items; channel blocks never straddle a B/C group (a group's channels are rounded up
// to whole registers). No allocation per token: one scratch buffer per thread and call.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "effattn/core/parallel.hpp"
#include "effattn/core/tensor.hpp"
#include "effattn/ops/ssm/naive.hpp"
#include "effattn/simd/math.hpp"
#include "effattn/simd/vec.hpp"

namespace effattn {

namespace detail::ssm {

// A register of L channels (a plain scalar in the scalar build).
#if EFFATTN_HAS_SIMD
template <class T>
using CVec = simd::Vec<T>;
template <class T>
inline CVec<T> cv_load(const T* p) {
  return simd::load(p);
}
template <class T>
inline void cv_store(T* p, const CVec<T>& v) {
  simd::store(p, v);
}
template <class T>
inline CVec<T> cv_fma(const CVec<T>& a, const CVec<T>& b, const CVec<T>& c) {
  return xsimd::fma(a, b, c);
}
template <class T>
inline CVec<T> cv_exp(const CVec<T>& x) {
  return simd::exp(x);
}
template <class T>
inline CVec<T> cv_softplus(const CVec<T>& x) {
  return simd::softplus(x);
}
template <class T>
inline CVec<T> cv_silu(const CVec<T>& x) {
  return simd::silu(x);
}
// States kept in registers per pass: NC states + NC decay rates, fitting 32 AVX-512 registers
// (16 with AVX2) with room for the exp's temporaries.
template <class T>
inline constexpr int kStateGroup = sizeof(simd::Vec<T>) >= 64 ? 8 : 4;
#else
template <class T>
using CVec = T;
template <class T>
inline T cv_load(const T* p) {
  return *p;
}
template <class T>
inline void cv_store(T* p, T v) {
  *p = v;
}
template <class T>
inline T cv_fma(T a, T b, T c) {
  return a * b + c;
}
template <class T>
inline T cv_exp(T x) {
  return simd::exp_scalar(x);
}
template <class T>
inline T cv_softplus(T x) {
  return simd::softplus_scalar(x);
}
template <class T>
inline T cv_silu(T x) {
  return simd::silu_scalar(x);
}
template <class T>
inline constexpr int kStateGroup = 4;
#endif

// A thread walks a run of up to kMaxRun channel blocks (1536 channels for float with AVX-512)
// through time, kTimeBlock tokens at a time: long row segments stream well from memory, and
// the scratch, 3 x kMaxRun x kTimeBlock x L, stays in L2 (288 KiB for float with AVX-512).
inline constexpr int64_t kTimeBlock = 16;
inline constexpr int64_t kMaxRun = 96;

// NC states of one channel block over tb tokens. Layouts (L lanes = L channels):
//   At, hs [NC, L] (A[d, n] and h[d, n] for the NC states); dt, dtu, y [tb, L];
//   Bt, Ct point at B_t[g, n0], C_t[g, n0] of the first token, bc_stride apart.
template <class T, int NC>
void scan_state_group(int64_t tb, const T* dt, const T* dtu, const T* Bt, const T* Ct,
                      int64_t bc_stride, const T* At, T* hs, T* y) {
  constexpr int64_t L = simd::kLanes<T>;
  using V = CVec<T>;
  V a[NC], h[NC];
#pragma GCC unroll 16
  for (int k = 0; k < NC; ++k) {
    a[k] = cv_load(At + k * L);
    h[k] = cv_load(hs + k * L);
  }
  for (int64_t t = 0; t < tb; ++t) {
    const V vdt = cv_load(dt + t * L), vdtu = cv_load(dtu + t * L);
    const T* b = Bt + t * bc_stride;
    const T* c = Ct + t * bc_stride;
    V y0 = cv_load(y + t * L), y1 = V(T(0));
#pragma GCC unroll 16
    for (int k = 0; k < NC; ++k) {
      // h[n] = exp(dt A[n]) h[n] + (dt u) B[n];  y += h[n] C[n]   (two sums: shorter chain)
      h[k] = cv_fma(cv_exp<T>(vdt * a[k]), h[k], vdtu * V(b[k]));
      if (k % 2 == 0) {
        y0 = cv_fma(h[k], V(c[k]), y0);
      } else {
        y1 = cv_fma(h[k], V(c[k]), y1);
      }
    }
    cv_store(y + t * L, y0 + y1);
  }
#pragma GCC unroll 16
  for (int k = 0; k < NC; ++k) cv_store(hs + k * L, h[k]);
}

// All N states of one channel block: full groups of kStateGroup, then the remainder.
template <class T>
void scan_all_states(int64_t N, int64_t tb, const T* dt, const T* dtu, const T* Bt, const T* Ct,
                     int64_t bc_stride, const T* At, T* hs, T* y) {
  constexpr int NC = kStateGroup<T>;
  constexpr int64_t L = simd::kLanes<T>;
  int64_t n = 0;
  for (; n + NC <= N; n += NC)
    scan_state_group<T, NC>(tb, dt, dtu, Bt + n, Ct + n, bc_stride, At + n * L, hs + n * L, y);
  const int64_t r = N - n;
  const T *B0 = Bt + n, *C0 = Ct + n, *A0 = At + n * L;
  T* h0 = hs + n * L;
  switch (r) {
    case 0:
      break;
    case 1:
      scan_state_group<T, 1>(tb, dt, dtu, B0, C0, bc_stride, A0, h0, y);
      break;
    case 2:
      scan_state_group<T, 2>(tb, dt, dtu, B0, C0, bc_stride, A0, h0, y);
      break;
    case 3:
      scan_state_group<T, 3>(tb, dt, dtu, B0, C0, bc_stride, A0, h0, y);
      break;
    case 4:
      scan_state_group<T, (NC > 4 ? 4 : 1)>(tb, dt, dtu, B0, C0, bc_stride, A0, h0, y);
      break;
    case 5:
      scan_state_group<T, (NC > 5 ? 5 : 1)>(tb, dt, dtu, B0, C0, bc_stride, A0, h0, y);
      break;
    case 6:
      scan_state_group<T, (NC > 6 ? 6 : 1)>(tb, dt, dtu, B0, C0, bc_stride, A0, h0, y);
      break;
    default:
      scan_state_group<T, (NC > 7 ? 7 : 1)>(tb, dt, dtu, B0, C0, bc_stride, A0, h0, y);
      break;
  }
}

// One channel block: the first channel d0, nl <= L valid lanes, its B/C group g.
struct ChannelBlock {
  int64_t d0, nl, g;
};

// Runs the tokens of sequence q for a run of consecutive channel blocks, stages 1-3 above.
// Stages 1 and 3 sweep each token's row across the whole run (a walk down one block's column
// would start a new page every token: no prefetch, latency-bound).
// scratch (capacity cap >= nblk blocks): dt, dtu, ys [cap, kTimeBlock, L]; hs, At [cap, N, L];
// cst [cap, 2, L]. Every element read is written first.
template <class T>
void scan_run(const ScanArgs<T>& a, const Seq& q, const ChannelBlock* blk, int64_t nblk,
              const TensorView<const T>& u, const TensorView<const T>& delta,
              const TensorView<const T>& A, const TensorView<const T>& Dskip,
              const TensorView<const T>& z, const TensorView<const T>& delta_bias,
              const TensorView<const T>& state_in, const TensorView<T>& y,
              const TensorView<T>& state_out, bool softplus, T* scratch, int64_t cap) {
  constexpr int64_t L = simd::kLanes<T>, TL = kTimeBlock * L;
  using V = CVec<T>;
  const int64_t N = a.N, NL = N * L;
  T* dt = scratch;         // [nblk, kTimeBlock, L]  dt
  T* dtu = dt + cap * TL;  // [nblk, kTimeBlock, L]  dt * u
  T* ys = dtu + cap * TL;  // [nblk, kTimeBlock, L]  y accumulator
  T* hs = ys + cap * TL;   // [nblk, N, L]  state, lane l = channel d0 + l
  T* At = hs + cap * NL;   // [nblk, N, L]  A transposed, padded lanes 0
  T* cst = At + cap * NL;  // [nblk, 2, L]  delta_bias and D, padded lanes 0
  for (int64_t j = 0; j < nblk; ++j) {
    const ChannelBlock& cb = blk[j];
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t l = 0; l < L; ++l) {
        const bool ok = l < cb.nl;
        At[j * NL + n * L + l] = ok ? A(cb.d0 + l, n) : T(0);
        hs[j * NL + n * L + l] = ok && !state_in.empty() ? state_in(q.s, cb.d0 + l, n) : T(0);
      }
    }
    for (int64_t l = 0; l < L; ++l) {
      const bool ok = l < cb.nl;
      cst[j * 2 * L + l] = ok && !delta_bias.empty() ? delta_bias(cb.d0 + l) : T(0);
      cst[j * 2 * L + L + l] = ok && !Dskip.empty() ? Dskip(cb.d0 + l) : T(0);
    }
  }
  const int64_t bc_stride = a.B4.stride(1);
  for (int64_t tb0 = 0; tb0 < q.len; tb0 += kTimeBlock) {
    const int64_t tb = std::min(kTimeBlock, q.len - tb0), t_abs = q.t0 + tb0;
    // Stage 1: dt = softplus(delta + bias), dtu = dt u, y = D u.
    for (int64_t t = 0; t < tb; ++t) {
      const T* drow = delta.ptr(q.b, t_abs + t);
      const T* urow = u.ptr(q.b, t_abs + t);
      for (int64_t j = 0; j < nblk; ++j) {
        const ChannelBlock& cb = blk[j];
        const T* bias = cst + j * 2 * L;
        const T* dskip = bias + L;
        const int64_t o = j * TL + t * L;
        if (cb.nl == L) {
          V x = cv_load(drow + cb.d0) + cv_load(bias);
          if (softplus) x = cv_softplus<T>(x);
          const V uv = cv_load(urow + cb.d0);
          cv_store(dt + o, x);
          cv_store(dtu + o, x * uv);
          cv_store(ys + o, cv_load(dskip) * uv);
        } else {
          for (int64_t l = 0; l < L; ++l) {
            T x = 0, uv = 0;
            if (l < cb.nl) {
              x = drow[cb.d0 + l] + bias[l];
              if (softplus) x = simd::softplus_scalar(x);
              uv = urow[cb.d0 + l];
            }
            dt[o + l] = x;
            dtu[o + l] = x * uv;
            ys[o + l] = dskip[l] * uv;
          }
        }
      }
    }
    // Stage 2: the recurrence, per block, NC states at a time.
    for (int64_t j = 0; j < nblk; ++j) {
      const ChannelBlock& cb = blk[j];
      scan_all_states(N, tb, dt + j * TL, dtu + j * TL, a.B4.ptr(q.b, t_abs, cb.g),
                      a.C4.ptr(q.b, t_abs, cb.g), bc_stride, At + j * NL, hs + j * NL, ys + j * TL);
    }
    // Stage 3: gate and store.
    for (int64_t t = 0; t < tb; ++t) {
      T* yrow = y.ptr(q.b, t_abs + t);
      const T* zrow = z.empty() ? nullptr : z.ptr(q.b, t_abs + t);
      for (int64_t j = 0; j < nblk; ++j) {
        const ChannelBlock& cb = blk[j];
        const T* yv = ys + j * TL + t * L;
        if (cb.nl == L) {
          V v = cv_load(yv);
          if (zrow) v = v * cv_silu<T>(cv_load(zrow + cb.d0));
          cv_store(yrow + cb.d0, v);
        } else {
          for (int64_t l = 0; l < cb.nl; ++l)
            yrow[cb.d0 + l] = zrow ? yv[l] * simd::silu_scalar(zrow[cb.d0 + l]) : yv[l];
        }
      }
    }
  }
  if (!state_out.empty()) {
    for (int64_t j = 0; j < nblk; ++j) {
      const ChannelBlock& cb = blk[j];
      for (int64_t l = 0; l < cb.nl; ++l) {
        T* row = state_out.ptr(q.s, cb.d0 + l);
        for (int64_t n = 0; n < N; ++n) row[n] = hs[j * NL + n * L + l];
      }
    }
  }
}

}  // namespace detail::ssm

// Selective scan, prefill form (any T; fastest for T beyond a few tokens). Same arguments and
// meaning as selective_scan_naive. final_state may be the same view as initial_state.
// y must not overlap any input.
template <class T>
void selective_scan_chunk(TensorView<const T> u, TensorView<const T> delta, TensorView<const T> A,
                          TensorView<const T> B, TensorView<const T> C, TensorView<const T> D,
                          TensorView<const T> z, TensorView<const T> delta_bias,
                          TensorView<const T> initial_state, TensorView<T> y,
                          TensorView<T> final_state = {}, const SelectiveScanParams& p = {}) {
  using namespace detail::ssm;
  constexpr int64_t L = simd::kLanes<T>;
  const ScanArgs<T> a = check_selective_scan("selective_scan_chunk", u, delta, A, B, C, D, z,
                                             delta_bias, initial_state, y, final_state, p);
  // Work items: (sequence, group, channel block) in that order; blocks never straddle a group.
  const int64_t dpg = a.D / a.G, per_group = (dpg + L - 1) / L, per_seq = a.G * per_group;
  const int64_t items = a.S * per_seq;
  auto block_of = [&](int64_t i) {
    const int64_t r = i % per_seq, g = r / per_group, d0 = g * dpg + (r % per_group) * L;
    return ChannelBlock{d0, std::min(L, (g + 1) * dpg - d0), g};
  };
  const int threads = get_num_threads(p.num_threads);
  parallel_for_range(
      0, items,
      [&](int64_t lo, int64_t hi) {
        const int64_t NL = a.N * L;
        // Sized for this range, not zero-filled (scan_run writes before it reads).
        const int64_t cap = std::min(kMaxRun, hi - lo);
        std::unique_ptr<T[]> scratch(
            new T[static_cast<std::size_t>(3 * cap * kTimeBlock * L + 2 * cap * NL + 2 * cap * L)]);
        ChannelBlock blk[kMaxRun];
        // Runs of at most kMaxRun blocks of one sequence walk through time together.
        for (int64_t i = lo; i < hi;) {
          const int64_t s = i / per_seq;
          const int64_t end = std::min({hi, (s + 1) * per_seq, i + kMaxRun});
          for (int64_t j = i; j < end; ++j) blk[j - i] = block_of(j);
          scan_run(a, a.seqs[s], blk, end - i, u, delta, A, D, z, delta_bias, initial_state, y,
                   final_state, p.delta_softplus, scratch.get(), cap);
          i = end;
        }
      },
      threads);
}

}  // namespace effattn
