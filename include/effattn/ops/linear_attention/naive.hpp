// Naive form: the recurrence written token by token in the working type T, straight from the
// definition (see common.hpp), element indexing through the views. The reference of the tests;
// any T, no SIMD, no chunking, single thread.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "effattn/ops/linear_attention/common.hpp"
#include "effattn/ops/linear_attention/feature_maps.hpp"

namespace effattn {
namespace linattn_detail {

template <class T>
void run_naive(const Problem<T>& p) {
  const int64_t Kf = p.Kf, V = p.V;
  std::vector<T> S(static_cast<size_t>(Kf * V)), z(static_cast<size_t>(Kf));
  std::vector<T> qf(static_cast<size_t>(Kf)), kf(static_cast<size_t>(Kf)), qr(p.K), kr(p.K);
  auto st = [&](const TensorView<const T>& s, int64_t n, int64_t h, int64_t i, int64_t j) {
    return p.state_vk ? s(n, h, j, i) : s(n, h, i, j);
  };
  auto st_out = [&](int64_t n, int64_t h, int64_t i, int64_t j) -> T& {
    return p.state_vk ? p.sT(n, h, j, i) : p.sT(n, h, i, j);
  };
  auto phi = [&](const TensorView<const T>& x, int64_t b, int64_t t, int64_t hq, T mul, T* out,
                 T* raw) {
    for (int64_t i = 0; i < p.K; ++i) raw[i] = x(b, t, hq, i);
    apply_feature_map(p.fm, raw, p.K, mul, out);
  };
  for (int64_t n = 0; n < p.N; ++n) {
    const int64_t b = p.batch_of(n), t0 = p.start_of(n), len = p.len_of(n);
    for (int64_t h = 0; h < p.H; ++h) {
      const int64_t hq = p.qk_head(h);
      for (int64_t i = 0; i < Kf; ++i) {
        z[i] = p.z0.empty() ? T(0) : p.z0(n, h, i);
        for (int64_t j = 0; j < V; ++j) S[i * V + j] = p.s0.empty() ? T(0) : st(p.s0, n, h, i, j);
      }
      // S += kf (c v)^T, after decaying S by the gate of token t.
      auto step = [&](int64_t t) {
        phi(p.k, b, t, hq, T(1), kf.data(), kr.data());
        const T c = p.v_scale.empty() ? T(1) : p.v_scale(b, t, h);
        for (int64_t i = 0; i < Kf; ++i) {
          T a = T(1);
          if (p.decay == DecayKind::kScalar)
            a = std::exp(p.gamma ? p.gamma[h] : (p.gate_mul ? p.gate_mul[h] : T(1)) * p.g(b, t, h));
          else if (p.decay == DecayKind::kChannel)
            a = std::exp(p.g(b, t, h, i));
          z[i] = a * z[i] + kf[i];
          for (int64_t j = 0; j < V; ++j)
            S[i * V + j] = a * S[i * V + j] + kf[i] * c * p.v(b, t, h, j);
        }
      };
      // o_t = scale S^T phi(q_t)  (/ (scale phi(q_t).z + eps))
      auto readout = [&](int64_t t) {
        phi(p.q, b, t0 + t, hq, p.scale, qf.data(), qr.data());
        T den = T(0);
        for (int64_t i = 0; i < Kf; ++i) den += qf[i] * z[i];
        for (int64_t j = 0; j < V; ++j) {
          T acc = T(0);
          for (int64_t i = 0; i < Kf; ++i) acc += qf[i] * S[i * V + j];
          p.o(b, t0 + t, h, j) = p.normalize ? acc / (den + p.eps) : acc;
        }
      };
      if (p.causal) {
        for (int64_t t = 0; t < len; ++t) {
          step(t0 + t);
          readout(t);
        }
      } else {
        for (int64_t t = 0; t < len; ++t) step(t0 + t);
        for (int64_t t = 0; t < len; ++t) readout(t);
      }
      if (!p.sT.empty())
        for (int64_t i = 0; i < Kf; ++i)
          for (int64_t j = 0; j < V; ++j) st_out(n, h, i, j) = S[i * V + j];
      if (!p.zT.empty())
        for (int64_t i = 0; i < Kf; ++i) p.zT(n, h, i) = z[i];
    }
  }
}

}  // namespace linattn_detail
}  // namespace effattn
