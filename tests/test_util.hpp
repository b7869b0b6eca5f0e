// Helpers shared by the tests: deterministic random tensors and error measures.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>

#include "effattn/core/tensor.hpp"

namespace effattn::testing {

// Tensor of the given shape with entries uniform in [lo, hi), reproducible from `seed`.
template <class T>
Tensor<T> random_tensor(const Shape& shape, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  Tensor<T> t(shape);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<T>(dist(rng));
  return t;
}

// A tensor as an optional op input: an empty view when the tensor was never allocated.
template <class T>
TensorView<const T> opt(const Tensor<T>& t) {
  return t.empty() ? TensorView<const T>{} : TensorView<const T>(t.view());
}

// Converts any tensor to double (for comparisons against a double reference).
template <class T>
Tensor<double> to_double(const TensorView<const T>& v) {
  return Tensor<double>::from(v);
}

// max |a - b| over all elements; shapes must match (checked by gtest).
template <class A, class B>
double max_abs_diff(const TensorView<const A>& a, const TensorView<const B>& b) {
  EXPECT_EQ(a.shape(), b.shape()) << a.shape().str() << " vs " << b.shape().str();
  if (a.shape() != b.shape()) return INFINITY;
  const Tensor<double> x = Tensor<double>::from(a), y = Tensor<double>::from(b);
  double m = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double d = std::abs(x.data()[i] - y.data()[i]);
    if (std::isnan(d)) return INFINITY;
    m = std::max(m, d);
  }
  return m;
}
template <class A, class B>
double max_abs_diff(const Tensor<A>& a, const Tensor<B>& b) {
  return max_abs_diff(TensorView<const A>(a.view()), TensorView<const B>(b.view()));
}

// max |x|
template <class T>
double max_abs(const Tensor<T>& a) {
  double m = 0;
  for (int64_t i = 0; i < a.numel(); ++i) m = std::max(m, std::abs(double(a.data()[i])));
  return m;
}

}  // namespace effattn::testing
