// Delta-rule layers: GatedDeltaNet and KimiDeltaAttention. Each against the same computation
// written out here in double (plain loops for the projections, convs, L2 norms, gates and the
// gated norm; the naive delta-rule op with none of its in-op options); token by token through
// State == one call; save -> load gives identical outputs; missing / misshaped tensors raise
// naming them; bf16 weights within tolerance of float; grouped value heads (HV = 2H).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "effattn/layers/delta_net.hpp"
#include "layer_test_util.hpp"
#include "test_util.hpp"

using namespace effattn;
using namespace effattn::layers;
using effattn::testing::as_double;
using effattn::testing::expect_errors_name_tensors;
using effattn::testing::max_abs;
using effattn::testing::max_abs_diff;
using effattn::testing::random_tensor;
using effattn::testing::ref_linear;
using effattn::testing::saved;

namespace {

// ---- the reference: plain loops in double ----------------------------------------------------

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
double softplus(double x) { return x > 30 ? x : std::log1p(std::exp(x)); }

// y [B, T, C] = silu(bias + sum_i w[c, 0, i] x[t - W + 1 + i]) from a zero history
template <class T>
Tensor<double> conv_silu(const Tensor<double>& x, const ShortConv<T>& conv) {
  const int64_t B = x.size(0), Tn = x.size(1), C = x.size(2), W = conv.width();
  const Tensor<double> w = as_double(conv.weight);
  Tensor<double> y(x.shape());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < Tn; ++t)
      for (int64_t c = 0; c < C; ++c) {
        double acc = conv.has_bias() ? double(conv.bias.data()[c]) : 0.0;
        for (int64_t i = 0; i < W; ++i) {
          const int64_t s = t - W + 1 + i;
          if (s >= 0) acc += w(c, 0, i) * x(b, s, c);
        }
        y(b, t, c) = acc * sigmoid(acc);
      }
  return y;
}

// Every row of n values: x / sqrt(sum x^2 + 1e-6) (fla's in-kernel L2 norm)
void l2norm_rows(Tensor<double>& x, int64_t n) {
  for (int64_t r = 0; r < x.numel() / n; ++r) {
    double* p = x.data() + r * n;
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += p[i] * p[i];
    for (int64_t i = 0; i < n; ++i) p[i] /= std::sqrt(ss + 1e-6);
  }
}

// o [B, T, HV, V] per head: o / sqrt(mean(o^2) + eps) * w * act(z), z [B, T, HV*V]
void gated_norm(Tensor<double>& o, const Tensor<double>& z, const Tensor<double>& w, double eps,
                bool sigmoid_gate) {
  const int64_t V = o.size(3);
  for (int64_t r = 0; r < o.numel() / V; ++r) {
    double* p = o.data() + r * V;
    double ss = 0;
    for (int64_t i = 0; i < V; ++i) ss += p[i] * p[i];
    const double inv = 1.0 / std::sqrt(ss / double(V) + eps);
    for (int64_t i = 0; i < V; ++i) {
      const double zi = z.data()[r * V + i];
      p[i] *= inv * w.data()[i] * (sigmoid_gate ? sigmoid(zi) : zi * sigmoid(zi));
    }
  }
}

struct Qkv {
  Tensor<double> q, k, v;  // [B, T, H, K], [B, T, H, K], [B, T, HV, V]
};
template <class Layer>
Qkv qkv_ref(const Layer& L, const Tensor<double>& x) {
  const int64_t B = x.size(0), Tn = x.size(1), H = L.num_heads(), HV = L.num_v_heads(),
                K = L.head_dim(), V = L.head_v_dim();
  Qkv r;
  r.q = conv_silu(ref_linear(x, L.q_proj), L.q_conv1d);
  r.k = conv_silu(ref_linear(x, L.k_proj), L.k_conv1d);
  r.v = conv_silu(ref_linear(x, L.v_proj), L.v_conv1d);
  l2norm_rows(r.q, K);
  l2norm_rows(r.k, K);
  r.q = Tensor<double>::from(r.q.view().reshape({B, Tn, H, K}));
  r.k = Tensor<double>::from(r.k.view().reshape({B, Tn, H, K}));
  r.v = Tensor<double>::from(r.v.view().reshape({B, Tn, HV, V}));
  return r;
}

template <class T, class S>
Tensor<double> gdn_ref(const GatedDeltaNet<T, S>& L, const Tensor<double>& x) {
  const auto& c = L.config;
  const int64_t B = x.size(0), Tn = x.size(1), HV = L.num_v_heads(), V = L.head_v_dim();
  const Qkv r = qkv_ref(L, x);
  const Tensor<double> a = ref_linear(x, L.a_proj), bl = ref_linear(x, L.b_proj);
  const Tensor<double> A_log = as_double(L.A_log), dt = as_double(L.dt_bias);
  Tensor<double> g({B, Tn, HV}), beta({B, Tn, HV});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < Tn; ++t)
      for (int64_t h = 0; h < HV; ++h) {
        g(b, t, h) = -std::exp(A_log(h)) * softplus(a(b, t, h) + dt(h));
        beta(b, t, h) = (c.allow_neg_eigval ? 2.0 : 1.0) * sigmoid(bl(b, t, h));
      }
  Tensor<double> o({B, Tn, HV, V});
  delta_rule_naive<double>(r.q, r.k, r.v, beta, g, o);
  gated_norm(o, ref_linear(x, L.g_proj), as_double(L.o_norm.weight), c.norm_eps, false);
  return ref_linear(Tensor<double>::from(o.view().reshape({B, Tn, HV * V})), L.o_proj);
}

template <class T, class S>
Tensor<double> kda_ref(const KimiDeltaAttention<T, S>& L, const Tensor<double>& x) {
  const auto& c = L.config;
  const int64_t B = x.size(0), Tn = x.size(1), H = L.num_heads(), HV = L.num_v_heads(),
                K = L.head_dim(), V = L.head_v_dim(), G = HV / H;
  const Qkv r = qkv_ref(L, x);
  const Tensor<double> f = ref_linear(ref_linear(x, L.f_a_proj), L.f_b_proj),
                       bl = ref_linear(x, L.b_proj);
  const Tensor<double> A_log = as_double(L.A_log), dt = as_double(L.dt_bias);
  Tensor<double> g({B, Tn, HV, K}), beta({B, Tn, HV});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < Tn; ++t)
      for (int64_t hv = 0; hv < HV; ++hv) {
        const int64_t h = hv / G;  // value head hv reads gate head h
        for (int64_t i = 0; i < K; ++i)
          g(b, t, hv, i) = -std::exp(A_log(h)) * softplus(f(b, t, h * K + i) + dt(h * K + i));
        beta(b, t, hv) = (c.allow_neg_eigval ? 2.0 : 1.0) * sigmoid(bl(b, t, h));
      }
  Tensor<double> o({B, Tn, HV, V});
  delta_rule_naive<double>(r.q, r.k, r.v, beta, g, o);
  gated_norm(o, ref_linear(ref_linear(x, L.g_a_proj), L.g_b_proj), as_double(L.o_norm.weight),
             c.norm_eps, true);
  return ref_linear(Tensor<double>::from(o.view().reshape({B, Tn, HV * V})), L.o_proj);
}

// ---- helpers -----------------------------------------------------------------------------------

template <class T>
Tensor<T> as(const Tensor<double>& x) {
  Tensor<T> y(x.shape());
  y.copy_from(x.view());
  return y;
}

// Runs x through the layer in chunks of the given sizes, one State; the outputs concatenated.
// The final recurrent state goes to *S if given.
template <class Layer, class T>
Tensor<T> run_chunks(const Layer& L, const Tensor<T>& x, const std::vector<int64_t>& chunks,
                     Tensor<T>* S = nullptr) {
  const int64_t B = x.size(0), Tn = x.size(1);
  auto st = L.make_state(B);
  Tensor<T> y({B, Tn, x.size(2)});
  int64_t t0 = 0;
  for (int64_t n : chunks) {
    L.forward(x.view().slice(1, t0, t0 + n), st, y.view().slice(1, t0, t0 + n));
    t0 += n;
  }
  EXPECT_EQ(t0, Tn);
  if (S) *S = st.recurrent;
  return y;
}

std::vector<int64_t> ones(int64_t n) { return std::vector<int64_t>(n, 1); }

// Norm weights other than ones, A_log / dt_bias spread (so the tests see them).
template <class Layer>
void randomize(Layer& L, uint64_t seed) {
  L.o_norm.weight.set(random_tensor<double>(L.o_norm.weight.shape(), seed, 0.5, 1.5));
  L.dt_bias.set(random_tensor<double>(L.dt_bias.shape(), seed + 1, -1.0, 1.0));
}

GatedDeltaNetConfig cfg_gdn(bool gva = false) {
  GatedDeltaNetConfig c;  // expand_v = 2: V = 2K
  c.hidden = 24, c.num_heads = 2, c.head_dim = 8;
  if (gva) c.num_v_heads = 4, c.head_dim = 6, c.expand_v = 1.5, c.conv_bias = true;
  return c;
}
KdaConfig cfg_kda(bool gva = false) {
  KdaConfig c;
  c.hidden = 20, c.num_heads = 2, c.head_dim = 8;
  if (gva) c.num_v_heads = 4, c.head_dim = 6, c.expand_v = 1.5, c.conv_size = 3;
  return c;
}

template <class T, class S = T>
GatedDeltaNet<T, S> make_gdn(const GatedDeltaNetConfig& c, uint64_t seed = 7) {
  GatedDeltaNet<T, S> L(c);
  L.init_random(seed);
  randomize(L, seed + 1);
  return L;
}
template <class T, class S = T>
KimiDeltaAttention<T, S> make_kda(const KdaConfig& c, uint64_t seed = 7) {
  KimiDeltaAttention<T, S> L(c);
  L.init_random(seed);
  randomize(L, seed + 1);
  return L;
}

// The checks every test runs for both layers, given a maker and a reference.
template <class Make, class Ref, class Config>
void check_matches_reference(const Config& c, Make make, Ref ref) {
  for (int64_t Tn : {7, 37, 100}) {  // the op's kAuto: recurrent below 8 tokens, chunk above
    const auto Ld = make(c, double{});
    const Tensor<double> x = random_tensor<double>({2, Tn, c.hidden}, 3 + Tn);
    const Tensor<double> r = ref(Ld, x);
    EXPECT_GT(max_abs(r), 1e-2);  // not a vanishing output
    EXPECT_LT(max_abs_diff(Ld(x), r), 1e-10 * (1 + max_abs(r))) << Tn;
    for (DeltaRuleAlgo a : {DeltaRuleAlgo::kRecurrent, DeltaRuleAlgo::kChunk}) {
      auto Lf = Ld;
      Lf.config.algo = a;
      EXPECT_LT(max_abs_diff(Lf(x), r), 1e-10 * (1 + max_abs(r))) << Tn;
    }
    const auto Lf = make(c, float{});
    const Tensor<double> rf = ref(Lf, x);
    EXPECT_LT(max_abs_diff(Lf(as<float>(x)), rf), 2e-5 * (1 + max_abs(rf))) << Tn;
  }
}

template <class Make, class Config>
void check_token_by_token(const Config& c, Make make) {
  for (int64_t Tn : {1, 7, 37}) {
    const auto L = make(c, double{});
    const Tensor<double> x = random_tensor<double>({2, Tn, c.hidden}, 11 + Tn);
    Tensor<double> S_whole, S;
    const Tensor<double> whole = run_chunks(L, x, {Tn}, &S_whole);
    EXPECT_LT(max_abs_diff(run_chunks(L, x, ones(Tn), &S), whole), 1e-12) << Tn;
    EXPECT_LT(max_abs_diff(S, S_whole), 1e-12) << Tn;
    if (Tn > 3) {  // prompt then decode steps; a few tokens then a chunk
      EXPECT_LT(max_abs_diff(run_chunks(L, x, {Tn - 3, 1, 1, 1}), whole), 1e-12) << Tn;
      EXPECT_LT(max_abs_diff(run_chunks(L, x, {3, 1, Tn - 4}), whole), 1e-12) << Tn;
    }
    const auto Lf = make(c, float{});
    const Tensor<float> xf = as<float>(x), wf = run_chunks(Lf, xf, {Tn});
    EXPECT_LT(max_abs_diff(run_chunks(Lf, xf, ones(Tn)), wf), 1e-5 * (1 + max_abs(wf))) << Tn;
  }
  // A prompt long enough for the chunk form (and the conv's prefill path), then decode steps.
  const auto L = make(c, double{});
  const Tensor<double> x = random_tensor<double>({2, 75, c.hidden}, 9);
  const Tensor<double> whole = run_chunks(L, x, {75});
  EXPECT_LT(max_abs_diff(run_chunks(L, x, {70, 1, 1, 3}), whole), 1e-10 * (1 + max_abs(whole)));
  EXPECT_LT(max_abs_diff(run_chunks(L, x, {2, 65, 8}), whole), 1e-10 * (1 + max_abs(whole)));
}

auto gdn_maker = [](const GatedDeltaNetConfig& c, auto t) { return make_gdn<decltype(t)>(c); };
auto kda_maker = [](const KdaConfig& c, auto t) { return make_kda<decltype(t)>(c); };
auto gdn_reference = [](const auto& L, const Tensor<double>& x) { return gdn_ref(L, x); };
auto kda_reference = [](const auto& L, const Tensor<double>& x) { return kda_ref(L, x); };

}  // namespace

// ---- GatedDeltaNet
// -------------------------------------------------------------------------------

TEST(GatedDeltaNetLayer, MatchesReference) {
  for (bool gva : {false, true}) check_matches_reference(cfg_gdn(gva), gdn_maker, gdn_reference);
  GatedDeltaNetConfig c = cfg_gdn();
  c.allow_neg_eigval = true;
  check_matches_reference(c, gdn_maker, gdn_reference);
}

TEST(GatedDeltaNetLayer, TokenByTokenEqualsOneCall) {
  for (bool gva : {false, true}) check_token_by_token(cfg_gdn(gva), gdn_maker);
}

TEST(GatedDeltaNetLayer, SaveLoadRoundTrip) {
  for (bool gva : {false, true}) {
    const GatedDeltaNetConfig c = cfg_gdn(gva);
    const auto L = make_gdn<float>(c, 31);
    GatedDeltaNet<float> M(c);
    M.load(saved(L), "blk");
    const Tensor<float> x = random_tensor<float>({2, 9, c.hidden}, 32);
    EXPECT_EQ(max_abs_diff(run_chunks(L, x, {5, 1, 3}), run_chunks(M, x, {5, 1, 3})), 0.0);
    const auto Lb = make_gdn<float, bf16>(c, 31);
    GatedDeltaNet<float, bf16> Mb(c);
    Mb.load(saved(Lb, "model.layers.0.attn"), "model.layers.0.attn");
    EXPECT_EQ(max_abs_diff(Lb(x), Mb(x)), 0.0);
  }
  // fla's names and shapes (HV = 4, K = 6, V = 9, d = 24, W = 4)
  const io::SafeTensors st = saved(make_gdn<float>(cfg_gdn(true)));
  using D = std::vector<int64_t>;
  EXPECT_EQ(st.info("blk.q_proj.weight").dims, (D{12, 24}));
  EXPECT_EQ(st.info("blk.v_proj.weight").dims, (D{36, 24}));
  EXPECT_EQ(st.info("blk.a_proj.weight").dims, (D{4, 24}));
  EXPECT_EQ(st.info("blk.b_proj.weight").dims, (D{4, 24}));
  EXPECT_EQ(st.info("blk.A_log").dims, (D{4}));
  EXPECT_EQ(st.info("blk.dt_bias").dims, (D{4}));
  EXPECT_EQ(st.info("blk.q_conv1d.weight").dims, (D{12, 1, 4}));
  EXPECT_EQ(st.info("blk.v_conv1d.bias").dims, (D{36}));
  EXPECT_EQ(st.info("blk.g_proj.weight").dims, (D{36, 24}));
  EXPECT_EQ(st.info("blk.o_norm.weight").dims, (D{9}));
  EXPECT_EQ(st.info("blk.o_proj.weight").dims, (D{24, 36}));
  EXPECT_EQ(st.names().size(), 16u);
}

TEST(GatedDeltaNetLayer, MissingOrMisshapedTensorNamed) {
  expect_errors_name_tensors(make_gdn<float>(cfg_gdn()));
  expect_errors_name_tensors(make_gdn<float>(cfg_gdn(true)));
}

TEST(GatedDeltaNetLayer, Bf16Weights) {
  for (bool gva : {false, true}) {
    const GatedDeltaNetConfig c = cfg_gdn(gva);
    const auto Lf = make_gdn<float>(c);
    const auto Lb = make_gdn<float, bf16>(c);
    const Tensor<float> x = random_tensor<float>({2, 21, c.hidden}, 41);
    const Tensor<float> ref = run_chunks(Lf, x, {16, 1, 4});
    EXPECT_LT(max_abs_diff(run_chunks(Lb, x, {16, 1, 4}), ref), 2e-2 * (1 + max_abs(ref)));
    // against the reference with the same (rounded) weights: float accuracy
    const Tensor<double> rb = gdn_ref(Lb, Tensor<double>::from(x.view()));
    EXPECT_LT(max_abs_diff(Lb(x), rb), 2e-5 * (1 + max_abs(rb)));
  }
}

TEST(GatedDeltaNetLayer, InitAndBadArguments) {
  const auto L = make_gdn<double>(cfg_gdn(true));
  GatedDeltaNet<double> I(cfg_gdn(true));
  I.init_random(5);
  for (int64_t h = 0; h < 4; ++h) {  // fla: A in (0, 16], softplus(dt_bias) in [0.001, 0.1]
    EXPECT_LE(std::exp(I.A_log.data()[h]), 16.0 + 1e-9);
    const double dt = softplus(I.dt_bias.data()[h]);
    EXPECT_GE(dt, 0.001 - 1e-12);
    EXPECT_LE(dt, 0.1 + 1e-12);
  }
  auto st = L.make_state(2);
  EXPECT_EQ(st.bytes(), int64_t(sizeof(double)) * (2 * 3 * (12 + 12 + 36) + 2 * 4 * 6 * 9));
  GatedDeltaNetConfig c = cfg_gdn();
  c.num_v_heads = 3;  // 3 % 2 != 0
  EXPECT_THROW(GatedDeltaNet<float>{c}, Error);
  c = cfg_gdn();
  c.expand_v = 1.3;  // 8 * 1.3 is not an integer
  EXPECT_THROW(GatedDeltaNet<float>{c}, Error);
  const Tensor<double> x = random_tensor<double>({2, 5, 24}, 1);
  Tensor<double> y({2, 5, 24});
  auto s1 = L.make_state(1);
  EXPECT_THROW(L.forward(x, s1, y), Error);  // batch mismatch
  const Tensor<double> xw = random_tensor<double>({2, 5, 23}, 1);
  EXPECT_THROW(L(xw), Error);  // width
  // reset() returns the state to a fresh one
  const Tensor<double> y0 = L(x, st);
  st.reset();
  EXPECT_EQ(max_abs_diff(L(x, st), y0), 0.0);
}

// ---- KimiDeltaAttention
// --------------------------------------------------------------------------

TEST(KdaLayer, MatchesReference) {
  for (bool gva : {false, true}) check_matches_reference(cfg_kda(gva), kda_maker, kda_reference);
  KdaConfig c = cfg_kda(true);
  c.allow_neg_eigval = true, c.g_bias = false;
  check_matches_reference(c, kda_maker, kda_reference);
}

TEST(KdaLayer, TokenByTokenEqualsOneCall) {
  for (bool gva : {false, true}) check_token_by_token(cfg_kda(gva), kda_maker);
}

TEST(KdaLayer, SaveLoadRoundTrip) {
  for (bool gva : {false, true}) {
    const KdaConfig c = cfg_kda(gva);
    const auto L = make_kda<float>(c, 31);
    KimiDeltaAttention<float> M(c);
    M.load(saved(L), "blk");
    const Tensor<float> x = random_tensor<float>({2, 9, c.hidden}, 32);
    EXPECT_EQ(max_abs_diff(run_chunks(L, x, {5, 1, 3}), run_chunks(M, x, {5, 1, 3})), 0.0);
    const auto Lb = make_kda<float, bf16>(c, 31);
    KimiDeltaAttention<float, bf16> Mb(c);
    Mb.load(saved(Lb), "blk");
    EXPECT_EQ(max_abs_diff(Lb(x), Mb(x)), 0.0);
  }
  // fla's names (nn.Sequential indices) and shapes (H = 2, HV = 4, K = 6, V = 9, d = 20, W = 3)
  using D = std::vector<int64_t>;
  const io::SafeTensors st = saved(make_kda<float>(cfg_kda(true)));
  EXPECT_EQ(st.info("blk.q_proj.weight").dims, (D{12, 20}));
  EXPECT_EQ(st.info("blk.v_proj.weight").dims, (D{36, 20}));
  EXPECT_EQ(st.info("blk.k_conv1d.weight").dims, (D{12, 1, 3}));
  EXPECT_EQ(st.info("blk.f_proj.0.weight").dims, (D{9, 20}));
  EXPECT_EQ(st.info("blk.f_proj.1.weight").dims, (D{12, 9}));
  EXPECT_EQ(st.info("blk.b_proj.weight").dims, (D{2, 20}));
  EXPECT_EQ(st.info("blk.A_log").dims, (D{2}));
  EXPECT_EQ(st.info("blk.dt_bias").dims, (D{12}));
  EXPECT_EQ(st.info("blk.g_proj.0.weight").dims, (D{9, 20}));
  EXPECT_EQ(st.info("blk.g_proj.1.weight").dims, (D{36, 9}));
  EXPECT_EQ(st.info("blk.g_proj.1.bias").dims, (D{36}));
  EXPECT_EQ(st.info("blk.o_norm.weight").dims, (D{9}));
  EXPECT_EQ(st.info("blk.o_proj.weight").dims, (D{20, 36}));
  EXPECT_EQ(st.names().size(), 16u);
  // Kimi Linear's names: f_a_proj ... g_b_proj, no bias on g_b_proj
  KdaConfig kc = cfg_kda();
  kc.names = KdaNames::kKimi, kc.g_bias = false;
  const auto K = make_kda<float>(kc, 33);
  const io::SafeTensors sk = saved(K, "model.layers.0.self_attn");
  for (const char* n : {"f_a_proj", "f_b_proj", "g_a_proj", "g_b_proj"})
    EXPECT_TRUE(sk.contains(std::string("model.layers.0.self_attn.") + n + ".weight")) << n;
  EXPECT_FALSE(sk.contains("model.layers.0.self_attn.g_b_proj.bias"));
  KimiDeltaAttention<float> KM(kc);
  KM.load(sk, "model.layers.0.self_attn");
  const Tensor<float> x = random_tensor<float>({1, 6, kc.hidden}, 34);
  EXPECT_EQ(max_abs_diff(K(x), KM(x)), 0.0);
  // the conventions do not mix: a Kimi-named file for an fla-named layer names what it missed
  KimiDeltaAttention<float> F(cfg_kda());
  try {
    F.load(sk, "model.layers.0.self_attn");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.0.self_attn.f_proj.0.weight"),
              std::string::npos)
        << e.what();
  }
}

TEST(KdaLayer, MissingOrMisshapedTensorNamed) {
  expect_errors_name_tensors(make_kda<float>(cfg_kda()));
  expect_errors_name_tensors(make_kda<float>(cfg_kda(true)));
}

TEST(KdaLayer, Bf16Weights) {
  for (bool gva : {false, true}) {
    const KdaConfig c = cfg_kda(gva);
    const auto Lf = make_kda<float>(c);
    const auto Lb = make_kda<float, bf16>(c);
    const Tensor<float> x = random_tensor<float>({2, 21, c.hidden}, 41);
    const Tensor<float> ref = run_chunks(Lf, x, {16, 1, 4});
    EXPECT_LT(max_abs_diff(run_chunks(Lb, x, {16, 1, 4}), ref), 2e-2 * (1 + max_abs(ref)));
    const Tensor<double> rb = kda_ref(Lb, Tensor<double>::from(x.view()));
    EXPECT_LT(max_abs_diff(Lb(x), rb), 2e-5 * (1 + max_abs(rb)));
  }
}

TEST(KdaLayer, InitAndBadArguments) {
  KimiDeltaAttention<double> I(cfg_kda(true));
  I.init_random(5);
  for (int64_t h = 0; h < 2; ++h) {  // fla: A in [1, 16), dt_bias zeros
    EXPECT_GE(std::exp(I.A_log.data()[h]), 1.0 - 1e-12);
    EXPECT_LT(std::exp(I.A_log.data()[h]), 16.0);
  }
  EXPECT_EQ(max_abs(I.dt_bias.value()), 0.0);
  KdaConfig c = cfg_kda();
  c.num_v_heads = 5;
  EXPECT_THROW(KimiDeltaAttention<float>{c}, Error);
  const auto L = make_kda<float>(cfg_kda());
  const Tensor<float> x = random_tensor<float>({2, 5, 20}, 1);
  Tensor<float> y({2, 5, 20});
  auto s1 = make_gdn<float>(cfg_gdn()).make_state(2);  // another layer's state
  EXPECT_THROW(L.forward(x, s1, y), Error);
}
