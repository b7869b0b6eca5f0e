// Dense products: the one place effattn's matrix products go through (Eigen underneath).
//
//   C[M,N] = alpha * op(A) op(B) + beta * C,   op(X) = X or X^T
//
// Operands are 2-D views with any strides. A view with a unit stride in either dim maps straight
// onto Eigen (row- or column-major with an outer stride); any other layout is gathered into a
// contiguous temporary first. beta == 0 never reads C (C may hold garbage or NaN).
// With EFFATTN_USE_BLAS (CMake option) Eigen forwards large products to OpenBLAS.
#pragma once

#include <Eigen/Core>
#include <cstdint>

#include "effattn/core/error.hpp"
#include "effattn/core/tensor.hpp"

namespace effattn {

enum class Trans { kNo, kYes };

namespace detail {

template <class T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using ColMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
template <class T>
using RowMap = Eigen::Map<RowMat<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using ColMap = Eigen::Map<ColMat<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

// Calls f(eigen_expression) with an Eigen view of a 2-D TensorView (a copy if it has no unit
// stride).
template <class T, class F>
decltype(auto) with_eigen(const TensorView<T>& v, F&& f) {
  using U = std::remove_const_t<T>;
  using RM = Eigen::Map<std::conditional_t<std::is_const_v<T>, const RowMat<U>, RowMat<U>>,
                        Eigen::Unaligned, Eigen::OuterStride<>>;
  using CM = Eigen::Map<std::conditional_t<std::is_const_v<T>, const ColMat<U>, ColMat<U>>,
                        Eigen::Unaligned, Eigen::OuterStride<>>;
  const int64_t r = v.size(0), c = v.size(1);
  if (v.stride(1) == 1 || c <= 1) {
    return f(RM(v.data(), r, c, Eigen::OuterStride<>(r <= 1 ? std::max<int64_t>(c, 1) : v.stride(0))));
  }
  if (v.stride(0) == 1 || r <= 1) {
    return f(CM(v.data(), r, c, Eigen::OuterStride<>(v.stride(1))));
  }
  RowMat<U> tmp(r, c);
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) tmp(i, j) = v(i, j);
  return f(RM(tmp.data(), r, c, Eigen::OuterStride<>(c)));
}

}  // namespace detail

// C = alpha * op(A) op(B) + beta * C  on 2-D strided views.
template <class T>
void gemm(TensorView<const T> A, Trans ta, TensorView<const T> B, Trans tb, TensorView<T> C,
          T alpha = T(1), T beta = T(0)) {
  check(A.ndim() == 2 && B.ndim() == 2 && C.ndim() == 2, "gemm: A, B, C must be 2-D, got A ",
        A.shape().str(), ", B ", B.shape().str(), ", C ", C.shape().str());
  const int64_t M = ta == Trans::kNo ? A.size(0) : A.size(1);
  const int64_t K = ta == Trans::kNo ? A.size(1) : A.size(0);
  const int64_t KB = tb == Trans::kNo ? B.size(0) : B.size(1);
  const int64_t N = tb == Trans::kNo ? B.size(1) : B.size(0);
  check(K == KB, "gemm: inner sizes differ: op(A) is [", M, ", ", K, "], op(B) is [", KB, ", ", N,
        "]");
  check(C.size(0) == M && C.size(1) == N, "gemm: C has shape ", C.shape().str(), ", expected [",
        M, ", ", N, "]");
  if (M == 0 || N == 0) return;
  const bool c_direct = C.stride(1) == 1 || C.stride(0) == 1 || N <= 1 || M <= 1;
  auto run = [&](auto&& c) {
    detail::with_eigen(A, [&](auto&& a) {
      detail::with_eigen(B, [&](auto&& b) {
        auto prod = [&](auto&& pa, auto&& pb) {
          if (K == 0) {
            if (beta == T(0)) c.setZero(); else c *= beta;
          } else if (beta == T(0)) {
            c.noalias() = alpha * (pa * pb);
          } else {
            if (beta != T(1)) c *= beta;
            c.noalias() += alpha * (pa * pb);
          }
        };
        if (ta == Trans::kNo && tb == Trans::kNo) prod(a, b);
        if (ta == Trans::kNo && tb == Trans::kYes) prod(a, b.transpose());
        if (ta == Trans::kYes && tb == Trans::kNo) prod(a.transpose(), b);
        if (ta == Trans::kYes && tb == Trans::kYes) prod(a.transpose(), b.transpose());
        return 0;
      });
      return 0;
    });
    return 0;
  };
  if (c_direct) {
    detail::with_eigen(C, run);
  } else {
    detail::RowMat<T> tmp(M, N);
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) tmp(i, j) = beta == T(0) ? T(0) : C(i, j);
    detail::RowMap<T> m(tmp.data(), M, N, Eigen::OuterStride<>(N));
    run(m);
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C(i, j) = tmp(i, j);
  }
}

// Row-major pointer form for inner loops of ops (no view construction):
// C[M,N] (leading dim ldc) = alpha * op(A) op(B) + beta * C, A stored [M,K] (or [K,M] if ta)
// with leading dim lda, B stored [K,N] (or [N,K] if tb) with leading dim ldb.
template <class T>
void gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, Trans ta, const T* B,
          int64_t ldb, Trans tb, T* C, int64_t ldc, T alpha = T(1), T beta = T(0)) {
  const TensorView<const T> a(A, ta == Trans::kNo ? Shape{M, K} : Shape{K, M}, {lda, 1});
  const TensorView<const T> b(B, tb == Trans::kNo ? Shape{K, N} : Shape{N, K}, {ldb, 1});
  gemm(a, ta, b, tb, TensorView<T>(C, Shape{M, N}, {ldc, 1}), alpha, beta);
}

}  // namespace effattn
