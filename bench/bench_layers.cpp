// layers: every layer at a 1B-model width (d = 2048, 16 heads of 128), beside the same-run
// roofline (sgemm GFLOP/s, triad GB/s).
//
// Building blocks (Args {T, threads}; S = float or bf16 storage, compute in float):
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
//
// Mixers and MoE (float weights and state; Args {threads}, MoE {T, threads}):
//   <layer>_prefill     one forward over T = 2048 tokens from an empty state (the chunk / tiled
//                       forms each layer picks for a prompt).
//   <layer>_decode      one token from the state a prompt left: attention and MLA at a context of
//                       4096 (the attention cache grows to 4160, then is refilled with the same
//                       4096 tokens outside the timing; MLA's length is set back to 4096 each
//                       step), the recurrent layers after a 256-token prompt (their state has a
//                       fixed size). Steps cycle over 8 different tokens (MoE: other experts).
//   attention_gqa  Hq 16, Hkv 4, D 128, RoPE, causal    attention_mha  Hkv 16
//   mla            DeepSeek-V2-Lite: kv_lora_rank 512, nope 128, rope 64, v 128, no q LoRA
//   gdn            GatedDeltaNet, K 128, expand_v 2 (V 256), conv 4
//   kda            KimiDeltaAttention, K = V = 128, conv 4
//   mamba          Mamba-1: d_inner 4096, N 16, dt_rank 128     mamba2  d_inner 4096, P 64
//                  (64 heads), N 128, 1 group
//   based          LinearAttention (Based): feature_dim 16 -> Kf 273, V 128, causal
//   moe            DeepSeek-V2-Lite-like: 64 experts of f 1408, top-6 softmax (no renorm),
//                  2 shared experts (fs 2816); 2.2 GB of float weights
// Counters: GFLOP/s counts 2 x tokens x the parameters a token uses (all of the layer's; MoE:
// router + 6 routed + the shared experts) plus the mixer's own work by bench_suite's
// conventions: attention 4 D per visible (query, key) pair and head (causal prefill: T (T+1) / 2
// pairs); MLA 2 (QK + V) per pair and head expanded (prefill), 2 (2 r + R) per cached token and
// head absorbed (decode); delta rule 7 K V per token and value head; Mamba-1 9 E N per token;
// Mamba-2 and Based (gated linear family) 4 K V per token and head (K = N, or Kf with V + 1 for
// Based's normaliser). tok/s: tokens per second. GB/s (decode): the weight bytes a step reads
// plus the state it reads (attention's KV cache at 4096, MLA's latent cache, the recurrent
// state). state_MB: the State's bytes after the prompt.
#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "bench_common.hpp"
#include "effattn/layers/layers.hpp"

namespace {

using effattn::bf16;
using effattn::Tensor;
using effattn::TensorView;
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

// ---- mixers and MoE at d = 2048, 16 heads of 128 ------------------------------------------------

constexpr int64_t kPrefillT = 2048, kCtx = 4096, kCtxSlack = 64, kPrompt = 256, kTokens = 8;

// A layer with seeded random weights, made on first use and kept for the process.
template <class L>
std::unique_ptr<const L> built(L l, uint64_t seed) {
  l.init_random(seed);
  return std::make_unique<const L>(std::move(l));
}

layers::AttentionConfig attention_config(int64_t kv_heads) {
  layers::AttentionConfig c;
  c.hidden = kD;
  c.num_heads = 16;
  c.num_kv_heads = kv_heads;
  return c;
}
template <int64_t Hkv>
const layers::Attention<float>& attention() {
  static const auto l = built(layers::Attention<float>(attention_config(Hkv)), 10 + Hkv);
  return *l;
}
const layers::MultiHeadLatentAttention<float>& mla() {
  static const auto l = built(layers::MultiHeadLatentAttention<float>([] {
                                layers::MlaConfig c;
                                c.hidden = kD;
                                c.num_heads = 16;
                                c.kv_lora_rank = 512;
                                c.qk_nope_head_dim = 128;
                                c.qk_rope_head_dim = 64;
                                c.v_head_dim = 128;
                                return c;
                              }()),
                              20);
  return *l;
}
const layers::GatedDeltaNet<float>& gdn() {
  static const auto l = built(layers::GatedDeltaNet<float>([] {
                                layers::GatedDeltaNetConfig c;  // expand_v = 2 (fla's default)
                                c.hidden = kD;
                                c.num_heads = 16;
                                c.head_dim = 128;
                                return c;
                              }()),
                              30);
  return *l;
}
const layers::KimiDeltaAttention<float>& kda() {
  static const auto l = built(layers::KimiDeltaAttention<float>([] {
                                layers::KdaConfig c;
                                c.hidden = kD;
                                c.num_heads = 16;
                                c.head_dim = 128;
                                return c;
                              }()),
                              31);
  return *l;
}
const layers::Mamba<float>& mamba() {
  static const auto l =
      built(layers::Mamba<float>([] {
              layers::MambaConfig c;  // d_inner = 2 d = 4096, N = 16, dt_rank = d / 16 = 128
              c.hidden = kD;
              return c;
            }()),
            40);
  return *l;
}
const layers::Mamba2<float>& mamba2() {
  static const auto l =
      built(layers::Mamba2<float>([] {
              layers::Mamba2Config c;  // d_inner = 4096, 64 heads of P = 64, N = 128, 1 group
              c.hidden = kD;
              c.headdim = 64;
              c.d_state = 128;
              return c;
            }()),
            41);
  return *l;
}
const layers::LinearAttention<float>& based() {
  static const auto l = built(layers::LinearAttention<float>([] {
                                layers::LinearAttentionConfig c;
                                c.hidden = kD;
                                c.num_heads = 16;
                                c.feature_dim = 16;
                                return c;
                              }()),
                              50);
  return *l;
}
constexpr int64_t kExperts = 64, kExpertF = 1408, kTopK = 6, kSharedF = 2 * 1408;
const layers::MoE<float>& moe() {
  static const auto l =
      built(layers::MoE<float>([] {
              layers::MoEConfig c;
              c.hidden = kD;
              c.num_experts = kExperts;
              c.expert_hidden = kExpertF;
              c.shared_hidden = kSharedF;
              c.gate = effattn::moe::GateParams::softmax_topk(kTopK, /*renormalize*/ false);
              return c;
            }()),
            60);
  return *l;
}

// Parameters (floats) of a layer: 2 x tokens x this is its matrix FLOPs.
template <class L>
double params(const L& l) {
  return double(l.weight_bytes()) / sizeof(float);
}
// MoE: what one token uses (router, k routed experts, the shared ones).
double moe_active_params() {
  return double(kD) * kExperts + 3.0 * kD * (kTopK * kExpertF + kSharedF);
}

// The mixer's own FLOPs per token beyond its projections (see the header comment), for T
// tokens of a prefill from empty (prefill = true) or one decode step at context `ctx`.
double attention_flops(const layers::Attention<float>& a, int64_t T, int64_t ctx) {
  const double pairs = ctx > 0 ? double(ctx) : 0.5 * double(T) * double(T + 1);
  return 4.0 * pairs * a.head_dim() * a.num_heads();
}
double mla_flops(int64_t T, int64_t ctx) {
  const double H = 16, QK = 128 + 64, V = 128, r = 512, R = 64;
  return ctx > 0 ? 2.0 * H * double(ctx) * (2 * r + R)
                 : 2.0 * H * 0.5 * double(T) * double(T + 1) * (QK + V);
}
double gdn_flops(int64_t T) { return 7.0 * double(T) * 16 * 128 * 256; }
double kda_flops(int64_t T) { return 7.0 * double(T) * 16 * 128 * 128; }
double mamba_flops(int64_t T) { return 9.0 * double(T) * 4096 * 16; }
double mamba2_flops(int64_t T) { return 4.0 * double(T) * 64 * 64 * 128; }
double based_flops(int64_t T) { return 4.0 * double(T) * 16 * 273 * (128 + 1); }

template <class L>
auto new_state(const L& l, int64_t cap) -> decltype(l.make_state(1, cap)) {
  return l.make_state(1, cap);
}
template <class L>
auto new_state(const L& l, int64_t) -> decltype(l.make_state(1)) {
  return l.make_state(1);
}

void per_token(benchmark::State& state, double tokens) {
  state.counters["tok/s"] =
      benchmark::Counter(tokens, benchmark::Counter::kIsIterationInvariantRate);
}

// One forward over T = 2048 tokens from an empty state. Args: {threads}.
template <class L>
void prefill_run(benchmark::State& state, const L& l, double mixer_flops) {
  effattn::bench::use_threads(static_cast<int>(state.range(0)));
  const Tensor<float> x = effattn::bench::random_tensor<float>({1, kPrefillT, kD}, 1);
  Tensor<float> y({1, kPrefillT, kD});
  auto s = new_state(l, kPrefillT);
  l.forward(x, s, y);  // warm-up: first touch of the buffers and the weights
  for (auto _ : state) {
    s.reset();
    l.forward(x, s, y);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  effattn::bench::set_rates(state, 2.0 * kPrefillT * params(l) + mixer_flops);
  per_token(state, kPrefillT);
  state.counters["state_MB"] = double(s.bytes()) / 1e6;
}

// One token per step from state `s`; refill(s) restores the context between steps (it may pause
// the timing). Args: {threads}.
template <class L, class St, class Refill>
void decode_run(benchmark::State& state, const L& l, St& s, double flops, double bytes,
                Refill refill) {
  const Tensor<float> x = effattn::bench::random_tensor<float>({kTokens, 1, kD}, 2);
  Tensor<float> y({1, 1, kD});
  int64_t i = 0;
  for (auto _ : state) {
    refill(s);
    l.forward(TensorView<const float>(x.view()).slice(0, i, i + 1), s, y);
    i = (i + 1) % kTokens;
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  effattn::bench::set_rates(state, flops, bytes);
  per_token(state, 1);
  state.counters["state_MB"] = double(s.bytes()) / 1e6;
}

// Recurrent layers: decode after a 256-token prompt.
template <class L>
void recurrent_decode(benchmark::State& state, const L& l, double mixer_flops) {
  effattn::bench::use_threads(static_cast<int>(state.range(0)));
  auto s = l.make_state(1);
  const Tensor<float> p = effattn::bench::random_tensor<float>({1, kPrompt, kD}, 3);
  Tensor<float> py({1, kPrompt, kD});
  l.forward(p, s, py);
  decode_run(state, l, s, 2.0 * params(l) + mixer_flops, double(l.weight_bytes() + s.bytes()),
             [](auto&) {});
}

template <int64_t Hkv>
void attention_prefill(benchmark::State& state) {
  const auto& a = attention<Hkv>();
  prefill_run(state, a, attention_flops(a, kPrefillT, 0));
}
template <int64_t Hkv>
void attention_decode(benchmark::State& state) {
  const auto& a = attention<Hkv>();
  effattn::bench::use_threads(static_cast<int>(state.range(0)));
  const int64_t D = a.head_dim();
  // The cache of a 4096-token prompt (random keys and values: the cost does not depend on them).
  const Tensor<float> k = effattn::bench::random_tensor<float>({1, kCtx, Hkv, D}, 4);
  const Tensor<float> v = effattn::bench::random_tensor<float>({1, kCtx, Hkv, D}, 5);
  auto s = a.make_state(1, kCtx + kCtxSlack);
  auto refill = [&](layers::Attention<float>::State& st) {
    if (st.position() < kCtx + kCtxSlack) return;
    state.PauseTiming();
    st.reset();
    st.cache.append<float>(k, v);
    state.ResumeTiming();
  };
  s.cache.template append<float>(k, v);
  const double cache = 2.0 * kCtx * Hkv * D * sizeof(float);
  decode_run(state, a, s, 2.0 * params(a) + attention_flops(a, 1, kCtx),
             double(a.weight_bytes()) + cache, refill);
}

void mla_prefill(benchmark::State& state) { prefill_run(state, mla(), mla_flops(kPrefillT, 0)); }
void mla_decode(benchmark::State& state) {
  const auto& m = mla();
  effattn::bench::use_threads(static_cast<int>(state.range(0)));
  auto s = m.make_state(1, kCtx + 1);
  const Tensor<float> c = effattn::bench::random_tensor<float>(s.cache.shape(), 6);
  std::copy(c.data(), c.data() + c.numel(), s.cache.data());
  s.len = kCtx;
  decode_run(state, m, s, 2.0 * params(m) + mla_flops(1, kCtx),
             double(m.weight_bytes()) + double(kCtx) * s.cache.size(2) * sizeof(float),
             [](layers::MultiHeadLatentAttention<float>::State& st) { st.len = kCtx; });
}

void gdn_prefill(benchmark::State& state) { prefill_run(state, gdn(), gdn_flops(kPrefillT)); }
void gdn_decode(benchmark::State& state) { recurrent_decode(state, gdn(), gdn_flops(1)); }
void kda_prefill(benchmark::State& state) { prefill_run(state, kda(), kda_flops(kPrefillT)); }
void kda_decode(benchmark::State& state) { recurrent_decode(state, kda(), kda_flops(1)); }
void mamba_prefill(benchmark::State& state) { prefill_run(state, mamba(), mamba_flops(kPrefillT)); }
void mamba_decode(benchmark::State& state) { recurrent_decode(state, mamba(), mamba_flops(1)); }
void mamba2_prefill(benchmark::State& state) {
  prefill_run(state, mamba2(), mamba2_flops(kPrefillT));
}
void mamba2_decode(benchmark::State& state) { recurrent_decode(state, mamba2(), mamba2_flops(1)); }
void based_prefill(benchmark::State& state) { prefill_run(state, based(), based_flops(kPrefillT)); }
void based_decode(benchmark::State& state) { recurrent_decode(state, based(), based_flops(1)); }

// MoE: stateless. Prefill T = 2048 tokens; decode one token (cycling over 8, so the chosen
// experts change). Args: {T, threads}.
void moe_case(benchmark::State& state) {
  const int64_t T = state.range(0);
  effattn::bench::use_threads(static_cast<int>(state.range(1)));
  const auto& m = moe();
  const int64_t rows = T == 1 ? kTokens : T;
  const Tensor<float> x = effattn::bench::random_tensor<float>({rows, kD}, 7);
  Tensor<float> y({T, kD});
  m.forward(TensorView<const float>(x.view()).slice(0, 0, T), y);  // warm-up
  int64_t i = 0;
  for (auto _ : state) {
    m.forward(TensorView<const float>(x.view()).slice(0, i, i + T), y);
    if (T == 1) i = (i + 1) % kTokens;
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  effattn::bench::set_rates(state, 2.0 * T * moe_active_params(),
                            T == 1 ? moe_active_params() * sizeof(float) : 0);
  per_token(state, double(T));
}

void layer_prefill_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"threads"})->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
  b->MinTime(0.3);
}
void layer_decode_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"threads"})->Arg(1)->Arg(2)->Unit(benchmark::kMicrosecond)->UseRealTime();
  b->MinTime(0.3);
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
BENCHMARK(attention_prefill<4>)->Name("attention_gqa_prefill")->Apply(layer_prefill_args);
BENCHMARK(attention_decode<4>)->Name("attention_gqa_decode")->Apply(layer_decode_args);
BENCHMARK(attention_prefill<16>)->Name("attention_mha_prefill")->Apply(layer_prefill_args);
BENCHMARK(attention_decode<16>)->Name("attention_mha_decode")->Apply(layer_decode_args);
BENCHMARK(mla_prefill)->Apply(layer_prefill_args);
BENCHMARK(mla_decode)->Apply(layer_decode_args);
BENCHMARK(gdn_prefill)->Apply(layer_prefill_args);
BENCHMARK(gdn_decode)->Apply(layer_decode_args);
BENCHMARK(kda_prefill)->Apply(layer_prefill_args);
BENCHMARK(kda_decode)->Apply(layer_decode_args);
BENCHMARK(mamba_prefill)->Apply(layer_prefill_args);
BENCHMARK(mamba_decode)->Apply(layer_decode_args);
BENCHMARK(mamba2_prefill)->Apply(layer_prefill_args);
BENCHMARK(mamba2_decode)->Apply(layer_decode_args);
BENCHMARK(based_prefill)->Apply(layer_prefill_args);
BENCHMARK(based_decode)->Apply(layer_decode_args);
BENCHMARK(moe_case)
    ->Name("moe_prefill")
    ->ArgNames({"T", "threads"})
    ->Args({2048, 1})
    ->Args({2048, 2})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(0.3);
BENCHMARK(moe_case)
    ->Name("moe_decode")
    ->ArgNames({"T", "threads"})
    ->Args({1, 1})
    ->Args({1, 2})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime()
    ->MinTime(0.3);
EFFATTN_BENCH_ROOFLINE();
BENCHMARK_MAIN();
