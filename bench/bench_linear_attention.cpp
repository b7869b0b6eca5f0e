// Benchmarks of the gated-linear-recurrence engine (ops/linear_attention, ops/ssm/ssd.hpp).
//
// Code paths:
//   prefill_simple_gla / prefill_gla  chunk form (chunk_heads -> causal_chunk: intra scores,
//                                     output and state passing fused per column block of S,
//                                     chunk_kernels.hpp; heads grouped per task),
//                                     B = 1, H = 16, K = V in {64, 128}, T in {2048, 8192, 65536}
//   prefill_gla_recurrent             recurrent form over the same prefill (recurrent_head), the
//                                     baseline the chunk form must beat by >= 2x
//   prefill_ssd                       ssd() -> shared group scores + chunk form, [P, N] state,
//                                     H = 24, P = 64, N = 128, G = 1, T in {2048, 16384}
//   decode_*                          one token from a state (recurrent form, in place), after a
//                                     prefill of `past` tokens: the cost must not depend on it
// Counters: GFLOP/s = the FLOPs the chunk form needs (n(n+1)(K + V) + 4nKV per chunk of n: the
// causal half of the intra-chunk products, whose upper register tiles the kernel skips);
// eff_GFLOP/s = the recurrent form's FLOPs (4KV per token and head) over the same time;
// decode reports GB/s of state traffic (read + write of S). roofline_sgemm / roofline_triad
// are the same-run peaks.
#include <cstdint>

#include "bench_common.hpp"
#include "effattn/ops/linear_attention/linear_attention.hpp"
#include "effattn/ops/ssm/ssd.hpp"

using namespace effattn;
using effattn::bench::random_tensor;
using effattn::bench::set_rates;
using effattn::bench::use_threads;

EFFATTN_BENCH_ROOFLINE();

namespace {

// The library's default chunk size (the benchmarks measure the default).
const int64_t kChunk = LinearAttentionParams<float>{}.chunk_size;

// FLOPs of the chunk form for one head: the causal (lower) half of the intra products QK^T and
// AV, n (n + 1) (K + V), and the inter-chunk products Q S and K^T V, 4 n K V, per chunk of n.
double chunk_flops(int64_t T, int64_t K, int64_t V, int64_t C = kChunk) {
  double f = 0;
  for (int64_t c0 = 0; c0 < T; c0 += C) {
    const double n = double(std::min(C, T - c0));
    f += n * (n + 1) * (K + V) + 4 * n * K * V;
  }
  return f;
}
double recurrent_flops(int64_t T, int64_t K, int64_t V) { return 4.0 * T * K * V; }

void set_two_rates(benchmark::State& state, double chunk, double rec) {
  set_rates(state, chunk);
  state.counters["eff_GFLOP/s"] =
      benchmark::Counter(rec * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// Args: {T, K (= V), threads}; `channel` selects GLA, else simple GLA.
template <bool channel, LinearAttentionForm form = LinearAttentionForm::kChunk>
void prefill(benchmark::State& state) {
  const int64_t T = state.range(0), K = state.range(1), V = K, H = 16;
  use_threads(static_cast<int>(state.range(2)));
  const Tensor<float> q = random_tensor<float>({1, T, H, K}, 1),
                      k = random_tensor<float>({1, T, H, K}, 2),
                      v = random_tensor<float>({1, T, H, V}, 3);
  const Tensor<float> g = channel ? random_tensor<float>({1, T, H, K}, 4, -0.1, 0.0)
                                  : random_tensor<float>({1, T, H}, 4, -0.1, 0.0);
  Tensor<float> o({1, T, H, V}), S({1, H, K, V});
  LinearAttentionParams<float> p;
  p.form = form;
  for (auto _ : state) {
    if (channel)
      gla<float>(q, k, v, g, o, p, {}, S);
    else
      simple_gla<float>(q, k, v, g, o, p, {}, S);
    benchmark::DoNotOptimize(o.data());
  }
  const double cf =
      form == LinearAttentionForm::kChunk ? chunk_flops(T, K, V) : recurrent_flops(T, K, V);
  set_two_rates(state, H * cf, H * recurrent_flops(T, K, V));
}

// Args: {T, threads}. H = 24, P = 64, N = 128, G = 1.
void prefill_ssd(benchmark::State& state) {
  const int64_t T = state.range(0), H = 24, P = 64, N = 128;
  use_threads(static_cast<int>(state.range(1)));
  const Tensor<float> x = random_tensor<float>({1, T, H, P}, 1),
                      dt = random_tensor<float>({1, T, H}, 2, -3, 0),
                      A = random_tensor<float>({H}, 3, -2, -0.5),
                      Bm = random_tensor<float>({1, T, 1, N}, 4),
                      Cm = random_tensor<float>({1, T, 1, N}, 5),
                      dtb = random_tensor<float>({H}, 6, -1, 0), D = random_tensor<float>({H}, 7);
  Tensor<float> y({1, T, H, P}), h({1, H, P, N});
  SsdParams<float> p;
  p.dt_softplus = true;
  for (auto _ : state) {
    ssd<float>(x, dt, A, Bm, Cm, D, dtb, {}, y, p, {}, h);
    benchmark::DoNotOptimize(y.data());
  }
  // The scores C B^T (2 n^2 N per chunk) are computed once for the G = 1 group and shared by
  // the H heads; each head does the causal half of A V (n (n + 1) P), C S and B^T X (4 n N P).
  double f = 0;
  for (int64_t c0 = 0; c0 < T; c0 += kChunk) {
    const double n = double(std::min(kChunk, T - c0));
    f += 2 * n * n * N + H * (n * (n + 1) * P + 4 * n * N * P);
  }
  set_two_rates(state, f, H * recurrent_flops(T, N, P));
}

// One decode token after `past` prefill tokens. Args: {past, K (= V), threads}. kind: 0 simple
// GLA, 1 GLA, 2 SSD (H = 24, P = 64, N = 128).
template <int kind>
void decode(benchmark::State& state) {
  const int64_t past = state.range(0), K = kind == 2 ? 128 : state.range(1), V = kind == 2 ? 64 : K,
                H = kind == 2 ? 24 : 16;
  use_threads(static_cast<int>(state.range(2)));
  LinearAttentionParams<float> p;
  SsdParams<float> ps;
  const Tensor<float> gA = random_tensor<float>({H}, 9, -2, -0.5);
  auto step = [&](int64_t T, uint64_t seed, Tensor<float>& S, bool with_state) {
    const Tensor<float> q = random_tensor<float>({1, T, kind == 2 ? 1 : H, K}, seed),
                        k = random_tensor<float>({1, T, kind == 2 ? 1 : H, K}, seed + 1),
                        v = random_tensor<float>({1, T, H, V}, seed + 2);
    const Tensor<float> g = kind == 1 ? random_tensor<float>({1, T, H, K}, seed + 3, -0.1, 0)
                                      : random_tensor<float>({1, T, H}, seed + 3, -0.1, 0);
    Tensor<float> o({1, T, H, V});
    const TensorView<const float> s0 =
        with_state ? TensorView<const float>(S.view()) : TensorView<const float>{};
    if (kind == 0) simple_gla<float>(q, k, v, g, o, p, s0, S);
    if (kind == 1) gla<float>(q, k, v, g, o, p, s0, S);
    if (kind == 2) ssd<float>(v, g, gA, k, q, {}, {}, {}, o, ps, s0, S);
  };
  Tensor<float> S = kind == 2 ? Tensor<float>({1, H, V, K}) : Tensor<float>({1, H, K, V});
  step(past, 100, S, false);  // prefill: the state decode starts from
  const Tensor<float> q = random_tensor<float>({1, 1, kind == 2 ? 1 : H, K}, 7),
                      k = random_tensor<float>({1, 1, kind == 2 ? 1 : H, K}, 8),
                      v = random_tensor<float>({1, 1, H, V}, 9);
  const Tensor<float> g = kind == 1 ? random_tensor<float>({1, 1, H, K}, 10, -0.1, 0)
                                    : random_tensor<float>({1, 1, H}, 10, -0.1, 0);
  Tensor<float> o({1, 1, H, V});
  for (auto _ : state) {
    if (kind == 0) simple_gla<float>(q, k, v, g, o, p, S, S);
    if (kind == 1) gla<float>(q, k, v, g, o, p, S, S);
    if (kind == 2) ssd<float>(v, g, gA, k, q, {}, {}, {}, o, ps, S, S);
    benchmark::DoNotOptimize(o.data());
  }
  set_rates(state, H * recurrent_flops(1, K, V), 2.0 * H * K * V * sizeof(float));
}

}  // namespace

BENCHMARK(prefill<false>)
    ->Name("prefill_simple_gla")
    ->ArgNames({"T", "K", "threads"})
    ->ArgsProduct({{2048, 8192}, {64, 128}, {1, 2}})
    ->Args({65536, 64, 2})
    ->Args({65536, 128, 2})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(prefill<true>)
    ->Name("prefill_gla")
    ->ArgNames({"T", "K", "threads"})
    ->ArgsProduct({{2048, 8192}, {64, 128}, {1, 2}})
    ->Args({65536, 64, 2})
    ->Args({65536, 128, 2})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(prefill<true, LinearAttentionForm::kRecurrent>)
    ->Name("prefill_gla_recurrent")
    ->ArgNames({"T", "K", "threads"})
    ->Args({2048, 128, 1})
    ->Args({2048, 128, 2})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(prefill_ssd)
    ->ArgNames({"T", "threads"})
    ->ArgsProduct({{2048, 16384}, {1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(decode<0>)
    ->Name("decode_simple_gla")
    ->ArgNames({"past", "K", "threads"})
    ->ArgsProduct({{1, 8192}, {128}, {1, 2}})
    ->UseRealTime();
BENCHMARK(decode<1>)
    ->Name("decode_gla")
    ->ArgNames({"past", "K", "threads"})
    ->ArgsProduct({{1, 8192}, {128}, {1, 2}})
    ->UseRealTime();
BENCHMARK(decode<2>)
    ->Name("decode_ssd")
    ->ArgNames({"past", "N", "threads"})
    ->ArgsProduct({{1, 8192}, {128}, {1, 2}})
    ->UseRealTime();

BENCHMARK_MAIN();
