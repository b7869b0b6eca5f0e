// The hybrid_lm example model (examples/hybrid_lm/hybrid_lm.hpp) at tiny sizes, in double: the
// KDA and Gated DeltaNet hybrids (3 linear + 1 MLA, a dense first block, MoE after) and the
// all-attention (GQA) variant. A prompt token by token, in pieces or in one call gives the same
// logits; T = 1 prompts; B = 2 == two B = 1 runs; save -> load gives identical logits; a missing
// or misshaped tensor raises effattn::Error naming it; fill_synthetic gives a usable state.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "hybrid_lm/hybrid_lm.hpp"
#include "layer_test_util.hpp"
#include "test_util.hpp"

using namespace effattn;
using namespace effattn::examples;
using effattn::testing::error_of;
using effattn::testing::max_abs;
using effattn::testing::max_abs_diff;

namespace {

enum class Variant { kKda, kGdn, kAllAttention };

HybridConfig tiny(Variant v) {
  HybridConfig c;
  c.vocab_size = 48;
  c.hidden_size = 32;
  c.num_hidden_layers = 4;  // linear, linear, linear, MLA (hybrid)
  c.num_heads = 2;
  c.head_dim = 16;
  c.kv_lora_rank = 24;  // 2r > N + V: MLA expands for prompts of > 24 tokens, absorbs below
  c.qk_rope_head_dim = 4;
  c.intermediate_size = 40;  // block 0 dense
  c.num_experts = 4;
  c.num_experts_per_token = 2;
  c.moe_intermediate_size = 12;
  c.linear = v == Variant::kGdn ? LinearMixer::kGatedDeltaNet : LinearMixer::kKda;
  if (v == Variant::kGdn) {
    c.mla_rope = true;  // DeepSeek's RoPE on the rope part (Kimi's NoPE elsewhere)
    c.tie_word_embeddings = true;
  }
  if (v == Variant::kAllAttention) c.arch = Architecture::kAllAttention;
  return c;
}

template <class T = double>
HybridLM<T> make_model(Variant v, uint64_t seed = 3) {
  HybridLM<T> m(tiny(v));
  m.init_random(seed);
  return m;
}

Tensor<int32_t> tokens(int64_t B, int64_t T, uint64_t seed, int64_t vocab = 48) {
  Tensor<int32_t> ids({B, T});
  for (int64_t i = 0; i < B * T; ++i)
    ids.data()[i] = int32_t(layers::splitmix64(seed * 1000 + uint64_t(i)) % uint64_t(vocab));
  return ids;
}

// Logits [B, T, V] of ids [B, T] from a fresh state, fed in pieces of the given lengths (one
// call when empty).
template <class T>
Tensor<T> run(const HybridLM<T>& m, const Tensor<int32_t>& ids, std::vector<int64_t> pieces = {}) {
  const int64_t B = ids.size(0), Tn = ids.size(1), V = m.vocab();
  if (pieces.empty()) pieces = {Tn};
  auto st = m.make_state(B, Tn);
  Tensor<T> logits({B, Tn, V});
  int64_t t0 = 0;
  for (int64_t n : pieces) {
    Tensor<int32_t> part({B, n});
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < n; ++t) part(b, t) = ids(b, t0 + t);
    Tensor<T> out({B, n, V});
    m.forward(part, st, out);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < n; ++t)
        for (int64_t v = 0; v < V; ++v) logits(b, t0 + t, v) = out(b, t, v);
    t0 += n;
  }
  EXPECT_EQ(t0, Tn);
  EXPECT_EQ(st.position, Tn);
  return logits;
}

const Variant kAll[] = {Variant::kKda, Variant::kGdn, Variant::kAllAttention};

}  // namespace

TEST(HybridLmExample, Layout) {
  const HybridLM<double> h = make_model(Variant::kKda);
  using M = HybridLM<double>::Mixer;
  ASSERT_EQ(h.blocks.size(), 4u);
  EXPECT_EQ(h.blocks[0].mixer, M::kKda);
  EXPECT_EQ(h.blocks[2].mixer, M::kKda);
  EXPECT_EQ(h.blocks[3].mixer, M::kMla);
  EXPECT_TRUE(h.blocks[0].dense);
  EXPECT_FALSE(h.blocks[1].dense);
  EXPECT_EQ(make_model(Variant::kGdn).blocks[1].mixer, M::kGatedDeltaNet);
  const HybridLM<double> a = make_model(Variant::kAllAttention);
  for (const auto& b : a.blocks) EXPECT_EQ(b.mixer, M::kAttention);
  EXPECT_EQ(a.blocks[0].attn.num_kv_heads(), 1);  // max(1, H / 4)
  // Same names and seeds: the feed-forwards and the embedding are the same weights.
  EXPECT_TRUE(effattn::testing::bitwise_equal(h.blocks[2].moe.experts[1].up_proj.weight.value(),
                                              a.blocks[2].moe.experts[1].up_proj.weight.value()));
  EXPECT_TRUE(effattn::testing::bitwise_equal(h.embed_tokens.weight.value(),
                                              a.embed_tokens.weight.value()));
  EXPECT_GT(h.weight_bytes(), 0);
}

// Token by token, in pieces (chunk forms of the linear layers, expanded MLA for the long piece)
// and one call give the same logits.
TEST(HybridLmExample, PiecesEqualOneCall) {
  for (Variant v : kAll) {
    const HybridLM<double> m = make_model(v);
    const Tensor<int32_t> ids = tokens(1, 75, 11);
    const Tensor<double> one = run(m, ids);
    const double scale = std::max(1.0, max_abs(one));
    EXPECT_LT(max_abs_diff(run(m, ids, std::vector<int64_t>(75, 1)), one), 1e-10 * scale) << int(v);
    EXPECT_LT(max_abs_diff(run(m, ids, {5, 1, 66, 3}), one), 1e-10 * scale) << int(v);
  }
}

// A one-token prompt, then decode steps == the rows of one call.
TEST(HybridLmExample, OneTokenPrompt) {
  for (Variant v : kAll) {
    const HybridLM<double> m = make_model(v);
    const Tensor<int32_t> ids = tokens(1, 4, 5);
    const Tensor<double> one = run(m, ids), first = run(m, tokens(1, 1, 5));
    for (int64_t i = 0; i < m.vocab(); ++i) EXPECT_NEAR(first(0, 0, i), one(0, 0, i), 1e-12);
    EXPECT_LT(max_abs_diff(run(m, ids, {1, 1, 1, 1}), one), 1e-10 * std::max(1.0, max_abs(one)));
  }
}

// Two sequences in one state == each alone.
TEST(HybridLmExample, BatchEqualsSingles) {
  for (Variant v : kAll) {
    const HybridLM<double> m = make_model(v);
    const Tensor<int32_t> ids = tokens(2, 23, 8);
    const Tensor<double> both = run(m, ids, {20, 1, 2});
    for (int64_t b = 0; b < 2; ++b) {
      Tensor<int32_t> one({1, 23});
      for (int64_t t = 0; t < 23; ++t) one(0, t) = ids(b, t);
      const Tensor<double> alone = run(m, one);
      double err = 0;
      for (int64_t t = 0; t < 23; ++t)
        for (int64_t i = 0; i < m.vocab(); ++i)
          err = std::max(err, std::abs(alone(0, t, i) - both(b, t, i)));
      EXPECT_LT(err, 1e-10 * std::max(1.0, max_abs(alone))) << int(v) << " row " << b;
    }
  }
}

// The model as run_model uses it (float): token by token == one call within float round-off.
// Four pre-norm blocks of float products: a few 1e-6 of the logits' size; 1e-4 leaves a margin
// and still catches a wrong state (those differ at O(1)).
TEST(HybridLmExample, FloatPiecesEqualOneCall) {
  const HybridLM<float> m = make_model<float>(Variant::kKda);
  const Tensor<int32_t> ids = tokens(1, 30, 2);
  const Tensor<float> one = run(m, ids);
  EXPECT_LT(max_abs_diff(run(m, ids, std::vector<int64_t>(30, 1)), one), 1e-4 * max_abs(one));
}

TEST(HybridLmExample, SaveLoadRoundTrip) {
  for (Variant v : kAll) {
    const HybridLM<double> m = make_model(v);
    io::SafeTensorsWriter w;
    m.save(w);
    const io::SafeTensors st = effattn::testing::reload(w, "hybrid.safetensors");
    EXPECT_TRUE(st.contains("model.embed_tokens.weight"));
    EXPECT_TRUE(st.contains("model.norm.weight"));
    EXPECT_EQ(st.contains("lm_head.weight"), !m.config.tie_word_embeddings);
    EXPECT_TRUE(st.contains("model.layers.0.mlp.gate_proj.weight"));
    EXPECT_TRUE(st.contains("model.layers.1.block_sparse_moe.experts.3.w2.weight"));
    EXPECT_TRUE(st.contains("model.layers.1.block_sparse_moe.gate.e_score_correction_bias"));
    EXPECT_TRUE(st.contains("model.layers.2.block_sparse_moe.shared_experts.down_proj.weight"));
    EXPECT_TRUE(st.contains("model.layers.3.post_attention_layernorm.weight"));
    if (v == Variant::kKda) {
      EXPECT_TRUE(st.contains("model.layers.0.self_attn.f_b_proj.weight"));  // Kimi's names
      EXPECT_TRUE(st.contains("model.layers.3.self_attn.kv_a_proj_with_mqa.weight"));
    }
    HybridLM<double> r(m.config);
    r.init_random(99);  // other weights, overwritten by the load
    r.load(st);
    const Tensor<int32_t> ids = tokens(1, 9, 4);
    EXPECT_TRUE(effattn::testing::bitwise_equal(run(m, ids), run(r, ids))) << int(v);
  }
}

// Every tensor missing, and every tensor with one more row, raises naming it.
TEST(HybridLmExample, MissingOrMisshapedTensorNamed) {
  for (Variant v : {Variant::kKda, Variant::kAllAttention}) {
    const HybridLM<double> m = make_model(v);
    io::SafeTensorsWriter w;
    m.save(w);
    const io::SafeTensors st = effattn::testing::reload(w);
    effattn::testing::expect_load_errors_name_tensors(
        st, [&](const io::SafeTensors& bad) { HybridLM<double>(m.config).load(bad); });
  }
}

TEST(HybridLmExample, ConfigMismatchRefused) {
  const HybridLM<double> m = make_model(Variant::kKda);
  io::SafeTensorsWriter w;
  m.save(w);
  const io::SafeTensors st = effattn::testing::reload(w);
  HybridConfig tied = m.config;
  tied.tie_word_embeddings = true;
  HybridLM<double> t(tied);
  EXPECT_NE(error_of([&] { t.load(st); }).find("lm_head.weight"), std::string::npos);
  HybridConfig moe_first = m.config;
  moe_first.first_k_dense = 0;  // block 0 MoE, the file has a dense block 0
  HybridLM<double> f(moe_first);
  EXPECT_NE(error_of([&] { f.load(st); }).find("model.layers.0.mlp.gate_proj.weight"),
            std::string::npos);
  HybridLM<double> gdn(tiny(Variant::kGdn));  // GDN names are not KDA's
  EXPECT_NE(error_of([&] { gdn.load(st); }).find("model.layers.0.self_attn."), std::string::npos);
}

TEST(HybridLmExample, Errors) {
  const HybridLM<double> m = make_model(Variant::kKda);
  auto st = m.make_state(1, 4);
  Tensor<double> logits({1, 5, m.vocab()});
  EXPECT_NE(error_of([&] { m.forward(tokens(1, 5, 1), st, logits); }).find("capacity"),
            std::string::npos);
  Tensor<double> small({1, 2, m.vocab()});
  auto st2 = m.make_state(2, 4);
  EXPECT_NE(error_of([&] { m.forward(tokens(1, 2, 1), st2, small); }).find("state"),
            std::string::npos);
  Tensor<int32_t> bad = tokens(1, 2, 1);
  bad(0, 1) = 48;
  auto st3 = m.make_state(1, 4);
  EXPECT_NE(error_of([&] { m.forward(bad, st3, small); }).find("token id 48"), std::string::npos);
}

// A state moved to position P by fill_synthetic decodes on (finite logits), holds what its
// layers say, and the hybrid's grows slower than the all-attention model's.
TEST(HybridLmExample, FillSynthetic) {
  for (Variant v : kAll) {
    const HybridLM<double> m = make_model(v);
    auto st = m.make_state(2, 3000);
    m.fill_synthetic(st, 2999, 1);
    EXPECT_EQ(st.position, 2999);
    Tensor<double> logits({2, 1, m.vocab()});
    m.forward(tokens(2, 1, 6), st, logits);
    EXPECT_EQ(st.position, 3000);
    for (int64_t i = 0; i < logits.numel(); ++i) ASSERT_TRUE(std::isfinite(logits.data()[i]));
  }
  const auto h = make_model(Variant::kKda).make_state(1, 1 << 14);
  const auto a = make_model(Variant::kAllAttention).make_state(1, 1 << 14);
  // per token: MLA r + R = 28 values (1 layer) vs GQA 2 Hkv D = 32 values x 4 layers
  EXPECT_LT(double(h.bytes()), 0.25 * double(a.bytes()));
}
