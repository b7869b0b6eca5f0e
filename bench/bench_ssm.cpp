// Mamba-1 scans: selective scan and causal conv1d, prefill and decode, beside the roofline.
//
// Cases and the code path each one hits:
//   scan_prefill/D/T/threads   selective_scan -> selective_scan_chunk (SIMD across 16 channels,
//                              8 states in registers, one vector exp per state and token), B = 1,
//                              N = 16, with D skip, z gate, delta_bias + softplus, final state.
//                              GFLOP/s counts 7 flops per state update (exp counted as 1);
//                              GB/s the [T, D] inputs and output moved.
//   scan_step/D/threads        selective_scan_step: one decode token, state [1, D, 16] in place
//                              (SIMD across the 16 states, a horizontal sum per channel). Each
//                              iteration is the next token of one long stream: the time per
//                              token does not depend on how many came before.
//   conv_prefill/D/T/threads   causal_conv1d, W = 4, bias + silu, B = 1: SIMD across channels,
//                              the W inputs of a register in a sliding window. GB/s = x read +
//                              y written; compare with roofline_triad.
//   conv_update/D/threads      causal_conv1d_update: one decode token, conv state in place.
#include <cstdint>

#include "bench_common.hpp"
#include "effattn/ops/ssm/ssm.hpp"

namespace {

using effattn::Shape;
using effattn::Tensor;
using effattn::TensorView;
using effattn::bench::random_tensor;
using effattn::bench::set_rates;
using effattn::bench::use_threads;

// Inputs of a Mamba-1 layer's scan at realistic ranges: A = -(1..N) (S4D-real init),
// delta_bias = softplus^-1 of dt in [1e-3, 1e-1].
struct ScanInputs {
  Tensor<float> u, delta, z, A, B, C, D, bias;
  ScanInputs(int64_t T, int64_t D_, int64_t N)
      : u(random_tensor<float>({1, T, D_}, 1)),
        delta(random_tensor<float>({1, T, D_}, 2, -0.5, 0.5)),
        z(random_tensor<float>({1, T, D_}, 3)),
        A({D_, N}),
        B(random_tensor<float>({1, T, N}, 4)),
        C(random_tensor<float>({1, T, N}, 5)),
        D(random_tensor<float>({D_}, 6)),
        bias(random_tensor<float>({D_}, 7, -6.9, -2.25)) {
    for (int64_t d = 0; d < D_; ++d)
      for (int64_t n = 0; n < N; ++n) A(d, n) = -static_cast<float>(n + 1);
  }
};

void scan_prefill(benchmark::State& state) {
  const int64_t D = state.range(0), T = state.range(1), N = 16;
  use_threads(static_cast<int>(state.range(2)));
  const ScanInputs in(T, D, N);
  Tensor<float> y({1, T, D}), h({1, D, N});
  effattn::SelectiveScanParams p;
  for (auto _ : state) {
    effattn::selective_scan<float>(in.u, in.delta, in.A, in.B, in.C, in.D, in.z, in.bias, {}, y, h,
                                   p);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_rates(state, 7.0 * T * D * N, 4.0 * T * D * sizeof(float));
}

void scan_step(benchmark::State& state) {
  const int64_t D = state.range(0), N = 16;
  use_threads(static_cast<int>(state.range(1)));
  const ScanInputs in(1, D, N);
  Tensor<float> y({1, 1, D}), h = random_tensor<float>({1, D, N}, 8);
  effattn::SelectiveScanParams p;
  for (auto _ : state) {
    effattn::selective_scan_step<float>(in.u, in.delta, in.A, in.B, in.C, in.D, in.z, in.bias, h, y,
                                        p);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  // State read + written, plus the token's inputs.
  set_rates(state, 7.0 * D * N, (2.0 * D * N + 4.0 * D) * sizeof(float));
}

void conv_prefill(benchmark::State& state) {
  const int64_t D = state.range(0), T = state.range(1), W = 4;
  use_threads(static_cast<int>(state.range(2)));
  const Tensor<float> x = random_tensor<float>({1, T, D}, 1), w = random_tensor<float>({D, W}, 2),
                      b = random_tensor<float>({D}, 3);
  Tensor<float> y({1, T, D}), s({1, W - 1, D});
  effattn::CausalConv1dParams p;
  p.activation = effattn::ConvActivation::kSilu;
  for (auto _ : state) {
    effattn::causal_conv1d<float>(x, w, b, {}, y, s, p);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_rates(state, 2.0 * W * T * D, 2.0 * T * D * sizeof(float));
}

void conv_update(benchmark::State& state) {
  const int64_t D = state.range(0), W = 4;
  use_threads(static_cast<int>(state.range(1)));
  const Tensor<float> x = random_tensor<float>({1, 1, D}, 1), w = random_tensor<float>({D, W}, 2),
                      b = random_tensor<float>({D}, 3);
  Tensor<float> y({1, 1, D}), s = random_tensor<float>({1, W - 1, D}, 4);
  effattn::CausalConv1dParams p;
  p.activation = effattn::ConvActivation::kSilu;
  for (auto _ : state) {
    effattn::causal_conv1d_update<float>(x, w, b, s, y, p);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  // x read, y written, state read + written.
  set_rates(state, 2.0 * W * D, (2.0 + 2.0 * (W - 1)) * D * sizeof(float));
}

}  // namespace

EFFATTN_BENCH_ROOFLINE();

BENCHMARK(scan_prefill)
    ->ArgNames({"D", "T", "threads"})
    ->Args({1536, 2048, 1})
    ->Args({1536, 2048, 2})
    ->Args({1536, 16384, 2})
    ->Args({5120, 2048, 2})
    ->Args({5120, 16384, 2})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(scan_step)
    ->ArgNames({"D", "threads"})
    ->Args({1536, 1})
    ->Args({1536, 2})
    ->Args({5120, 1})
    ->Args({5120, 2})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK(conv_prefill)
    ->ArgNames({"D", "T", "threads"})
    ->Args({1536, 2048, 1})
    ->Args({1536, 2048, 2})
    ->Args({1536, 16384, 2})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK(conv_update)
    ->ArgNames({"D", "threads"})
    ->Args({1536, 1})
    ->Args({1536, 2})
    ->Args({5120, 1})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

BENCHMARK_MAIN();
