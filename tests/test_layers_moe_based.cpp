// MoE (layers/moe.hpp) and LinearAttention / Based (layers/based.hpp): each against the same
// computation written out here in double (the naive MoE ops, plain loops for the Based kernel),
// a token's MoE output independent of its batch, LinearAttention token by token through State ==
// one forward, save -> load round trips, float vs bf16 storage, and the load errors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "effattn/core/bf16.hpp"
#include "effattn/core/error.hpp"
#include "effattn/core/tensor.hpp"
#include "effattn/io/safetensors.hpp"
#include "effattn/layers/based.hpp"
#include "effattn/layers/moe.hpp"
#include "effattn/ops/moe/naive.hpp"
#include "layer_test_util.hpp"
#include "test_util.hpp"

namespace effattn {
namespace {

using io::SafeTensors;
using io::SafeTensorsWriter;
using testing::as_double;
using testing::bitwise_equal;
using testing::error_of;
using testing::expect_ragged_equals_alone;
using ::testing::HasSubstr;
using testing::max_abs;
using testing::max_abs_diff;
using testing::random_tensor;
using testing::ref_linear;
using testing::reload;

// ------------------------------------------------------------------ helpers

// W [out, in] -> W^T [in, out] (the ops' x @ W layout)
Tensor<double> transposed(const Tensor<double>& W) {
  Tensor<double> t({W.size(1), W.size(0)});
  for (int64_t o = 0; o < W.size(0); ++o)
    for (int64_t c = 0; c < W.size(1); ++c) t(c, o) = W(o, c);
  return t;
}

// A copy of `st` without the tensor `drop`, and with `reshape` (if named) replaced by a random
// tensor of shape `shape`.
SafeTensors edited(const SafeTensors& st, const std::string& drop, const std::string& reshape = "",
                   const Shape& shape = {}) {
  SafeTensorsWriter w;
  for (const std::string& n : st.names()) {
    if (n == drop) continue;
    if (n == reshape) {
      w.add(n, random_tensor<float>(shape, 5));
    } else {
      w.add(n, st.get<float>(n));
    }
  }
  return reload(w, "ckpt.safetensors");
}

// ------------------------------------------------------------------ MoE

// d 12, E 6 experts of width 8, a shared expert of width 10 (tiny, but every path is taken).
layers::MoEConfig moe_config(int routing, bool shared) {
  layers::MoEConfig c;
  c.hidden = 12;
  c.num_experts = 6;
  c.expert_hidden = 8;
  c.shared_hidden = shared ? 10 : 0;
  if (routing == 0) {
    c.gate = moe::GateParams::mixtral(2);
  } else if (routing == 1) {
    c.gate = moe::GateParams::softmax_topk(3, false);  // Qwen-MoE, norm_topk_prob = false
  } else {
    c.gate = moe::GateParams::deepseek_v3(/*k=*/2, /*n_group=*/3, /*topk_group=*/2, 2.5);
    c.score_correction_bias = true;
  }
  return c;
}

template <class T, class S>
layers::MoE<T, S> make_moe(const layers::MoEConfig& c, uint64_t seed) {
  layers::MoE<T, S> m(c);
  m.init_random(seed);
  if (c.score_correction_bias)  // a learnt bias is not zero: make it change the selection
    m.e_score_correction_bias.set(random_tensor<double>({c.num_experts}, seed + 1, -0.3, 0.3));
  return m;
}

// The layer written out in double: logits by plain loops, the naive gate, and the naive MoE
// feed-forward on the experts' weights transposed to the op's [E, d, f] layout.
template <class T, class S>
Tensor<double> ref_moe(const layers::MoE<T, S>& m, const Tensor<double>& x2,
                       Tensor<int32_t>* idx_out = nullptr) {
  const auto& c = m.config;
  const int64_t N = x2.size(0), d = c.hidden, E = c.num_experts, f = c.expert_hidden,
                k = c.gate.top_k;
  const Tensor<double> logits = ref_linear(x2, as_double(m.gate.weight));
  Tensor<double> bias;
  if (c.score_correction_bias) bias = as_double(m.e_score_correction_bias);
  Tensor<int32_t> idx({N, k});
  Tensor<double> w({N, k});
  moe::naive::gate<double>(logits, testing::opt(bias), idx, w, c.gate);
  Tensor<double> wg({E, d, f}), wu({E, d, f}), wd({E, f, d});
  for (int64_t e = 0; e < E; ++e) {
    const Tensor<double> g = transposed(as_double(m.experts[e].gate_proj.weight));
    const Tensor<double> u = transposed(as_double(m.experts[e].up_proj.weight));
    const Tensor<double> dn = transposed(as_double(m.experts[e].down_proj.weight));
    std::memcpy(wg.view().ptr(e), g.data(), sizeof(double) * d * f);
    std::memcpy(wu.view().ptr(e), u.data(), sizeof(double) * d * f);
    std::memcpy(wd.view().ptr(e), dn.data(), sizeof(double) * f * d);
  }
  Tensor<double> sg, su, sd;
  moe::SharedExpertWeights<double> sh;
  if (c.shared_hidden > 0) {
    sg = transposed(as_double(m.shared_experts.gate_proj.weight));
    su = transposed(as_double(m.shared_experts.up_proj.weight));
    sd = transposed(as_double(m.shared_experts.down_proj.weight));
    sh = {sg.view(), su.view(), sd.view()};
  }
  Tensor<double> y({N, d});
  moe::naive::moe_ffn<double, double>(x2, idx, w, {wg.view(), wu.view(), wd.view()}, sh, y);
  if (idx_out) *idx_out = idx;
  return y;
}

TEST(MoELayer, MatchesReferenceInDouble) {
  for (int routing : {0, 1, 2}) {
    for (bool shared : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "routing " << routing << " shared " << shared);
      const auto m = make_moe<double, double>(moe_config(routing, shared), 10 + routing);
      const Tensor<double> x = random_tensor<double>({2, 9, 12}, 3, -2.0, 2.0);
      const Tensor<double> y = m(x);
      Tensor<int32_t> ref_idx;
      const Tensor<double> ref =
          ref_moe(m, Tensor<double>::from(x.view().reshape({18, 12})), &ref_idx);
      EXPECT_LT(max_abs_diff(y.view().reshape({18, 12}), ref.view()), 1e-12);
      EXPECT_GT(max_abs(ref), 1e-2);
      // The router's choice is the naive gate's.
      Tensor<int32_t> idx({18, m.top_k()});
      Tensor<double> w({18, m.top_k()});
      m.route(x, idx, w);
      EXPECT_TRUE(bitwise_equal(idx, ref_idx));
    }
  }
}

TEST(MoELayer, GroupLimitedRoutingUsesTheBias) {
  // With a large correction bias on expert 5 (group 2), every token selects it: the bias moves
  // the selection, and the weights stay the unbiased scores (checked against the reference).
  auto c = moe_config(2, true);
  auto m = make_moe<double, double>(c, 4);
  Tensor<double> bias({6});
  bias.fill(0.0);
  bias(5) = 5.0;
  m.e_score_correction_bias.set(bias);
  const Tensor<double> x = random_tensor<double>({1, 7, 12}, 8);
  Tensor<int32_t> idx({7, 2});
  Tensor<double> w({7, 2});
  m.route(x, idx, w);
  for (int64_t n = 0; n < 7; ++n) EXPECT_EQ(idx(n, 0), 5);
  const Tensor<double> y = m(x);
  const Tensor<double> ref = ref_moe(m, Tensor<double>::from(x.view().reshape({7, 12})));
  EXPECT_LT(max_abs_diff(y.view().reshape({7, 12}), ref.view()), 1e-12);
}

TEST(MoELayer, TokenIndependentOfItsBatch) {
  // 40 tokens (experts get > 8 rows: the gemm path) vs each token alone (streaming path) vs a
  // strided sub-batch; shared expert included.
  for (int routing : {0, 2}) {
    SCOPED_TRACE(::testing::Message() << "routing " << routing);
    const auto m = make_moe<float, float>(moe_config(routing, true), 21);
    const Tensor<float> x = random_tensor<float>({4, 10, 12}, 22, -2.0, 2.0);
    const Tensor<float> y = m(x);
    for (int64_t b = 0; b < 4; ++b)
      for (int64_t t = 0; t < 10; ++t) {
        const Tensor<float> one =
            m(Tensor<float>::from(x.view().slice(0, b, b + 1).slice(1, t, t + 1)));
        for (int64_t c = 0; c < 12; ++c) EXPECT_NEAR(one(0, 0, c), y(b, t, c), 2e-6);
      }
    // Rows 3..5 of batch 1, as a view (leading dims collapse: a time slice of one batch row).
    const TensorView<const float> sub =
        TensorView<const float>(x.view()).select(0, 1).slice(0, 3, 6);
    Tensor<float> ys({3, 12});
    m.forward(sub, ys);
    for (int64_t t = 0; t < 3; ++t)
      for (int64_t c = 0; c < 12; ++c) EXPECT_NEAR(ys(t, c), y(1, 3 + t, c), 2e-6);
  }
  // In double the two kernels agree to rounding.
  const auto md = make_moe<double, double>(moe_config(0, true), 23);
  const Tensor<double> xd = random_tensor<double>({1, 30, 12}, 24);
  const Tensor<double> yd = md(xd);
  for (int64_t t = 0; t < 30; ++t) {
    const Tensor<double> one = md(Tensor<double>::from(xd.view().slice(1, t, t + 1)));
    for (int64_t c = 0; c < 12; ++c) EXPECT_NEAR(one(0, 0, c), yd(0, t, c), 1e-13);
  }
}

TEST(MoELayer, Bf16StorageWithinTolerance) {
  for (int routing : {0, 2}) {
    SCOPED_TRACE(::testing::Message() << "routing " << routing);
    const auto c = moe_config(routing, true);
    const auto mf = make_moe<float, float>(c, 31);
    SafeTensorsWriter w;
    mf.save(w, "model.layers.1.mlp");
    layers::MoE<float, bf16> mb(c);
    mb.load(reload(w, "ckpt.safetensors"), "model.layers.1.mlp");
    for (int64_t T : {1, 20}) {
      const Tensor<float> x = random_tensor<float>({2, T, 12}, 32);
      const Tensor<float> yf = mf(x), yb = mb(x);
      // The router is float in both, so the choice is the same; experts differ by bf16 rounding.
      EXPECT_LT(max_abs_diff(yf, yb), 1e-2 * max_abs(yf) + 1e-6) << "T " << T;
      EXPECT_GT(max_abs_diff(yf, yb), 0.0);
    }
  }
}

TEST(MoELayer, SaveLoadRoundTripIsBitwise) {
  for (bool mixtral : {false, true}) {
    auto c = moe_config(mixtral ? 0 : 2, !mixtral);
    c.mixtral_names = mixtral;
    const auto m = make_moe<float, bf16>(c, 41);
    SafeTensorsWriter w;
    m.save(w, "model.layers.0.mlp");
    const SafeTensors st = reload(w, "ckpt.safetensors");
    if (mixtral) {
      EXPECT_TRUE(st.contains("model.layers.0.mlp.experts.5.w2.weight"));
      EXPECT_EQ(st.size(), 1u + 6 * 3);
    } else {
      EXPECT_TRUE(st.contains("model.layers.0.mlp.gate.e_score_correction_bias"));
      EXPECT_TRUE(st.contains("model.layers.0.mlp.experts.5.down_proj.weight"));
      EXPECT_TRUE(st.contains("model.layers.0.mlp.shared_experts.up_proj.weight"));
      EXPECT_EQ(st.size(), 2u + 6 * 3 + 3);
      EXPECT_EQ(st.info("model.layers.0.mlp.experts.0.up_proj.weight").dtype, io::Dtype::kBF16);
      EXPECT_EQ(st.info("model.layers.0.mlp.gate.weight").dtype, io::Dtype::kF32);
    }
    auto c2 = c;
    c2.mixtral_names = false;  // load accepts either naming whatever the config saves
    layers::MoE<float, bf16> m2(c2);
    m2.load(st, "model.layers.0.mlp");
    const Tensor<float> x = random_tensor<float>({2, 11, 12}, 42);
    EXPECT_TRUE(bitwise_equal(m(x), m2(x)));
  }
}

TEST(MoELayer, LoadErrorsNameTheTensor) {
  const auto c = moe_config(2, true);
  const auto m = make_moe<float, float>(c, 51);
  SafeTensorsWriter w;
  m.save(w, "mlp");
  const SafeTensors st = reload(w, "ckpt.safetensors");
  layers::MoE<float, float> m2(c);
  EXPECT_THAT(error_of([&] { m2.load(edited(st, "mlp.experts.3.down_proj.weight"), "mlp"); }),
              HasSubstr("tensor 'mlp.experts.3.down_proj.weight' not found"));
  // A Mixtral-named file with w1 missing: the error names w1, not gate_proj.
  {
    auto cm = moe_config(0, false);
    cm.mixtral_names = true;
    const auto mm = make_moe<float, float>(cm, 52);
    SafeTensorsWriter wm;
    mm.save(wm, "mlp");
    layers::MoE<float, float> mm2(cm);
    EXPECT_THAT(error_of([&] {
                  mm2.load(edited(reload(wm, "ckpt.safetensors"), "mlp.experts.2.w1.weight"),
                           "mlp");
                }),
                HasSubstr("tensor 'mlp.experts.2.w1.weight' not found"));
  }
  EXPECT_THAT(error_of([&] {
                m2.load(edited(st, "", "mlp.gate.weight", {6, 13}), "mlp");
              }),
              HasSubstr("tensor 'mlp.gate.weight' in ckpt.safetensors is F32 [6, 13], expected "
                        "[6, 12]"));
  EXPECT_THAT(
      error_of([&] { m2.load(edited(st, "", "mlp.gate.e_score_correction_bias", {5}), "mlp"); }),
      HasSubstr("'mlp.gate.e_score_correction_bias' in ckpt.safetensors is F32 [5]"));
  EXPECT_THAT(error_of([&] { m2.load(edited(st, "mlp.shared_experts.up_proj.weight"), "mlp"); }),
              HasSubstr("'mlp.shared_experts.up_proj.weight' not found"));
  // Config / checkpoint disagreements: no shared expert, no correction bias configured.
  auto c_noshared = c;
  c_noshared.shared_hidden = 0;
  layers::MoE<float, float> m3(c_noshared);
  EXPECT_THAT(error_of([&] { m3.load(st, "mlp"); }),
              HasSubstr("'mlp.shared_experts.gate_proj.weight' is in ckpt.safetensors but the "
                        "layer was configured without shared experts"));
  auto c_nobias = c;
  c_nobias.score_correction_bias = false;
  layers::MoE<float, float> m4(c_nobias);
  EXPECT_THAT(error_of([&] { m4.load(st, "mlp"); }),
              HasSubstr("'mlp.gate.e_score_correction_bias' is in ckpt.safetensors but the layer "
                        "was configured without it"));
  // Bad configurations.
  auto bad = c;
  bad.gate.top_k = 7;
  EXPECT_THAT(error_of([&] { layers::MoE<float> x(bad); }), HasSubstr("top_k = 7"));
  auto bad2 = moe_config(0, false);
  bad2.score_correction_bias = true;
  EXPECT_THAT(error_of([&] { layers::MoE<float> x(bad2); }), HasSubstr("needs sigmoid"));
}

// ------------------------------------------------------------------ LinearAttention (Based)

layers::LinearAttentionConfig based_config(bool causal = true) {
  layers::LinearAttentionConfig c;
  c.hidden = 16;
  c.num_heads = 2;
  c.feature_dim = 4;  // Kf = 21
  c.causal = causal;
  return c;
}

// The layer written out in double, in the quadratic (attention-like) form: no feature map and
// no state, o_t = sum_j ker(q_t, k_j) v_j / (sum_j ker(q_t, k_j) + eps) over j <= t (causal) or
// all j, ker = 1 + s + s^2 / 2, s = q.k / sqrt(K).
template <class T, class S>
Tensor<double> ref_based(const layers::LinearAttention<T, S>& la, const Tensor<double>& x) {
  const auto& c = la.config;
  const int64_t B = x.size(0), Tn = x.size(1), d = c.hidden, H = c.num_heads, K = c.feature_dim,
                V = la.head_dim();
  const Tensor<double> x2 = Tensor<double>::from(x.view().reshape({B * Tn, d}));
  const Tensor<double> q = ref_linear(x2, as_double(la.q_proj.weight));
  const Tensor<double> k = ref_linear(x2, as_double(la.k_proj.weight));
  const Tensor<double> v = ref_linear(x2, as_double(la.v_proj.weight));
  Tensor<double> o({B * Tn, H * V});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < Tn; ++t) {
        std::vector<double> num(V, 0.0);
        double den = 0;
        for (int64_t j = 0; j < (c.causal ? t + 1 : Tn); ++j) {
          double s = 0;
          for (int64_t i = 0; i < K; ++i) s += q(b * Tn + t, h * K + i) * k(b * Tn + j, h * K + i);
          s /= std::sqrt(double(K));
          const double a = 1 + s + s * s / 2;
          den += a;
          for (int64_t e = 0; e < V; ++e) num[e] += a * v(b * Tn + j, h * V + e);
        }
        for (int64_t e = 0; e < V; ++e) o(b * Tn + t, h * V + e) = num[e] / (den + c.eps);
      }
  const Tensor<double> y = ref_linear(o, as_double(la.o_proj.weight));
  return Tensor<double>::from(y.view().reshape({B, Tn, d}));
}

template <class T, class S = T>
layers::LinearAttention<T, S> make_based(const layers::LinearAttentionConfig& c, uint64_t seed) {
  layers::LinearAttention<T, S> la(c);
  la.init_random(seed);
  return la;
}

TEST(BasedLayer, MatchesReferenceInDouble) {
  for (bool causal : {true, false}) {
    const auto la = make_based<double>(based_config(causal), 61);
    for (int64_t T : {1, 7, 37}) {
      SCOPED_TRACE(::testing::Message() << "causal " << causal << " T " << T);
      const Tensor<double> x = random_tensor<double>({2, T, 16}, 62 + T, -2.0, 2.0);
      const Tensor<double> ref = ref_based(la, x);
      EXPECT_LT(max_abs_diff(la(x), ref), 1e-12);
      EXPECT_GT(max_abs(ref), 1e-2);
      if (causal) {  // the same through a fresh State
        auto st = la.make_state(2);
        EXPECT_LT(max_abs_diff(la(x, st), ref), 1e-12);
      }
    }
  }
  // head_dim other than hidden / num_heads.
  auto c = based_config();
  c.head_dim = 5;
  const auto la = make_based<double>(c, 63);
  const Tensor<double> x = random_tensor<double>({1, 20, 16}, 64);
  EXPECT_LT(max_abs_diff(la(x), ref_based(la, x)), 1e-12);
}

// Feeds x [B, T, d] through a fresh State in pieces of the given sizes (cycled).
template <class T, class S>
Tensor<T> in_pieces(const layers::LinearAttention<T, S>& la, const Tensor<T>& x,
                    std::vector<int64_t> sizes) {
  const int64_t B = x.size(0), Tn = x.size(1), d = x.size(2);
  auto st = la.make_state(B);
  Tensor<T> y({B, Tn, d});
  std::size_t i = 0;
  for (int64_t t = 0; t < Tn;) {
    const int64_t n = std::min(sizes[i++ % sizes.size()], Tn - t);
    la.forward(TensorView<const T>(x.view()).slice(1, t, t + n), st,
               y.view().slice(1, t, t + n));  // time slices: strided rows
    t += n;
  }
  return y;
}

TEST(BasedLayer, TokenByTokenEqualsOneForward) {
  const auto lf = make_based<float>(based_config(), 71);
  const auto ld = make_based<double>(based_config(), 71);
  for (int64_t T : {1, 7, 37}) {
    SCOPED_TRACE(::testing::Message() << "T " << T);
    const Tensor<float> x = random_tensor<float>({2, T, 16}, 72 + T, -2.0, 2.0);
    const Tensor<double> xd = Tensor<double>::from(TensorView<const float>(x.view()));
    const Tensor<float> whole = lf(x);
    const Tensor<double> whole_d = ld(xd);
    EXPECT_LT(max_abs_diff(in_pieces(lf, x, {1}), whole), 2e-5 * max_abs(whole));
    EXPECT_LT(max_abs_diff(in_pieces(lf, x, {5, 1, 20}), whole), 2e-5 * max_abs(whole));
    EXPECT_LT(max_abs_diff(in_pieces(ld, xd, {1}), whole_d), 1e-12);
    EXPECT_LT(max_abs_diff(in_pieces(ld, xd, {17, 2}), whole_d), 1e-12);
  }
  // The state holds S and z of a fixed size: (Kf V + Kf) H B values.
  const auto st = lf.make_state(3);
  EXPECT_EQ(lf.expanded_dim(), 21);
  EXPECT_EQ(st.bytes(), int64_t((21 * 8 + 21) * 2 * 3 * sizeof(float)));
}

TEST(BasedLayer, Bf16StorageWithinTolerance) {
  const auto lf = make_based<float>(based_config(), 81);
  SafeTensorsWriter w;
  lf.save(w, "model.layers.2.attn");
  layers::LinearAttention<float, bf16> lb(based_config());
  lb.load(reload(w, "ckpt.safetensors"), "model.layers.2.attn");
  const Tensor<float> x = random_tensor<float>({2, 37, 16}, 82);
  const Tensor<float> yf = lf(x), yb = lb(x);
  EXPECT_LT(max_abs_diff(yf, yb), 2e-2 * max_abs(yf));
  EXPECT_GT(max_abs_diff(yf, yb), 0.0);
}

TEST(BasedLayer, SaveLoadRoundTripIsBitwise) {
  const auto la = make_based<float, bf16>(based_config(), 91);
  SafeTensorsWriter w;
  la.save(w, "model.layers.2.attn");
  const SafeTensors st = reload(w, "ckpt.safetensors");
  EXPECT_EQ(st.size(), 4u);
  const std::vector<int64_t> q_dims = {8, 16}, v_dims = {16, 16};
  EXPECT_EQ(st.info("model.layers.2.attn.q_proj.weight").dims, q_dims);
  EXPECT_EQ(st.info("model.layers.2.attn.v_proj.weight").dims, v_dims);
  layers::LinearAttention<float, bf16> l2(based_config());
  l2.load(st, "model.layers.2.attn");
  const Tensor<float> x = random_tensor<float>({2, 19, 16}, 92);
  EXPECT_TRUE(bitwise_equal(la(x), l2(x)));
  // HazyResearch based's names load too.
  SafeTensorsWriter wh;
  la.q_proj.save(wh, "mixer.proj_q");
  la.k_proj.save(wh, "mixer.proj_k");
  la.v_proj.save(wh, "mixer.proj_v");
  la.o_proj.save(wh, "mixer.out_proj");
  layers::LinearAttention<float, bf16> l3(based_config());
  l3.load(reload(wh, "ckpt.safetensors"), "mixer");
  EXPECT_TRUE(bitwise_equal(la(x), l3(x)));
  // ...and a HazyResearch-named file without proj_q names proj_q, not q_proj.
  EXPECT_THAT(error_of([&] {
                l3.load(edited(reload(wh, "ckpt.safetensors"), "mixer.proj_q.weight"), "mixer");
              }),
              HasSubstr("tensor 'mixer.proj_q.weight' not found"));
  auto s1 = la.make_state(2), s2 = l2.make_state(2);
  EXPECT_TRUE(bitwise_equal(la(x, s1), l2(x, s2)));
  EXPECT_TRUE(bitwise_equal(s1.s, s2.s));
  EXPECT_TRUE(bitwise_equal(s1.z, s2.z));
}

// A right-padded batch == each sequence alone, causal and not (the encoder's use); padding rows are
// o_proj(0) = 0.
TEST(BasedLayer, RaggedBatchEqualsSequencesAlone) {
  for (bool causal : {false, true}) {
    const auto la = make_based<double>(based_config(causal), 104);
    const Tensor<double> x = random_tensor<double>({3, 70, 16}, 105);
    expect_ragged_equals_alone([&](TensorView<const double> xv, TensorView<double> yv,
                                   const std::vector<int64_t>& n) { la.forward(xv, yv, n); },
                               x, {70, 0, 33}, Tensor<double>(Shape({16})));
  }
}

TEST(BasedLayer, LoadAndShapeErrors) {
  const auto la = make_based<float>(based_config(), 101);
  SafeTensorsWriter w;
  la.save(w, "attn");
  const SafeTensors st = reload(w, "ckpt.safetensors");
  layers::LinearAttention<float> l2(based_config());
  EXPECT_THAT(error_of([&] { l2.load(edited(st, "attn.o_proj.weight"), "attn"); }),
              HasSubstr("tensor 'attn.o_proj.weight' not found"));
  EXPECT_THAT(error_of([&] {
                l2.load(edited(st, "", "attn.k_proj.weight", {16, 16}), "attn");
              }),
              HasSubstr("tensor 'attn.k_proj.weight' in ckpt.safetensors is F32 [16, 16], "
                        "expected [8, 16]"));
  // A state of another batch, and a State with a non-causal layer.
  auto st1 = la.make_state(1);
  const Tensor<float> x = random_tensor<float>({2, 3, 16}, 102);
  EXPECT_THAT(error_of([&] { la(x, st1); }), HasSubstr("make it with make_state(B)"));
  const auto enc = make_based<float>(based_config(false), 103);
  auto st2 = enc.make_state(2);
  EXPECT_THAT(error_of([&] { enc(x, st2); }), HasSubstr("needs a causal layer"));
}

}  // namespace
}  // namespace effattn
