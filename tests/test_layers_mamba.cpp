// Mamba mixers (layers/mamba.hpp): Mamba (Mamba-1 block) and Mamba2, each against the same
// computation written out here in double with the naive ops and plain loops; token by token
// through State == one forward; save -> load round trips; load errors naming the tensor; float
// vs bf16 weights.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "effattn/core/bf16.hpp"
#include "effattn/core/error.hpp"
#include "effattn/core/parallel.hpp"
#include "effattn/core/tensor.hpp"
#include "effattn/io/safetensors.hpp"
#include "effattn/layers/layers.hpp"
#include "effattn/layers/mamba.hpp"
#include "effattn/ops/ssm/naive.hpp"
#include "effattn/ops/ssm/ssd.hpp"
#include "layer_test_util.hpp"
#include "test_util.hpp"

namespace effattn {
namespace {

using io::SafeTensors;
using io::SafeTensorsWriter;
using testing::as_double;
using testing::bitwise_equal;
using testing::dbl;
using testing::error_of;
using ::testing::HasSubstr;
using testing::max_abs;
using testing::max_abs_diff;
using testing::random_tensor;
using testing::ref_linear;
using testing::reload;

// ------------------------------------------------------------------ helpers

template <class S>
void randomize(layers::Param<S>& p, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  if (p.enabled()) p.set(random_tensor<double>(p.shape(), seed, lo, hi));
}

double silu_d(double v) { return v / (1.0 + std::exp(-v)); }

// Channels [c0, c1) of a [B, T, C] tensor, as a contiguous copy.
Tensor<double> cols(const Tensor<double>& x, int64_t c0, int64_t c1) {
  Tensor<double> y({x.size(0), x.size(1), c1 - c0});
  for (int64_t b = 0; b < x.size(0); ++b)
    for (int64_t t = 0; t < x.size(1); ++t)
      for (int64_t c = c0; c < c1; ++c) y(b, t, c - c0) = x(b, t, c);
  return y;
}

// silu(causal_conv1d(x)) from conv state `cs` [B, W-1, C] (updated), with the naive op.
Tensor<double> ref_conv(const Tensor<double>& x, const layers::ShortConv<double>& conv,
                        Tensor<double>& cs) {
  Tensor<double> y(x.shape()), out(cs.shape());
  const Tensor<double> w = as_double(conv.weight);
  CausalConv1dParams p;
  p.activation = ConvActivation::kSilu;
  const Tensor<double> b = conv.has_bias() ? as_double(conv.bias) : Tensor<double>();
  causal_conv1d_naive<double>(x, w.view().reshape({w.size(0), w.size(2)}), testing::opt(b), cs, y,
                              out, p);
  cs = out;
  return y;
}

// ------------------------------------------------------------------ Mamba-1 reference

struct MambaRefState {
  Tensor<double> conv, ssm;  // [B, W-1, E], [B, E, N]
};

// The Mamba-1 block in double, from the layer's stored weights (any storage).
template <class T, class S>
Tensor<double> ref_mamba(const layers::Mamba<T, S>& m, const Tensor<double>& x, MambaRefState& st) {
  const int64_t E = m.intermediate(), N = m.state_size(), R = m.dt_rank();
  const Tensor<double> xz = ref_linear(x, m.in_proj);
  layers::ShortConv<double> conv(E, m.conv1d.width(), m.conv1d.has_bias());
  conv.weight.set(m.conv1d.weight.value());
  if (conv.has_bias()) conv.bias.set(m.conv1d.bias.value());
  const Tensor<double> u = ref_conv(cols(xz, 0, E), conv, st.conv);
  const Tensor<double> z = cols(xz, E, 2 * E);
  const Tensor<double> dbc = ref_linear(u, m.x_proj);
  const Tensor<double> delta = ref_linear(cols(dbc, 0, R), m.dt_proj);
  const Tensor<double> Bt = cols(dbc, R, R + N), Ct = cols(dbc, R + N, R + 2 * N);
  Tensor<double> A = as_double(m.A_log);
  for (int64_t i = 0; i < A.numel(); ++i) A.data()[i] = -std::exp(A.data()[i]);
  const Tensor<double> D = as_double(m.D);
  Tensor<double> y(u.shape()), hT(st.ssm.shape());
  SelectiveScanParams p;
  p.delta_softplus = true;
  selective_scan_naive<double>(u, delta, A, Bt, Ct, D, z, {}, st.ssm, y, hT, p);
  st.ssm = hT;
  return ref_linear(y, m.out_proj);
}

layers::MambaConfig tiny_mamba(bool use_bias, bool conv_bias) {
  layers::MambaConfig c;
  c.hidden = 16;
  c.intermediate = 40;  // not a multiple of the SIMD width
  c.state_size = 8;
  c.conv_kernel = 4;
  c.time_step_rank = 3;
  c.use_bias = use_bias;
  c.use_conv_bias = conv_bias;
  c.prefill_piece = 16;  // T = 37 runs in pieces 16 + 16 + 5
  return c;
}

// init_random, then the vectors randomised too (D and conv bias are trivial after init).
template <class T, class S>
void randomize_mamba(layers::Mamba<T, S>& m, uint64_t seed) {
  m.init_random(seed);
  randomize(m.D, seed + 1);
  randomize(m.A_log, seed + 2, -1.0, 1.5);
  randomize(m.conv1d.bias, seed + 3);
  randomize(m.in_proj.bias, seed + 4, -0.2, 0.2);
  randomize(m.out_proj.bias, seed + 5, -0.2, 0.2);
}

TEST(Mamba, MatchesDoubleReference) {
  for (bool use_bias : {false, true})
    for (bool conv_bias : {true, false})
      for (int64_t T : {1, 7, 37}) {
        layers::Mamba<double> m(tiny_mamba(use_bias, conv_bias));
        randomize_mamba(m, 10 + T);
        auto st = m.make_state(2);
        st.conv.conv = random_tensor<double>(st.conv.conv.shape(), 3);  // a state mid-sequence
        st.ssm = random_tensor<double>(st.ssm.shape(), 4);
        MambaRefState rs{st.conv.conv, st.ssm};
        const Tensor<double> x = random_tensor<double>({2, T, 16}, 5 + T);
        const Tensor<double> y = m(x, st);
        const Tensor<double> ref = ref_mamba(m, x, rs);
        EXPECT_LT(max_abs_diff(y, ref), 1e-12 * (1 + max_abs(ref)))
            << "T " << T << " use_bias " << use_bias << " conv_bias " << conv_bias;
        EXPECT_LT(max_abs_diff(st.ssm, rs.ssm), 1e-12 * (1 + max_abs(rs.ssm)));
        EXPECT_LT(max_abs_diff(st.conv.conv, rs.conv), 1e-13);
      }
}

TEST(Mamba, TokenByTokenEqualsOneForward) {
  layers::Mamba<float> m(tiny_mamba(false, true));
  randomize_mamba(m, 20);
  for (int64_t T : {1, 7, 37}) {
    const Tensor<float> x = random_tensor<float>({2, T, 16}, 21 + T);
    auto whole = m.make_state(2);
    const Tensor<float> y = m(x, whole);
    // prompt of ~half the tokens, then one token per call; and one token per call throughout
    for (int64_t prompt : {T / 2, int64_t(0)}) {
      auto st = m.make_state(2);
      Tensor<float> ys({2, T, 16});
      const TensorView<const float> xv = x.view();
      if (prompt > 0) m.forward(xv.slice(1, 0, prompt), st, ys.view().slice(1, 0, prompt));
      for (int64_t t = prompt; t < T; ++t)
        m.forward(xv.slice(1, t, t + 1), st, ys.view().slice(1, t, t + 1));
      const double scale = 1 + max_abs(y);
      EXPECT_LT(max_abs_diff(ys, y), 2e-5 * scale) << "T " << T << " prompt " << prompt;
      EXPECT_LT(max_abs_diff(st.ssm, whole.ssm), 2e-5 * (1 + max_abs(whole.ssm)));
      EXPECT_LT(max_abs_diff(st.conv.conv, whole.conv.conv), 1e-6);
    }
  }
  auto s = m.make_state(3);
  EXPECT_EQ(s.bytes(), int64_t((3 * 3 * 40 + 3 * 40 * 8) * sizeof(float)));
  s.ssm.fill(1.0f);
  s.reset();
  EXPECT_EQ(max_abs(s.ssm), 0.0);
}

TEST(Mamba, InitFollowsMamba) {
  layers::Mamba<float> m(tiny_mamba(false, true));
  m.init_random(7);
  for (int64_t e : {0, 39})
    for (int64_t n = 0; n < 8; ++n) EXPECT_FLOAT_EQ(m.A_log.value()(e, n), std::log(float(n + 1)));
  EXPECT_EQ(max_abs(m.D.value()), 1.0);
  for (int64_t e = 0; e < 40; ++e) {  // softplus(dt bias) = dt in [1e-3, 1e-1]
    const double dt = std::log1p(std::exp(double(m.dt_proj.bias.value()(e))));
    EXPECT_GE(dt, 1e-3 * (1 - 1e-5));
    EXPECT_LE(dt, 1e-1 * (1 + 1e-5));
  }
  EXPECT_LE(max_abs(m.dt_proj.weight.value()), 1 / std::sqrt(3.0));
  layers::Mamba<float> m2(tiny_mamba(false, true));
  m2.init_random(7);
  EXPECT_TRUE(bitwise_equal(m.in_proj.weight.value(), m2.in_proj.weight.value()));
  EXPECT_TRUE(bitwise_equal(m.dt_proj.bias.value(), m2.dt_proj.bias.value()));
}

// ------------------------------------------------------------------ Mamba-2 reference

// The Mamba-2 block in double: in_proj, naive conv, ssd_naive, mamba_ssm's grouped gated
// RMSNorm written out, out_proj.
template <class T, class S>
Tensor<double> ref_mamba2(const layers::Mamba2<T, S>& m, const Tensor<double>& x,
                          MambaRefState& st) {
  const int64_t B = x.size(0), Tn = x.size(1), E = m.d_inner(), H = m.nheads(), P = m.headdim(),
                G = m.ngroups(), N = m.d_state(), C = m.conv_dim();
  const Tensor<double> zxd = ref_linear(x, m.in_proj);
  layers::ShortConv<double> conv(C, m.conv1d.width(), m.conv1d.has_bias());
  conv.weight.set(m.conv1d.weight.value());
  if (conv.has_bias()) conv.bias.set(m.conv1d.bias.value());
  const Tensor<double> xbc = ref_conv(cols(zxd, E, E + C), conv, st.conv);
  const Tensor<double> z = cols(zxd, 0, E), dt = cols(zxd, E + C, E + C + H);
  Tensor<double> xh({B, Tn, H, P}), Bt({B, Tn, G, N}), Ct({B, Tn, G, N});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < Tn; ++t) {
      for (int64_t i = 0; i < E; ++i) xh(b, t, i / P, i % P) = xbc(b, t, i);
      for (int64_t i = 0; i < G * N; ++i) {
        Bt(b, t, i / N, i % N) = xbc(b, t, E + i);
        Ct(b, t, i / N, i % N) = xbc(b, t, E + G * N + i);
      }
    }
  Tensor<double> A = as_double(m.A_log);
  for (int64_t i = 0; i < A.numel(); ++i) A.data()[i] = -std::exp(A.data()[i]);
  Tensor<double> D = as_double(m.D);
  if (m.config.D_has_hdim) D = Tensor<double>::from(D.view().reshape({H, P}));
  SsdParams<double> p;
  p.dt_softplus = true;
  p.dt_min = m.config.dt_limit_min;
  p.dt_max = m.config.dt_limit_max;
  Tensor<double> y({B, Tn, H, P}), hT(st.ssm.shape());
  ssd_naive<double>(xh, dt, A, Bt, Ct, D, as_double(m.dt_bias), {}, y, p, st.ssm, hT);
  st.ssm = hT;
  // u = y * silu(z); per group of E / G channels: u / sqrt(mean(u^2) + eps) * w
  const Tensor<double> w = as_double(m.norm.weight);
  const int64_t gs = E / G;
  Tensor<double> yn({B, Tn, E});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < Tn; ++t)
      for (int64_t g = 0; g < G; ++g) {
        std::vector<double> u(gs);
        double ss = 0;
        for (int64_t i = 0; i < gs; ++i) {
          const int64_t c = g * gs + i;
          u[i] = y(b, t, c / P, c % P) * silu_d(z(b, t, c));
          ss += u[i] * u[i];
        }
        const double r = 1 / std::sqrt(ss / gs + m.config.norm_eps);
        for (int64_t i = 0; i < gs; ++i) yn(b, t, g * gs + i) = u[i] * r * w(g * gs + i);
      }
  return ref_linear(yn, m.out_proj);
}

layers::Mamba2Config tiny_mamba2(int64_t G, bool D_has_hdim = false, bool limit = false,
                                 bool bias = false) {
  layers::Mamba2Config c;
  c.hidden = 16;
  c.d_inner = 32;
  c.headdim = 8;  // 4 heads
  c.ngroups = G;
  c.d_state = 8;
  c.d_conv = 4;
  c.D_has_hdim = D_has_hdim;
  c.bias = bias;
  c.chunk_size = 16;     // T = 37 spans three chunks
  c.prefill_piece = 32;  // and runs in pieces 32 + 5
  if (limit) {
    c.dt_limit_min = 0.01;
    c.dt_limit_max = 0.5;
  }
  return c;
}

template <class T, class S>
void randomize_mamba2(layers::Mamba2<T, S>& m, uint64_t seed) {
  m.init_random(seed);
  randomize(m.D, seed + 1);
  randomize(m.conv1d.bias, seed + 2);
  randomize(m.norm.weight, seed + 3, 0.5, 1.5);
  randomize(m.dt_bias, seed + 4, -3.0, 1.0);  // softplus: 0.05 .. 1.3, some clamped by a limit
  randomize(m.in_proj.bias, seed + 5, -0.2, 0.2);
  randomize(m.out_proj.bias, seed + 6, -0.2, 0.2);
}

TEST(Mamba2, MatchesDoubleReference) {
  struct Case {
    int64_t G;
    bool D_has_hdim, limit, bias;
  };
  for (const Case& c : {Case{1, false, false, false}, Case{2, false, false, true},
                        Case{2, true, true, false}, Case{4, false, true, false}})
    for (int64_t T : {1, 7, 37}) {
      layers::Mamba2<double> m(tiny_mamba2(c.G, c.D_has_hdim, c.limit, c.bias));
      randomize_mamba2(m, 30 + T);
      auto st = m.make_state(2);
      st.conv.conv = random_tensor<double>(st.conv.conv.shape(), 6);
      st.ssm = random_tensor<double>(st.ssm.shape(), 7);
      MambaRefState rs{st.conv.conv, st.ssm};
      const Tensor<double> x = random_tensor<double>({2, T, 16}, 8 + T);
      const Tensor<double> y = m(x, st);
      const Tensor<double> ref = ref_mamba2(m, x, rs);
      EXPECT_LT(max_abs_diff(y, ref), 1e-12 * (1 + max_abs(ref)))
          << "T " << T << " G " << c.G << " D_has_hdim " << c.D_has_hdim << " limit " << c.limit;
      EXPECT_LT(max_abs_diff(st.ssm, rs.ssm), 1e-12 * (1 + max_abs(rs.ssm)));
      EXPECT_LT(max_abs_diff(st.conv.conv, rs.conv), 1e-13);
    }
}

// The per-group norm is mamba_ssm's: with G = 2, normalising over all of d_inner (transformers'
// Mamba2Mixer) gives a different output.
TEST(Mamba2, NormIsPerGroup) {
  layers::Mamba2<double> m(tiny_mamba2(2));
  randomize_mamba2(m, 40);
  EXPECT_EQ(m.norm.group_size, 16);
  EXPECT_FALSE(m.norm.norm_before_gate);
  const Tensor<double> x = random_tensor<double>({1, 5, 16}, 41);
  auto s1 = m.make_state(1), s2 = m.make_state(1);
  const Tensor<double> y1 = m(x, s1);
  layers::Mamba2<double> whole = m;
  whole.norm.group_size = 32;
  EXPECT_GT(max_abs_diff(y1, whole(x, s2)), 1e-6);
}

TEST(Mamba2, TokenByTokenEqualsOneForward) {
  for (int64_t G : {1, 2}) {
    layers::Mamba2<float> m(tiny_mamba2(G, false, G == 2));
    randomize_mamba2(m, 50 + G);
    for (int64_t T : {1, 7, 37}) {
      const Tensor<float> x = random_tensor<float>({2, T, 16}, 51 + T);
      auto whole = m.make_state(2);
      const Tensor<float> y = m(x, whole);
      for (int64_t prompt : {T / 2, int64_t(0)}) {
        auto st = m.make_state(2);
        Tensor<float> ys({2, T, 16});
        const TensorView<const float> xv = x.view();
        if (prompt > 0) m.forward(xv.slice(1, 0, prompt), st, ys.view().slice(1, 0, prompt));
        for (int64_t t = prompt; t < T; ++t)
          m.forward(xv.slice(1, t, t + 1), st, ys.view().slice(1, t, t + 1));
        EXPECT_LT(max_abs_diff(ys, y), 2e-5 * (1 + max_abs(y)))
            << "G " << G << " T " << T << " prompt " << prompt;
        EXPECT_LT(max_abs_diff(st.ssm, whole.ssm), 2e-5 * (1 + max_abs(whole.ssm)));
        EXPECT_LT(max_abs_diff(st.conv.conv, whole.conv.conv), 1e-6);
      }
    }
  }
  layers::Mamba2<float> m(tiny_mamba2(2));
  auto s = m.make_state(3);
  EXPECT_EQ(s.bytes(), int64_t((3 * 3 * (32 + 2 * 2 * 8) + 3 * 4 * 8 * 8) * sizeof(float)));
}

TEST(Mamba2, InitFollowsMamba2) {
  layers::Mamba2<float> m(tiny_mamba2(1));
  m.init_random(9);
  for (int64_t h = 0; h < 4; ++h) {
    const double a = std::exp(double(m.A_log.value()(h)));
    EXPECT_GE(a, 1.0 - 1e-5);
    EXPECT_LE(a, 16.0 + 1e-4);
    const double dt = std::log1p(std::exp(double(m.dt_bias.value()(h))));
    EXPECT_GE(dt, 1e-3 * (1 - 1e-5));
    EXPECT_LE(dt, 1e-1 * (1 + 1e-5));
  }
  EXPECT_EQ(max_abs(m.D.value()), 1.0);
  EXPECT_EQ(max_abs(m.norm.weight.value()), 1.0);
}

// ------------------------------------------------------------------ save / load, errors, bf16

template <class S>
void check_round_trip() {
  layers::Mamba<float, S> m(tiny_mamba(true, true));
  randomize_mamba(m, 60);
  layers::Mamba2<float, S> m2(tiny_mamba2(2, true));
  randomize_mamba2(m2, 61);
  SafeTensorsWriter w;
  m.save(w, "backbone.layers.0.mixer");
  m2.save(w, "backbone.layers.1.mixer.");
  const SafeTensors st = reload(w);
  EXPECT_EQ(st.size(), 11u + 8u);
  const std::vector<int64_t> a_dims = {40, 8}, conv_dims = {32 + 32, 1, 4};
  EXPECT_EQ(st.info("backbone.layers.0.mixer.A_log").dims, a_dims);
  EXPECT_EQ(st.info("backbone.layers.1.mixer.conv1d.weight").dims, conv_dims);
  EXPECT_TRUE(st.contains("backbone.layers.0.mixer.dt_proj.bias"));
  EXPECT_TRUE(st.contains("backbone.layers.1.mixer.norm.weight"));
  EXPECT_TRUE(st.contains("backbone.layers.1.mixer.dt_bias"));

  layers::Mamba<float, S> l(tiny_mamba(true, true));
  layers::Mamba2<float, S> l2(tiny_mamba2(2, true));
  l.load(st, "backbone.layers.0.mixer");
  l2.load(st, "backbone.layers.1.mixer");
  const Tensor<float> x = random_tensor<float>({2, 9, 16}, 62);
  auto s1 = m.make_state(2), s2 = l.make_state(2);
  EXPECT_TRUE(bitwise_equal(m(x, s1), l(x, s2)));
  EXPECT_TRUE(bitwise_equal(s1.ssm, s2.ssm));
  auto t1 = m2.make_state(2), t2 = l2.make_state(2);
  EXPECT_TRUE(bitwise_equal(m2(x, t1), l2(x, t2)));
  EXPECT_TRUE(bitwise_equal(t1.ssm, t2.ssm));
}

TEST(MambaLayers, SaveLoadRoundTripIsBitwise) {
  check_round_trip<float>();
  check_round_trip<bf16>();
}

TEST(MambaLayers, LoadErrorsNameTheTensor) {
  layers::Mamba<float> m(tiny_mamba(false, true));
  m.init_random(70);
  SafeTensorsWriter w;
  m.save(w, "mixer");
  const SafeTensors st = reload(w, "ckpt.safetensors");
  // configured with a bias the file lacks
  layers::Mamba<float> with_bias(tiny_mamba(true, true));
  EXPECT_THAT(error_of([&] { with_bias.load(st, "mixer"); }),
              HasSubstr("tensor 'mixer.in_proj.bias' not found in ckpt.safetensors"));
  // conv bias in the file, layer configured without
  layers::Mamba<float> no_conv_bias(tiny_mamba(false, false));
  EXPECT_THAT(error_of([&] { no_conv_bias.load(st, "mixer"); }),
              HasSubstr("tensor 'mixer.conv1d.bias' is in ckpt.safetensors but the layer was "
                        "configured without it"));
  // a wrong state size: x_proj is misshaped first
  layers::MambaConfig c9 = tiny_mamba(false, true);
  c9.state_size = 9;
  layers::Mamba<float> n9(c9);
  EXPECT_THAT(error_of([&] { n9.load(st, "mixer"); }),
              HasSubstr("Linear: tensor 'mixer.x_proj.weight' in ckpt.safetensors is F32 [19, 40], "
                        "expected [21, 40]"));

  // Missing A_log / misshaped A_log (everything else present).
  auto all_but_a_log = [&](SafeTensorsWriter& out) {
    m.in_proj.save(out, "bad.in_proj");
    m.conv1d.save(out, "bad.conv1d");
    m.x_proj.save(out, "bad.x_proj");
    m.dt_proj.save(out, "bad.dt_proj");
    m.out_proj.save(out, "bad.out_proj");
    m.D.save(out, "bad");
  };
  SafeTensorsWriter w2, w3;
  all_but_a_log(w2);
  all_but_a_log(w3);
  const SafeTensors missing = reload(w2, "missing.safetensors");
  EXPECT_THAT(error_of([&] { m.load(missing, "bad"); }),
              HasSubstr("Mamba: tensor 'bad.A_log' not found in missing.safetensors (expected "
                        "shape [40, 8])"));
  w3.add("bad.A_log", random_tensor<float>({40, 9}, 72));
  EXPECT_THAT(error_of([&] { m.load(reload(w3, "shape.safetensors"), "bad"); }),
              HasSubstr("Mamba: tensor 'bad.A_log' in shape.safetensors is F32 [40, 9], expected "
                        "[40, 8]"));

  // Mamba2: a missing dt_bias, and a checkpoint of another ngroups (in_proj and conv differ).
  layers::Mamba2<float> m2(tiny_mamba2(1));
  m2.init_random(73);
  SafeTensorsWriter v;
  m2.save(v, "model.layers.0.mixer");
  const SafeTensors sv = reload(v, "m2.safetensors");
  layers::Mamba2<float> g2(tiny_mamba2(2));
  EXPECT_THAT(error_of([&] { g2.load(sv, "model.layers.0.mixer"); }),
              HasSubstr("tensor 'model.layers.0.mixer.in_proj.weight' in m2.safetensors is F32 "
                        "[84, 16], expected [100, 16]"));
  layers::Mamba2<float> hd(tiny_mamba2(1, true));
  EXPECT_THAT(error_of([&] { hd.load(sv, "model.layers.0.mixer"); }),
              HasSubstr("Mamba2: tensor 'model.layers.0.mixer.D' in m2.safetensors is F32 [4], "
                        "expected [32]"));
  EXPECT_THAT(error_of([&] { m2.load(sv, "model.layers.1.mixer"); }),
              HasSubstr("tensor 'model.layers.1.mixer.in_proj.weight' not found"));
  SafeTensorsWriter v2;
  m2.in_proj.save(v2, "p.in_proj");
  m2.conv1d.save(v2, "p.conv1d");
  const SafeTensors sv2 = reload(v2, "partial.safetensors");
  EXPECT_THAT(error_of([&] { m2.load(sv2, "p"); }),
              HasSubstr("Mamba2: tensor 'p.dt_bias' not found in partial.safetensors"));

  // Wrong states and inputs.
  const Tensor<float> x = random_tensor<float>({2, 3, 16}, 74);
  auto s3 = m.make_state(3);
  EXPECT_THAT(error_of([&] { m(x, s3); }),
              HasSubstr("Mamba: state.ssm has shape [3, 40, 8], expected [2, 40, 8]"));
  layers::Mamba2<float>::State none;
  EXPECT_THAT(error_of([&] { m2(x, none); }), HasSubstr("Mamba2: state.ssm has shape <none>"));
  const Tensor<float> x17 = random_tensor<float>({2, 3, 17}, 75);
  auto s2 = m.make_state(2);
  EXPECT_THAT(error_of([&] { m(x17, s2); }), HasSubstr("Mamba: x"));
  layers::Mamba2Config bad = tiny_mamba2(3);
  EXPECT_THAT(error_of([&] { layers::Mamba2<float> b(bad); }),
              HasSubstr("nheads (4) is not a multiple of ngroups (3)"));
}

TEST(MambaLayers, Bf16WeightsWithinTolerance) {
  layers::Mamba<float> mf(tiny_mamba(true, true));
  randomize_mamba(mf, 80);
  layers::Mamba2<float> m2f(tiny_mamba2(2));
  randomize_mamba2(m2f, 81);
  SafeTensorsWriter w;
  mf.save(w, "a");
  m2f.save(w, "b");
  const SafeTensors st = reload(w);
  layers::Mamba<float, bf16> mb(tiny_mamba(true, true));  // F32 file rounded to bf16 on load
  layers::Mamba2<float, bf16> m2b(tiny_mamba2(2));
  mb.load(st, "a");
  m2b.load(st, "b");
  const Tensor<float> x = random_tensor<float>({2, 37, 16}, 82);

  auto sf = mf.make_state(2);
  auto sb = mb.make_state(2);
  const Tensor<float> yf = mf(x, sf), yb = mb(x, sb);
  MambaRefState rs{Tensor<double>(sb.conv.conv.shape()), Tensor<double>(sb.ssm.shape())};
  const Tensor<double> ref = ref_mamba(mb, dbl(x), rs);  // the bf16 weights, exactly, in double
  EXPECT_LT(max_abs_diff(yb, ref), 2e-5 * (1 + max_abs(ref)));
  EXPECT_LT(max_abs_diff(yb, yf), 2e-2 * (1 + max_abs(yf)));  // bf16 rounding of the weights
  EXPECT_GT(max_abs_diff(yb, yf), 0.0);

  auto tf = m2f.make_state(2);
  auto tb = m2b.make_state(2);
  const Tensor<float> y2f = m2f(x, tf), y2b = m2b(x, tb);
  MambaRefState rs2{Tensor<double>(tb.conv.conv.shape()), Tensor<double>(tb.ssm.shape())};
  const Tensor<double> ref2 = ref_mamba2(m2b, dbl(x), rs2);
  EXPECT_LT(max_abs_diff(y2b, ref2), 2e-5 * (1 + max_abs(ref2)));
  EXPECT_LT(max_abs_diff(y2b, y2f), 2e-2 * (1 + max_abs(y2f)));
  EXPECT_EQ(mb.weight_bytes() * 2 - mf.weight_bytes(),
            (mf.conv1d.weight_bytes() + mf.A_log.bytes() + mf.D.bytes() + mf.in_proj.bias.bytes() +
             mf.dt_proj.bias.bytes() + mf.out_proj.bias.bytes()));
}

TEST(MambaLayers, OneThreadEqualsTwoThreads) {
  layers::MambaConfig c;
  c.hidden = 64;
  c.state_size = 16;
  layers::Mamba<float> m(c);  // E = 128, R = 4
  m.init_random(90);
  layers::Mamba2Config c2;
  c2.hidden = 64;
  c2.headdim = 16;
  c2.ngroups = 2;
  c2.d_state = 16;
  c2.chunk_size = 32;
  layers::Mamba2<float> m2(c2);  // E = 128, 8 heads
  m2.init_random(91);
  const Tensor<float> x = random_tensor<float>({2, 80, 64}, 92);
  const Tensor<float> x1 = random_tensor<float>({2, 1, 64}, 93);
  auto run = [&](int threads) {
    set_num_threads(threads);
    auto s = m.make_state(2);
    auto s2 = m2.make_state(2);
    std::vector<Tensor<float>> out = {m(x, s), m(x1, s), m2(x, s2), m2(x1, s2)};
    out.push_back(s.ssm);
    out.push_back(s2.ssm);
    set_num_threads(0);
    return out;
  };
  const std::vector<Tensor<float>> a = run(1), b = run(2);
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(bitwise_equal(a[i], b[i])) << i;
}

}  // namespace
}  // namespace effattn
