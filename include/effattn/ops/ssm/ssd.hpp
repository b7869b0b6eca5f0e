// Mamba-2 SSD (state-space duality) as a thin front end over the gated-linear-recurrence
// engine of ops/linear_attention (simple GLA with q = C, k = B, v = dt x, g = dt A, scale 1):
//
//   dt'_t    = clamp(softplus(dt_t + dt_bias))     (bias, softplus, clamp each optional)
//   h_t      = exp(dt'_t A) h_{t-1} + dt'_t x_t B_t^T       h [P, N] per head
//   y_t      = h_t C_t + D x_t,   then y_t *= silu(z_t)     (D and z never touch the state)
//
// x [B, T, H, P], dt [B, T, H], A [H] (negative), Bm / Cm [B, T, G, N] (head h reads group
// h / (H / G)), D empty, [H] or [H, P], dt_bias empty or [H], z empty or [B, T, H, P],
// y [B, T, H, P]; states h [N, H, P, N] (mamba's layout, the transpose of the engine's
// [Kf = N, V = P]: the recurrent form updates it in place row by row, the chunk form loads and
// stores it transposed once per call, so no caller ever sees the engine layout).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "effattn/core/error.hpp"
#include "effattn/core/parallel.hpp"
#include "effattn/core/tensor.hpp"
#include "effattn/ops/linear_attention/linear_attention.hpp"
#include "effattn/simd/simd.hpp"

namespace effattn {

template <class T>
struct SsdParams {
  bool dt_softplus = false;  // dt' = softplus(dt + dt_bias)
  // dt_limit: dt' is clamped to [dt_min, dt_max] unless the pair is the default (0, inf)
  // (mamba's mamba_chunk_scan_combined clamps only then).
  T dt_min = T(0);
  T dt_max = std::numeric_limits<T>::infinity();
  int64_t chunk_size = 16;          // tokens per chunk of the chunk form (16: fastest measured)
  std::vector<int64_t> cu_seqlens;  // varlen offsets, B must be 1; states are then [N, ...]
  int num_threads = 0;
  LinearAttentionForm form = LinearAttentionForm::kAuto;
};

template <class T>
void ssd(TensorView<const T> x, TensorView<const T> dt, TensorView<const T> A,
         TensorView<const T> Bm, TensorView<const T> Cm, TensorView<const T> D,
         TensorView<const T> dt_bias, TensorView<const T> z, TensorView<T> y,
         const SsdParams<T>& params = {}, TensorView<const T> initial_state = {},
         TensorView<T> final_state = {}) {
  const char* op = "ssd";
  check(x.ndim() == 4, op, ": x has shape ", linattn_detail::shape_str(x),
        ", expected [B, T, H, P]");
  const int64_t B = x.size(0), T_ = x.size(1), H = x.size(2), P = x.size(3);
  check_shape(op, "dt", dt, {B, T_, H}, "[B, T, H]");
  check_shape(op, "A", A, {H}, "[H]");
  check(Bm.ndim() == 4, op, ": B has shape ", linattn_detail::shape_str(Bm),
        ", expected [B, T, G, N]");
  const int64_t G = Bm.size(2), N = Bm.size(3);
  check_shape(op, "B", Bm, {B, T_, G, N}, "[B, T, G, N]");
  check_shape(op, "C", Cm, {B, T_, G, N}, "[B, T, G, N]");
  check(G > 0 && H % G == 0, op, ": H = ", H, " heads is not a multiple of G = ", G, " groups");
  const bool d_per_channel = !D.empty() && D.ndim() == 2;
  if (!D.empty()) {
    if (d_per_channel)
      check_shape(op, "D", D, {H, P}, "[H, P]");
    else
      check_shape(op, "D", D, {H}, "[H]");
  }
  if (!dt_bias.empty()) check_shape(op, "dt_bias", dt_bias, {H}, "[H]");
  if (!z.empty()) check_shape(op, "z", z, {B, T_, H, P}, "[B, T, H, P]");
  check_shape(op, "y", y, {B, T_, H, P}, "[B, T, H, P]");
  check_inner_contiguous(op, "x", x);
  check_inner_contiguous(op, "B", Bm);
  check_inner_contiguous(op, "C", Cm);
  check_inner_contiguous(op, "y", y);
  check(params.dt_min <= params.dt_max, op, ": dt_limit (", params.dt_min, ", ", params.dt_max,
        ") is empty");

  // dt' [B, T, H] contiguous: the engine's v scale and (times A) its log-gate.
  Tensor<T> dte({B, T_, H});
  const bool clamp = !(params.dt_min == T(0) && std::isinf(params.dt_max) && params.dt_max > 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T_; ++t)
      for (int64_t h = 0; h < H; ++h) {
        T d = dt(b, t, h) + (dt_bias.empty() ? T(0) : dt_bias(h));
        if (params.dt_softplus) d = simd::softplus_scalar(d);
        if (clamp) d = std::min(std::max(d, params.dt_min), params.dt_max);
        dte(b, t, h) = d;
      }
  std::vector<T> a(static_cast<size_t>(H));
  for (int64_t h = 0; h < H; ++h) a[h] = A(h);

  linattn_detail::Problem<T> p;
  p.op = op;
  p.q = Cm, p.k = Bm, p.v = x, p.o = y;
  p.v_scale = dte.view();
  p.g = dte.view();
  p.gate_mul = a.data();
  p.decay = DecayKind::kScalar;
  p.s0 = initial_state, p.sT = final_state;
  p.state_vk = true;
  p.chunk = params.chunk_size;
  p.threads = params.num_threads;
  p.form = params.form;
  linattn_detail::validate(p, params.cu_seqlens);
  p.scale = T(1);
  linattn_detail::run(p);

  if (D.empty() && z.empty()) return;
  // y += D x;  y *= silu(z)
  parallel_for(
      0, B * T_,
      [&](int64_t bt) {
        const int64_t b = bt / T_, t = bt % T_;
        for (int64_t h = 0; h < H; ++h) {
          T* yr = y.ptr(b, t, h);
          const T* xr = x.ptr(b, t, h);
          if (!D.empty())
            for (int64_t i = 0; i < P; ++i) yr[i] += (d_per_channel ? D(h, i) : D(h)) * xr[i];
          if (!z.empty()) {
            const T* zr = z.ptr(b, t, h);
            for (int64_t i = 0; i < P; ++i) yr[i] *= simd::silu_scalar(zr[i]);
          }
        }
      },
      params.num_threads, 64);
}

// Naive reference: the SSD recurrence token by token in [P, N] layout, straight from the
// definition above (independent of the engine). Same arguments as ssd().
template <class T>
void ssd_naive(TensorView<const T> x, TensorView<const T> dt, TensorView<const T> A,
               TensorView<const T> Bm, TensorView<const T> Cm, TensorView<const T> D,
               TensorView<const T> dt_bias, TensorView<const T> z, TensorView<T> y,
               const SsdParams<T>& params = {}, TensorView<const T> initial_state = {},
               TensorView<T> final_state = {}) {
  const int64_t B = x.size(0), T_ = x.size(1), H = x.size(2), P = x.size(3);
  const int64_t G = Bm.size(2), N = Bm.size(3);
  std::vector<int64_t> cu = params.cu_seqlens;
  if (cu.empty()) cu = {0, T_};
  const int64_t nseq = params.cu_seqlens.empty() ? B : static_cast<int64_t>(cu.size()) - 1;
  const bool clamp = !(params.dt_min == T(0) && std::isinf(params.dt_max) && params.dt_max > 0);
  std::vector<T> hs(static_cast<size_t>(P * N));
  for (int64_t s = 0; s < nseq; ++s) {
    const int64_t b = params.cu_seqlens.empty() ? s : 0;
    const int64_t t0 = params.cu_seqlens.empty() ? 0 : cu[s];
    const int64_t t1 = params.cu_seqlens.empty() ? T_ : cu[s + 1];
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / (H / G);
      for (int64_t i = 0; i < P; ++i)
        for (int64_t n = 0; n < N; ++n)
          hs[i * N + n] = initial_state.empty() ? T(0) : initial_state(s, h, i, n);
      for (int64_t t = t0; t < t1; ++t) {
        T d = dt(b, t, h) + (dt_bias.empty() ? T(0) : dt_bias(h));
        if (params.dt_softplus) d = std::log1p(std::exp(d));
        if (clamp) d = std::min(std::max(d, params.dt_min), params.dt_max);
        const T decay = std::exp(d * A(h));
        for (int64_t i = 0; i < P; ++i) {
          T acc = T(0);
          for (int64_t n = 0; n < N; ++n) {
            T& hv = hs[i * N + n];
            hv = decay * hv + d * x(b, t, h, i) * Bm(b, t, g, n);
            acc += hv * Cm(b, t, g, n);
          }
          if (!D.empty()) acc += (D.ndim() == 2 ? D(h, i) : D(h)) * x(b, t, h, i);
          if (!z.empty()) {
            const T zv = z(b, t, h, i);
            acc *= zv / (T(1) + std::exp(-zv));
          }
          y(b, t, h, i) = acc;
        }
      }
      if (!final_state.empty())
        for (int64_t i = 0; i < P; ++i)
          for (int64_t n = 0; n < N; ++n) final_state(s, h, i, n) = hs[i * N + n];
    }
  }
}

}  // namespace effattn
