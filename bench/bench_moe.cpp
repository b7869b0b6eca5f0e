// moe: the MoE feed-forward (SwiGLU experts) and the gate, beside the same-run roofline.
//
//   ffn_prefill/<W>  E, k, d, f, N = 512 tokens routed by a softmax top-k gate: every expert gets
//                    ~N k / E rows -> the gemm path (one dense product per projection and tile).
//                    GFLOP/s counts 2 N k d f per projection (x3). W = float or bf16 weights.
//   ffn_decode/<W>   N = 1 token, k experts -> the streaming kernel (each chosen expert's weights
//                    read once). GB/s counts the bytes of the k experts' weights (3 d f sizeof W).
//                    Every iteration routes to experts the previous one did not use, so the
//                    weights come from memory, not from the last-level cache.
//   gate             moe_gate on [N, E] logits: softmax top-k and DeepSeek-V3 grouped sigmoid.
// Sizes: Mixtral-like E=8, k=2, d=1024, f=2816 and DeepSeek-like E=64, k=8, d=2048, f=1408.
#include <cstdint>
#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include "bench_common.hpp"
#include "effattn/ops/moe/moe.hpp"

namespace {

using effattn::bf16;
using effattn::Tensor;
namespace moe = effattn::moe;

// Fast deterministic fill (a hash of the index): the DeepSeek-like float weights are 2.2 GB.
template <class W>
void fill(Tensor<W>& t, uint64_t seed, float scale) {
  W* p = t.data();
  const int64_t n = t.numel();
  effattn::parallel_for_range(0, n, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      uint64_t h = (uint64_t(i) + seed) * 0x9E3779B97F4A7C15ull;
      h ^= h >> 29;
      const float v = scale * (float(h & 0xffffff) / float(0x1000000) * 2.0f - 1.0f);
      if constexpr (std::is_same_v<W, bf16>) {
        p[i] = bf16(v);
      } else {
        p[i] = v;
      }
    }
  });
}

template <class W>
struct Weights {
  Tensor<W> wg, wu, wd;
  moe::ExpertWeights<W> view() const { return {wg, wu, wd}; }
};

// One set of weights alive at a time (the largest is 2.2 GB): built on first use of a size.
template <class W>
const Weights<W>& weights(int64_t E, int64_t d, int64_t f) {
  static std::unique_ptr<Weights<W>> w;
  static std::tuple<int64_t, int64_t, int64_t> key{-1, -1, -1};
  if (!w || key != std::make_tuple(E, d, f)) {
    w.reset();
    w = std::make_unique<Weights<W>>();
    w->wg = Tensor<W>({E, d, f});
    w->wu = Tensor<W>({E, d, f});
    w->wd = Tensor<W>({E, f, d});
    fill(w->wg, 1, 0.03f);
    fill(w->wu, 2, 0.03f);
    fill(w->wd, 3, 0.02f);
    key = std::make_tuple(E, d, f);
  }
  return *w;
}

// Args: {E, k, d, f, N, threads}.
template <class W>
void ffn_prefill(benchmark::State& state) {
  const int64_t E = state.range(0), k = state.range(1), d = state.range(2), f = state.range(3);
  const int64_t N = state.range(4);
  const int threads = static_cast<int>(state.range(5));
  effattn::bench::use_threads(threads);
  const Weights<W>& w = weights<W>(E, d, f);
  const Tensor<float> x = effattn::bench::random_tensor<float>({N, d}, 1);
  const Tensor<float> logits = effattn::bench::random_tensor<float>({N, E}, 2, -2, 2);
  Tensor<int32_t> idx({N, k});
  Tensor<float> gw({N, k}), y({N, d});
  moe::moe_gate<float>(logits, {}, idx, gw, moe::GateParams::softmax_topk(k, true));
  moe::MoeFfnParams p;
  p.num_threads = threads;
  moe::MoeWorkspace<float> ws;
  for (auto _ : state) {
    moe::moe_ffn<float, W>(x, idx, gw, w.view(), {}, y, p, nullptr, &ws);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  effattn::bench::set_rates(state, 3.0 * 2.0 * double(N * k) * double(d) * double(f));
  state.SetLabel(effattn::simd::isa_name());
}

// Args: {E, k, d, f, threads}; N = 1.
template <class W>
void ffn_decode(benchmark::State& state) {
  const int64_t E = state.range(0), k = state.range(1), d = state.range(2), f = state.range(3);
  const int threads = static_cast<int>(state.range(4));
  effattn::bench::use_threads(threads);
  const Weights<W>& w = weights<W>(E, d, f);
  const Tensor<float> x = effattn::bench::random_tensor<float>({1, d}, 1);
  // E / k disjoint routings, used in turn: consecutive tokens share no expert.
  const int64_t R = E / k;
  std::vector<Tensor<int32_t>> idx;
  for (int64_t r = 0; r < R; ++r) {
    Tensor<int32_t> t({1, k});
    for (int64_t j = 0; j < k; ++j) t(0, j) = static_cast<int32_t>(r * k + j);
    idx.push_back(t);
  }
  Tensor<float> gw({1, k}), y({1, d});
  gw.fill(1.0f / float(k));
  moe::MoeFfnParams p;
  p.num_threads = threads;
  moe::MoeWorkspace<float> ws;
  int64_t it = 0;
  for (auto _ : state) {
    moe::moe_ffn<float, W>(x, idx[it++ % R], gw, w.view(), {}, y, p, nullptr, &ws);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  effattn::bench::set_rates(state, 3.0 * 2.0 * double(k) * double(d) * double(f),
                            3.0 * double(k) * double(d) * double(f) * sizeof(W));
  state.SetLabel(effattn::simd::isa_name());
}

// Args: {N, E, k, grouped (DeepSeek-V3 8 groups keep 4), threads}.
void gate(benchmark::State& state) {
  const int64_t N = state.range(0), E = state.range(1), k = state.range(2);
  const bool grouped = state.range(3) != 0;
  const int threads = static_cast<int>(state.range(4));
  effattn::bench::use_threads(threads);
  const Tensor<float> logits = effattn::bench::random_tensor<float>({N, E}, 3, -3, 3);
  const Tensor<float> bias = effattn::bench::random_tensor<float>({E}, 4, -0.1, 0.1);
  moe::GateParams p =
      grouped ? moe::GateParams::deepseek_v3(k, 8, 4, 2.5) : moe::GateParams::softmax_topk(k, true);
  p.num_threads = threads;
  Tensor<int32_t> idx({N, k});
  Tensor<float> w({N, k});
  for (auto _ : state) {
    moe::moe_gate<float>(logits, grouped ? bias.view() : effattn::TensorView<const float>{}, idx, w,
                         p);
    benchmark::DoNotOptimize(w.data());
  }
  state.counters["tokens/s"] =
      benchmark::Counter(double(N), benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

EFFATTN_BENCH_ROOFLINE();

BENCHMARK_TEMPLATE(ffn_prefill, float)
    ->ArgNames({"E", "k", "d", "f", "N", "threads"})
    ->Args({8, 2, 1024, 2816, 512, 1})
    ->Args({8, 2, 1024, 2816, 512, 2})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(ffn_prefill, bf16)
    ->ArgNames({"E", "k", "d", "f", "N", "threads"})
    ->Args({8, 2, 1024, 2816, 512, 1})
    ->Args({8, 2, 1024, 2816, 512, 2})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(ffn_decode, float)
    ->ArgNames({"E", "k", "d", "f", "threads"})
    ->Args({8, 2, 1024, 2816, 1})
    ->Args({8, 2, 1024, 2816, 2})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(ffn_decode, bf16)
    ->ArgNames({"E", "k", "d", "f", "threads"})
    ->Args({8, 2, 1024, 2816, 1})
    ->Args({8, 2, 1024, 2816, 2})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(ffn_prefill, bf16)
    ->Name("ffn_prefill_deepseek<bf16>")
    ->ArgNames({"E", "k", "d", "f", "N", "threads"})
    ->Args({64, 8, 2048, 1408, 512, 1})
    ->Args({64, 8, 2048, 1408, 512, 2})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(ffn_prefill, float)
    ->Name("ffn_prefill_deepseek<float>")
    ->ArgNames({"E", "k", "d", "f", "N", "threads"})
    ->Args({64, 8, 2048, 1408, 512, 1})
    ->Args({64, 8, 2048, 1408, 512, 2})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(gate)
    ->ArgNames({"N", "E", "k", "grouped", "threads"})
    ->Args({512, 64, 8, 0, 1})
    ->Args({512, 256, 8, 1, 1})
    ->Args({512, 256, 8, 1, 2})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

BENCHMARK_MAIN();
