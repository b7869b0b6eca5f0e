// layers: Linear and the SwiGLU Mlp at a 1B-model width, beside the same-run roofline.
//
//   linear_prefill/<S>  y [T, d] = x [T, d] W^T, T = 2048, d = 2048: one gemm per block of 256
//                       output columns (bf16 weights widened per 512-input tile).
//                       GFLOP/s counts 2 T d d.
//   gemm_prefill        the same product as one effattn::gemm call (row panels per thread): what
//                       the layer's column blocks are measured against.
//   linear_decode/<S>   T = 1: the streaming kernel (W read once, in memory order). GB/s counts
//                       the weight bytes d d sizeof(S). Iterations rotate over copies of the layer
//                       whose weights add up to > 4x the last-level cache, so W comes from memory.
//   mlp_prefill/<S>     gate_proj, up_proj [f, d], down_proj [d, f], d = 2048, f = 5632, T = 2048.
//                       GFLOP/s counts 3 x 2 T d f.
//   mlp_decode/<S>      T = 1. GB/s counts the weight bytes 3 d f sizeof(S) (138 MB for float).
// S = float or bf16 storage; compute in float. Args: {T, threads}.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "bench_common.hpp"
#include "effattn/layers/layers.hpp"

namespace {

using effattn::bf16;
using effattn::Tensor;
namespace layers = effattn::layers;

constexpr int64_t kD = 2048;
constexpr int64_t kF = 5632;
constexpr int64_t kColdBytes = int64_t(128) << 20;  // > 4x the 32 MB L3 of the test machine

template <class S>
const std::vector<layers::Linear<float, S>>& linears() {
  static std::vector<layers::Linear<float, S>> v;
  if (v.empty()) {
    const int64_t bytes = kD * kD * int64_t(sizeof(S));
    const int64_t copies = std::max<int64_t>(1, (kColdBytes + bytes - 1) / bytes);
    for (int64_t i = 0; i < copies; ++i) {
      v.emplace_back(kD, kD);
      v.back().init_random(uint64_t(i));
    }
  }
  return v;
}

template <class S>
const layers::Mlp<float, S>& mlp() {
  static std::unique_ptr<layers::Mlp<float, S>> m;
  if (!m) {
    m = std::make_unique<layers::Mlp<float, S>>(kD, kF);
    m->init_random(1);
  }
  return *m;
}

template <class S>
void linear_case(benchmark::State& state) {
  const int64_t T = state.range(0);
  effattn::bench::use_threads(static_cast<int>(state.range(1)));
  const auto& lins = linears<S>();
  const Tensor<float> x = effattn::bench::random_tensor<float>({T, kD}, 1);
  Tensor<float> y({T, kD});
  std::size_t i = 0;
  for (auto _ : state) {
    lins[i].forward(x, y);
    i = (i + 1) % lins.size();
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  effattn::bench::set_rates(state, 2.0 * T * kD * kD, T == 1 ? double(kD) * kD * sizeof(S) : 0);
}

void gemm_prefill(benchmark::State& state) {
  const int64_t T = state.range(0);
  const int threads = static_cast<int>(state.range(1));
  effattn::bench::use_threads(threads);
  const auto& w = linears<float>()[0].weight.value();
  const Tensor<float> x = effattn::bench::random_tensor<float>({T, kD}, 1);
  Tensor<float> y({T, kD});
  for (auto _ : state) {
    effattn::gemm<float>(x, effattn::Trans::kNo, w, effattn::Trans::kYes, y, 1.0f, 0.0f, threads);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  effattn::bench::set_rates(state, 2.0 * T * kD * kD);
}

template <class S>
void mlp_case(benchmark::State& state) {
  const int64_t T = state.range(0);
  effattn::bench::use_threads(static_cast<int>(state.range(1)));
  const auto& m = mlp<S>();
  const Tensor<float> x = effattn::bench::random_tensor<float>({T, kD}, 1);
  Tensor<float> y({T, kD});
  for (auto _ : state) {
    m.forward(x, y);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  effattn::bench::set_rates(state, 3 * 2.0 * T * kD * kF, T == 1 ? 3.0 * kD * kF * sizeof(S) : 0);
}

void prefill_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"T", "threads"})->Args({2048, 1})->Args({2048, 2});
  b->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.5);  // >= 2 Mlp iterations
}
void decode_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"T", "threads"})->Args({1, 1})->Args({1, 2});
  b->Unit(benchmark::kMicrosecond)->UseRealTime();
}

}  // namespace

BENCHMARK(linear_case<float>)->Name("linear_prefill/float")->Apply(prefill_args);
BENCHMARK(linear_case<bf16>)->Name("linear_prefill/bf16")->Apply(prefill_args);
BENCHMARK(gemm_prefill)->Apply(prefill_args);
BENCHMARK(linear_case<float>)->Name("linear_decode/float")->Apply(decode_args);
BENCHMARK(linear_case<bf16>)->Name("linear_decode/bf16")->Apply(decode_args);
BENCHMARK(mlp_case<float>)->Name("mlp_prefill/float")->Apply(prefill_args);
BENCHMARK(mlp_case<bf16>)->Name("mlp_prefill/bf16")->Apply(prefill_args);
BENCHMARK(mlp_case<float>)->Name("mlp_decode/float")->Apply(decode_args);
BENCHMARK(mlp_case<bf16>)->Name("mlp_decode/bf16")->Apply(decode_args);
EFFATTN_BENCH_ROOFLINE();
BENCHMARK_MAIN();
