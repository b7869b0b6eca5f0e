// Layer building blocks (layers/{weights,linear,norm,short_conv}.hpp): each against the same
// computation written out here in double, float vs bf16 storage, ShortConv token by token == one
// call, save -> load round trips, and the load errors a user with a wrong checkpoint meets.
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
#include "layer_test_util.hpp"
#include "test_util.hpp"

namespace effattn {
namespace {

using io::Dtype;
using io::SafeTensors;
using io::SafeTensorsWriter;
using layers::GateActivation;
using testing::as_double;
using testing::bitwise_equal;
using testing::dbl;
using testing::error_of;
using ::testing::HasSubstr;
using testing::max_abs_diff;
using testing::random_tensor;
using testing::ref_linear;
using testing::reload;

// ------------------------------------------------------------------ references (double)

double silu_d(double v) { return v / (1.0 + std::exp(-v)); }
double sigmoid_d(double v) { return 1.0 / (1.0 + std::exp(-v)); }

// rows of C: x / sqrt(mean(x^2) + eps) * w
Tensor<double> ref_rmsnorm(const Tensor<double>& x, const Tensor<double>& w, double eps) {
  const int64_t N = x.size(0), C = x.size(1);
  Tensor<double> y({N, C});
  for (int64_t n = 0; n < N; ++n) {
    double ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += x(n, c) * x(n, c);
    const double r = 1.0 / std::sqrt(ss / C + eps);
    for (int64_t c = 0; c < C; ++c) y(n, c) = x(n, c) * r * w(c);
  }
  return y;
}

Tensor<double> ref_layernorm(const Tensor<double>& x, const Tensor<double>& w,
                             const Tensor<double>& b, double eps) {
  const int64_t N = x.size(0), C = x.size(1);
  Tensor<double> y({N, C});
  for (int64_t n = 0; n < N; ++n) {
    double mean = 0, var = 0;
    for (int64_t c = 0; c < C; ++c) mean += x(n, c);
    mean /= C;
    for (int64_t c = 0; c < C; ++c) var += (x(n, c) - mean) * (x(n, c) - mean);
    var /= C;
    for (int64_t c = 0; c < C; ++c)
      y(n, c) = (x(n, c) - mean) / std::sqrt(var + eps) * w(c) + (b.empty() ? 0.0 : b(c));
  }
  return y;
}

// mamba_ssm's rmsnorm_fn / fla's FusedRMSNormGated, groups of G channels
Tensor<double> ref_gated(const Tensor<double>& x, const Tensor<double>& z, const Tensor<double>& w,
                         double eps, bool sigmoid, bool norm_before_gate, int64_t G) {
  const int64_t N = x.size(0), C = x.size(1);
  Tensor<double> y({N, C});
  for (int64_t n = 0; n < N; ++n)
    for (int64_t g0 = 0; g0 < C; g0 += G) {
      std::vector<double> u(G), a(G);
      for (int64_t i = 0; i < G; ++i) {
        const double zv = z(n, g0 + i);
        a[i] = sigmoid ? sigmoid_d(zv) : silu_d(zv);
        u[i] = norm_before_gate ? x(n, g0 + i) : x(n, g0 + i) * a[i];
      }
      double ss = 0;
      for (double v : u) ss += v * v;
      const double r = 1.0 / std::sqrt(ss / G + eps);
      for (int64_t i = 0; i < G; ++i) {
        const double v = u[i] * r * w(g0 + i);
        y(n, g0 + i) = norm_before_gate ? v * a[i] : v;
      }
    }
  return y;
}

// x [B, T, C], w [C, 1, W], b [C] or empty; the W-1 inputs before x are `prev` [B, W-1, C]
Tensor<double> ref_conv(const Tensor<double>& x, const Tensor<double>& prev,
                        const Tensor<double>& w, const Tensor<double>& b, bool silu) {
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), W = w.size(2);
  Tensor<double> y({B, T, C});
  for (int64_t bb = 0; bb < B; ++bb)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < C; ++c) {
        double s = b.empty() ? 0.0 : b(c);
        for (int64_t i = 0; i < W; ++i) {
          const int64_t src = t - (W - 1) + i;  // input time
          const double v = src >= 0 ? x(bb, src, c) : prev(bb, W - 1 + src, c);
          s += w(c, 0, i) * v;
        }
        y(bb, t, c) = silu ? silu_d(s) : s;
      }
  return y;
}

// A file of literal tensors: (name, dtype spelling, shape, raw bytes).
struct RawTensor {
  std::string name, dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};
SafeTensors raw_file(const std::vector<RawTensor>& ts) {
  std::string h = "{";
  std::vector<uint8_t> data;
  for (const RawTensor& t : ts) {
    std::string shape = "[";
    for (std::size_t i = 0; i < t.shape.size(); ++i)
      shape += (i ? "," : "") + std::to_string(t.shape[i]);
    shape += "]";
    h += (h.size() > 1 ? "," : "") + std::string("\"") + t.name + "\":{\"dtype\":\"" + t.dtype +
         "\",\"shape\":" + shape + ",\"data_offsets\":[" + std::to_string(data.size()) + "," +
         std::to_string(data.size() + t.bytes.size()) + "]}";
    data.insert(data.end(), t.bytes.begin(), t.bytes.end());
  }
  h += "}";
  h.append((8 - h.size() % 8) % 8, ' ');
  std::vector<uint8_t> out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(uint64_t(h.size()) >> (8 * i)));
  out.insert(out.end(), h.begin(), h.end());
  out.insert(out.end(), data.begin(), data.end());
  return SafeTensors::from_buffer(out, "raw.safetensors");
}

template <class U>
std::vector<uint8_t> le_bytes(const std::vector<U>& v) {
  std::vector<uint8_t> b(v.size() * sizeof(U));
  if (!b.empty()) std::memcpy(b.data(), v.data(), b.size());  // the test host is little-endian
  return b;
}

// Sets a T-stored parameter to random values (norm weights are ones after init).
template <class S>
void randomize(layers::Param<S>& p, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  if (p.enabled()) p.set(random_tensor<double>(p.shape(), seed, lo, hi));
}

// ------------------------------------------------------------------ Linear

template <class T>
void check_linear(int64_t in, int64_t out, int64_t N, bool bias, double tol) {
  layers::Linear<T> lin(in, out, bias);
  lin.init_random(uint64_t(in * 1000 + out));
  const Tensor<T> x = random_tensor<T>({N, in}, uint64_t(N));
  const Tensor<T> y = lin(x);
  const Tensor<double> ref =
      ref_linear(dbl(x), as_double(lin.weight), bias ? as_double(lin.bias) : Tensor<double>());
  EXPECT_LT(max_abs_diff(y, ref), tol) << "in " << in << " out " << out << " N " << N;
}

TEST(Linear, MatchesDoubleReference) {
  for (int64_t N : {1, 2, 3, 5, 8, 9, 70})
    for (bool bias : {false, true}) {
      check_linear<float>(37, 53, N, bias, 2e-6);
      check_linear<float>(300, 17, N, bias, 2e-6);
      check_linear<double>(37, 53, N, bias, 1e-14);
    }
  check_linear<float>(1, 1, 1, true, 1e-6);
  check_linear<float>(2, 3, 20, false, 1e-6);
}

TEST(Linear, Bf16StorageWidensExactly) {
  for (int64_t N : {1, 4, 8, 9, 33}) {
    layers::Linear<float, bf16> lb(600, 41, true);
    lb.init_random(7);
    const Tensor<float> x = random_tensor<float>({N, 600}, 3);
    const Tensor<double> ref = ref_linear(dbl(x), as_double(lb.weight), as_double(lb.bias));
    EXPECT_LT(max_abs_diff(lb(x), ref), 3e-6) << "N " << N;

    // Float storage with the same seed holds the unrounded weights: the outputs differ by the
    // bf16 rounding of the weights, no more.
    layers::Linear<float> lf(600, 41, true);
    lf.init_random(7);
    const double d = max_abs_diff(lb(x), lf(x));
    EXPECT_GT(d, 0.0);
    EXPECT_LT(d, 2e-2);
  }
}

TEST(Linear, LeadingDimsAndStridedRows) {
  layers::Linear<float> lin(24, 10, true);
  lin.init_random(1);
  const Tensor<float> x3 = random_tensor<float>({2, 5, 24}, 2);
  const Tensor<float> y3 = lin(x3);
  ASSERT_EQ(y3.shape(), Shape({2, 5, 10}));
  const Tensor<double> x2 =
      Tensor<double>::from(TensorView<const float>(x3.view()).reshape({10, 24}));
  const Tensor<double> ref = ref_linear(x2, as_double(lin.weight), as_double(lin.bias));
  EXPECT_LT(max_abs_diff(TensorView<const float>(y3.view().reshape({10, 10})),
                         TensorView<const double>(ref.view())),
            1e-6);

  // x: a column slice of a fused [N, 40] buffer; y: a slice of a [N, 16] buffer.
  const Tensor<float> fused = random_tensor<float>({12, 40}, 3);
  const TensorView<const float> xs = TensorView<const float>(fused.view()).slice(1, 8, 32);
  Tensor<float> ybuf({12, 16});
  lin.forward(xs, ybuf.view().slice(1, 3, 13));
  const Tensor<double> ref2 =
      ref_linear(Tensor<double>::from(xs), as_double(lin.weight), as_double(lin.bias));
  EXPECT_LT(max_abs_diff(TensorView<const float>(ybuf.view().slice(1, 3, 13)),
                         TensorView<const double>(ref2.view())),
            1e-6);
  for (int64_t n = 0; n < 12; ++n) EXPECT_EQ(ybuf(n, 0), 0.0f);  // columns outside untouched
}

TEST(Linear, OneThreadEqualsTwoThreads) {
  for (int64_t N : {3, 64}) {
    layers::Linear<float> lf(512, 600, true);
    layers::Linear<float, bf16> lb(512, 600, true);
    lf.init_random(4);
    lb.init_random(4);
    const Tensor<float> x = random_tensor<float>({N, 512}, 5);
    set_num_threads(1);
    const Tensor<float> f1 = lf(x), b1 = lb(x);
    set_num_threads(2);
    const Tensor<float> f2 = lf(x), b2 = lb(x);
    set_num_threads(0);
    EXPECT_TRUE(bitwise_equal(f1, f2)) << "N " << N;
    EXPECT_TRUE(bitwise_equal(b1, b2)) << "N " << N;
  }
  layers::Mlp<float, bf16> mlp(256, 700);  // 3 hidden blocks, big enough for both threads
  mlp.init_random(6);
  const Tensor<float> x = random_tensor<float>({40, 256}, 7);
  set_num_threads(1);
  const Tensor<float> m1 = mlp(x);
  set_num_threads(2);
  const Tensor<float> m2 = mlp(x);
  set_num_threads(0);
  EXPECT_TRUE(bitwise_equal(m1, m2));
}

TEST(Linear, ShapeErrorsNameTheArgument) {
  layers::Linear<float> lin(4, 3);
  const Tensor<float> x({2, 5});
  EXPECT_THAT(error_of([&] { lin(x); }),
              HasSubstr("Linear: x has shape [2, 5], expected [..., in] with in = 4"));
  const Tensor<float> x2({2, 4});
  Tensor<float> y({2, 4});
  EXPECT_THAT(error_of([&] { lin.forward(x2, y); }),
              HasSubstr("Linear: y has shape [2, 4], expected [2, 3]"));
  Tensor<float> big({4, 3, 8});  // [.., 0:4] of each row: the leading dims do not collapse
  const TensorView<const float> xs = TensorView<const float>(big.view()).slice(2, 0, 4);
  Tensor<float> y3({4, 3, 3});
  EXPECT_THAT(error_of([&] { lin.forward(xs.slice(1, 0, 2), y3.view().slice(1, 0, 2)); }),
              HasSubstr("do not collapse"));
}

// ------------------------------------------------------------------ Embedding

TEST(Embedding, RowsAndTiedHead) {
  layers::Embedding<float> ef(50, 24);
  layers::Embedding<float, bf16> eb(50, 24);
  ef.init_random(9);
  eb.init_random(9);
  const std::vector<int32_t> ids = {0, 49, 7, 7, 13};
  const Tensor<float> yf = ef(ids), yb = eb(ids);
  ASSERT_EQ(yf.shape(), Shape({5, 24}));
  for (std::size_t n = 0; n < ids.size(); ++n)
    for (int64_t c = 0; c < 24; ++c) {
      EXPECT_EQ(yf(int64_t(n), c), ef.weight.value()(ids[n], c));
      EXPECT_EQ(yb(int64_t(n), c), float(eb.weight.value()(ids[n], c)));
    }
  // [B, T] ids give [B, T, d]
  Tensor<int32_t> ids2({2, 3});
  for (int i = 0; i < 6; ++i) ids2.data()[i] = 3 * i;
  Tensor<float> y2({2, 3, 24});
  ef.forward(ids2, y2);
  EXPECT_EQ(y2(1, 2, 5), ef.weight.value()(15, 5));

  const Tensor<float> h = random_tensor<float>({3, 24}, 1);
  Tensor<float> logits({3, 50});
  eb.attend(h, logits);
  EXPECT_LT(max_abs_diff(logits, ref_linear(dbl(h), as_double(eb.weight), {})), 1e-5);

  EXPECT_THAT(error_of([&] {
                ef(std::vector<int32_t>{1, 50});
              }),
              HasSubstr("token id 50 at position 1 is outside the vocabulary [0, 50)"));
  EXPECT_THROW(ef(std::vector<int32_t>{-1}), Error);
}

// ------------------------------------------------------------------ norms

TEST(Norms, RMSNormAndLayerNormMatchReference) {
  for (int64_t C : {1, 7, 64, 100}) {
    layers::RMSNorm<float> rms(C, 1e-5);
    layers::LayerNorm<float> ln(C, 1e-5);
    layers::LayerNorm<double> lnd(C, 1e-5, false);
    randomize(rms.weight, 1);
    randomize(ln.weight, 2);
    randomize(ln.bias, 3);
    randomize(lnd.weight, 4);
    const Tensor<float> x = random_tensor<float>({13, C}, 5, -2.0, 3.0);
    EXPECT_LT(max_abs_diff(rms(x), ref_rmsnorm(dbl(x), as_double(rms.weight), 1e-5)), 2e-6);
    EXPECT_LT(
        max_abs_diff(ln(x), ref_layernorm(dbl(x), as_double(ln.weight), as_double(ln.bias), 1e-5)),
        1e-5);
    const Tensor<double> xd = dbl(x);
    EXPECT_LT(max_abs_diff(lnd(xd), ref_layernorm(xd, as_double(lnd.weight), {}, 1e-5)), 1e-13);

    // In place, on [B, T, C].
    Tensor<float> x3 = Tensor<float>::from(TensorView<const float>(x.view()).reshape({13, 1, C}));
    rms.forward(x3, x3);
    EXPECT_LT(max_abs_diff(TensorView<const float>(x3.view().reshape({13, C})),
                           TensorView<const float>(rms(x).view())),
              0.0 + 1e-12);
  }
  layers::RMSNorm<float> rms(8);
  EXPECT_THAT(error_of([&] {
                rms(Tensor<float>({2, 9}));
              }),
              HasSubstr("RMSNorm: x has shape [2, 9], expected [..., C] with C = 8"));
}

TEST(Norms, GatedRMSNormAllForms) {
  const int64_t C = 48;
  const Tensor<float> x = random_tensor<float>({2, 5, C}, 11, -2.0, 2.0);
  const Tensor<float> z = random_tensor<float>({2, 5, C}, 12, -3.0, 3.0);
  const Tensor<double> x2 =
      Tensor<double>::from(TensorView<const float>(x.view()).reshape({10, C}));
  const Tensor<double> z2 =
      Tensor<double>::from(TensorView<const float>(z.view()).reshape({10, C}));
  for (GateActivation act : {GateActivation::kSilu, GateActivation::kSigmoid})
    for (bool before : {true, false})
      for (int64_t G : {C, C / 4, int64_t(1)}) {
        layers::GatedRMSNorm<float> norm(C, 1e-5, act, before, G);
        randomize(norm.weight, 13);
        const Tensor<float> y = norm(x, z);
        const Tensor<double> ref = ref_gated(x2, z2, as_double(norm.weight), 1e-5,
                                             act == GateActivation::kSigmoid, before, G);
        EXPECT_LT(max_abs_diff(TensorView<const float>(y.view().reshape({10, C})),
                               TensorView<const double>(ref.view())),
                  1e-5)
            << "sigmoid " << (act == GateActivation::kSigmoid) << " before " << before << " G "
            << G;
      }
  EXPECT_THROW(layers::GatedRMSNorm<float>(10, 1e-5, GateActivation::kSilu, true, 4), Error);
  layers::GatedRMSNorm<float> norm(C);
  EXPECT_THAT(error_of([&] {
                norm(x, Tensor<float>({2, 4, C}));
              }),
              HasSubstr("GatedRMSNorm: z has shape [2, 4, 48], expected [2, 5, 48]"));
}

// ------------------------------------------------------------------ Mlp

template <class S>
void check_mlp(int64_t d, int64_t f, double tol) {
  layers::Mlp<float, S> mlp(d, f);
  mlp.init_random(21);
  for (int64_t N : {1, 5, 13, 20}) {
    const Tensor<float> x = random_tensor<float>({N, d}, uint64_t(N));
    const Tensor<double> g = ref_linear(dbl(x), as_double(mlp.gate_proj.weight), {});
    Tensor<double> h = ref_linear(dbl(x), as_double(mlp.up_proj.weight), {});
    for (int64_t i = 0; i < h.numel(); ++i) h.data()[i] *= silu_d(g.data()[i]);
    const Tensor<double> ref = ref_linear(h, as_double(mlp.down_proj.weight), {});
    EXPECT_LT(max_abs_diff(mlp(x), ref), tol) << "d " << d << " f " << f << " N " << N;
  }
}

TEST(Mlp, MatchesDoubleReference) {
  check_mlp<float>(24, 40, 2e-6);
  check_mlp<bf16>(24, 40, 2e-6);
  check_mlp<float>(16, 300, 2e-6);  // two hidden blocks, the second partial
  check_mlp<bf16>(16, 300, 2e-6);
  layers::Mlp<float> mlp(8, 16);
  EXPECT_THAT(error_of([&] {
                mlp(Tensor<float>({3, 16}));
              }),
              HasSubstr("Mlp: x has shape [3, 16], expected [..., d] with d = 8"));
}

// ------------------------------------------------------------------ ShortConv

TEST(ShortConv, MatchesReferenceAndContinuesFromState) {
  struct Case {
    int64_t C, W;
    bool bias;
    ConvActivation act;
  };
  for (const Case& cs :
       {Case{20, 4, true, ConvActivation::kSilu}, Case{37, 3, false, ConvActivation::kSilu},
        Case{16, 4, true, ConvActivation::kNone}, Case{5, 1, false, ConvActivation::kSilu}}) {
    layers::ShortConv<double> conv(cs.C, cs.W, cs.bias, cs.act);
    conv.init_random(31);
    const bool silu = cs.act == ConvActivation::kSilu;
    const Tensor<double> x1 = random_tensor<double>({2, 37, cs.C}, 1);
    const Tensor<double> x2 = random_tensor<double>({2, 9, cs.C}, 2);
    auto state = conv.make_state(2);
    const Tensor<double> y1 = conv(x1, state);
    const Tensor<double> zeros({2, cs.W - 1, cs.C});
    const Tensor<double> b = cs.bias ? as_double(conv.bias) : Tensor<double>();
    EXPECT_LT(max_abs_diff(y1, ref_conv(x1, zeros, as_double(conv.weight), b, silu)), 1e-13);
    // The state holds the last W-1 inputs of x1: the second call continues from them.
    Tensor<double> prev({2, cs.W - 1, cs.C});
    for (int64_t bb = 0; bb < 2; ++bb)
      for (int64_t i = 0; i < cs.W - 1; ++i)
        for (int64_t c = 0; c < cs.C; ++c) prev(bb, i, c) = x1(bb, 37 - (cs.W - 1) + i, c);
    EXPECT_TRUE(bitwise_equal(state.conv, prev));
    const Tensor<double> y2 = conv(x2, state);
    EXPECT_LT(max_abs_diff(y2, ref_conv(x2, prev, as_double(conv.weight), b, silu)), 1e-13);
  }
}

TEST(ShortConv, TokenByTokenEqualsOneCall) {
  layers::ShortConv<float> conv(40, 4, true);
  conv.init_random(5);
  const int64_t T = 29;
  const Tensor<float> x = random_tensor<float>({3, T, 40}, 6);
  auto whole = conv.make_state(3);
  const Tensor<float> y = conv(x, whole);

  auto step = conv.make_state(3);  // one token per call (the decode path)
  Tensor<float> ys({3, T, 40});
  for (int64_t t = 0; t < T; ++t) {
    const TensorView<const float> xt = TensorView<const float>(x.view()).slice(1, t, t + 1);
    conv.forward(xt, step, ys.view().slice(1, t, t + 1));
  }
  EXPECT_LT(max_abs_diff(ys, y), 1e-6);
  EXPECT_LT(max_abs_diff(step.conv, whole.conv), 0.0 + 1e-30);

  auto pieces = conv.make_state(3);  // prompt pieces of mixed sizes, both paths
  Tensor<float> yp({3, T, 40});
  int64_t t0 = 0;
  for (int64_t len : {1, 17, 3, 8}) {
    const TensorView<const float> xt = TensorView<const float>(x.view()).slice(1, t0, t0 + len);
    conv.forward(xt, pieces, yp.view().slice(1, t0, t0 + len));
    t0 += len;
  }
  ASSERT_EQ(t0, T);
  EXPECT_LT(max_abs_diff(yp, y), 1e-6);
  EXPECT_LT(max_abs_diff(pieces.conv, whole.conv), 0.0 + 1e-30);

  auto wrong = conv.make_state(2);
  EXPECT_THAT(error_of([&] { conv(x, wrong); }),
              HasSubstr("ShortConv: state.conv has shape [2, 3, 40], expected [3, 3, 40]"));
  layers::ShortConv<float>::State none;
  EXPECT_THROW(conv(x, none), Error);
  EXPECT_EQ(whole.bytes(), int64_t(3 * 3 * 40 * sizeof(float)));
}

// ------------------------------------------------------------------ weights: save / load

template <class S>
void check_round_trip() {
  layers::Linear<float, S> lin(33, 17, true);
  layers::Embedding<float, S> emb(30, 33);
  layers::Mlp<float, S> mlp(33, 50);
  layers::RMSNorm<float> rms(33);
  layers::LayerNorm<float> ln(33);
  layers::GatedRMSNorm<float> gn(33, 1e-5, GateActivation::kSigmoid, true, 11);
  layers::ShortConv<float> conv(33, 4, true);
  lin.init_random(1);
  emb.init_random(2);
  mlp.init_random(3);
  conv.init_random(4);
  randomize(rms.weight, 5);
  randomize(ln.weight, 6);
  randomize(ln.bias, 7);
  randomize(gn.weight, 8);

  SafeTensorsWriter w;
  lin.save(w, "model.proj");
  emb.save(w, "model.embed_tokens.");
  mlp.save(w, "model.layers.0.mlp");
  rms.save(w, "model.norm");
  ln.save(w, "model.ln");
  gn.save(w, "model.layers.0.attn.o_norm");
  conv.save(w, "model.layers.0.attn.q_conv1d");
  const SafeTensors st = reload(w);
  EXPECT_EQ(st.size(), 12u);
  EXPECT_TRUE(st.contains("model.layers.0.mlp.down_proj.weight"));
  EXPECT_TRUE(st.contains("model.embed_tokens.weight"));
  const Dtype stored = std::is_same_v<S, bf16> ? Dtype::kBF16 : Dtype::kF32;
  EXPECT_EQ(st.info("model.proj.weight").dtype, stored);
  const std::vector<int64_t> conv_dims = {33, 1, 4};
  EXPECT_EQ(st.info("model.layers.0.attn.q_conv1d.weight").dims, conv_dims);

  layers::Linear<float, S> lin2(33, 17, true);
  layers::Embedding<float, S> emb2(30, 33);
  layers::Mlp<float, S> mlp2(33, 50);
  layers::RMSNorm<float> rms2(33);
  layers::LayerNorm<float> ln2(33);
  layers::GatedRMSNorm<float> gn2(33, 1e-5, GateActivation::kSigmoid, true, 11);
  layers::ShortConv<float> conv2(33, 4, true);
  lin2.load(st, "model.proj");
  emb2.load(st, "model.embed_tokens");
  mlp2.load(st, "model.layers.0.mlp.");
  rms2.load(st, "model.norm");
  ln2.load(st, "model.ln");
  gn2.load(st, "model.layers.0.attn.o_norm");
  conv2.load(st, "model.layers.0.attn.q_conv1d");

  const Tensor<float> x = random_tensor<float>({2, 6, 33}, 9);
  const Tensor<float> z = random_tensor<float>({2, 6, 33}, 10);
  const std::vector<int32_t> ids = {1, 29, 4};
  EXPECT_TRUE(bitwise_equal(lin(x), lin2(x)));
  EXPECT_TRUE(bitwise_equal(emb(ids), emb2(ids)));
  EXPECT_TRUE(bitwise_equal(mlp(x), mlp2(x)));
  EXPECT_TRUE(bitwise_equal(rms(x), rms2(x)));
  EXPECT_TRUE(bitwise_equal(ln(x), ln2(x)));
  EXPECT_TRUE(bitwise_equal(gn(x, z), gn2(x, z)));
  auto s1 = conv.make_state(2), s2 = conv2.make_state(2);
  EXPECT_TRUE(bitwise_equal(conv(x, s1), conv2(x, s2)));
}

TEST(Weights, SaveLoadRoundTripIsBitwise) {
  check_round_trip<float>();
  check_round_trip<bf16>();
}

TEST(Weights, LoadErrorsNameTheTensor) {
  layers::Mlp<float> mlp(8, 16);
  mlp.init_random(1);
  SafeTensorsWriter w;
  mlp.gate_proj.save(w, "model.layers.0.mlp.gate_proj");
  mlp.down_proj.save(w, "model.layers.0.mlp.down_proj");
  w.add("model.layers.0.mlp.up_proj.weight", random_tensor<float>({16, 9}, 2));  // misshaped
  const SafeTensors st = reload(w, "ckpt.safetensors");

  layers::Mlp<float> m2(8, 16);
  EXPECT_THAT(error_of([&] { m2.load(st, "model.layers.0.mlp"); }),
              HasSubstr("Linear: tensor 'model.layers.0.mlp.up_proj.weight' in ckpt.safetensors "
                        "is F32 [16, 9], expected [16, 8]"));
  EXPECT_THAT(error_of([&] { m2.load(st, "model.layers.1.mlp"); }),
              HasSubstr("Linear: tensor 'model.layers.1.mlp.gate_proj.weight' not found in "
                        "ckpt.safetensors (expected shape [16, 8])"));
  // The message lists what is under the prefix (here: a wrong layer name).
  layers::Linear<float> lin(8, 16);
  const std::string msg = error_of([&] { lin.load(st, "model.layers.0.mlp.gate"); });
  EXPECT_THAT(msg, HasSubstr("tensors under 'model.layers.0.mlp.gate': "
                             "'model.layers.0.mlp.gate_proj.weight'"));
  // A layer configured with a bias that the file lacks, and the other way round.
  layers::Linear<float> with_bias(8, 16, true);
  EXPECT_THAT(error_of([&] { with_bias.load(st, "model.layers.0.mlp.gate_proj"); }),
              HasSubstr("'model.layers.0.mlp.gate_proj.bias' not found"));
  SafeTensorsWriter wb;
  with_bias.init_random(3);
  with_bias.save(wb, "p");
  layers::Linear<float> no_bias(8, 16, false);
  EXPECT_THAT(error_of([&] { no_bias.load(reload(wb), "p"); }),
              HasSubstr("tensor 'p.bias' is in layers.safetensors but the layer was configured "
                        "without it"));

  // Integer and F8 tensors are not weights the layers convert.
  const SafeTensors ints = raw_file({
      {"norm.weight", "I32", {4}, le_bytes(std::vector<int32_t>{1, 2, 3, 4})},
      {"emb.weight", "F8_E4M3", {2, 2}, {1, 2, 3, 4}},
  });
  layers::RMSNorm<float> rms(4);
  EXPECT_THAT(error_of([&] { rms.load(ints, "norm"); }),
              HasSubstr("RMSNorm: tensor 'norm.weight' in raw.safetensors is I32 [4], expected "
                        "[4] of F32, BF16, F16 or F64"));
  layers::Embedding<float, bf16> emb(2, 2);
  EXPECT_THAT(error_of([&] { emb.load(ints, "emb"); }),
              HasSubstr("tensor 'emb.weight' in raw.safetensors is F8_E4M3 [2, 2]"));
}

TEST(Weights, LoadConvertsFileDtypes) {
  // 1, -2, 0.333..., 65504 as F16 / BF16 / F64: exact in float.
  const std::vector<uint16_t> f16 = {0x3C00, 0xC000, 0x3555, 0x7BFF};
  const std::vector<uint16_t> b16 = {0x3F80, 0xC000, 0x3EAB, 0x477F};
  const std::vector<double> f64 = {1.0, -2.0, 1.0 / 3.0, 65504.0};
  const std::vector<float> f32 = {1.0f, -2.0f, 1.0f / 3.0f, 1.00390625f};  // last: a bf16 tie
  const SafeTensors st = raw_file({
      {"a.weight", "F16", {1, 4}, le_bytes(f16)},
      {"b.weight", "BF16", {1, 4}, le_bytes(b16)},
      {"c.weight", "F64", {1, 4}, le_bytes(f64)},
      {"d.weight", "F32", {1, 4}, le_bytes(f32)},
  });
  layers::Linear<float> a(4, 1), b(4, 1), c(4, 1);
  a.load(st, "a");
  b.load(st, "b");
  c.load(st, "c");
  EXPECT_EQ(a.weight.value()(0, 2), 1365.0f / 4096.0f);
  EXPECT_EQ(a.weight.value()(0, 3), 65504.0f);
  EXPECT_EQ(b.weight.value()(0, 2), bf16::to_float(0x3EAB));
  EXPECT_EQ(c.weight.value()(0, 2), 1.0f / 3.0f);
  layers::Linear<float, bf16> d(4, 1);
  d.load(st, "d");  // F32 -> bf16 rounds to nearest even
  for (int i = 0; i < 4; ++i) EXPECT_EQ(d.weight.value()(0, i), bf16(f32[i])) << i;
  EXPECT_EQ(d.weight.value()(0, 3).bits, 0x3F80);  // 1 + 2^-8 ties to even: 1.0
}

// A file tensor equal to the expected shape up to size-1 dims (Kimi Linear's A_log [1, 1, H, 1]
// for [H]) loads in order; other shapes with the same count (a transpose or a reshape) do not.
TEST(Weights, LoadAcceptsSizeOneDimsOnly) {
  const std::vector<float> v = {1, 2, 3, 4, 5, 6};
  const SafeTensors st = raw_file({
      {"p.unit", "F32", {1, 1, 6, 1}, le_bytes(v)},
      {"p.other", "F32", {3, 2}, le_bytes(v)},
  });
  layers::Param<float> unit("unit", {6}), other("other", {6});
  unit.load(st, "p", "Test");
  for (int i = 0; i < 6; ++i) EXPECT_EQ(unit.value()(i), v[size_t(i)]) << i;
  EXPECT_THAT(error_of([&] { other.load(st, "p", "Test"); }),
              HasSubstr("Test: tensor 'p.other' in raw.safetensors is F32 [3, 2], expected [6]"));
  layers::Param<float> mat("unit", {2, 3});
  EXPECT_THROW(mat.load(st, "p", "Test"), Error);
}

TEST(Weights, InitRandomIsSeededAndPlatformIndependent) {
  layers::Linear<float> a(16, 8, true), b(16, 8, true), c(16, 8, true);
  a.init_random(42);
  b.init_random(42);
  c.init_random(43);
  EXPECT_TRUE(bitwise_equal(a.weight.value(), b.weight.value()));
  EXPECT_TRUE(bitwise_equal(a.bias.value(), b.bias.value()));
  EXPECT_FALSE(bitwise_equal(a.weight.value(), c.weight.value()));
  // Values depend on integer arithmetic only: these hold on every platform.
  EXPECT_EQ(layers::splitmix64(0), 0xe220a8397b1dcdafull);
  const double u0 = layers::uniform_pm1(layers::derive_seed(42, "weight"), 0);
  EXPECT_EQ(double(a.weight.value()(0, 0)), double(float(0.25 * u0)));
  double lo = 1, hi = -1;
  for (int64_t i = 0; i < a.weight.numel(); ++i) {
    lo = std::min(lo, double(a.weight.data()[i]));
    hi = std::max(hi, double(a.weight.data()[i]));
  }
  EXPECT_GE(lo, -0.25);
  EXPECT_LT(hi, 0.25);
  EXPECT_LT(lo, -0.15);  // 128 draws spread over the range
  EXPECT_GT(hi, 0.15);
}

// A loader fed corrupted checkpoints raises effattn::Error and nothing else (CI runs this under
// ASan + UBSan). The reader's own fuzz test is in test_safetensors.cpp.
TEST(Weights, CorruptedCheckpointsRaiseErrorOnly) {
  layers::Mlp<float, bf16> mlp(8, 12);
  mlp.init_random(1);
  SafeTensorsWriter w;
  mlp.save(w, "mlp");
  const std::vector<uint8_t> good = w.serialize();
  uint64_t rng = 12345;
  auto next = [&] { return rng = layers::splitmix64(rng); };
  int errors = 0;
  for (int it = 0; it < 200; ++it) {
    std::vector<uint8_t> bytes = good;
    if (it % 2 == 0) {
      bytes.resize(next() % bytes.size());
    } else {
      for (int k = 0; k < 1 + it % 4; ++k) bytes[next() % bytes.size()] = uint8_t(next());
    }
    try {
      layers::Mlp<float, bf16> m(8, 12);
      m.load(SafeTensors::from_buffer(bytes, "fuzz"), "mlp");
      m(random_tensor<float>({2, 8}, 1));
    } catch (const Error&) {
      ++errors;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "variant " << it << ": non-effattn exception " << e.what();
    }
  }
  EXPECT_GT(errors, 100);
}

}  // namespace
}  // namespace effattn
