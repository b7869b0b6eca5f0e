// ops/common/gemm.hpp: all four transpose combinations, alpha/beta, strided views (including
// no unit stride at all), against a naive triple loop in double.
#include <gtest/gtest.h>

#include <cmath>

#include "effattn/ops/common/gemm.hpp"
#include "test_util.hpp"

using namespace effattn;
using effattn::testing::random_tensor;

namespace {

// op(X)(i, j) of a 2-D view
template <class T>
double at(const TensorView<const T>& x, Trans t, int64_t i, int64_t j) {
  return t == Trans::kNo ? double(x(i, j)) : double(x(j, i));
}

template <class T>
void check_case(int64_t M, int64_t N, int64_t K, Trans ta, Trans tb, double alpha, double beta,
                int layout, double tol) {
  SCOPED_TRACE(::testing::Message() << "M=" << M << " N=" << N << " K=" << K << " ta=" << int(ta)
                                    << " tb=" << int(tb) << " layout=" << layout);
  // Store each operand inside a bigger buffer: layout 0 = row-major with padding, 1 = stored
  // transposed (column-major), 2 = every other element (no unit stride).
  auto make = [&](int64_t r, int64_t c, uint64_t seed, Tensor<T>& buf) -> TensorView<T> {
    const int64_t m = std::max(r, c);
    buf = random_tensor<T>(Shape{2 * m + 3, 2 * m + 3}, seed);
    TensorView<T> full = buf.view();
    if (layout == 0) return full.slice(0, 1, 1 + r).slice(1, 2, 2 + c);
    if (layout == 1) return full.slice(0, 0, c).slice(1, 1, 1 + r).transpose(0, 1);
    return TensorView<T>(buf.data() + 1, Shape{r, c}, {2 * (2 * m + 3), 2});
  };
  Tensor<T> ba, bb, bc;
  auto A = make(ta == Trans::kNo ? M : K, ta == Trans::kNo ? K : M, 1, ba);
  auto B = make(tb == Trans::kNo ? K : N, tb == Trans::kNo ? N : K, 2, bb);
  auto C = make(M, N, 3, bc);
  Tensor<double> ref({M, N});
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double s = 0;
      for (int64_t p = 0; p < K; ++p)
        s += at(TensorView<const T>(A), ta, i, p) * at(TensorView<const T>(B), tb, p, j);
      ref(i, j) = alpha * s + (beta == 0 ? 0.0 : beta * double(C(i, j)));
    }
  if (beta == 0)  // beta == 0 must not read C, even if it holds NaN
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C(i, j) = T(NAN);
  gemm<T>(A, ta, B, tb, C, T(alpha), T(beta));
  double err = 0;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      const double e = std::abs(double(C(i, j)) - ref(i, j));
      err = std::isnan(e) ? INFINITY : std::max(err, e);
    }
  EXPECT_LE(err, tol * std::max<int64_t>(1, K));
}

}  // namespace

TEST(Gemm, AllTransposesStridesAlphaBetaDouble) {
  for (int layout : {0, 1, 2})
    for (Trans ta : {Trans::kNo, Trans::kYes})
      for (Trans tb : {Trans::kNo, Trans::kYes})
        for (auto [alpha, beta] : {std::pair{1.0, 0.0}, std::pair{0.5, 1.0}, std::pair{-2.0, 0.25}})
          check_case<double>(7, 13, 5, ta, tb, alpha, beta, layout, 1e-14);
}

TEST(Gemm, FloatAwkwardSizes) {
  for (auto [M, N, K] : {std::tuple{1, 1, 1}, std::tuple{63, 17, 100}, std::tuple{1, 257, 40},
                         std::tuple{100, 1, 7}, std::tuple{3, 5, 0}})
    for (Trans ta : {Trans::kNo, Trans::kYes})
      for (Trans tb : {Trans::kNo, Trans::kYes})
        check_case<float>(M, N, K, ta, tb, 1.0, 0.5, 0, 2e-6);
}

TEST(Gemm, PointerFormMatchesViewForm) {
  auto a = random_tensor<float>(Shape{5, 9}, 4), b = random_tensor<float>(Shape{6, 9}, 5);
  Tensor<float> c1({5, 6}), c2({5, 6});
  gemm<float>(a.view(), Trans::kNo, b.view(), Trans::kYes, c1.view());
  gemm<float>(5, 6, 9, a.data(), 9, Trans::kNo, b.data(), 9, Trans::kYes, c2.data(), 6);
  EXPECT_EQ(effattn::testing::max_abs_diff(c1, c2), 0.0);
}

TEST(Gemm, ThreadsSplitPanelsWithoutChangingTheResult) {
  // Big enough to split (work > 4e6); both split directions; broadcast (stride 0) rows gathered.
  for (auto [M, N] : {std::pair{300, 70}, std::pair{70, 300}}) {
    auto a = random_tensor<float>(Shape{M, 190}, 7), b = random_tensor<float>(Shape{190, N}, 8);
    Tensor<float> c1({M, N}), c2({M, N});
    gemm<float>(a.view(), Trans::kNo, b.view(), Trans::kNo, c1.view(), 1.0f, 0.0f, 1);
    gemm<float>(a.view(), Trans::kNo, b.view(), Trans::kNo, c2.view(), 1.0f, 0.0f, 2);
    EXPECT_EQ(effattn::testing::max_abs_diff(c1, c2), 0.0);
  }
  Tensor<double> row({1, 5}), b({5, 3}), c({4, 3});
  for (int i = 0; i < 5; ++i) row(0, i) = i + 1;
  for (int i = 0; i < 15; ++i) b.data()[i] = i % 4;
  const TensorView<const double> bcast(row.data(), Shape{4, 5}, {0, 1});  // 4 copies of row
  gemm<double>(bcast, Trans::kNo, b.view(), Trans::kNo, c.view());
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 3; ++j) {
      double s = 0;
      for (int p = 0; p < 5; ++p) s += row(0, p) * b(p, j);
      EXPECT_EQ(c(i, j), s);
    }
}

TEST(Gemm, ShapeErrorsNameTheOperands) {
  Tensor<float> a({3, 4}), b({5, 6}), c({3, 6});
  try {
    gemm<float>(a.view(), Trans::kNo, b.view(), Trans::kNo, c.view());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("inner sizes"), std::string::npos) << e.what();
  }
  Tensor<float> b2({4, 6}), c2({3, 5});
  EXPECT_THROW(gemm<float>(a.view(), Trans::kNo, b2.view(), Trans::kNo, c2.view()), Error);
  Tensor<float> v({3});
  EXPECT_THROW(gemm<float>(v.view(), Trans::kNo, b2.view(), Trans::kNo, c2.view()), Error);
}
