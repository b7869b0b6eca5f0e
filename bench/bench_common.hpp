// Shared by every benchmark binary: random inputs, rate counters, and the same-run roofline
// (FMA peak and Eigen sgemm GFLOP/s, triad GB/s) so that every figure can be read as a ratio.
//
// A benchmark binary calls EFFATTN_BENCH_ROOFLINE() once (at namespace scope) to register the
// roofline cases beside its own; `roofline` itself runs only those, with bigger sizes.
#pragma once

#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <cstdint>
#include <random>

#include "effattn/core/parallel.hpp"
#include "effattn/core/tensor.hpp"
#include "effattn/simd/vec.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(EIGEN_USE_BLAS)
// Whichever BLAS is linked (OpenBLAS or BLIS) has its own thread-count setter; weak, so the
// other's is null.
extern "C" void openblas_set_num_threads(int) __attribute__((weak));
extern "C" void bli_thread_set_num_threads(int64_t) __attribute__((weak));
#endif

namespace effattn::bench {

template <class T>
Tensor<T> random_tensor(const Shape& shape, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  Tensor<T> t(shape);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<T>(dist(rng));
  return t;
}

// Sets rate counters "GFLOP" (flops per iteration; printed as GFLOP=x/s) and "GB" (bytes).
inline void set_rates(benchmark::State& state, double flops, double bytes = 0) {
  if (flops > 0)
    state.counters["GFLOP"] =
        benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  if (bytes > 0)
    state.counters["GB"] =
        benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// Pins effattn's and Eigen's thread count for one benchmark case (range arg "threads").
inline void use_threads(int n) {
  effattn::set_num_threads(n);
  Eigen::setNbThreads(n);
#if defined(_OPENMP)
  omp_set_num_threads(n);
#endif
#if defined(EIGEN_USE_BLAS)
  if (openblas_set_num_threads != nullptr) openblas_set_num_threads(n);
  if (bli_thread_set_num_threads != nullptr) bli_thread_set_num_threads(n);
#endif
}

// Roofline: C = A B, square sizes n, Eigen (or the BLAS behind it). Args: {n, threads}.
inline void roofline_sgemm(benchmark::State& state) {
  const int64_t n = state.range(0);
  use_threads(static_cast<int>(state.range(1)));
  using M = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  M a = M::Random(n, n), b = M::Random(n, n), c(n, n);
  for (auto _ : state) {
    c.noalias() = a * b;
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  set_rates(state, 2.0 * n * n * n);
  state.SetLabel(effattn::simd::isa_name());
}

// Roofline: the cores' float FMA peak (no memory: 12 independent register accumulators, a
// chain of fused multiply-adds each) per thread, summed over threads. Eigen's sgemm reaches
// ~65% of it on the Zen 5 development machine; kernels whose operands stay in L1 can beat
// sgemm. Args: {threads}.
inline void roofline_fma(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  use_threads(threads);
#if EFFATTN_HAS_SIMD
  using V = simd::Vec<float>;
  auto fma = [](const V& a, const V& b, const V& c) { return xsimd::fma(a, b, c); };
#else
  using V = float;
  auto fma = [](float a, float b, float c) { return a * b + c; };
#endif
  constexpr int64_t kIters = 1 << 20, kAcc = 12;
  for (auto _ : state) {
    effattn::parallel_for(
        0, threads,
        [&](int64_t t) {
          V acc[kAcc];
          for (int i = 0; i < kAcc; ++i) acc[i] = V(1.0f + 1e-3f * float(i + t));
          const V m(0.999999f), c(1e-7f);
          for (int64_t it = 0; it < kIters; ++it)
            for (int i = 0; i < kAcc; ++i) acc[i] = fma(acc[i], m, c);
          for (int i = 0; i < kAcc; ++i) benchmark::DoNotOptimize(acc[i]);
        },
        threads);
  }
  set_rates(state, 2.0 * kIters * kAcc * simd::kLanes<float> * threads);
  state.SetLabel(effattn::simd::isa_name());
}

// Roofline: a[i] = b[i] + s * c[i] (STREAM triad) over 3 arrays of `mib` MiB each, split across
// threads. GB/s counts 3 arrays moved (2 read, 1 written). Args: {mib, threads}.
inline void roofline_triad(benchmark::State& state) {
  const int64_t n = state.range(0) * (1 << 20) / int64_t(sizeof(float));
  const int threads = static_cast<int>(state.range(1));
  use_threads(threads);
  Tensor<float> a({n}), b({n}), c({n});
  b.fill(1.0f);
  c.fill(2.0f);
  float* pa = a.data();
  const float *pb = b.data(), *pc = c.data();
  const float s = 0.5f;
  for (auto _ : state) {
    effattn::parallel_for_range(
        0, n,
        [&](int64_t lo, int64_t hi) {
          for (int64_t i = lo; i < hi; ++i) pa[i] = pb[i] + s * pc[i];
        },
        threads);
    benchmark::DoNotOptimize(pa);
    benchmark::ClobberMemory();
  }
  set_rates(state, 0, 3.0 * n * sizeof(float));
}

}  // namespace effattn::bench

// Registers the same-run roofline beside a binary's own cases (small sizes: a few seconds).
#define EFFATTN_BENCH_ROOFLINE()            \
  BENCHMARK(effattn::bench::roofline_fma)   \
      ->ArgNames({"threads"})               \
      ->Arg(1)                              \
      ->Arg(2)                              \
      ->Unit(benchmark::kMillisecond)       \
      ->UseRealTime();                      \
  BENCHMARK(effattn::bench::roofline_sgemm) \
      ->ArgNames({"n", "threads"})          \
      ->Args({1024, 1})                     \
      ->Args({1024, 2})                     \
      ->Unit(benchmark::kMillisecond)       \
      ->UseRealTime();                      \
  BENCHMARK(effattn::bench::roofline_triad) \
      ->ArgNames({"MiB", "threads"})        \
      ->Args({256, 1})                      \
      ->Args({256, 2})                      \
      ->Unit(benchmark::kMillisecond)       \
      ->UseRealTime()
