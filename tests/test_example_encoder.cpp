// The encoder example (examples/encoder/encoder.hpp): each block, the whole encoder and the
// cross-attention head against the same computation written out here in double (plain loops for
// the linears, norms and Mlp; the naive attention and linear-attention ops for the mixers);
// permuting the tokens permutes the encoding and leaves the head's output alone (no positions);
// T = 1; Tq != Tk; save -> load identical; a missing / misshaped tensor raises naming it;
// 1 thread == 2 threads.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "common/run.hpp"
#include "encoder/encoder.hpp"
#include "layer_test_util.hpp"
#include "test_util.hpp"

using namespace effattn;
using namespace effattn::examples;
using effattn::testing::as_double;
using effattn::testing::bitwise_equal;
using effattn::testing::max_abs;
using effattn::testing::max_abs_diff;
using effattn::testing::random_tensor;

namespace {

// ---- the reference, in double ------------------------------------------------------------------

using D = Tensor<double>;

// y [M, out] = x [M, in] W^T + b over the rows of a contiguous x [..., in].
template <class T>
D lin(const D& x, const layers::Linear<T>& l) {
  const D W = as_double(l.weight);
  const int64_t in = W.size(1), out = W.size(0), M = x.numel() / in;
  Shape s = x.shape();
  s[s.ndim() - 1] = out;
  D y(s);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t o = 0; o < out; ++o) {
      double acc = l.has_bias() ? double(l.bias.data()[o]) : 0.0;
      for (int64_t i = 0; i < in; ++i) acc += x.data()[m * in + i] * W(o, i);
      y.data()[m * out + o] = acc;
    }
  return y;
}

// LayerNorm (biased variance) or RMSNorm over the last dim.
template <class T>
D norm(const D& x, const EncoderNorm<T>& n) {
  const bool ln = n.layer_norm();
  const int64_t C = x.size(x.ndim() - 1), M = x.numel() / C;
  const double eps = ln ? n.ln.eps : n.rms.eps;
  const D w = as_double(ln ? n.ln.weight : n.rms.weight);
  D y(x.shape());
  for (int64_t m = 0; m < M; ++m) {
    const double* r = x.data() + m * C;
    double mean = 0, ss = 0;
    if (ln) {
      for (int64_t i = 0; i < C; ++i) mean += r[i] / double(C);
    }
    for (int64_t i = 0; i < C; ++i) ss += (r[i] - mean) * (r[i] - mean) / double(C);
    for (int64_t i = 0; i < C; ++i) {
      double v = (r[i] - mean) / std::sqrt(ss + eps) * w.data()[i];
      if (ln && n.ln.has_bias()) v += double(n.ln.bias.data()[i]);
      y.data()[m * C + i] = v;
    }
  }
  return y;
}

template <class T>
D mlp(const D& x, const layers::Mlp<T>& m) {
  D g = lin(x, m.gate_proj);
  const D u = lin(x, m.up_proj);
  for (int64_t i = 0; i < g.numel(); ++i) {
    const double a = g.data()[i];
    g.data()[i] = a / (1 + std::exp(-a)) * u.data()[i];
  }
  return lin(g, m.down_proj);
}

D add(D a, const D& b) {
  for (int64_t i = 0; i < a.numel(); ++i) a.data()[i] += b.data()[i];
  return a;
}

D heads(const D& x, int64_t H) {  // [B, T, H*D] -> [B, T, H, D]
  return D::from(x.view().reshape({x.size(0), x.size(1), H, x.size(2) / H}));
}

// Softmax attention: the layer's projections, RoPE (the op) when configured, attention_naive.
// ctx: keys and values from another sequence (cross attention), else self attention.
template <class T>
D attention(const D& x, const layers::Attention<T>& a, const D* ctx = nullptr) {
  const auto& c = a.config;
  const int64_t H = c.num_heads, Dh = a.head_dim(), B = x.size(0), Tq = x.size(1);
  const D& kv = ctx ? *ctx : x;
  const int64_t Tk = kv.size(1);
  D q = heads(lin(x, a.q_proj), H), k = heads(lin(kv, a.k_proj), H),
    v = heads(lin(kv, a.v_proj), H);
  if (c.rope && !ctx) {
    RopeParams rp;
    rp.style = c.rope_style;
    rp.theta = c.rope_theta;
    apply_rope<double>(q.view(), rp);
    apply_rope<double>(k.view(), rp);
  }
  AttentionParams p;
  p.causal = false;
  if (c.sliding_window > 0 && !ctx) p.window_left = p.window_right = c.sliding_window - 1;
  D o({B, Tq, H, Dh});
  attention_naive<double, double>(q, k, v, o, p);
  (void)Tk;
  return lin(D::from(o.view().reshape({B, Tq, H * Dh})), a.o_proj);
}

// Based, non-causal: the naive form of the linear-attention op (Taylor map, normalised, scale 1).
template <class T>
D based(const D& x, const layers::LinearAttention<T>& la) {
  const int64_t H = la.num_heads(), B = x.size(0), Tn = x.size(1), V = la.head_dim();
  const D q = heads(lin(x, la.q_proj), H), k = heads(lin(x, la.k_proj), H),
          v = heads(lin(x, la.v_proj), H);
  LinearAttentionParams<double> p;
  p.feature_map = FeatureMap::kBasedTaylor;
  p.normalize = true;
  p.scale = 1.0;
  p.eps = la.config.eps;
  p.causal = false;
  p.form = LinearAttentionForm::kNaive;
  D o({B, Tn, H, V});
  linear_attention<double>(q, k, v, o, p);
  return lin(D::from(o.view().reshape({B, Tn, H * V})), la.o_proj);
}

template <class T>
D block(const D& x, const EncoderBlock<T>& b) {
  auto mix = [&](const D& h) { return b.kind == 'L' ? based(h, b.linear) : attention(h, b.attn); };
  if (b.pre_norm) {
    const D h = add(x, mix(norm(x, b.norm1)));
    return add(h, mlp(norm(h, b.norm2), b.mlp));
  }
  const D h = norm(add(x, mix(x)), b.norm1);
  return norm(add(h, mlp(h, b.mlp)), b.norm2);
}

template <class T>
D embed(const Tensor<int32_t>& ids, const layers::Embedding<T>& e) {
  const D W = as_double(e.weight);
  const int64_t B = ids.size(0), Tn = ids.size(1), d = W.size(1);
  D x({B, Tn, d});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < Tn; ++t)
      for (int64_t i = 0; i < d; ++i) x(b, t, i) = W(ids(b, t), i);
  return x;
}

template <class T>
D encode(const Tensor<int32_t>& ids, const Encoder<T>& m) {
  D x = embed(ids, m.embed_tokens);
  if (m.config.positions == Positions::kLearned) {
    const D P = as_double(m.embed_positions.weight);
    for (int64_t b = 0; b < x.size(0); ++b)
      for (int64_t t = 0; t < x.size(1); ++t)
        for (int64_t i = 0; i < x.size(2); ++i) x(b, t, i) += P(t, i);
  }
  if (!m.config.pre_norm) x = norm(x, m.embed_norm);
  for (const auto& b : m.layers) x = block(x, b);
  return m.config.pre_norm ? norm(x, m.norm) : x;
}

template <class T>
D classify(const Tensor<int32_t>& qids, const D& enc, const Encoder<T>& m) {
  const auto& h = m.head;
  const D q = embed(qids, m.embed_tokens);
  const D x = add(q, attention(norm(q, h.norm_q), h.cross_attn, &enc));
  const D y = add(x, mlp(norm(x, h.norm_mlp), h.mlp));
  return lin(norm(y, h.norm), h.classifier);
}

// ---- helpers ----------------------------------------------------------------------------------

EncoderConfig tiny(const std::string& blocks = "ALWL", bool pre_norm = true,
                   NormKind n = NormKind::kLayerNorm, Positions pos = Positions::kLearned) {
  EncoderConfig c;
  c.vocab = 50;
  c.hidden = 32;
  c.num_heads = 4;  // D = 8
  c.mlp_hidden = 40;
  c.blocks = blocks;
  c.window = 3;
  c.feature_dim = 4;  // Kf = 21
  c.norm = n;
  c.pre_norm = pre_norm;
  c.positions = pos;
  c.max_positions = 40;
  c.num_labels = 3;
  return c;
}

template <class T>
Encoder<T> make(const EncoderConfig& c, uint64_t seed = 7) {
  Encoder<T> m(c);
  m.init_random(seed);
  // Norm weights and biases away from their ones / zeros init, so that a wrong one shows.
  auto perturb = [&](EncoderNorm<T>& n, uint64_t s) {
    if (n.layer_norm()) {
      n.ln.weight.init_uniform(s, 1.0);
      n.ln.bias.init_uniform(s + 1, 0.5);
    } else {
      n.rms.weight.init_uniform(s, 1.0);
    }
  };
  uint64_t s = seed * 100;
  for (auto& b : m.layers) {
    perturb(b.norm1, ++s);
    perturb(b.norm2, ++s);
  }
  for (auto* n : {&m.norm, &m.embed_norm, &m.head.norm_q, &m.head.norm_mlp, &m.head.norm})
    if (n->weight_bytes() > 0) perturb(*n, ++s);
  return m;
}

Tensor<int32_t> ids(int64_t B, int64_t Tn, uint64_t seed, int64_t vocab = 50) {
  Tensor<int32_t> t({B, Tn});
  const auto v = random_prompt(B * Tn, vocab, seed);
  std::copy(v.begin(), v.end(), t.data());
  return t;
}

std::string name(const EncoderConfig& c) {
  return c.blocks + (c.pre_norm ? " pre" : " post") +
         (c.norm == NormKind::kLayerNorm ? " LayerNorm" : " RMSNorm") +
         (c.positions == Positions::kNone      ? " no positions"
          : c.positions == Positions::kLearned ? " learned"
                                               : " rope");
}

std::vector<EncoderConfig> configs() {
  return {tiny("ALWL", true, NormKind::kLayerNorm, Positions::kLearned),
          tiny("WLA", false, NormKind::kLayerNorm, Positions::kNone),
          tiny("LAW", true, NormKind::kRMSNorm, Positions::kRope),
          tiny("AL", false, NormKind::kRMSNorm, Positions::kLearned)};
}

// ---- tests ------------------------------------------------------------------------------------

TEST(EncoderExample, EachBlockMatchesReferenceInDouble) {
  for (const auto& c : configs()) {
    SCOPED_TRACE(name(c));
    const auto m = make<double>(c);
    for (int64_t Tn : {1, 9, 23}) {
      const D x = random_tensor<double>({2, Tn, c.hidden}, 11 + Tn, -2.0, 2.0);
      for (std::size_t i = 0; i < m.layers.size(); ++i) {
        SCOPED_TRACE(::testing::Message()
                     << "block " << i << " (" << m.layers[i].kind << ") T " << Tn);
        const D ref = block(x, m.layers[i]);
        EXPECT_LT(max_abs_diff(m.layers[i](x), ref), 1e-11);
        EXPECT_GT(max_abs(ref), 1e-2);
      }
    }
  }
}

TEST(EncoderExample, EncoderAndHeadMatchReference) {
  for (const auto& c : configs()) {
    SCOPED_TRACE(name(c));
    const auto md = make<double>(c);
    const auto mf = make<float>(c);
    for (int64_t Tn : {1, 17}) {
      for (int64_t Tq : {1, 5, 30}) {  // Tq < Tk, Tq > Tk
        SCOPED_TRACE(::testing::Message() << "T " << Tn << " Tq " << Tq);
        const Tensor<int32_t> x = ids(2, Tn, 3 + Tn), q = ids(2, Tq, 5 + Tq);
        const D enc_ref = encode(x, md);
        const D out_ref = classify(q, enc_ref, md);
        const D enc = md.encode(x);
        EXPECT_LT(max_abs_diff(enc, enc_ref), 1e-11);
        EXPECT_LT(max_abs_diff(md.classify(q, enc), out_ref), 1e-11);
        EXPECT_GT(max_abs(out_ref), 1e-2);
        // float, same weights (exactly representable): within float round-off of the reference.
        const Tensor<float> encf = mf.encode(x);
        EXPECT_LT(max_abs_diff(encf, enc_ref), 1e-4 * max_abs(enc_ref));
        EXPECT_LT(max_abs_diff(mf.classify(q, encf), out_ref),
                  1e-4 * std::max(1.0, max_abs(out_ref)));
      }
    }
  }
}

// A right-padded batch (lengths {17, 1, 9}) encodes each sentence as it is encoded alone, for every
// block kind and position scheme; the head over the padded encoding with enc_lengths == the head
// over each sentence's own encoding. The padding ids are real tokens, so a leak would show.
TEST(EncoderExample, RaggedBatchEqualsSentencesAlone) {
  const std::vector<int64_t> lengths = {17, 1, 9};
  for (const auto& c : configs()) {
    SCOPED_TRACE(name(c));
    const auto m = make<double>(c);
    const Tensor<int32_t> x = ids(3, 17, 41), q = ids(3, 4, 42);
    const D enc = m.encode(x, lengths);
    const D out = m.classify(q, enc, lengths);
    for (int64_t b = 0; b < 3; ++b) {
      const int64_t n = lengths[b];
      Tensor<int32_t> xb({1, n}), qb({1, 4});
      xb.copy_from(x.view().slice(0, b, b + 1).slice(1, 0, n));
      qb.copy_from(q.view().slice(0, b, b + 1));
      const D eb = m.encode(xb);
      EXPECT_LT(max_abs_diff(D::from(enc.view().slice(0, b, b + 1).slice(1, 0, n)), eb), 1e-11)
          << b;
      EXPECT_LT(max_abs_diff(D::from(out.view().slice(0, b, b + 1)), m.classify(qb, eb)), 1e-11)
          << b;
    }
    // The control: without lengths the first two sentences see the padding and change.
    EXPECT_GT(max_abs_diff(D::from(m.encode(x).view().slice(0, 1, 2).slice(1, 0, 1)),
                           m.encode(Tensor<int32_t>::from(x.view().slice(0, 1, 2).slice(1, 0, 1)))),
              1e-3);
  }
  const auto m = make<float>(tiny());
  EXPECT_NE(effattn::testing::error_of([&] {
              m.encode(ids(2, 6, 2), {6, 7});
            }).find("lengths[1] = 7 is not in [0, T = 6]"),
            std::string::npos);
}

TEST(EncoderExample, PermutingTokensPermutesTheEncoding) {
  // No positions and no window: every block is permutation-equivariant, and the head (cross
  // attention over the encoding, no mask) does not see the order of the encoded tokens.
  for (const std::string blocks : {"ALA", "LL"}) {
    for (bool pre : {true, false}) {
      const auto c = tiny(blocks, pre, NormKind::kLayerNorm, Positions::kNone);
      SCOPED_TRACE(name(c));
      const auto m = make<double>(c);
      const int64_t Tn = 13;
      const Tensor<int32_t> x = ids(1, Tn, 21), q = ids(1, 4, 22);
      std::vector<int64_t> perm(Tn);
      std::iota(perm.begin(), perm.end(), 0);
      std::reverse(perm.begin(), perm.begin() + 7);
      std::rotate(perm.begin(), perm.begin() + 3, perm.end());
      Tensor<int32_t> xp({1, Tn});
      for (int64_t t = 0; t < Tn; ++t) xp(0, t) = x(0, perm[t]);
      const D e = m.encode(x), ep = m.encode(xp);
      double err = 0;
      for (int64_t t = 0; t < Tn; ++t)
        for (int64_t i = 0; i < c.hidden; ++i)
          err = std::max(err, std::abs(ep(0, t, i) - e(0, perm[t], i)));
      EXPECT_LT(err, 1e-12);
      EXPECT_LT(max_abs_diff(m.classify(q, ep), m.classify(q, e)), 1e-12);
    }
  }
  // A windowed block or learned positions break it (the test above is not vacuous).
  for (const auto& c : {tiny("W", true, NormKind::kLayerNorm, Positions::kNone),
                        tiny("A", true, NormKind::kLayerNorm, Positions::kLearned)}) {
    const auto m = make<double>(c);
    const Tensor<int32_t> x = ids(1, 9, 23);
    Tensor<int32_t> xr({1, 9});  // rotated by 3 (a reversal would keep |i - j|: the window)
    for (int64_t t = 0; t < 9; ++t) xr(0, t) = x(0, (t + 3) % 9);
    const D e = m.encode(x), er = m.encode(xr);
    double err = 0;
    for (int64_t t = 0; t < 9; ++t)
      for (int64_t i = 0; i < c.hidden; ++i)
        err = std::max(err, std::abs(er(0, t, i) - e(0, (t + 3) % 9, i)));
    EXPECT_GT(err, 1e-3) << name(c);
  }
}

TEST(EncoderExample, SaveLoadIsIdentical) {
  for (const auto& c : configs()) {
    SCOPED_TRACE(name(c));
    const auto m = make<float>(c, 31);
    io::SafeTensorsWriter w;
    m.save(w);
    Encoder<float> back(c);
    back.load(effattn::testing::reload(w, "encoder.safetensors"));
    const Tensor<int32_t> x = ids(2, 11, 32), q = ids(2, 3, 33);
    const Tensor<float> e = m.encode(x), eb = back.encode(x);
    EXPECT_TRUE(bitwise_equal(e, eb));
    EXPECT_TRUE(bitwise_equal(m.classify(q, e), back.classify(q, eb)));
    EXPECT_EQ(back.weight_bytes(), m.weight_bytes());
  }
  // The documented names (learned positions, pre-norm LayerNorm, an 'L' and an 'A' block).
  const auto m = make<float>(tiny("LA"));
  io::SafeTensorsWriter w;
  m.save(w);
  const io::SafeTensors st = effattn::testing::reload(w);
  for (const char* n :
       {"embed_tokens.weight", "embed_positions.weight", "layers.0.norm1.weight",
        "layers.0.norm1.bias", "layers.0.mixer.q_proj.weight", "layers.1.mixer.o_proj.weight",
        "layers.1.mlp.down_proj.weight", "norm.weight", "head.norm_q.bias",
        "head.cross_attn.k_proj.weight", "head.mlp.gate_proj.weight", "head.classifier.weight",
        "head.classifier.bias"})
    EXPECT_TRUE(st.contains(n)) << n;
  EXPECT_EQ(st.info("layers.0.mixer.q_proj.weight").dims, (std::vector<int64_t>{16, 32}));
  EXPECT_FALSE(st.contains("embed_norm.weight"));
}

TEST(EncoderExample, MissingOrMisshapedTensorRaisesNamingIt) {
  // Every tensor of the model, under a prefix: dropped, or one row longer.
  effattn::testing::expect_errors_name_tensors(make<float>(tiny("LW", false)));
  effattn::testing::expect_errors_name_tensors(
      make<float>(tiny("A", true, NormKind::kRMSNorm, Positions::kRope)));
}

TEST(EncoderExample, BadInputsRaise) {
  const auto m = make<float>(tiny());
  const auto msg = [](auto f) { return effattn::testing::error_of(f); };
  EXPECT_NE(msg([&] { m.encode(ids(1, 41, 1)); }).find("max_positions"), std::string::npos);
  Tensor<int32_t> bad = ids(1, 5, 1);
  bad(0, 2) = 50;
  EXPECT_NE(msg([&] { m.encode(bad); }).find("outside the vocabulary"), std::string::npos);
  const Tensor<float> enc = m.encode(ids(2, 6, 2));
  EXPECT_NE(msg([&] { m.classify(ids(1, 3, 3), enc); }).find("enc"), std::string::npos);
  EXPECT_NE(msg([&] { Encoder<float> e(tiny("AXL")); }).find("'X'"), std::string::npos);
}

TEST(EncoderExample, OneThreadEqualsTwo) {
  // Wide and long enough that the linears and the Mlp take their threaded gemm path
  // (rows x in x out >= 2^22) and the attention ops split their work.
  auto c = tiny("ALWL");
  c.hidden = 64;
  c.mlp_hidden = 128;
  c.window = 50;
  c.max_positions = 600;
  const auto m = make<float>(c);
  const Tensor<int32_t> x = ids(2, 600, 41), q = ids(2, 40, 42);
  set_num_threads(1);
  const Tensor<float> e1 = m.encode(x), o1 = m.classify(q, e1);
  set_num_threads(2);
  const Tensor<float> e2 = m.encode(x), o2 = m.classify(q, e2);
  set_num_threads(0);  // back to the default
  EXPECT_TRUE(bitwise_equal(e1, e2)) << max_abs_diff(e1, e2);
  EXPECT_TRUE(bitwise_equal(o1, o2)) << max_abs_diff(o1, o2);
}

}  // namespace
