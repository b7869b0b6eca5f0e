// simd/: every kernel against std:: math in double, at every length 0..67 and at unaligned
// starts (offsets 0..3 into an aligned buffer), in float and double; exp's accuracy over its
// whole range; the online-softmax state against a direct softmax.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "effattn/simd/simd.hpp"

using namespace effattn;

namespace {

template <class T>
struct Buf {
  std::vector<T> data;
  T* p;
  Buf(int64_t n, int offset, uint64_t seed, double lo = -3, double hi = 3) : data(n + 8) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> d(lo, hi);
    for (auto& x : data) x = T(d(rng));
    p = data.data() + offset;
  }
};

// Tolerances: a rounding per op on the data, relative to the magnitude of the result.
template <class T>
double eps() {
  return std::numeric_limits<T>::epsilon();
}

template <class T>
class SimdTest : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(SimdTest, Types);

TYPED_TEST(SimdTest, BlasOneKernels) {
  using T = TypeParam;
  for (int64_t n = 0; n <= 67; ++n)
    for (int off = 0; off < 4; ++off) {
      SCOPED_TRACE(::testing::Message() << "n=" << n << " offset=" << off);
      Buf<T> a(n, off, 1 + n), b(n, (off + 1) % 4, 100 + n), y(n, (off + 3) % 4, 200 + n);
      const std::vector<T> y0(y.p, y.p + n);
      double ref = 0, mag = 0;
      for (int64_t i = 0; i < n; ++i) {
        ref += double(a.p[i]) * double(b.p[i]);
        mag += std::abs(double(a.p[i]) * double(b.p[i]));
      }
      EXPECT_NEAR(simd::dot(a.p, b.p, n), ref, 4 * eps<T>() * (mag + 1));
      double s = 0, sm = 0, mx = -INFINITY;
      for (int64_t i = 0; i < n; ++i) {
        s += a.p[i];
        sm += std::abs(double(a.p[i]));
        mx = std::max(mx, double(a.p[i]));
      }
      EXPECT_NEAR(simd::reduce_sum(a.p, n), s, 4 * eps<T>() * (sm + 1));
      EXPECT_EQ(double(simd::reduce_max(a.p, n)), mx);

      const T alpha = T(0.75), beta = T(-1.25);
      std::copy(y0.begin(), y0.end(), y.p);
      simd::axpy(alpha, a.p, y.p, n);
      for (int64_t i = 0; i < n; ++i)
        EXPECT_NEAR(y.p[i], double(alpha) * a.p[i] + y0[i], 4 * eps<T>() * 8);
      std::copy(y0.begin(), y0.end(), y.p);
      simd::axpby(alpha, a.p, beta, y.p, n);
      for (int64_t i = 0; i < n; ++i)
        EXPECT_NEAR(y.p[i], double(alpha) * a.p[i] + double(beta) * y0[i], 4 * eps<T>() * 8);
      std::copy(y0.begin(), y0.end(), y.p);
      simd::scale(alpha, y.p, n);
      for (int64_t i = 0; i < n; ++i) EXPECT_EQ(y.p[i], T(alpha * y0[i]));
      std::copy(y0.begin(), y0.end(), y.p);
      simd::mul_add(a.p, b.p, y.p, n);
      for (int64_t i = 0; i < n; ++i)
        EXPECT_NEAR(y.p[i], double(a.p[i]) * b.p[i] + y0[i], 4 * eps<T>() * 16);
      simd::mul(a.p, b.p, y.p, n);
      for (int64_t i = 0; i < n; ++i) EXPECT_EQ(y.p[i], T(a.p[i] * b.p[i]));
      // Guard elements past the end are untouched.
      EXPECT_EQ(y.p[n], y.data[size_t(n + (off + 3) % 4)]);
    }
}

TYPED_TEST(SimdTest, Activations) {
  using T = TypeParam;
  const double tol = 8 * eps<T>();
  for (int64_t n = 0; n <= 67; ++n)
    for (int off = 0; off < 4; ++off) {
      SCOPED_TRACE(::testing::Message() << "n=" << n << " offset=" << off);
      Buf<T> x(n, off, 7 + n, -30, 30), y(n, (off + 2) % 4, 9);
      simd::exp(x.p, y.p, n);
      for (int64_t i = 0; i < n; ++i) {
        const double r = std::exp(double(x.p[i]));
        EXPECT_LE(std::abs(y.p[i] - r), tol * r) << x.p[i];
      }
      simd::sigmoid(x.p, y.p, n);
      for (int64_t i = 0; i < n; ++i) {
        const double r = 1.0 / (1.0 + std::exp(-double(x.p[i])));
        EXPECT_LE(std::abs(y.p[i] - r), tol * r + 1e-300) << x.p[i];
      }
      simd::silu(x.p, y.p, n);
      for (int64_t i = 0; i < n; ++i) {
        const double r = double(x.p[i]) / (1.0 + std::exp(-double(x.p[i])));
        EXPECT_LE(std::abs(y.p[i] - r), tol * std::abs(r) + 1e-300) << x.p[i];
      }
      simd::softplus(x.p, y.p, n);
      for (int64_t i = 0; i < n; ++i) {
        const double r = std::log1p(std::exp(double(x.p[i])));
        EXPECT_LE(std::abs(y.p[i] - r), tol * r + 1e-300) << x.p[i];
      }
      // In place works too.
      std::vector<T> x0(x.p, x.p + n);
      simd::silu(x.p, x.p, n);
      for (int64_t i = 0; i < n; ++i) {
        const double r = double(x0[size_t(i)]) / (1.0 + std::exp(-double(x0[size_t(i)])));
        EXPECT_LE(std::abs(x.p[i] - r), tol * std::abs(r) + 1e-300);
      }
    }
}

TEST(SimdExp, FloatMaxRelativeErrorOverTheWholeRange) {
  // Floats across [-88, 88] plus the edges; SIMD path vs the scalar path vs std::exp in double.
  // Normal results: <= 2 ulp of float (the measured max is ~1.5 ulp). Every 1021st float bit
  // pattern of each sign up to |x| = 88 (~2M points).
  std::vector<float> xs;
  uint32_t top;
  const float edge = 88.0f;
  std::memcpy(&top, &edge, 4);
  for (uint32_t u = 0; u <= top; u += 1021)
    for (uint32_t sign : {0u, 0x80000000u}) {
      const uint32_t b = u | sign;
      float x;
      std::memcpy(&x, &b, 4);
      xs.push_back(x);
    }
  xs.push_back(88.72283f);
  xs.push_back(-87.33654f);
  std::vector<float> ys(xs.size());
  simd::exp(xs.data(), ys.data(), int64_t(xs.size()));
  double max_rel = 0, max_rel_sub = 0;
  const double ulp = std::ldexp(1.0, -23);
  for (size_t i = 0; i < xs.size(); ++i) {
    const double r = std::exp(double(xs[i]));
    const double rel = std::abs(double(ys[i]) - r) / r;
    if (r >= double(std::numeric_limits<float>::min())) {
      max_rel = std::max(max_rel, rel);
    } else {
      // Subnormal results: the absolute error is within one subnormal spacing.
      max_rel_sub = std::max(max_rel_sub, std::abs(double(ys[i]) - r) /
                                              double(std::numeric_limits<float>::denorm_min()));
    }
    ASSERT_EQ(ys[i], simd::exp_scalar(xs[i])) << "SIMD and scalar paths differ at " << xs[i];
  }
  std::printf(
      "exp(float): max relative error %.3g (%.2f ulp) over %zu points in [-88, 88]; "
      "subnormal results within %.2f denorm_min\n",
      max_rel, max_rel / ulp, xs.size(), max_rel_sub);
  EXPECT_LE(max_rel, 2 * ulp);
  EXPECT_LE(max_rel_sub, 1.0);
}

TEST(SimdExp, SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  float x[] = {-inf,   inf,  NAN,  0.0f, -0.0f, 89.0f, -104.0f, -200.0f, 1e30f,
               -1e30f, 1.0f, -inf, inf,  NAN,   0.0f,  1.0f,    2.0f};
  float y[17];
  simd::exp(x, y, 17);
  for (int i = 0; i < 17; ++i) {
    SCOPED_TRACE(x[i]);
    if (std::isnan(x[i])) {
      EXPECT_TRUE(std::isnan(y[i]));
    } else if (x[i] > 88.73f) {
      EXPECT_EQ(y[i], inf);
    } else if (x[i] < -103.98f) {
      EXPECT_EQ(y[i], 0.0f);
    } else {
      EXPECT_NEAR(y[i], std::exp(double(x[i])), 2.5e-7 * std::exp(double(x[i])));
    }
    EXPECT_EQ(std::isnan(y[i]), std::isnan(simd::exp_scalar(x[i])));
    if (!std::isnan(y[i])) {
      EXPECT_EQ(y[i], simd::exp_scalar(x[i]));
    }
  }
  EXPECT_EQ(simd::sigmoid_scalar(-200.0f), 0.0f);
  EXPECT_EQ(simd::sigmoid_scalar(200.0f), 1.0f);
  EXPECT_EQ(simd::softplus_scalar(1000.0f), 1000.0f);
  EXPECT_EQ(simd::silu_scalar(-1000.0f), -0.0f);
}

TYPED_TEST(SimdTest, SoftmaxRowAndLse) {
  using T = TypeParam;
  for (int64_t n = 1; n <= 67; ++n)
    for (int off = 0; off < 4; ++off) {
      Buf<T> x(n, off, 31 + n, -10, 10);
      if (n > 3) x.p[2] = -std::numeric_limits<T>::infinity();  // a masked entry
      std::vector<double> ref(static_cast<size_t>(n));
      double m = -INFINITY, d = 0;
      for (int64_t i = 0; i < n; ++i) m = std::max(m, double(x.p[i]));
      for (int64_t i = 0; i < n; ++i) d += std::exp(double(x.p[i]) - m);
      for (int64_t i = 0; i < n; ++i) ref[size_t(i)] = std::exp(double(x.p[i]) - m) / d;
      const T lse = simd::softmax(x.p, n);
      EXPECT_NEAR(lse, m + std::log(d), 8 * eps<T>() * (std::abs(m) + 1));
      for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(x.p[i], ref[size_t(i)], 8 * eps<T>());
    }
  // All masked: zeros and lse = -inf, never NaN.
  T row[5];
  for (auto& r : row) r = -std::numeric_limits<T>::infinity();
  EXPECT_EQ(simd::softmax(row, 5), -std::numeric_limits<T>::infinity());
  for (T r : row) EXPECT_EQ(r, T(0));
  EXPECT_EQ(simd::softmax(row, 0), -std::numeric_limits<T>::infinity());
}

TYPED_TEST(SimdTest, OnlineSoftmaxBlocksAndMergeEqualDirectSoftmax) {
  using T = TypeParam;
  const int64_t n = 67, V = 19;
  Buf<T> s(n, 1, 5, -20, 20), v(n * V, 0, 6);
  for (int64_t j = 10; j < 20; ++j) s.p[j] = -std::numeric_limits<T>::infinity();
  // Direct reference in double.
  double m = -INFINITY, d = 0;
  for (int64_t j = 0; j < n; ++j) m = std::max(m, double(s.p[j]));
  std::vector<double> o_ref(V, 0.0);
  for (int64_t j = 0; j < n; ++j) {
    const double p = std::exp(double(s.p[j]) - m);
    d += p;
    for (int64_t c = 0; c < V; ++c) o_ref[size_t(c)] += p * double(v.p[j * V + c]);
  }
  for (auto& x : o_ref) x /= d;
  const double lse_ref = m + std::log(d);
  const double tol = 64 * eps<T>();

  // Blocks of 7 (one block entirely masked) into one state.
  simd::SoftmaxState<T> st;
  std::vector<T> o(V, T(0)), sc(s.p, s.p + n);
  for (int64_t j0 = 0; j0 < n; j0 += 7)
    st.add(sc.data() + j0, std::min<int64_t>(7, n - j0), v.p + j0 * V, V, o.data(), V);
  EXPECT_NEAR(st.lse(), lse_ref, tol * (std::abs(lse_ref) + 1));
  st.normalize(o.data(), V);
  for (int64_t c = 0; c < V; ++c) EXPECT_NEAR(o[size_t(c)], o_ref[size_t(c)], tol);

  // Two halves in separate states, then merged (either order), equal the same.
  for (int order = 0; order < 2; ++order) {
    simd::SoftmaxState<T> a, b, empty;
    std::vector<T> oa(V, T(0)), ob(V, T(0)), oe(V, T(0)), s2(s.p, s.p + n);
    a.add(s2.data(), 30, v.p, V, oa.data(), V);
    b.add(s2.data() + 30, n - 30, v.p + 30 * V, V, ob.data(), V);
    if (order) {
      std::swap(a, b);
      std::swap(oa, ob);
    }
    a.merge(empty, oe.data(), oa.data(), V);  // the empty state is the identity
    a.merge(b, ob.data(), oa.data(), V);
    EXPECT_NEAR(a.lse(), lse_ref, tol * (std::abs(lse_ref) + 1));
    a.normalize(oa.data(), V);
    for (int64_t c = 0; c < V; ++c) EXPECT_NEAR(oa[size_t(c)], o_ref[size_t(c)], tol);
  }
  // Empty state: zeros, lse = -inf; merging into an empty state copies.
  simd::SoftmaxState<T> e1;
  std::vector<T> oz(V, T(5));
  e1.normalize(oz.data(), V);
  for (T x : oz) EXPECT_EQ(x, T(0));
  EXPECT_EQ(e1.lse(), -std::numeric_limits<T>::infinity());
}

#if EFFATTN_HAS_SIMD
// hsum_rows: lane i = the sum of register i, in natural order, for every i.
TYPED_TEST(SimdTest, HsumRowsEqualsEachRegistersSum) {
  using T = TypeParam;
  constexpr int64_t L = simd::kLanes<T>;
  for (uint64_t seed = 31; seed < 34; ++seed) {
    Buf<T> x(L * L, 0, seed);
    simd::Vec<T> rows[L];
    for (int64_t i = 0; i < L; ++i) rows[i] = simd::load(x.p + i * L);
    T out[L];
    simd::store(out, simd::hsum_rows(rows));
    for (int64_t i = 0; i < L; ++i) {
      double ref = 0, mag = 0;
      for (int64_t l = 0; l < L; ++l)
        ref += double(x.p[i * L + l]), mag += std::abs(x.p[i * L + l]);
      EXPECT_NEAR(double(out[i]), ref, 4 * eps<T>() * mag) << "register " << i;
    }
  }
  // One nonzero lane at a time: each lane of each register lands in its register's sum only.
  for (int64_t i = 0; i < L; ++i)
    for (int64_t l = 0; l < L; ++l) {
      std::vector<T> z(static_cast<std::size_t>(L * L), T(0));
      z[static_cast<std::size_t>(i * L + l)] = T(1);
      simd::Vec<T> rows[L];
      for (int64_t r = 0; r < L; ++r) rows[r] = simd::load(z.data() + r * L);
      T out[L];
      simd::store(out, simd::hsum_rows(rows));
      for (int64_t r = 0; r < L; ++r)
        EXPECT_EQ(out[r], r == i ? T(1) : T(0)) << "register " << i << " lane " << l;
    }
}
#endif

}  // namespace
