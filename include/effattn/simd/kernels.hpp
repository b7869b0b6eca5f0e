// BLAS-1 style loops on contiguous rows: dot, axpy, scale, axpby, elementwise multiply-add,
// reductions and a row softmax. Any length, any alignment; SIMD body plus scalar tail.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "effattn/simd/math.hpp"
#include "effattn/simd/vec.hpp"

namespace effattn::simd {

// sum_i a[i] * b[i]   (four independent accumulators so the FMA latency is hidden)
template <class T>
inline T dot(const T* a, const T* b, int64_t n) {
  int64_t i = 0;
  T acc = 0;
#if EFFATTN_HAS_SIMD
  constexpr int64_t L = kLanes<T>;
  Vec<T> s0(T(0)), s1(T(0)), s2(T(0)), s3(T(0));
  for (; i + 4 * L <= n; i += 4 * L) {
    s0 = xsimd::fma(load(a + i), load(b + i), s0);
    s1 = xsimd::fma(load(a + i + L), load(b + i + L), s1);
    s2 = xsimd::fma(load(a + i + 2 * L), load(b + i + 2 * L), s2);
    s3 = xsimd::fma(load(a + i + 3 * L), load(b + i + 3 * L), s3);
  }
  for (; i + L <= n; i += L) s0 = xsimd::fma(load(a + i), load(b + i), s0);
  acc = hsum((s0 + s1) + (s2 + s3));
#endif
  for (; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

// y[i] += a * x[i]
template <class T>
inline void axpy(T a, const T* x, T* y, int64_t n) {
  int64_t i = 0;
#if EFFATTN_HAS_SIMD
  constexpr int64_t L = kLanes<T>;
  const Vec<T> va(a);
  for (; i + L <= n; i += L) store(y + i, xsimd::fma(va, load(x + i), load(y + i)));
#endif
  for (; i < n; ++i) y[i] += a * x[i];
}

// y[i] = a * x[i] + b * y[i]
template <class T>
inline void axpby(T a, const T* x, T b, T* y, int64_t n) {
  int64_t i = 0;
#if EFFATTN_HAS_SIMD
  constexpr int64_t L = kLanes<T>;
  const Vec<T> va(a), vb(b);
  for (; i + L <= n; i += L) store(y + i, xsimd::fma(va, load(x + i), vb * load(y + i)));
#endif
  for (; i < n; ++i) y[i] = a * x[i] + b * y[i];
}

// x[i] *= a
template <class T>
inline void scale(T a, T* x, int64_t n) {
  int64_t i = 0;
#if EFFATTN_HAS_SIMD
  constexpr int64_t L = kLanes<T>;
  const Vec<T> va(a);
  for (; i + L <= n; i += L) store(x + i, va * load(x + i));
#endif
  for (; i < n; ++i) x[i] *= a;
}

// y[i] += a[i] * b[i]
template <class T>
inline void mul_add(const T* a, const T* b, T* y, int64_t n) {
  int64_t i = 0;
#if EFFATTN_HAS_SIMD
  constexpr int64_t L = kLanes<T>;
  for (; i + L <= n; i += L) store(y + i, xsimd::fma(load(a + i), load(b + i), load(y + i)));
#endif
  for (; i < n; ++i) y[i] += a[i] * b[i];
}

// y[i] = a[i] * b[i]   (y may alias a or b)
template <class T>
inline void mul(const T* a, const T* b, T* y, int64_t n) {
  int64_t i = 0;
#if EFFATTN_HAS_SIMD
  constexpr int64_t L = kLanes<T>;
  for (; i + L <= n; i += L) store(y + i, load(a + i) * load(b + i));
#endif
  for (; i < n; ++i) y[i] = a[i] * b[i];
}

// sum_i x[i]
template <class T>
inline T reduce_sum(const T* x, int64_t n) {
  int64_t i = 0;
  T acc = 0;
#if EFFATTN_HAS_SIMD
  constexpr int64_t L = kLanes<T>;
  Vec<T> s0(T(0)), s1(T(0));
  for (; i + 2 * L <= n; i += 2 * L) {
    s0 += load(x + i);
    s1 += load(x + i + L);
  }
  for (; i + L <= n; i += L) s0 += load(x + i);
  acc = hsum(s0 + s1);
#endif
  for (; i < n; ++i) acc += x[i];
  return acc;
}

// max_i x[i]; -inf for n == 0. NaN inputs are not propagated (use finite scores).
template <class T>
inline T reduce_max(const T* x, int64_t n) {
  int64_t i = 0;
  T m = -std::numeric_limits<T>::infinity();
#if EFFATTN_HAS_SIMD
  constexpr int64_t L = kLanes<T>;
  if (n >= L) {
    Vec<T> vm = load(x);
    for (i = L; i + L <= n; i += L) vm = xsimd::max(vm, load(x + i));
    m = hmax(vm);
  }
#endif
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

// y[i] = exp(x[i] - c), returns sum_i y[i]. The inner loop of every softmax.
template <class T>
inline T exp_sub_sum(const T* x, T c, T* y, int64_t n) {
  int64_t i = 0;
  T acc = 0;
#if EFFATTN_HAS_SIMD
  constexpr int64_t L = kLanes<T>;
  const Vec<T> vc(c);
  Vec<T> s(T(0));
  for (; i + L <= n; i += L) {
    const Vec<T> e = exp(load(x + i) - vc);
    store(y + i, e);
    s += e;
  }
  acc = hsum(s);
#endif
  for (; i < n; ++i) {
    y[i] = exp_scalar(x[i] - c);
    acc += y[i];
  }
  return acc;
}

// In-place softmax of a row; returns its log-sum-exp. -inf entries get probability 0; a row
// that is all -inf (or empty) becomes zeros and returns -inf (never NaN).
template <class T>
inline T softmax(T* x, int64_t n) {
  const T m = reduce_max(x, n);
  if (m == -std::numeric_limits<T>::infinity()) {
    for (int64_t i = 0; i < n; ++i) x[i] = T(0);
    return m;
  }
  const T d = exp_sub_sum(x, m, x, n);
  scale(T(1) / d, x, n);
  return m + std::log(d);
}

}  // namespace effattn::simd
