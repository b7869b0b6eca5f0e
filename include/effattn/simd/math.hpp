// Vectorised elementwise math: exp, sigmoid, silu, softplus.
//
// exp (float): Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, then a degree-6 polynomial
// (Cephes expf coefficients) and the scale 2^n applied in two halves, so that results in the
// subnormal range round once instead of flushing to zero. Measured max relative error over
// [-88, 88] (normal results): 1.0 ulp (1.19e-7, tests/test_simd.cpp); subnormal results
// are within 0.75 of the smallest subnormal. exp(-inf) = 0,
// exp(x > 88.72) = inf, exp(NaN) = NaN. The scalar form computes the same formula, so an
// element gets the same value whether it lands in the SIMD body or the tail.
// exp (double): xsimd::exp / std::exp (a few ulp; double exists for reference tests).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "effattn/simd/vec.hpp"

namespace effattn::simd {

namespace detail {
inline constexpr float kExpHi = 88.72283935546875f;  // largest x with finite expf(x)
inline constexpr float kExpLo = -103.972084045410f;  // below: result rounds to 0
inline constexpr float kLog2e = 1.44269504088896341f;
inline constexpr float kLn2Hi = 0.693359375f;
inline constexpr float kLn2Lo = -2.12194440e-4f;
inline constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f,
                       kP3 = 4.1665795894e-2f, kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;

// a * b + c as the vector path computes it: one rounding with hardware FMA, two without (so
// the scalar tail matches xsimd::fma on every ISA and never calls a software fma).
inline float fmadd(float a, float b, float c) {
#if defined(__FMA__) || defined(__FMA4__) || defined(__aarch64__)
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

inline float pow2i(int32_t n) {  // 2^n for n in [-126, 127]
  const int32_t bits = (n + 127) << 23;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
}  // namespace detail

inline float exp_scalar(float x) {
  using namespace detail;
  if (!(x < kExpHi)) return x != x ? x : std::numeric_limits<float>::infinity();
  if (x < kExpLo) return 0.0f;
  const float n = std::nearbyint(x * kLog2e);
  float r = fmadd(-n, kLn2Hi, x);
  r = fmadd(-n, kLn2Lo, r);
  float p = kP0;
  p = fmadd(p, r, kP1);
  p = fmadd(p, r, kP2);
  p = fmadd(p, r, kP3);
  p = fmadd(p, r, kP4);
  p = fmadd(p, r, kP5);
  const float y = fmadd(p, r * r, r + 1.0f);
  const int32_t ni = static_cast<int32_t>(n), n1 = ni >> 1;
  return y * pow2i(n1) * pow2i(ni - n1);
}
inline double exp_scalar(double x) { return std::exp(x); }

#if EFFATTN_HAS_SIMD
inline Vec<float> exp(const Vec<float>& xin) {
  using namespace detail;
  using VI = xsimd::batch<int32_t>;
  const Vec<float> x = xsimd::min(xsimd::max(xin, Vec<float>(kExpLo)), Vec<float>(kExpHi));
  const Vec<float> n = xsimd::nearbyint(x * Vec<float>(kLog2e));
  Vec<float> r = xsimd::fnma(n, Vec<float>(kLn2Hi), x);
  r = xsimd::fnma(n, Vec<float>(kLn2Lo), r);
  Vec<float> p(kP0);
  p = xsimd::fma(p, r, Vec<float>(kP1));
  p = xsimd::fma(p, r, Vec<float>(kP2));
  p = xsimd::fma(p, r, Vec<float>(kP3));
  p = xsimd::fma(p, r, Vec<float>(kP4));
  p = xsimd::fma(p, r, Vec<float>(kP5));
  Vec<float> y = xsimd::fma(p, r * r, r + Vec<float>(1.0f));
  const VI ni = xsimd::to_int(n);
  const VI n1 = ni >> 1, n2 = ni - n1;
  const Vec<float> s1 = xsimd::bitwise_cast<Vec<float>>((n1 + VI(127)) << 23);
  const Vec<float> s2 = xsimd::bitwise_cast<Vec<float>>((n2 + VI(127)) << 23);
  y = y * s1 * s2;
  // Out-of-range and special inputs: the clamp above kept the arithmetic finite.
  y = xsimd::select(xin < Vec<float>(kExpLo), Vec<float>(0.0f), y);
  y = xsimd::select(xin >= Vec<float>(kExpHi), Vec<float>(std::numeric_limits<float>::infinity()),
                    y);
  return xsimd::select(xsimd::isnan(xin), xin, y);  // (xin != xin is false for NaN here)
}
inline Vec<double> exp(const Vec<double>& x) { return xsimd::exp(x); }
#endif

// sigmoid(x) = 1 / (1 + exp(-x)); saturates to exactly 0 and 1, never NaN for finite x.
template <class T>
inline T sigmoid_scalar(T x) {
  return T(1) / (T(1) + exp_scalar(-x));
}
// silu(x) = x * sigmoid(x)
template <class T>
inline T silu_scalar(T x) {
  return x * sigmoid_scalar(x);
}
// softplus(x) = log(1 + exp(x)), computed as max(x, 0) + log1p(exp(-|x|)) (no overflow).
template <class T>
inline T softplus_scalar(T x) {
  return std::max(x, T(0)) + std::log1p(exp_scalar(-std::abs(x)));
}

#if EFFATTN_HAS_SIMD
template <class T>
inline Vec<T> sigmoid(const Vec<T>& x) {
  return Vec<T>(T(1)) / (Vec<T>(T(1)) + exp(-x));
}
template <class T>
inline Vec<T> silu(const Vec<T>& x) {
  return x * sigmoid(x);
}
template <class T>
inline Vec<T> softplus(const Vec<T>& x) {
  return xsimd::max(x, Vec<T>(T(0))) + xsimd::log1p(exp(-xsimd::abs(x)));
}
#endif

// Applies vf to whole registers and sf to the tail: y[i] = f(x[i]); x == y allowed.
template <class T, class VF, class SF>
inline void map(const T* x, T* y, int64_t n, VF&& vf, SF&& sf) {
  int64_t i = 0;
#if EFFATTN_HAS_SIMD
  constexpr int64_t L = kLanes<T>;
  for (; i + L <= n; i += L) store(y + i, vf(load(x + i)));
#else
  (void)vf;
#endif
  for (; i < n; ++i) y[i] = sf(x[i]);
}

#if EFFATTN_HAS_SIMD
#define EFFATTN_SIMD_MAP(name)                                                                   \
  template <class T>                                                                             \
  inline void name(const T* x, T* y, int64_t n) {                                                \
    map(                                                                                         \
        x, y, n, [](const Vec<T>& v) { return name(v); }, [](T s) { return name##_scalar(s); }); \
  }
#else
#define EFFATTN_SIMD_MAP(name)                                  \
  template <class T>                                            \
  inline void name(const T* x, T* y, int64_t n) {               \
    for (int64_t i = 0; i < n; ++i) y[i] = name##_scalar(x[i]); \
  }
#endif

// Array forms: y[i] = f(x[i]) for i < n (x == y allowed).
EFFATTN_SIMD_MAP(exp)
EFFATTN_SIMD_MAP(sigmoid)
EFFATTN_SIMD_MAP(silu)
EFFATTN_SIMD_MAP(softplus)
#undef EFFATTN_SIMD_MAP

}  // namespace effattn::simd
