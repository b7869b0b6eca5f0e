// Normalisation layers, per row of C channels (any view [..., C] whose leading dims collapse to one
// row stride; y may be x itself). Weights are kept in the compute scalar T: they are vectors,
// and bf16 checkpoint values convert to float exactly.
//
//   RMSNorm       y = x / sqrt(mean(x^2) + eps) * w                        (Llama, Mamba)
//   LayerNorm     y = (x - mean(x)) / sqrt(var(x) + eps) * w + b           (torch, biased var)
//   GatedRMSNorm  gate act = silu (Mamba-2, Gated DeltaNet) or sigmoid (Kimi Delta Attention);
//                 mean(.) over groups of `group_size` channels, each normalised on its own:
//                   norm_before_gate = true:   y = x / sqrt(mean(x^2) + eps) * w * act(z)
//                                              (fla's FusedRMSNormGated; mamba_ssm's
//                                               RMSNormGated with norm_before_gate=True)
//                   norm_before_gate = false:  u = x * act(z),  y = u / sqrt(mean(u^2) + eps) * w
//                                              (mamba_ssm's Mamba2: norm_before_gate=False)
//                 mamba_ssm's Mamba2 normalises per group of d_inner / ngroups channels (what its
//                 checkpoints were trained with); transformers' Mamba2Mixer normalises over all
//                 of d_inner. They agree only for ngroups = 1: set group_size accordingly.
//                 fla's per-head norms (weight [head_v_dim] shared by the heads) are this layer
//                 with C = head_v_dim applied to rows [B, T, H, V].
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "effattn/core/error.hpp"
#include "effattn/core/parallel.hpp"
#include "effattn/core/tensor.hpp"
#include "effattn/io/safetensors.hpp"
#include "effattn/layers/linear.hpp"
#include "effattn/layers/weights.hpp"
#include "effattn/simd/simd.hpp"

namespace effattn::layers {

enum class GateActivation { kSilu, kSigmoid };

namespace detail {

inline constexpr int64_t kNormMinParallel = 1 << 16;  // elements before rows go to threads

// Runs f(row) over the rows of x and y (rows [lo, hi) per thread).
template <class F>
void for_rows(int64_t n, int64_t width, F&& f) {
  parallel_for_range(
      0, n,
      [&](int64_t lo, int64_t hi) {
        for (int64_t r = lo; r < hi; ++r) f(r);
      },
      n * width >= kNormMinParallel ? 0 : 1);
}

// y[i] = x[i] * r * w[i]   (x == y allowed)
template <class T>
inline void scale_mul(const T* x, T r, const T* w, T* y, int64_t n) {
  int64_t i = 0;
#if EFFATTN_HAS_SIMD
  constexpr int64_t L = simd::kLanes<T>;
  const simd::Vec<T> vr(r);
  for (; i + L <= n; i += L) simd::store(y + i, simd::load(x + i) * vr * simd::load(w + i));
#endif
  for (; i < n; ++i) y[i] = x[i] * r * w[i];
}

// 1 / sqrt(mean(x^2) + eps) over n values.
template <class T>
inline T rms_inv(const T* x, int64_t n, double eps) {
  return T(1) / std::sqrt(simd::dot(x, x, n) / T(n) + T(eps));
}

}  // namespace detail

// Root-mean-square norm: y = x / sqrt(mean(x^2) + eps) * weight. Name: "weight" [C].
template <class T>
class RMSNorm {
 public:
  Param<T> weight;  // [C]
  double eps = 1e-6;

  RMSNorm() = default;
  explicit RMSNorm(int64_t channels, double eps_ = 1e-6) : weight("weight", {channels}), eps(eps_) {
    weight.fill(1.0);
  }
  int64_t channels() const { return weight.shape()[0]; }

  // x [..., C] -> y [..., C]; y may be x.
  void forward(TensorView<const T> x, TensorView<T> y) const {
    const int64_t C = channels();
    const auto xr = detail::as_rows("RMSNorm", "x", x, C, "C");
    detail::check_out_shape("RMSNorm", "y", y, x, C);
    const auto yr = detail::as_rows("RMSNorm", "y", y, C, "C");
    const T* w = weight.data();
    detail::for_rows(xr.n, C, [&](int64_t r) {
      const T* xp = xr.p + r * xr.ld;
      detail::scale_mul(xp, detail::rms_inv(xp, C, eps), w, yr.p + r * yr.ld, C);
    });
  }
  Tensor<T> operator()(TensorView<const T> x) const {
    check(!x.empty(), "RMSNorm: x is empty, expected [..., C]");
    Tensor<T> y(x.shape());
    forward(x, y);
    return y;
  }

  void load(const io::SafeTensors& st, const std::string& prefix) {
    weight.load(st, prefix, "RMSNorm");
  }
  void save(io::SafeTensorsWriter& w, const std::string& prefix) const { weight.save(w, prefix); }
  void init_random(uint64_t) { weight.fill(1.0); }  // torch's init: ones
  int64_t weight_bytes() const { return weight.bytes(); }
};

// Layer norm over the last dim: y = (x - mean) / sqrt(var + eps) * weight + bias (biased variance,
// as torch). Names: "weight" [C], "bias" [C] (optional).
template <class T>
class LayerNorm {
 public:
  Param<T> weight;  // [C]
  Param<T> bias;    // [C], or disabled
  double eps = 1e-5;

  LayerNorm() = default;
  explicit LayerNorm(int64_t channels, double eps_ = 1e-5, bool has_bias = true)
      : weight("weight", {channels}),
        bias(has_bias ? Param<T>("bias", {channels}) : Param<T>::disabled("bias")),
        eps(eps_) {
    weight.fill(1.0);
  }
  int64_t channels() const { return weight.shape()[0]; }
  bool has_bias() const { return bias.enabled(); }

  // x [..., C] -> y [..., C]; y may be x.
  void forward(TensorView<const T> x, TensorView<T> y) const {
    const int64_t C = channels();
    const auto xr = detail::as_rows("LayerNorm", "x", x, C, "C");
    detail::check_out_shape("LayerNorm", "y", y, x, C);
    const auto yr = detail::as_rows("LayerNorm", "y", y, C, "C");
    const T* w = weight.data();
    const T* b = has_bias() ? bias.data() : nullptr;
    detail::for_rows(xr.n, C, [&](int64_t r) {
      const T* xp = xr.p + r * xr.ld;
      T* yp = yr.p + r * yr.ld;
      const T mean = simd::reduce_sum(xp, C) / T(C);
      // Two passes (mean, then the squares of x - mean): no cancellation for large means.
      T ss = 0;
      int64_t i = 0;
#if EFFATTN_HAS_SIMD
      constexpr int64_t L = simd::kLanes<T>;
      const simd::Vec<T> vm(mean);
      simd::Vec<T> acc(T(0));
      for (; i + L <= C; i += L) {
        const simd::Vec<T> d = simd::load(xp + i) - vm;  // ss += (x - mean)^2
        acc = xsimd::fma(d, d, acc);
      }
      ss = simd::hsum(acc);
#endif
      for (; i < C; ++i) ss += (xp[i] - mean) * (xp[i] - mean);
      const T rstd = T(1) / std::sqrt(ss / T(C) + T(eps));
      for (i = 0; i < C; ++i) {  // y = (x - mean) * rstd * w + b
        const T v = (xp[i] - mean) * rstd * w[i];
        yp[i] = b ? v + b[i] : v;
      }
    });
  }
  Tensor<T> operator()(TensorView<const T> x) const {
    check(!x.empty(), "LayerNorm: x is empty, expected [..., C]");
    Tensor<T> y(x.shape());
    forward(x, y);
    return y;
  }

  void load(const io::SafeTensors& st, const std::string& prefix) {
    weight.load(st, prefix, "LayerNorm");
    bias.load(st, prefix, "LayerNorm");
  }
  void save(io::SafeTensorsWriter& w, const std::string& prefix) const {
    weight.save(w, prefix);
    bias.save(w, prefix);
  }
  void init_random(uint64_t) {  // torch's init: weight ones, bias zeros
    weight.fill(1.0);
    bias.fill(0.0);
  }
  int64_t weight_bytes() const { return weight.bytes() + bias.bytes(); }
};

// Gated RMS norm (see the header comment for the two orders and the groups). Name: "weight" [C].
template <class T>
class GatedRMSNorm {
 public:
  Param<T> weight;  // [C]
  double eps = 1e-5;
  int64_t group_size = 0;  // channels per normalised group; C (one group) by default
  GateActivation gate = GateActivation::kSilu;
  bool norm_before_gate = true;

  GatedRMSNorm() = default;
  GatedRMSNorm(int64_t channels, double eps_ = 1e-5, GateActivation gate_ = GateActivation::kSilu,
               bool norm_before_gate_ = true, int64_t group_size_ = 0)
      : weight("weight", {channels}),
        eps(eps_),
        group_size(group_size_ > 0 ? group_size_ : channels),
        gate(gate_),
        norm_before_gate(norm_before_gate_) {
    check(channels >= 1 && group_size >= 1 && channels % group_size == 0,
          "GatedRMSNorm: group_size ", group_size, " must divide the channel count ", channels);
    weight.fill(1.0);
  }
  int64_t channels() const { return weight.shape()[0]; }

  // x, z [..., C] -> y [..., C]; y may be x (not z).
  void forward(TensorView<const T> x, TensorView<const T> z, TensorView<T> y) const {
    const int64_t C = channels(), G = group_size;
    check(G >= 1 && C % G == 0, "GatedRMSNorm: group_size ", G, " must divide the channel count ",
          C);
    const auto xr = detail::as_rows("GatedRMSNorm", "x", x, C, "C");
    detail::check_out_shape("GatedRMSNorm", "z", z, x, C);
    const auto zr = detail::as_rows("GatedRMSNorm", "z", z, C, "C");
    detail::check_out_shape("GatedRMSNorm", "y", y, x, C);
    const auto yr = detail::as_rows("GatedRMSNorm", "y", y, C, "C");
    const T* w = weight.data();
    parallel_for_range(
        0, xr.n,
        [&](int64_t lo, int64_t hi) {
          std::vector<T> a(static_cast<std::size_t>(C));  // act(z) of one row
          for (int64_t r = lo; r < hi; ++r) {
            const T* xp = xr.p + r * xr.ld;
            T* yp = yr.p + r * yr.ld;
            if (gate == GateActivation::kSilu) {
              simd::silu(zr.p + r * zr.ld, a.data(), C);
            } else {
              simd::sigmoid(zr.p + r * zr.ld, a.data(), C);
            }
            for (int64_t g0 = 0; g0 < C; g0 += G) {
              if (norm_before_gate) {  // y = x * rms_inv(x) * w * act(z)
                detail::scale_mul(xp + g0, detail::rms_inv(xp + g0, G, eps), w + g0, yp + g0, G);
                simd::mul(yp + g0, a.data() + g0, yp + g0, G);
              } else {  // u = x * act(z); y = u * rms_inv(u) * w
                simd::mul(xp + g0, a.data() + g0, yp + g0, G);
                detail::scale_mul(yp + g0, detail::rms_inv(yp + g0, G, eps), w + g0, yp + g0, G);
              }
            }
          }
        },
        xr.n * C >= detail::kNormMinParallel ? 0 : 1);
  }
  Tensor<T> operator()(TensorView<const T> x, TensorView<const T> z) const {
    check(!x.empty(), "GatedRMSNorm: x is empty, expected [..., C]");
    Tensor<T> y(x.shape());
    forward(x, z, y);
    return y;
  }

  void load(const io::SafeTensors& st, const std::string& prefix) {
    weight.load(st, prefix, "GatedRMSNorm");
  }
  void save(io::SafeTensorsWriter& w, const std::string& prefix) const { weight.save(w, prefix); }
  void init_random(uint64_t) { weight.fill(1.0); }
  int64_t weight_bytes() const { return weight.bytes(); }
};

}  // namespace effattn::layers
