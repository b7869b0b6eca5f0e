// Softmax-attention layers: Attention (GQA / MQA, RoPE, q/k norm, sliding window, non-causal,
// cross) and MultiHeadLatentAttention (low-rank KV, decoupled interleaved RoPE, absorbed decode).
// Each against the same computation written out here in double (plain loops + attention_naive);
// token by token through State == one call; the ring cache == the window mask; MLA absorbed ==
// expanded; save -> load gives identical outputs; missing / misshaped tensors raise naming them;
// bf16 weights / cache within tolerance of float.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "effattn/layers/attention.hpp"
#include "effattn/layers/mla.hpp"
#include "layer_test_util.hpp"
#include "test_util.hpp"

using namespace effattn;
using namespace effattn::layers;
using effattn::testing::as_double;
using effattn::testing::error_of;
using effattn::testing::expect_errors_name_tensors;
using effattn::testing::expect_ragged_equals_alone;
using effattn::testing::max_abs;
using effattn::testing::max_abs_diff;
using effattn::testing::random_tensor;
using effattn::testing::ref_linear;
using effattn::testing::saved;
using ::testing::HasSubstr;

namespace {

// ---- the reference: plain loops in double ----------------------------------------------------

// x[0..n) <- x / sqrt(mean(x^2) + eps) * w
void rms(double* x, int64_t n, const Tensor<double>& w, double eps) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const double r = 1.0 / std::sqrt(ss / double(n) + eps);
  for (int64_t i = 0; i < n; ++i) x[i] *= r * w.data()[i];
}

// Rotates the first R dims of x at position t: pairs (x[i], x[i + R/2]) or (x[2i], x[2i+1]).
void rope(double* x, int64_t R, int64_t t, double theta, bool interleaved) {
  for (int64_t i = 0; i < R / 2; ++i) {
    const double a = double(t) * std::pow(theta, -2.0 * double(i) / double(R));
    const int64_t i0 = interleaved ? 2 * i : i, i1 = interleaved ? 2 * i + 1 : i + R / 2;
    const double u = x[i0], v = x[i1];
    x[i0] = u * std::cos(a) - v * std::sin(a);
    x[i1] = u * std::sin(a) + v * std::cos(a);
  }
}

template <class T, class S, class KV>
Tensor<double> attention_ref(const Attention<T, S, KV>& L, const Tensor<double>& x) {
  const AttentionConfig& c = L.config;
  const int64_t B = x.size(0), Tn = x.size(1), Hq = c.num_heads, Hkv = c.num_kv_heads,
                D = c.head_dim;
  Tensor<double> q = ref_linear(x, L.q_proj), k = ref_linear(x, L.k_proj),
                 v = ref_linear(x, L.v_proj);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < Tn; ++t) {
      for (int64_t h = 0; h < Hq; ++h) {
        double* qh = q.data() + ((b * Tn + t) * Hq + h) * D;
        if (c.qk_norm) rms(qh, D, as_double(L.q_norm.weight), c.norm_eps);
        if (c.rope)
          rope(qh, c.rotary_dim ? c.rotary_dim : D, t, c.rope_theta,
               c.rope_style == RopeStyle::kInterleaved);
      }
      for (int64_t h = 0; h < Hkv; ++h) {
        double* kh = k.data() + ((b * Tn + t) * Hkv + h) * D;
        if (c.qk_norm) rms(kh, D, as_double(L.k_norm.weight), c.norm_eps);
        if (c.rope)
          rope(kh, c.rotary_dim ? c.rotary_dim : D, t, c.rope_theta,
               c.rope_style == RopeStyle::kInterleaved);
      }
    }
  AttentionParams p;
  p.causal = c.causal;
  p.scale = c.scale > 0 ? c.scale : 1.0 / std::sqrt(double(D));
  if (c.sliding_window > 0) {
    p.window_left = c.sliding_window - 1;
    if (!c.causal) p.window_right = c.sliding_window - 1;
  }
  Tensor<double> o({B, Tn, Hq, D});
  attention_naive<double>(q.view().reshape({B, Tn, Hq, D}), k.view().reshape({B, Tn, Hkv, D}),
                          v.view().reshape({B, Tn, Hkv, D}), o, p);
  return ref_linear(Tensor<double>::from(o.view().reshape({B, Tn, Hq * D})), L.o_proj);
}

template <class T, class S, class KV>
Tensor<double> cross_ref(const Attention<T, S, KV>& L, const Tensor<double>& x,
                         const Tensor<double>& ctx) {
  const AttentionConfig& c = L.config;
  const int64_t B = x.size(0), Tq = x.size(1), Tk = ctx.size(1), Hq = c.num_heads,
                Hkv = c.num_kv_heads, D = c.head_dim;
  Tensor<double> q = ref_linear(x, L.q_proj), k = ref_linear(ctx, L.k_proj),
                 v = ref_linear(ctx, L.v_proj);
  if (c.qk_norm) {
    for (int64_t i = 0; i < B * Tq * Hq; ++i)
      rms(q.data() + i * D, D, as_double(L.q_norm.weight), c.norm_eps);
    for (int64_t i = 0; i < B * Tk * Hkv; ++i)
      rms(k.data() + i * D, D, as_double(L.k_norm.weight), c.norm_eps);
  }
  Tensor<double> o({B, Tq, Hq, D});
  attention_naive<double>(q.view().reshape({B, Tq, Hq, D}), k.view().reshape({B, Tk, Hkv, D}),
                          v.view().reshape({B, Tk, Hkv, D}), o, AttentionParams{});
  return ref_linear(Tensor<double>::from(o.view().reshape({B, Tq, Hq * D})), L.o_proj);
}

template <class T, class S, class KV>
Tensor<double> mla_ref(const MultiHeadLatentAttention<T, S, KV>& L, const Tensor<double>& x) {
  const MlaConfig& c = L.config;
  const int64_t B = x.size(0), Tn = x.size(1), H = c.num_heads, N = c.qk_nope_head_dim,
                R = c.qk_rope_head_dim, V = c.v_head_dim, r = c.kv_lora_rank, QK = N + R;
  Tensor<double> q;
  if (c.q_lora_rank > 0) {
    Tensor<double> qa = ref_linear(x, L.q_a_proj);
    for (int64_t m = 0; m < B * Tn; ++m)
      rms(qa.data() + m * c.q_lora_rank, c.q_lora_rank, as_double(L.q_a_layernorm.weight),
          c.rms_eps);
    q = ref_linear(qa, L.q_b_proj);
  } else {
    q = ref_linear(x, L.q_proj);
  }
  Tensor<double> ckv = ref_linear(x, L.kv_a_proj_with_mqa);  // [B, T, r + R]
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < Tn; ++t) {
      double* row = ckv.data() + (b * Tn + t) * (r + R);
      rms(row, r, as_double(L.kv_a_layernorm.weight), c.rms_eps);
      if (c.rope) rope(row + r, R, t, c.rope_theta, true);
      for (int64_t h = 0; h < H; ++h)
        if (c.rope) rope(q.data() + ((b * Tn + t) * H + h) * QK + N, R, t, c.rope_theta, true);
    }
  // k_nope, v from the latent; k = [k_nope | kr]
  Tensor<double> lat({B, Tn, r});
  for (int64_t m = 0; m < B * Tn; ++m)
    for (int64_t i = 0; i < r; ++i) lat.data()[m * r + i] = ckv.data()[m * (r + R) + i];
  const Tensor<double> kvb = ref_linear(lat, L.kv_b_proj);  // [B, T, H (N + V)]
  Tensor<double> k({B, Tn, H, QK}), v({B, Tn, H, V});
  for (int64_t m = 0; m < B * Tn; ++m)
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < N; ++i)
        k.data()[(m * H + h) * QK + i] = kvb.data()[m * H * (N + V) + h * (N + V) + i];
      for (int64_t i = 0; i < R; ++i)
        k.data()[(m * H + h) * QK + N + i] = ckv.data()[m * (r + R) + r + i];
      for (int64_t i = 0; i < V; ++i)
        v.data()[(m * H + h) * V + i] = kvb.data()[m * H * (N + V) + h * (N + V) + N + i];
    }
  AttentionParams p;
  p.causal = true;
  p.scale = 1.0 / std::sqrt(double(QK));
  Tensor<double> o({B, Tn, H, V});
  attention_naive<double>(q.view().reshape({B, Tn, H, QK}), k, v, o, p);
  return ref_linear(Tensor<double>::from(o.view().reshape({B, Tn, H * V})), L.o_proj);
}

// ---- helpers -----------------------------------------------------------------------------------

template <class T>
Tensor<T> as(const Tensor<double>& x) {
  Tensor<T> y(x.shape());
  y.copy_from(x.view());
  return y;
}

// Norm weights other than ones, so the tests see them.
template <class T>
void randomize(RMSNorm<T>& n, uint64_t seed) {
  if (n.weight.enabled()) n.weight.set(random_tensor<double>(n.weight.shape(), seed, 0.5, 1.5));
}

// Runs x through the layer in chunks of the given sizes, one State; the outputs concatenated.
template <class Layer, class T, class... P>
Tensor<T> run_chunks(const Layer& L, const Tensor<T>& x, const std::vector<int64_t>& chunks,
                     int64_t capacity, P... path) {
  const int64_t B = x.size(0), Tn = x.size(1);
  auto st = L.make_state(B, capacity);
  Tensor<T> y({B, Tn, x.size(2)});
  int64_t t0 = 0;
  for (int64_t n : chunks) {
    L.forward(x.view().slice(1, t0, t0 + n), st, y.view().slice(1, t0, t0 + n), path...);
    t0 += n;
  }
  EXPECT_EQ(t0, Tn);
  EXPECT_EQ(st.position(), Tn);
  return y;
}

std::vector<int64_t> ones(int64_t n) { return std::vector<int64_t>(n, 1); }

// ---- configurations
// ------------------------------------------------------------------------------

AttentionConfig cfg_mha() {  // Llama-like MHA, biases (Qwen2), half-split RoPE
  AttentionConfig c;
  c.hidden = 32, c.num_heads = 4, c.qkv_bias = true, c.o_bias = true;
  return c;
}
AttentionConfig cfg_gqa() {  // Qwen3-like: GQA, q/k norm, head_dim * H != d, partial interleaved
  AttentionConfig c;
  c.hidden = 24, c.num_heads = 6, c.num_kv_heads = 2, c.head_dim = 10, c.qk_norm = true;
  c.rope_style = RopeStyle::kInterleaved, c.rotary_dim = 6, c.rope_theta = 500.0;
  return c;
}
AttentionConfig cfg_window() {  // Mistral-like MQA with a sliding window of 5
  AttentionConfig c;
  c.hidden = 16, c.num_heads = 4, c.num_kv_heads = 1, c.head_dim = 8, c.sliding_window = 5;
  return c;
}
AttentionConfig cfg_encoder() {  // bidirectional, no RoPE, two-sided window
  AttentionConfig c;
  c.hidden = 16, c.num_heads = 2, c.causal = false, c.rope = false, c.sliding_window = 4;
  return c;
}

MlaConfig cfg_mla(bool lora, bool rope = true) {
  MlaConfig c;
  c.hidden = 32, c.num_heads = 4, c.q_lora_rank = lora ? 12 : 0, c.kv_lora_rank = 16;
  c.qk_nope_head_dim = 8, c.qk_rope_head_dim = 4, c.v_head_dim = 6, c.rope = rope;
  c.attention_bias = lora;
  return c;
}

template <class T, class S = T, class KV = T>
Attention<T, S, KV> make_attn(const AttentionConfig& c, uint64_t seed = 7) {
  Attention<T, S, KV> L(c);
  L.init_random(seed);
  randomize(L.q_norm, seed + 1);
  randomize(L.k_norm, seed + 2);
  return L;
}
template <class T, class S = T, class KV = T>
MultiHeadLatentAttention<T, S, KV> make_mla(const MlaConfig& c, uint64_t seed = 7) {
  MultiHeadLatentAttention<T, S, KV> L(c);
  L.init_random(seed);
  randomize(L.q_a_layernorm, seed + 1);
  randomize(L.kv_a_layernorm, seed + 2);
  return L;
}

}  // namespace

// ---- Attention
// -----------------------------------------------------------------------------------

TEST(AttentionLayer, MatchesReference) {
  for (const AttentionConfig& c : {cfg_mha(), cfg_gqa(), cfg_window(), cfg_encoder()}) {
    const auto Ld = make_attn<double>(c);
    const auto Lf = make_attn<float>(c);
    const Tensor<double> x = random_tensor<double>({2, 37, c.hidden}, 3);
    const Tensor<double> ref = attention_ref(Ld, x);
    EXPECT_LT(max_abs_diff(Ld(x), ref), 1e-12);  // no cache
    const Tensor<double> reff = attention_ref(Lf, x);
    EXPECT_LT(max_abs_diff(Lf(as<float>(x)), reff), 2e-5 * (1 + max_abs(reff)));
    if (c.causal) {
      auto st = Ld.make_state(2, 40);
      EXPECT_LT(max_abs_diff(Ld(x, st), ref), 1e-12);  // through the cache
      auto sf = Lf.make_state(2, 40);
      EXPECT_LT(max_abs_diff(Lf(as<float>(x), sf), reff), 2e-5 * (1 + max_abs(reff)));
    }
  }
}

TEST(AttentionLayer, TokenByTokenEqualsOneCall) {
  for (const AttentionConfig& c : {cfg_mha(), cfg_gqa(), cfg_window()}) {
    for (int64_t Tn : {1, 7, 37}) {
      const auto L = make_attn<double>(c);
      const Tensor<double> x = random_tensor<double>({2, Tn, c.hidden}, 11 + Tn);
      const Tensor<double> whole = run_chunks(L, x, {Tn}, 40);
      EXPECT_LT(max_abs_diff(whole, L(x)), 1e-12) << Tn;
      EXPECT_LT(max_abs_diff(run_chunks(L, x, ones(Tn), 40), whole), 1e-12) << Tn;
      if (Tn > 3) {  // prompt, decode steps, then a chunk
        EXPECT_LT(max_abs_diff(run_chunks(L, x, {Tn - 3, 1, 1, 1}, 40), whole), 1e-12) << Tn;
        EXPECT_LT(max_abs_diff(run_chunks(L, x, {3, 1, Tn - 4}, 40), whole), 1e-12) << Tn;
      }
      // float: the prefill and decode kernels round differently
      const auto Lf = make_attn<float>(c);
      const Tensor<float> xf = as<float>(x), wf = run_chunks(Lf, xf, {Tn}, 40);
      EXPECT_LT(max_abs_diff(run_chunks(Lf, xf, ones(Tn), 40), wf), 1e-5 * (1 + max_abs(wf)));
    }
  }
}

TEST(AttentionLayer, RingBufferEqualsWindowMask) {
  // W = 5: the ring holds 5 tokens; chunks shorter and longer than the window, after a prefix.
  const AttentionConfig c = cfg_window();
  const auto L = make_attn<double>(c);
  const Tensor<double> x = random_tensor<double>({2, 37, c.hidden}, 5);
  const Tensor<double> ref = attention_ref(L, x);  // full sequence, window mask
  for (const auto& chunks : std::vector<std::vector<int64_t>>{
           {37}, ones(37), {3, 9, 1, 1, 2, 12, 1, 8}, {6, 6, 6, 6, 6, 6, 1}}) {
    auto st = L.make_state(2, 0);
    EXPECT_EQ(st.cache.slots(), 5);
    EXPECT_EQ(st.bytes(), 2 * 2 * 5 * 1 * 8 * int64_t(sizeof(double)));
    EXPECT_LT(max_abs_diff(run_chunks(L, x, chunks, 0), ref), 1e-12);
  }
}

TEST(AttentionLayer, NonCausalAndCross) {
  AttentionConfig c = cfg_gqa();
  c.causal = false;
  const auto L = make_attn<double>(c);
  const Tensor<double> x = random_tensor<double>({2, 9, c.hidden}, 21);
  EXPECT_LT(max_abs_diff(L(x), attention_ref(L, x)), 1e-12);
  EXPECT_THROW(L.make_state(2, 16), Error);  // a cache needs a causal layer

  // Cross attention: 7 queries over a context of 13 tokens of another width.
  AttentionConfig cc = cfg_gqa();
  cc.kv_hidden = 20;
  const auto X = make_attn<double>(cc);
  const auto Xf = make_attn<float>(cc);
  const Tensor<double> q = random_tensor<double>({2, 7, cc.hidden}, 22);
  const Tensor<double> ctx = random_tensor<double>({2, 13, 20}, 23);
  Tensor<double> y({2, 7, cc.hidden});
  X.forward_cross(q, ctx, y);
  EXPECT_LT(max_abs_diff(y, cross_ref(X, q, ctx)), 1e-12);
  const auto enc = X.encode_context(ctx);  // reused for a second batch of queries
  const Tensor<double> q2 = random_tensor<double>({2, 1, cc.hidden}, 24);
  Tensor<double> y2({2, 1, cc.hidden});
  X.forward_cross(q2, enc, y2);
  EXPECT_LT(max_abs_diff(y2, cross_ref(X, q2, ctx)), 1e-12);
  Tensor<float> yf({2, 7, cc.hidden});
  Xf.forward_cross(as<float>(q), as<float>(ctx), yf);
  const Tensor<double> rf = cross_ref(Xf, q, ctx);
  EXPECT_LT(max_abs_diff(yf, rf), 2e-5 * (1 + max_abs(rf)));
  EXPECT_THROW(X(q), Error);  // kv_hidden != hidden: not a self-attention layer
}

// A right-padded batch (lengths, one sequence empty, one full) == each sequence alone, for causal,
// non-causal, windowed, GQA and RoPE layers; padding rows are o_proj(0) = o_proj's bias.
TEST(AttentionLayer, RaggedBatchEqualsSequencesAlone) {
  AttentionConfig nc = cfg_gqa();
  nc.causal = false;
  const std::vector<int64_t> lengths = {7, 0, 13, 3};
  for (const AttentionConfig& c : {cfg_mha(), nc, cfg_window(), cfg_encoder()}) {
    const auto L = make_attn<double>(c, 27);
    const Tensor<double> x = random_tensor<double>({4, 13, c.hidden}, 28);
    Tensor<double> pad({c.hidden});
    for (int64_t i = 0; i < c.hidden; ++i) pad(i) = c.o_bias ? L.o_proj.bias.data()[i] : 0.0;
    expect_ragged_equals_alone([&](TensorView<const double> xv, TensorView<double> yv,
                                   const std::vector<int64_t>& n) { L.forward(xv, yv, n); },
                               x, lengths, pad);
  }
  // Cross attention over a padded context == over each context alone.
  AttentionConfig cc = cfg_gqa();
  cc.kv_hidden = 20;
  const auto X = make_attn<double>(cc);
  const Tensor<double> q = random_tensor<double>({3, 5, cc.hidden}, 29);
  const Tensor<double> ctx = random_tensor<double>({3, 11, 20}, 30);
  const std::vector<int64_t> ctx_len = {11, 4, 1};
  Tensor<double> y({3, 5, cc.hidden});
  X.forward_cross(q, ctx, y, ctx_len);
  for (int64_t b = 0; b < 3; ++b) {
    const Tensor<double> qb = Tensor<double>::from(q.view().slice(0, b, b + 1));
    const Tensor<double> cb =
        Tensor<double>::from(ctx.view().slice(0, b, b + 1).slice(1, 0, ctx_len[b]));
    EXPECT_LT(max_abs_diff(Tensor<double>::from(y.view().slice(0, b, b + 1)), cross_ref(X, qb, cb)),
              1e-12)
        << b;
  }
  Tensor<double> yx({4, 13, nc.hidden});
  const auto N = make_attn<double>(nc);
  const Tensor<double> x = random_tensor<double>({4, 13, nc.hidden}, 31);
  EXPECT_THAT(error_of([&] {
                N.forward(x, yx, {7, 0, 14, 3});
              }),
              HasSubstr("lengths[2] = 14 is not in [0, T = 13]"));
  EXPECT_THAT(error_of([&] {
                N.forward(x, yx, {7, 0});
              }),
              HasSubstr("lengths has 2 entries, expected one per sequence (B = 4)"));
  EXPECT_THAT(error_of([&] {
                X.forward_cross(q, ctx, y, {1, 2, 12});
              }),
              HasSubstr("ctx_lengths[2] = 12 is not in [0, T = 11]"));
}

TEST(AttentionLayer, SaveLoadRoundTrip) {
  for (const AttentionConfig& c : {cfg_mha(), cfg_gqa()}) {
    const auto L = make_attn<float>(c, 31);
    Attention<float> M(c);
    M.load(saved(L), "blk");
    const Tensor<float> x = random_tensor<float>({2, 9, c.hidden}, 32);
    EXPECT_EQ(max_abs_diff(L(x), M(x)), 0.0);
    const auto Lb = make_attn<float, bf16>(c, 31);
    Attention<float, bf16> Mb(c);
    Mb.load(saved(Lb, "model.layers.0.self_attn"), "model.layers.0.self_attn");
    EXPECT_EQ(max_abs_diff(Lb(x), Mb(x)), 0.0);
  }
  // q_proj.weight has HF's shape [Hq*D, d]
  const io::SafeTensors st = saved(make_attn<float>(cfg_gqa()));
  EXPECT_EQ(st.info("blk.q_proj.weight").dims, (std::vector<int64_t>{60, 24}));
  EXPECT_EQ(st.info("blk.k_proj.weight").dims, (std::vector<int64_t>{20, 24}));
  EXPECT_EQ(st.info("blk.q_norm.weight").dims, (std::vector<int64_t>{10}));
}

TEST(AttentionLayer, MissingOrMisshapedTensorNamed) {
  expect_errors_name_tensors(make_attn<float>(cfg_mha()));
  expect_errors_name_tensors(make_attn<float>(cfg_gqa()));
  // A q_norm in the file for a layer configured without it.
  AttentionConfig c = cfg_gqa();
  c.qk_norm = false;
  Attention<float> M(c);
  try {
    M.load(saved(make_attn<float>(cfg_gqa())), "blk");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("blk.q_norm.weight"), std::string::npos) << e.what();
  }
}

TEST(AttentionLayer, Bf16WeightsAndCache) {
  for (const AttentionConfig& c : {cfg_gqa(), cfg_window()}) {
    const auto Lf = make_attn<float>(c);
    const auto Lb = make_attn<float, bf16>(c);
    const auto Lc = make_attn<float, float, bf16>(c);
    const Tensor<float> x = random_tensor<float>({2, 21, c.hidden}, 41);
    const Tensor<float> ref = run_chunks(Lf, x, {16, 1, 4}, 24);
    const double tol = 2e-2 * (1 + max_abs(ref));
    EXPECT_LT(max_abs_diff(run_chunks(Lb, x, {16, 1, 4}, 24), ref), tol);
    EXPECT_LT(max_abs_diff(run_chunks(Lc, x, {16, 1, 4}, 24), ref), tol);
    // bf16 weights against the reference with the same (rounded) weights: float accuracy
    const Tensor<double> rb = attention_ref(Lb, Tensor<double>::from(x.view()));
    EXPECT_LT(max_abs_diff(Lb(x), rb), 2e-5 * (1 + max_abs(rb)));
    // bf16 cache: token by token == one call (both round k, v the same way)
    EXPECT_LT(max_abs_diff(run_chunks(Lc, x, ones(21), 24), run_chunks(Lc, x, {21}, 24)),
              1e-5 * (1 + max_abs(ref)));
  }
}

TEST(AttentionLayer, BadArguments) {
  AttentionConfig c = cfg_mha();
  c.num_kv_heads = 3;  // 4 % 3 != 0
  EXPECT_THROW(Attention<float>{c}, Error);
  const auto L = make_attn<float>(cfg_mha());
  auto st = L.make_state(2, 8);
  const Tensor<float> x = random_tensor<float>({2, 9, 32}, 1);
  Tensor<float> y({2, 9, 32});
  EXPECT_THROW(L.forward(x, st, y), Error);  // exceeds the capacity
  auto s1 = L.make_state(1, 16);
  EXPECT_THROW(L.forward(x, s1, y), Error);  // batch mismatch
  const Tensor<float> xw = random_tensor<float>({2, 9, 31}, 1);
  EXPECT_THROW(L(xw), Error);  // width
}

// ---- MultiHeadLatentAttention
// ---------------------------------------------------------------------

TEST(MlaLayer, MatchesReference) {
  for (bool lora : {false, true})
    for (bool rope : {true, false}) {
      const MlaConfig c = cfg_mla(lora, rope);
      const auto Ld = make_mla<double>(c);
      const Tensor<double> x = random_tensor<double>({2, 37, c.hidden}, 3);
      const Tensor<double> ref = mla_ref(Ld, x);
      for (MlaPath p : {MlaPath::kExpanded, MlaPath::kAbsorbed, MlaPath::kAuto})
        EXPECT_LT(max_abs_diff(run_chunks(Ld, x, {37}, 40, p), ref), 1e-12);
      const auto Lf = make_mla<float>(c);
      const Tensor<double> rf = mla_ref(Lf, x);
      for (MlaPath p : {MlaPath::kExpanded, MlaPath::kAbsorbed})
        EXPECT_LT(max_abs_diff(run_chunks(Lf, as<float>(x), {37}, 40, p), rf),
                  2e-5 * (1 + max_abs(rf)));
    }
}

TEST(MlaLayer, TokenByTokenEqualsOneCall) {
  for (bool lora : {false, true}) {
    const MlaConfig c = cfg_mla(lora);
    for (int64_t Tn : {1, 7, 37}) {
      const auto L = make_mla<double>(c);
      const Tensor<double> x = random_tensor<double>({2, Tn, c.hidden}, 51 + Tn);
      const Tensor<double> whole = run_chunks(L, x, {Tn}, 40);
      EXPECT_LT(max_abs_diff(run_chunks(L, x, ones(Tn), 40), whole), 1e-12) << Tn;
      if (Tn > 3) {
        EXPECT_LT(max_abs_diff(run_chunks(L, x, {Tn - 3, 1, 1, 1}, 40), whole), 1e-12) << Tn;
        EXPECT_LT(max_abs_diff(run_chunks(L, x, {3, 1, Tn - 4}, 40), whole), 1e-12) << Tn;
      }
      const auto Lf = make_mla<float>(c);
      const Tensor<float> xf = as<float>(x), wf = run_chunks(Lf, xf, {Tn}, 40);
      EXPECT_LT(max_abs_diff(run_chunks(Lf, xf, ones(Tn), 40), wf), 1e-5 * (1 + max_abs(wf)));
    }
  }
}

TEST(MlaLayer, AbsorbedDecodeEqualsExpanded) {
  const MlaConfig c = cfg_mla(true);
  const auto L = make_mla<float>(c);
  const Tensor<float> x = random_tensor<float>({2, 30, c.hidden}, 61);
  // a prompt of 20, then decode steps and a short chunk, each path forced
  const std::vector<int64_t> chunks = {20, 1, 1, 4, 1, 1, 1, 1};
  const Tensor<float> e = run_chunks(L, x, chunks, 32, MlaPath::kExpanded);
  const Tensor<float> a = run_chunks(L, x, chunks, 32, MlaPath::kAbsorbed);
  EXPECT_LT(max_abs_diff(a, e), 1e-5 * (1 + max_abs(e)));
  // the state holds r + R values per token, whatever the path
  const auto st = L.make_state(2, 32);
  EXPECT_EQ(st.bytes(), 2 * 32 * (16 + 4) * int64_t(sizeof(float)));
}

TEST(MlaLayer, SaveLoadRoundTrip) {
  for (bool lora : {false, true}) {
    const MlaConfig c = cfg_mla(lora);
    const auto L = make_mla<float>(c, 71);
    MultiHeadLatentAttention<float> M(c);
    M.load(saved(L), "blk");
    const Tensor<float> x = random_tensor<float>({2, 9, c.hidden}, 72);
    EXPECT_EQ(max_abs_diff(run_chunks(L, x, {5, 1, 3}, 9), run_chunks(M, x, {5, 1, 3}, 9)), 0.0);
    const auto Lb = make_mla<float, bf16>(c, 71);
    MultiHeadLatentAttention<float, bf16> Mb(c);
    Mb.load(saved(Lb), "blk");
    EXPECT_EQ(max_abs_diff(run_chunks(Lb, x, {9}, 9), run_chunks(Mb, x, {9}, 9)), 0.0);
  }
  const io::SafeTensors st = saved(make_mla<float>(cfg_mla(true)));
  EXPECT_EQ(st.info("blk.kv_a_proj_with_mqa.weight").dims, (std::vector<int64_t>{20, 32}));
  EXPECT_EQ(st.info("blk.kv_b_proj.weight").dims, (std::vector<int64_t>{56, 16}));
  EXPECT_EQ(st.info("blk.q_b_proj.weight").dims, (std::vector<int64_t>{48, 12}));
  EXPECT_FALSE(st.contains("blk.q_proj.weight"));
}

TEST(MlaLayer, MissingOrMisshapedTensorNamed) {
  expect_errors_name_tensors(make_mla<float>(cfg_mla(false)));
  expect_errors_name_tensors(make_mla<float>(cfg_mla(true)));
  MultiHeadLatentAttention<float> M(cfg_mla(false));  // q_a_proj in the file, q_proj expected
  try {
    M.load(saved(make_mla<float>(cfg_mla(true))), "blk");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("blk.q_"), std::string::npos) << e.what();
  }
}

TEST(MlaLayer, Bf16WeightsAndCache) {
  const MlaConfig c = cfg_mla(true);
  const auto Lf = make_mla<float>(c);
  const auto Lb = make_mla<float, bf16>(c);
  const auto Lc = make_mla<float, float, bf16>(c);
  const Tensor<float> x = random_tensor<float>({2, 21, c.hidden}, 81);
  const Tensor<float> ref = run_chunks(Lf, x, {16, 1, 4}, 24);
  const double tol = 2e-2 * (1 + max_abs(ref));
  EXPECT_LT(max_abs_diff(run_chunks(Lb, x, {16, 1, 4}, 24), ref), tol);
  EXPECT_LT(max_abs_diff(run_chunks(Lc, x, {16, 1, 4}, 24), ref), tol);
  const Tensor<double> rb = mla_ref(Lb, Tensor<double>::from(x.view()));
  for (MlaPath p : {MlaPath::kExpanded, MlaPath::kAbsorbed})
    EXPECT_LT(max_abs_diff(run_chunks(Lb, x, {21}, 24, p), rb), 2e-5 * (1 + max_abs(rb)));
  // bf16 cache: both paths read the same rounded latents
  EXPECT_LT(max_abs_diff(run_chunks(Lc, x, ones(21), 24, MlaPath::kAbsorbed),
                         run_chunks(Lc, x, {21}, 24, MlaPath::kExpanded)),
            1e-5 * (1 + max_abs(ref)));
}

TEST(MlaLayer, BadArguments) {
  MlaConfig c = cfg_mla(true);
  c.qk_rope_head_dim = 3;
  EXPECT_THROW(MultiHeadLatentAttention<float>{c}, Error);
  const auto L = make_mla<float>(cfg_mla(true));
  auto st = L.make_state(2, 8);
  const Tensor<float> x = random_tensor<float>({2, 9, 32}, 1);
  Tensor<float> y({2, 9, 32});
  EXPECT_THROW(L.forward(x, st, y), Error);  // exceeds the capacity
  EXPECT_EQ(st.position(), 0);
  auto s1 = L.make_state(1, 16);
  EXPECT_THROW(L.forward(x, s1, y), Error);  // batch mismatch
}
