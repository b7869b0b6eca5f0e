// models: the hybrid_lm example (examples/hybrid_lm/hybrid_lm.hpp) against its all-attention
// twin at a 1B-model width, one decode step from a long context, beside the same-run roofline.
//
//   decode/<model>/ctx/threads   one token (B = 1) from a state at position ctx, filled with
//                                synthetic caches (HybridLM::fill_synthetic; decode costs the same
//                                whatever the cached values). When the state's spare capacity
//                                runs out it is refilled with the timer paused.
//   models: hybrid_kda   4 blocks: 3 KimiDeltaAttention + 1 MLA (Kimi's 3:1)
//           hybrid_gdn   the same with Gated DeltaNet as the linear layers
//           all_attention 4 GQA Attention blocks (Llama-3 style, num_kv_heads = H / 4 = 4)
//           all_mha      4 MHA Attention blocks (num_kv_heads = H = 16: the plain transformer of
//                        the same width, 16 heads of 128, whose cache is 4x the GQA one); the
//                        issue's targets (state <= 25%, decode >= 3x at 128K) are stated
//                        against it, and the GQA / MLA twins show how the gain shrinks with
//                        a baseline that keeps a smaller cache
//           all_mla      4 MLA blocks (Kimi Linear's own baseline, the paper's "MLA")
// Shapes: d = 2048; every mixer 16 heads of 128 (KDA / GDN K = V = 128; GQA D = 128);
// MLA as DeepSeek-V2-Lite / Kimi Linear: q_lora_rank 0, kv_lora_rank 512, nope 128, rope 64,
// v 128 (NoPE as Kimi); MoE in every block: 8 experts of 512, top 2, 1 shared expert of 512
// (no dense first block, so all four blocks are alike); vocab 1024 (the lm_head is small).
// Float caches; float weights (decode/...) or bf16 weights (decode_bf16w/..., half the weight
// bytes a step streams, the same state). Bytes (float):
//   weights   hybrid 730 MB (KDA 69, MLA 55, MoE 113 per block), all-attention 636 MB (GQA 42);
//             a decode step reads ~420 / ~330 MB of them (2 of 8 experts + the shared one)
//   state     all-attention 2 * 4 * 128 * 4 B = 4 KiB per token and block: 2 GiB at 128K
//             (all-MHA 16 KiB: 8 GiB at 128K);
//             hybrid: MLA (512 + 64) * 4 B = 2304 B per token: 288 MiB at 128K, plus 3 x 1.07 MiB
//             (S [16, 128, 128] and the conv states) whatever the context; all-MLA 4 x 288 MiB.
// Counters: state_bytes (the State's bytes), GB = state bytes read per token (GB/s of state).
// Args: {ctx, threads}.
#include <cstdint>
#include <memory>

#include "bench_common.hpp"
#include "hybrid_lm/hybrid_lm.hpp"

namespace {

using effattn::bf16;
using effattn::Tensor;
using namespace effattn::examples;

enum Model { kHybridKda, kHybridGdn, kAllAttention, kAllMla, kAllMha };

HybridConfig config_1b(Model m) {
  HybridConfig c;
  c.vocab_size = 1024;
  c.hidden_size = 2048;
  c.num_hidden_layers = 4;
  c.full_attn_every = 4;
  c.num_heads = 16;
  c.head_dim = 128;
  c.kv_lora_rank = 512;
  c.qk_rope_head_dim = 64;
  c.num_kv_heads = 4;
  c.first_k_dense = 0;
  c.num_experts = 8;
  c.num_experts_per_token = 2;
  c.moe_intermediate_size = 512;
  c.num_shared_experts = 1;
  if (m == kHybridGdn) c.linear = LinearMixer::kGatedDeltaNet;
  if (m == kAllAttention || m == kAllMha) c.arch = Architecture::kAllAttention;
  if (m == kAllMha) c.num_kv_heads = c.num_heads;
  if (m == kAllMla) c.full_attn_every = 1;  // every block MLA
  return c;
}

template <class S>
const HybridLM<float, S>& model(Model m) {
  static std::unique_ptr<HybridLM<float, S>> cache[5];
  if (!cache[m]) {
    cache[m] = std::make_unique<HybridLM<float, S>>(config_1b(m));
    cache[m]->init_random(1);
  }
  return *cache[m];
}

template <Model M, class S>
void decode(benchmark::State& state) {
  const int64_t ctx = state.range(0), spare = 64;
  effattn::bench::use_threads(static_cast<int>(state.range(1)));
  const HybridLM<float, S>& m = model<S>(M);
  auto st = m.make_state(1, ctx + spare);
  m.fill_synthetic(st, ctx, 7);
  Tensor<int32_t> id({1, 1});
  Tensor<float> logits({1, 1, m.vocab()});
  id.data()[0] = 1;
  m.forward(id, st, logits);  // untimed warm-up: first touch of the scratch buffers
  for (auto _ : state) {
    if (st.position == st.capacity) {
      state.PauseTiming();
      m.fill_synthetic(st, ctx, 7);
      state.ResumeTiming();
    }
    m.forward(id, st, logits);
    benchmark::DoNotOptimize(logits.data());
  }
  state.counters["state_bytes"] = double(st.bytes());
  effattn::bench::set_rates(state, 0, double(st.bytes()));
}

void args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"ctx", "threads"})->Unit(benchmark::kMillisecond)->UseRealTime();
  for (int64_t ctx : {4096, 32768, 131072}) b->Args({ctx, 2});
}

}  // namespace

BENCHMARK(decode<kHybridKda, float>)->Name("decode/hybrid_kda")->Apply(args);
BENCHMARK(decode<kHybridGdn, float>)->Name("decode/hybrid_gdn")->Apply(args);
BENCHMARK(decode<kAllAttention, float>)->Name("decode/all_attention")->Apply(args);
BENCHMARK(decode<kAllMla, float>)->Name("decode/all_mla")->Apply(args);
BENCHMARK(decode<kAllMha, float>)->Name("decode/all_mha")->Apply(args);
BENCHMARK(decode<kHybridKda, bf16>)->Name("decode_bf16w/hybrid_kda")->Apply(args);
BENCHMARK(decode<kAllAttention, bf16>)->Name("decode_bf16w/all_attention")->Apply(args);
EFFATTN_BENCH_ROOFLINE();
BENCHMARK_MAIN();
