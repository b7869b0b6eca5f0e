// Dense products: the one place effattn's matrix products go through (Eigen's kernel underneath).
//
//   C[M,N] = alpha * op(A) op(B) + beta * C,   op(X) = X or X^T
//
// Operands are 2-D views with any strides. A view with a unit stride in either dim is used in
// place (row- or column-major with a leading dimension); any other layout is gathered into a
// contiguous temporary first. beta == 0 never reads C (C may hold garbage or NaN).
//
// Threads: ops call gemm from inside their own parallel_for over (batch, head, chunk), so a
// product runs on the calling thread unless `num_threads` asks for more; then C is split into
// row (or column) panels, one per thread — the result does not depend on the thread count.
// Eigen's own OpenMP parallelisation is bypassed on purpose: it would ignore effattn's thread
// count and, called outside a parallel region, spread every small chunk product over all cores.
// This calls Eigen's general_matrix_matrix_product (the kernel behind Eigen's products and its
// BLAS interface); with EFFATTN_USE_BLAS (EIGEN_USE_BLAS) Eigen forwards it to the BLAS linked
// (OpenBLAS, or BLIS with -DBLA_VENDOR=FLAME).
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <vector>

#include "effattn/core/error.hpp"
#include "effattn/core/parallel.hpp"
#include "effattn/core/tensor.hpp"

namespace effattn {

enum class Trans { kNo, kYes };

namespace detail {

// A matrix operand as Eigen's kernel wants it: pointer, storage order, leading dimension.
template <class T>
struct GemmOperand {
  const T* p;
  bool row_major;
  int64_t ld;
};

// Serial C (+)= alpha * A B on raw operands (Eigen's blocked kernel; accumulates into C).
template <class T, bool kARow, bool kBRow, bool kCRow>
void gemm_kernel(int64_t M, int64_t N, int64_t K, const T* a, int64_t lda, const T* b, int64_t ldb,
                 T* c, int64_t ldc, T alpha) {
  using Eigen::Index;
  constexpr int kAO = kARow ? Eigen::RowMajor : Eigen::ColMajor;
  constexpr int kBO = kBRow ? Eigen::RowMajor : Eigen::ColMajor;
  constexpr int kCO = kCRow ? Eigen::RowMajor : Eigen::ColMajor;
  Eigen::internal::gemm_blocking_space<kCO, T, T, Eigen::Dynamic, Eigen::Dynamic, Eigen::Dynamic>
      blocking(M, N, K, 1, true);
  Eigen::internal::general_matrix_matrix_product<Index, T, kAO, false, T, kBO, false, kCO, 1>::run(
      M, N, K, a, lda, b, ldb, c, 1, ldc, alpha, blocking, nullptr);
}

template <class T>
void gemm_dispatch(int64_t M, int64_t N, int64_t K, const GemmOperand<T>& a,
                   const GemmOperand<T>& b, T* c, int64_t ldc, bool c_row, T alpha) {
  const int code = (a.row_major ? 4 : 0) | (b.row_major ? 2 : 0) | (c_row ? 1 : 0);
  switch (code) {
    case 0:
      return gemm_kernel<T, false, false, false>(M, N, K, a.p, a.ld, b.p, b.ld, c, ldc, alpha);
    case 1:
      return gemm_kernel<T, false, false, true>(M, N, K, a.p, a.ld, b.p, b.ld, c, ldc, alpha);
    case 2:
      return gemm_kernel<T, false, true, false>(M, N, K, a.p, a.ld, b.p, b.ld, c, ldc, alpha);
    case 3:
      return gemm_kernel<T, false, true, true>(M, N, K, a.p, a.ld, b.p, b.ld, c, ldc, alpha);
    case 4:
      return gemm_kernel<T, true, false, false>(M, N, K, a.p, a.ld, b.p, b.ld, c, ldc, alpha);
    case 5:
      return gemm_kernel<T, true, false, true>(M, N, K, a.p, a.ld, b.p, b.ld, c, ldc, alpha);
    case 6:
      return gemm_kernel<T, true, true, false>(M, N, K, a.p, a.ld, b.p, b.ld, c, ldc, alpha);
    default:
      return gemm_kernel<T, true, true, true>(M, N, K, a.p, a.ld, b.p, b.ld, c, ldc, alpha);
  }
}

// op(v) as an operand; gathers v into `tmp` when it has no unit stride.
template <class T>
GemmOperand<T> make_operand(const TensorView<const T>& v, Trans t, std::vector<T>& tmp) {
  const int64_t r = v.size(0), c = v.size(1);
  GemmOperand<T> o{v.data(), true, 1};
  if ((v.stride(1) == 1 || c <= 1) && (r <= 1 || v.stride(0) >= c)) {
    o = {v.data(), true, std::max<int64_t>(r <= 1 ? c : v.stride(0), std::max<int64_t>(c, 1))};
  } else if ((v.stride(0) == 1 || r <= 1) && (c <= 1 || v.stride(1) >= r)) {
    o = {v.data(), false, std::max<int64_t>(c <= 1 ? r : v.stride(1), std::max<int64_t>(r, 1))};
  } else {
    tmp.resize(static_cast<std::size_t>(r * c));
    for (int64_t i = 0; i < r; ++i)
      for (int64_t j = 0; j < c; ++j) tmp[static_cast<std::size_t>(i * c + j)] = v(i, j);
    o = {tmp.data(), true, std::max<int64_t>(c, 1)};
  }
  if (t == Trans::kYes) o.row_major = !o.row_major;  // X^T of row-major X is column-major
  return o;
}

// C (+)= alpha op(A) op(B) with C already scaled by beta; splits C across threads by panels.
template <class T>
void gemm_run(int64_t M, int64_t N, int64_t K, const GemmOperand<T>& a, const GemmOperand<T>& b,
              T* c, int64_t ldc, bool c_row, T alpha, int num_threads) {
  const int threads = num_threads == 1 ? 1 : get_num_threads(num_threads);
  const double work = double(M) * double(N) * double(K);
  if (threads <= 1 || work < 4e6) return gemm_dispatch(M, N, K, a, b, c, ldc, c_row, alpha);
  // Split the longer side of C into panels (multiples of 16 rows / columns).
  const bool split_rows = M >= N;
  const int64_t len = split_rows ? M : N;
  const int64_t panels = std::min<int64_t>(threads, (len + 15) / 16);
  const int64_t step = ((len + panels - 1) / panels + 15) / 16 * 16;
  parallel_for(
      0, panels,
      [&](int64_t p) {
        const int64_t lo = p * step, hi = std::min(len, lo + step);
        if (lo >= hi) return;
        if (split_rows) {
          // rows lo..hi of op(A) and of C
          GemmOperand<T> ap = a;
          ap.p += a.row_major ? lo * a.ld : lo;
          T* cp = c + (c_row ? lo * ldc : lo);
          gemm_dispatch(hi - lo, N, K, ap, b, cp, ldc, c_row, alpha);
        } else {
          GemmOperand<T> bp = b;
          bp.p += b.row_major ? lo : lo * b.ld;
          T* cp = c + (c_row ? lo : lo * ldc);
          gemm_dispatch(M, hi - lo, K, a, bp, cp, ldc, c_row, alpha);
        }
      },
      threads);
}

}  // namespace detail

// C = alpha * op(A) op(B) + beta * C  on 2-D strided views. `num_threads`: 1 (default) runs on
// the calling thread, 0 = effattn's global default, n = up to n threads.
template <class T>
void gemm(TensorView<const T> A, Trans ta, TensorView<const T> B, Trans tb, TensorView<T> C,
          T alpha = T(1), T beta = T(0), int num_threads = 1) {
  if (A.ndim() != 2 || B.ndim() != 2 || C.ndim() != 2)
    throw Error(detail::concat("gemm: A, B, C must be 2-D, got A ", A.shape().str(), ", B ",
                               B.shape().str(), ", C ", C.shape().str()));
  const int64_t M = ta == Trans::kNo ? A.size(0) : A.size(1);
  const int64_t K = ta == Trans::kNo ? A.size(1) : A.size(0);
  const int64_t KB = tb == Trans::kNo ? B.size(0) : B.size(1);
  const int64_t N = tb == Trans::kNo ? B.size(1) : B.size(0);
  if (K != KB)
    throw Error(detail::concat("gemm: inner sizes differ: op(A) is [", M, ", ", K, "], op(B) is [",
                               KB, ", ", N, "]"));
  if (C.size(0) != M || C.size(1) != N)
    throw Error(
        detail::concat("gemm: C has shape ", C.shape().str(), ", expected [", M, ", ", N, "]"));
  if (M == 0 || N == 0) return;
  // C: used in place when it has a unit stride, else through a row-major temporary.
  const bool c_row = C.stride(1) == 1 || N <= 1;
  const bool c_col = !c_row && (C.stride(0) == 1 || M <= 1);
  std::vector<T> ctmp;
  T* c = C.data();
  int64_t ldc = c_row ? std::max<int64_t>(M <= 1 ? N : C.stride(0), std::max<int64_t>(N, 1))
                      : std::max<int64_t>(N <= 1 ? M : C.stride(1), std::max<int64_t>(M, 1));
  if (!c_row && !c_col) {
    ctmp.assign(static_cast<std::size_t>(M * N), T(0));
    if (beta != T(0))
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) ctmp[static_cast<std::size_t>(i * N + j)] = C(i, j);
    c = ctmp.data();
    ldc = N;
  }
  const bool row = c_row || !c_col;
  // C = beta * C first (beta == 0 overwrites, so NaN in C never leaks).
  for (int64_t i = 0; i < (row ? M : N); ++i) {
    T* line = c + i * ldc;
    const int64_t n = row ? N : M;
    if (beta == T(0)) {
      std::fill(line, line + n, T(0));
    } else if (beta != T(1)) {
      for (int64_t j = 0; j < n; ++j) line[j] *= beta;
    }
  }
  if (K > 0 && alpha != T(0)) {
    std::vector<T> atmp, btmp;
    const auto a = detail::make_operand(A, ta, atmp);
    const auto b = detail::make_operand(B, tb, btmp);
    detail::gemm_run(M, N, K, a, b, c, ldc, row, alpha, num_threads);
  }
  if (!ctmp.empty())
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C(i, j) = ctmp[static_cast<std::size_t>(i * N + j)];
}

// Row-major pointer form for the inner loops of ops (no views, no allocation):
// C[M,N] (leading dim ldc) = alpha * op(A) op(B) + beta * C, A stored [M,K] (or [K,M] if ta)
// with leading dim lda, B stored [K,N] (or [N,K] if tb) with leading dim ldb. Runs on the
// calling thread unless num_threads != 1.
template <class T>
void gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, Trans ta, const T* B,
          int64_t ldb, Trans tb, T* C, int64_t ldc, T alpha = T(1), T beta = T(0),
          int num_threads = 1) {
  if (M <= 0 || N <= 0) return;
  for (int64_t i = 0; i < M; ++i) {
    T* line = C + i * ldc;
    if (beta == T(0)) {
      std::fill(line, line + N, T(0));
    } else if (beta != T(1)) {
      for (int64_t j = 0; j < N; ++j) line[j] *= beta;
    }
  }
  if (K <= 0 || alpha == T(0)) return;
  const detail::GemmOperand<T> a{A, ta == Trans::kNo, std::max<int64_t>(lda, 1)};
  const detail::GemmOperand<T> b{B, tb == Trans::kNo, std::max<int64_t>(ldb, 1)};
  detail::gemm_run(M, N, K, a, b, C, std::max<int64_t>(ldc, 1), true, alpha, num_threads);
}

}  // namespace effattn
