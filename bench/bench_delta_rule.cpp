// Delta-rule family benchmarks (float, B = 1, H = HV = 16, K = V = 128, L2-normalised q/k).
//
//   prefill_chunk<gate>      delta_rule_chunk      (ops/delta_rule/chunk.hpp, C = 16): Gated
//                            DeltaNet (scalar g) and KDA (per-channel g), T in {2048, 8192}
//                            (+ 32768 with EFFATTN_BENCH_LONG=1)
//   prefill_recurrent<gate>  delta_rule_recurrent  (ops/delta_rule/recurrent.hpp) on the same
//                            inputs: the token loop the chunk form must beat
//   decode<gate>             delta_rule_recurrent, T = 1, state updated in place
//
// Counters: GFLOP/s = the form's own FLOPs; eff_GFLOP/s = the recurrent FLOP count 7 K V per
// token and head (decay, S^T k, update, readout) over the measured time, comparable across
// forms; decode also GB/s = state bytes read + written. The chunk form's FLOPs per chunk of C
// (dense count; the triangular products skip about a third of the intra-chunk part):
// 2 (2 C^2 K [A, P] + C^2 (K + V) [W, U] + 3 C K V [U -= W S, Q S, S += K^T U] + C^2 V [P U]).
// (Since session 3 the op forms U = T (beta v - beta k e^Gc S) and skips the C^2 K product
// that formed W; the count is kept as it was so rates compare across sessions.)
#include <cstdlib>

#include "bench_common.hpp"
#include "effattn/ops/delta_rule/delta_rule.hpp"

namespace {

using namespace effattn;
using effattn::bench::random_tensor;
using effattn::bench::set_rates;
using effattn::bench::use_threads;

constexpr int64_t kH = 16, kK = 128, kV = 128, kC = 16;

struct Inputs {
  Tensor<float> q, k, v, beta, g, S0, S1, o;
};

Inputs make_inputs(int64_t T, DeltaRuleGate gate) {
  Inputs in;
  in.q = random_tensor<float>({1, T, kH, kK}, 1);
  in.k = random_tensor<float>({1, T, kH, kK}, 2);
  in.v = random_tensor<float>({1, T, kH, kV}, 3);
  in.beta = random_tensor<float>({1, T, kH}, 4, 0.1, 0.9);
  if (gate == DeltaRuleGate::kScalar) in.g = random_tensor<float>({1, T, kH}, 5, -0.2, -0.01);
  if (gate == DeltaRuleGate::kChannel) in.g = random_tensor<float>({1, T, kH, kK}, 5, -0.2, -0.01);
  in.S0 = random_tensor<float>({1, kH, kK, kV}, 6, -0.1, 0.1);
  in.S1 = Tensor<float>({1, kH, kK, kV});
  in.o = Tensor<float>({1, T, kH, kV});
  return in;
}

double recurrent_flops(int64_t T) { return 7.0 * kK * kV * T * kH; }
double chunk_flops(int64_t T) {
  const double C = kC, K = kK, V = kV;
  const double per_chunk = 2 * (2 * C * C * K + C * C * (K + V) + 3 * C * K * V + C * C * V);
  return per_chunk * (double(T) / C) * kH;
}

template <DeltaRuleGate G, DeltaRuleAlgo A>
void prefill(benchmark::State& state) {
  const int64_t T = state.range(0);
  use_threads(static_cast<int>(state.range(1)));
  Inputs in = make_inputs(T, G);
  DeltaRuleParams<float> p;
  p.use_qk_l2norm = true;
  p.chunk_size = kC;
  p.algo = A;
  const TensorView<const float> g =
      G == DeltaRuleGate::kNone ? TensorView<const float>{} : in.g.view();
  for (auto _ : state) {
    delta_rule_forward<float>(in.q, in.k, in.v, in.beta, g, in.o, in.S0, in.S1, p);
    benchmark::DoNotOptimize(in.o.data());
    benchmark::ClobberMemory();
  }
  set_rates(state, A == DeltaRuleAlgo::kChunk ? chunk_flops(T) : recurrent_flops(T));
  state.counters["eff_GFLOP/s"] =
      benchmark::Counter(recurrent_flops(T) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

template <DeltaRuleGate G>
void decode(benchmark::State& state) {
  use_threads(static_cast<int>(state.range(0)));
  Inputs in = make_inputs(1, G);
  DeltaRuleParams<float> p;
  p.use_qk_l2norm = true;
  p.algo = DeltaRuleAlgo::kRecurrent;
  const TensorView<const float> g =
      G == DeltaRuleGate::kNone ? TensorView<const float>{} : in.g.view();
  for (auto _ : state) {  // the state is updated in place, as a decoder does
    delta_rule_forward<float>(in.q, in.k, in.v, in.beta, g, in.o, in.S1, in.S1, p);
    benchmark::DoNotOptimize(in.o.data());
    benchmark::ClobberMemory();
  }
  set_rates(state, recurrent_flops(1), 2.0 * kH * kK * kV * sizeof(float));
}

void prefill_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"T", "threads"});
  std::vector<int64_t> Ts = {2048, 8192};
  const char* env = std::getenv("EFFATTN_BENCH_LONG");
  if (env != nullptr && env[0] == '1') Ts.push_back(32768);
  for (int64_t T : Ts)
    for (int64_t th : {1, 2}) b->Args({T, th});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

}  // namespace

EFFATTN_BENCH_ROOFLINE();

BENCHMARK(prefill<DeltaRuleGate::kScalar, DeltaRuleAlgo::kChunk>)
    ->Name("gdn_prefill_chunk")
    ->Apply(prefill_args);
BENCHMARK(prefill<DeltaRuleGate::kScalar, DeltaRuleAlgo::kRecurrent>)
    ->Name("gdn_prefill_recurrent")
    ->Apply(prefill_args);
BENCHMARK(prefill<DeltaRuleGate::kChannel, DeltaRuleAlgo::kChunk>)
    ->Name("kda_prefill_chunk")
    ->Apply(prefill_args);
BENCHMARK(prefill<DeltaRuleGate::kChannel, DeltaRuleAlgo::kRecurrent>)
    ->Name("kda_prefill_recurrent")
    ->Apply(prefill_args);
BENCHMARK(decode<DeltaRuleGate::kScalar>)
    ->Name("gdn_decode")
    ->ArgNames({"threads"})
    ->Arg(1)
    ->Arg(2)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK(decode<DeltaRuleGate::kChannel>)
    ->Name("kda_decode")
    ->ArgNames({"threads"})
    ->Arg(1)
    ->Arg(2)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK_MAIN();
