// The based_lm example model (examples/based_lm/based_lm.hpp) at a tiny size: one forward through
// State against a reference built from the stateless paths (whole-sequence linear attention,
// windowed attention with no cache, BaseConv written out in double); token by token, in pieces
// and T = 1 == one call, with prompts several times longer than the window (the ring cache
// wraps); a fixed state size; save -> load bitwise with the reference's names (fused Wqkv and
// fc1 split and stacked again); fla / HF names load too; a missing or misshaped tensor raises
// effattn::Error naming it.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "based_lm/based_lm.hpp"
#include "common/run.hpp"
#include "example_test_util.hpp"
#include "layer_test_util.hpp"
#include "test_util.hpp"

namespace effattn {
namespace {

using examples::BasedLM;
using examples::BasedLMConfig;
using io::SafeTensors;
using io::SafeTensorsWriter;
using testing::as_double;
using testing::bitwise_equal;
using testing::error_of;
using testing::expect_state_continues;
using ::testing::HasSubstr;
using testing::max_abs;
using testing::max_abs_diff;
using testing::reload;
using testing::run_once;
using testing::run_pieces;
using testing::token_ids;

// Window of 8 / 2 + 1 = 5 keys; every kind of layer; biases on the window attention too.
BasedLMConfig tiny(const std::string& pattern = "clwc") {
  BasedLMConfig c;
  c.d_model = 32;
  c.vocab_size = 37;  // padded to 40
  c.pattern = pattern;
  c.num_heads = 2;
  c.feature_dim = 4;
  c.window_size = 8;
  c.qkv_proj_bias = true;
  c.out_proj_bias = true;
  c.n_inner = 48;
  return c;
}

double silu_d(double v) { return v / (1.0 + std::exp(-v)); }

// x [N, in] -> x W^T + b [N, out]
Tensor<double> ref_linear(const Tensor<double>& x, const layers::Linear<double>& lin) {
  const Tensor<double> W = as_double(lin.weight);
  const int64_t N = x.size(0), in = x.size(1), out = W.size(0);
  Tensor<double> y({N, out});
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < out; ++o) {
      double s = lin.has_bias() ? lin.bias.data()[o] : 0.0;
      for (int64_t c = 0; c < in; ++c) s += x(n, c) * W(o, c);
      y(n, o) = s;
    }
  return y;
}

// BaseConv written out for one sequence x [T, d]: u1 | u2 = in_proj(x); out_proj(silu(conv(u1))
// * u2), the conv causal with zeros before the first token.
Tensor<double> ref_base_conv(const examples::BaseConv<double>& bc, const Tensor<double>& x) {
  const int64_t Tn = x.size(0), E = bc.inner(), W = bc.conv.width();
  const Tensor<double> u = ref_linear(x, bc.in_proj);  // [T, 2E]
  const Tensor<double> w = as_double(bc.conv.weight);  // [E, 1, W]
  Tensor<double> v({Tn, E});
  for (int64_t t = 0; t < Tn; ++t)
    for (int64_t e = 0; e < E; ++e) {
      double s = bc.conv.has_bias() ? bc.conv.bias.data()[e] : 0.0;
      for (int64_t i = 0; i < W; ++i) {
        const int64_t tt = t - W + 1 + i;
        if (tt >= 0) s += w(e, 0, i) * u(tt, e);
      }
      v(t, e) = silu_d(s) * u(t, E + e);
    }
  return ref_linear(v, bc.out_proj);
}

// The model's forward from the stateless paths, one sequence at a time: the linear attention
// over the whole sequence from an empty state, the window attention with its mask and no cache,
// BaseConv as above. Norms, embedding, Mlp and head are the layers' own (tested elsewhere).
Tensor<double> reference(const BasedLM<double>& m, const Tensor<int32_t>& ids) {
  const int64_t B = ids.size(0), Tn = ids.size(1), d = m.hidden(), V = m.vocab();
  Tensor<double> out({B, Tn, V});
  for (int64_t b = 0; b < B; ++b) {
    Tensor<int32_t> row({1, Tn});
    row.copy_from(ids.view().slice(0, b, b + 1));
    Tensor<double> h({1, Tn, d}), x({1, Tn, d}), y({1, Tn, d});
    m.word_embeddings.forward(row, h);
    for (const auto& blk : m.blocks) {
      blk.norm1.forward(h, x);
      if (blk.kind == 'c') {
        const Tensor<double> r =
            ref_base_conv(m.convs[blk.slot], Tensor<double>::from(x.view().reshape({Tn, d})));
        std::copy(r.data(), r.data() + r.numel(), y.data());
      } else if (blk.kind == 'l') {
        m.linears[blk.slot].forward(x, y);
      } else {
        m.windows[blk.slot].forward(x, y);
      }
      for (int64_t i = 0; i < h.numel(); ++i) h.data()[i] += y.data()[i];
      blk.norm2.forward(h, x);
      blk.mlp.forward(x, y);
      for (int64_t i = 0; i < h.numel(); ++i) h.data()[i] += y.data()[i];
    }
    m.ln_f.forward(h, x);
    Tensor<double> lg({1, Tn, V});
    if (m.tied()) {
      m.word_embeddings.attend(x, lg);
    } else {
      m.lm_head.forward(x, lg);
    }
    std::copy(lg.data(), lg.data() + Tn * V, out.data() + b * Tn * V);
  }
  return out;
}

TEST(ExampleBasedLM, ConfigAndSizes) {
  const BasedLMConfig c = tiny();
  EXPECT_EQ(c.vocab(), 40);
  EXPECT_EQ(c.sliding_window(), 5);
  BasedLM<float> m(c);
  ASSERT_EQ(m.blocks.size(), 4u);
  EXPECT_EQ(m.convs.size(), 2u);
  EXPECT_EQ(m.linears.size(), 1u);
  EXPECT_EQ(m.windows.size(), 1u);
  EXPECT_EQ(m.convs[0].inner(), 64);  // expand_proj 4 * 32 / 2
  EXPECT_EQ(m.linears[0].expanded_dim(), 1 + 4 + 16);
  EXPECT_EQ(m.windows[0].head_dim(), 16);
  // Per sequence: 2 convs [2, 64]; linear s [2, 21, 16] + z [2, 21]; ring k, v [2, 5, 16].
  const auto st = m.make_state(1, 1000);
  EXPECT_EQ(st.bytes(), (2 * 2 * 64 + 2 * 21 * 16 + 2 * 21 + 2 * 2 * 5 * 16) * 4);

  const BasedLMConfig p = BasedLMConfig::based_360m();
  EXPECT_EQ(p.n_layer(), 27);
  EXPECT_EQ(p.vocab(), 50280);
  EXPECT_EQ(p.sliding_window(), 129);
  EXPECT_EQ(p.pattern, "clwccclwccclwccclwccclwcccc");
  EXPECT_EQ(p.mlp_hidden(), 2048);

  BasedLMConfig bad = tiny("clxw");
  EXPECT_THAT(error_of([&] { BasedLM<float> b(bad); }), HasSubstr("'x'"));
  EXPECT_THROW(BasedLM<float>(tiny("")), Error);
}

// One forward through State (T = 23, more than 4 windows: the ring wraps during the prompt) ==
// the stateless reference; token by token, in pieces and T = 1 == one call; batch rows are
// independent sequences. Double throughout.
TEST(ExampleBasedLM, StateMatchesStatelessReferenceDouble) {
  BasedLM<double> m(tiny());
  m.init_random(7);
  const Tensor<int32_t> ids = token_ids(2, 23, m.vocab(), 3);
  const Tensor<double> once = run_once<BasedLM<double>, double>(m, ids);
  ASSERT_GT(max_abs(once), 0.1);
  EXPECT_LT(max_abs_diff(once, reference(m, ids)), 1e-10);
  expect_state_continues(m, ids, once, {{5, 1, 9, 8}, {1, 22}, {12, 11}});
}

// The window attention alone: its ring of 5 slots after a 40-token prompt in one call, then
// decode steps, against the same layer with no cache over the whole sequence.
TEST(ExampleBasedLM, RingCacheOfTheWindowLayer) {
  BasedLM<double> m(tiny());
  m.init_random(9);
  const auto& w = m.windows[0];
  const int64_t Tn = 46, d = 32;
  const Tensor<double> x = testing::random_tensor<double>({1, Tn, d}, 4);
  Tensor<double> ref({1, Tn, d});
  w.forward(x, ref);
  auto st = w.make_state(1, 0);
  const int64_t ring_bytes = st.bytes();
  EXPECT_EQ(ring_bytes, 2 * 2 * 5 * 16 * 8);
  Tensor<double> y({1, Tn, d});
  w.forward(x.view().slice(1, 0, 40), st, y.view().slice(1, 0, 40));
  for (int64_t t = 40; t < Tn; ++t)
    w.forward(x.view().slice(1, t, t + 1), st, y.view().slice(1, t, t + 1));
  EXPECT_LT(max_abs_diff(y, ref), 1e-12);
  EXPECT_EQ(st.position(), Tn);
  EXPECT_EQ(st.bytes(), ring_bytes);  // does not grow with the sequence
}

// float: the same within float round-off; a long prompt (13 windows).
TEST(ExampleBasedLM, StateContinuesFloat) {
  BasedLM<float> m(tiny());
  m.init_random(11);
  const Tensor<int32_t> ids = token_ids(1, 64, m.vocab(), 5);
  const Tensor<float> ref = run_once<BasedLM<float>, float>(m, ids);
  const double tol = 2e-5 * std::max(1.0, max_abs(ref));
  const std::vector<int64_t> ones(64, 1);
  EXPECT_LT(max_abs_diff(run_pieces<BasedLM<float>, float>(m, ids, ones), ref), tol);
  EXPECT_LT(max_abs_diff(run_pieces<BasedLM<float>, float>(m, ids, {30, 3, 31}), ref), tol);
  auto st = m.make_state(1, 0);
  const int64_t bytes = st.bytes();
  Tensor<float> lg({1, 64, m.vocab()});
  m.forward(ids, st, lg);
  m.forward(ids, st, lg);
  EXPECT_EQ(st.bytes(), bytes);  // a fixed size, however long the sequence
}

TEST(ExampleBasedLM, InitRandomIsSeeded) {
  BasedLM<float> a(tiny()), b(tiny()), c(tiny());
  a.init_random(1);
  b.init_random(1);
  c.init_random(2);
  const Tensor<int32_t> ids = token_ids(1, 9, a.vocab(), 1);
  const auto la = run_once<BasedLM<float>, float>(a, ids);
  EXPECT_TRUE(bitwise_equal(la, run_once<BasedLM<float>, float>(b, ids)));
  EXPECT_FALSE(bitwise_equal(la, run_once<BasedLM<float>, float>(c, ids)));
}

// The names of the reference's GPTLMHeadModel for this config.
std::set<std::string> reference_names(const BasedLMConfig& c) {
  std::set<std::string> n = {"transformer.embeddings.word_embeddings.weight",
                             "transformer.ln_f.weight"};
  for (int64_t i = 0; i < c.n_layer(); ++i) {
    const std::string p = "transformer.layers." + std::to_string(i) + ".";
    for (const char* s : {"norm1.weight", "norm2.weight", "mlp.fc1.weight", "mlp.fc2.weight"})
      n.insert(p + s);
    std::vector<const char*> mix;
    if (c.pattern[size_t(i)] == 'c')
      mix = {"in_proj.weight", "in_proj.bias", "conv.conv.weight", "out_proj.weight",
             "out_proj.bias"};
    if (c.pattern[size_t(i)] == 'l')
      mix = {"proj_q.weight", "proj_k.weight", "proj_v.weight", "out_proj.weight"};
    if (c.pattern[size_t(i)] == 'w')
      mix = {"Wqkv.weight", "Wqkv.bias", "out_proj.weight", "out_proj.bias"};
    for (const char* s : mix) n.insert(p + "mixer." + s);
  }
  return n;
}

TEST(ExampleBasedLM, SavesTheReferenceNames) {
  BasedLM<float> m(tiny());
  m.init_random(3);
  SafeTensorsWriter w;
  m.save(w);
  const SafeTensors st = reload(w);
  const std::vector<std::string> names = st.names();
  EXPECT_EQ(std::set<std::string>(names.begin(), names.end()), reference_names(tiny()));
  // Stacking order: Wqkv = q | k | v, fc1 = up | gate.
  const Tensor<float> wqkv = st.get<float>("transformer.layers.2.mixer.Wqkv.weight");
  ASSERT_EQ(wqkv.shape(), Shape({96, 32}));
  const auto& a = m.windows[0];
  EXPECT_EQ(wqkv(0, 5), a.q_proj.weight.value()(0, 5));
  EXPECT_EQ(wqkv(32 + 3, 7), a.k_proj.weight.value()(3, 7));
  EXPECT_EQ(wqkv(64 + 31, 1), a.v_proj.weight.value()(31, 1));
  EXPECT_EQ(st.get<float>("transformer.layers.2.mixer.Wqkv.bias")(64 + 2), a.v_proj.bias.data()[2]);
  const Tensor<float> fc1 = st.get<float>("transformer.layers.0.mlp.fc1.weight");
  ASSERT_EQ(fc1.shape(), Shape({96, 32}));
  EXPECT_EQ(fc1(4, 9), m.blocks[0].mlp.up_proj.weight.value()(4, 9));
  EXPECT_EQ(fc1(48 + 4, 9), m.blocks[0].mlp.gate_proj.weight.value()(4, 9));
  EXPECT_EQ(st.info("transformer.layers.0.mixer.conv.conv.weight").dims,
            (std::vector<int64_t>{64, 1, 3}));
  EXPECT_EQ(st.info("transformer.layers.0.mixer.in_proj.weight").dims,
            (std::vector<int64_t>{128, 32}));
  EXPECT_EQ(st.info("transformer.layers.1.mixer.proj_q.weight").dims,
            (std::vector<int64_t>{8, 32}));
}

TEST(ExampleBasedLM, SaveLoadBitwise) {
  testing::expect_save_load_bitwise<BasedLM>(tiny(), token_ids(1, 12, 40, 9));
}

// The other spellings load: fla's q_proj.. for the linear attention, q_proj.. / o_proj for the
// window attention, gate_proj / up_proj / down_proj for the MLP, base_conv.py's conv1.conv; and
// the reference's names under the hub's "model." prefix.
TEST(ExampleBasedLM, OtherNamesLoad) {
  BasedLM<double> m(tiny());
  m.init_random(13);
  const Tensor<int32_t> ids = token_ids(1, 10, 40, 2);
  const Tensor<double> ref = run_once<BasedLM<double>, double>(m, ids);
  SafeTensorsWriter w;
  m.word_embeddings.save(w, "transformer.embeddings.word_embeddings");
  m.ln_f.save(w, "transformer.ln_f");
  for (size_t i = 0; i < m.blocks.size(); ++i) {
    const auto& b = m.blocks[i];
    const std::string p = "transformer.layers." + std::to_string(i);
    b.norm1.save(w, p + ".norm1");
    b.norm2.save(w, p + ".norm2");
    b.mlp.save(w, p + ".mlp");  // gate_proj, up_proj, down_proj
    if (b.kind == 'c') {
      const auto& cv = m.convs[b.slot];
      cv.in_proj.save(w, p + ".mixer.in_proj");
      cv.conv.save(w, p + ".mixer.conv1.conv");
      cv.out_proj.save(w, p + ".mixer.out_proj");
    } else if (b.kind == 'l') {
      m.linears[b.slot].save(w, p + ".mixer");  // fla names
    } else {
      m.windows[b.slot].save(w, p + ".mixer");  // q_proj, k_proj, v_proj, o_proj
    }
  }
  const SafeTensors st = reload(w);
  ASSERT_TRUE(st.contains("transformer.layers.1.mixer.q_proj.weight"));
  ASSERT_TRUE(st.contains("transformer.layers.2.mixer.o_proj.bias"));
  BasedLM<double> m2(tiny());
  m2.load(st);
  EXPECT_TRUE(bitwise_equal(run_once<BasedLM<double>, double>(m2, ids), ref));

  // The hub's files prefix every name with "model.".
  SafeTensorsWriter ref_names;
  m.save(ref_names);
  const SafeTensors plain = reload(ref_names);
  SafeTensorsWriter prefixed;
  for (const std::string& n : plain.names()) prefixed.add("model." + n, plain.get<double>(n));
  BasedLM<double> m3(tiny());
  m3.load(reload(prefixed));
  EXPECT_TRUE(bitwise_equal(run_once<BasedLM<double>, double>(m3, ids), ref));
}

// Every tensor of the file: missing -> Error naming it; one more row -> Error naming it; a
// bias the config lacks -> Error naming it.
TEST(ExampleBasedLM, LoadErrorsNameTheTensor) {
  BasedLMConfig c = tiny();
  c.tie_embeddings = false;
  BasedLM<float> m(c);
  m.init_random(2);
  SafeTensorsWriter w;
  m.save(w);
  const SafeTensors st = reload(w);
  testing::expect_load_errors_name_tensors(
      st, [&](const SafeTensors& bad) { BasedLM<float>(c).load(bad); },
      {"lm_head.weight"});  // absent = tied, not an error
  BasedLMConfig nb = c;
  nb.qkv_proj_bias = false;
  BasedLM<float> m3(nb);
  EXPECT_THAT(error_of([&] { m3.load(st); }), HasSubstr("transformer.layers.2.mixer.Wqkv.bias"));
}

TEST(ExampleBasedLM, BadInputsRaise) {
  BasedLM<float> m(tiny());
  auto st = m.make_state(1, 0);
  Tensor<int32_t> ids({1, 3});
  Tensor<float> wrong({1, 3, 7});
  EXPECT_THAT(error_of([&] { m.forward(ids, st, wrong); }), HasSubstr("logits"));
  ids.data()[1] = 40;
  Tensor<float> lg({1, 3, 40});
  EXPECT_THAT(error_of([&] { m.forward(ids, st, lg); }), HasSubstr("token id 40"));
  BasedLM<float> other(tiny("cc"));
  auto st2 = other.make_state(1, 0);
  ids.data()[1] = 0;
  EXPECT_THROW(m.forward(ids, st2, lg), Error);  // a state of another model
}

}  // namespace
}  // namespace effattn
