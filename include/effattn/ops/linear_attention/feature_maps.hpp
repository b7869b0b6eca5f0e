// Feature maps phi applied to q and k rows before a linear-attention recurrence.
//
//   identity      phi(x) = x                                             Kf = K
//   elu+1         phi(x) = x + 1 (x > 0), exp(x) (x <= 0)                 Kf = K
//   relu          phi(x) = max(x, 0)                                      Kf = K
//   based_taylor  phi(x) = [1, x / K^(1/4), vec(x x^T) / (sqrt(2) sqrt(K))]  Kf = 1 + K + K^2
//                 (vec row-major), so phi(q).phi(k) = 1 + s + s^2 / 2 with s = q.k / sqrt(K).
//
// Maps are applied row by row into per-chunk / per-token scratch, never to a whole tensor: the
// 273-wide Based features of K = 16 exist only for the C tokens of the chunk being processed,
// and the chunk form computes the intra-chunk Based scores from the raw K-wide dot product
// (feature_kernel_from_dot) instead of from the Kf-wide features.
#pragma once

#include <cmath>
#include <cstdint>

#include "effattn/simd/simd.hpp"

namespace effattn {

enum class FeatureMap { kIdentity, kEluPlus1, kRelu, kBasedTaylor };

inline const char* feature_map_name(FeatureMap f) {
  switch (f) {
    case FeatureMap::kIdentity:
      return "identity";
    case FeatureMap::kEluPlus1:
      return "elu_plus_1";
    case FeatureMap::kRelu:
      return "relu";
    case FeatureMap::kBasedTaylor:
      return "based_taylor";
  }
  return "?";
}

// Feature size Kf for an input size K.
inline int64_t feature_dim(FeatureMap f, int64_t K) {
  return f == FeatureMap::kBasedTaylor ? 1 + K + K * K : K;
}

// y[0 : Kf] = mul * phi(x[0 : K]).
template <class T>
inline void apply_feature_map(FeatureMap f, const T* x, int64_t K, T mul, T* y) {
  switch (f) {
    case FeatureMap::kIdentity:
      for (int64_t i = 0; i < K; ++i) y[i] = mul * x[i];
      return;
    case FeatureMap::kEluPlus1:
      for (int64_t i = 0; i < K; ++i) y[i] = mul * (x[i] > T(0) ? x[i] + T(1) : std::exp(x[i]));
      return;
    case FeatureMap::kRelu:
      for (int64_t i = 0; i < K; ++i) y[i] = mul * (x[i] > T(0) ? x[i] : T(0));
      return;
    case FeatureMap::kBasedTaylor: {
      const T r1 = mul / std::sqrt(std::sqrt(T(K)));           // 1 / K^(1/4)
      const T r2 = mul / (std::sqrt(T(2)) * std::sqrt(T(K)));  // 1 / (sqrt 2 sqrt K)
      y[0] = mul;
      for (int64_t i = 0; i < K; ++i) y[1 + i] = r1 * x[i];
      T* quad = y + 1 + K;
      for (int64_t i = 0; i < K; ++i) {
        const T xi = r2 * x[i];
        for (int64_t j = 0; j < K; ++j) quad[i * K + j] = xi * x[j];  // x_i x_j / (sqrt2 sqrtK)
      }
      return;
    }
  }
}

// Whether phi(q).phi(k) is a function of the raw dot q.k alone (then intra-chunk scores can
// be computed K-wide): true for identity and Based.
inline bool feature_kernel_is_dot_function(FeatureMap f) {
  return f == FeatureMap::kIdentity || f == FeatureMap::kBasedTaylor;
}

// phi(q).phi(k) from the raw dot d = q.k (only for maps where that is a function of d).
template <class T>
inline T feature_kernel_from_dot(FeatureMap f, T d, int64_t K) {
  if (f == FeatureMap::kBasedTaylor) {
    const T s = d / std::sqrt(T(K));
    return T(1) + s + T(0.5) * s * s;
  }
  return d;
}

}  // namespace effattn
