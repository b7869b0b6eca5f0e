// Tests of the Mamba-2 SSD front end (ops/ssm/ssd.hpp) on the linear-attention engine:
// chunk / recurrent / engine-naive == ssd_naive (the [P, N] recurrence from the definition) in
// double with groups, D [H] / [H, P], z gate, dt_bias + softplus, dt_limit clamp and initial
// state; pieces == one call; varlen == separate calls; threads; bad arguments.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "effattn/ops/ssm/ssd.hpp"
#include "test_util.hpp"

using namespace effattn;
using effattn::testing::max_abs;
using effattn::testing::max_abs_diff;
using effattn::testing::random_tensor;

namespace {

template <class T>
struct SsdInputs {
  Tensor<T> x, dt, A, Bm, Cm, D, dt_bias, z, h0;
};

using effattn::testing::opt;

// dhp: D is [H, P] (else [H]); full: D, z and dt_bias present.
template <class T>
SsdInputs<T> make(int64_t B, int64_t Tn, int64_t H, int64_t P, int64_t G, int64_t N, uint64_t seed,
                  bool full, bool dhp, int64_t nstate = -1) {
  SsdInputs<T> in;
  if (nstate < 0) nstate = B;
  in.x = random_tensor<T>({B, Tn, H, P}, seed);
  in.dt = random_tensor<T>({B, Tn, H}, seed + 1, full ? -2.0 : 0.01, full ? 1.0 : 0.2);
  in.A = random_tensor<T>({H}, seed + 2, -3.0, -0.2);
  in.Bm = random_tensor<T>({B, Tn, G, N}, seed + 3);
  in.Cm = random_tensor<T>({B, Tn, G, N}, seed + 4);
  in.h0 = random_tensor<T>({nstate, H, P, N}, seed + 5);
  if (full) {
    in.D = dhp ? random_tensor<T>({H, P}, seed + 6) : random_tensor<T>({H}, seed + 6);
    in.dt_bias = random_tensor<T>({H}, seed + 7, -1.0, 0.5);
    in.z = random_tensor<T>({B, Tn, H, P}, seed + 8, -2.0, 2.0);
  }
  return in;
}

template <class T>
struct SsdOut {
  Tensor<T> y, h;
};

template <class T>
SsdOut<T> run(const SsdInputs<T>& in, SsdParams<T> p, bool reference = false,
              bool use_state = true) {
  const int64_t B = in.x.size(0), Tn = in.x.size(1), H = in.x.size(2), P = in.x.size(3),
                N = in.Bm.size(3);
  const int64_t ns = p.cu_seqlens.empty() ? B : int64_t(p.cu_seqlens.size()) - 1;
  SsdOut<T> o{Tensor<T>({B, Tn, H, P}), Tensor<T>({ns, H, P, N})};
  const auto h0 = use_state ? opt(in.h0) : TensorView<const T>{};
  if (reference)
    ssd_naive<T>(in.x, in.dt, in.A, in.Bm, in.Cm, opt(in.D), opt(in.dt_bias), opt(in.z), o.y, p, h0,
                 o.h);
  else
    ssd<T>(in.x, in.dt, in.A, in.Bm, in.Cm, opt(in.D), opt(in.dt_bias), opt(in.z), o.y, p, h0, o.h);
  return o;
}

template <class A, class B>
double rel_err(const Tensor<A>& a, const Tensor<B>& b) {
  return max_abs_diff(a, b) / std::max(1.0, max_abs(b));
}

}  // namespace

TEST(Ssd, FormsAgreeWithReferenceDouble) {
  struct Case {
    int64_t T, H, P, G, N;
    bool full, dhp, softplus, limit;
  };
  const Case cases[] = {{1, 4, 16, 2, 16, false, false, false, false},
                        {7, 2, 8, 1, 40, true, false, true, false},
                        {65, 4, 24, 2, 16, true, true, true, true},
                        {100, 3, 16, 3, 64, true, false, true, false},
                        {257, 2, 16, 1, 16, false, false, false, true}};
  uint64_t seed = 10;
  for (const Case& c : cases) {
    const SsdInputs<double> in =
        make<double>(2, c.T, c.H, c.P, c.G, c.N, seed += 20, c.full, c.dhp);
    SsdParams<double> p;
    p.dt_softplus = c.softplus;
    if (c.limit) p.dt_min = 0.05, p.dt_max = 0.12;
    p.chunk_size = 32;
    const auto ref = run(in, p, true);
    for (auto form : {LinearAttentionForm::kNaive, LinearAttentionForm::kRecurrent,
                      LinearAttentionForm::kChunk, LinearAttentionForm::kAuto}) {
      p.form = form;
      const auto got = run(in, p);
      SCOPED_TRACE("T=" + std::to_string(c.T) + " form=" + std::to_string(int(form)));
      EXPECT_LT(rel_err(got.y, ref.y), 1e-11);
      EXPECT_LT(rel_err(got.h, ref.h), 1e-11);
    }
  }
}

TEST(Ssd, FloatAgainstDoubleReference) {
  const SsdInputs<double> in = make<double>(1, 200, 4, 32, 1, 32, 77, true, false);
  SsdInputs<float> inf;
  auto f = [](const Tensor<double>& t) { return Tensor<float>::from(t.view()); };
  inf.x = f(in.x), inf.dt = f(in.dt), inf.A = f(in.A), inf.Bm = f(in.Bm), inf.Cm = f(in.Cm);
  inf.D = f(in.D), inf.dt_bias = f(in.dt_bias), inf.z = f(in.z), inf.h0 = f(in.h0);
  SsdParams<double> pd;
  pd.dt_softplus = true;
  const auto ref = run(in, pd, true);
  for (auto form : {LinearAttentionForm::kRecurrent, LinearAttentionForm::kChunk}) {
    SsdParams<float> p;
    p.dt_softplus = true;
    p.form = form;
    const auto got = run(inf, p);
    EXPECT_LT(rel_err(got.y, ref.y), 2e-5);
    EXPECT_LT(rel_err(got.h, ref.h), 2e-5);
  }
}

// Prefill in pieces, then decode token by token in place == one call.
TEST(Ssd, PiecesAndInPlaceDecode) {
  const SsdInputs<double> in = make<double>(1, 90, 4, 16, 2, 16, 200, true, true);
  SsdParams<double> p;
  p.dt_softplus = true;
  const auto whole = run(in, p);
  Tensor<double> h = Tensor<double>::from(in.h0.view());
  Tensor<double> y({1, 90, 4, 16});
  auto sl = [](const Tensor<double>& t, int64_t a, int64_t b) {
    return Tensor<double>::from(t.view().slice(1, a, b));
  };
  const int64_t cuts[] = {0, 50, 70, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90};
  for (int i = 0; i + 1 < 14; ++i) {
    const int64_t a = cuts[i], b = cuts[i + 1];
    Tensor<double> yp({1, b - a, 4, 16});
    ssd<double>(sl(in.x, a, b), sl(in.dt, a, b), in.A, sl(in.Bm, a, b), sl(in.Cm, a, b), in.D,
                in.dt_bias, sl(in.z, a, b), yp, p, h, h);
    for (int64_t t = a; t < b; ++t)
      for (int64_t hh = 0; hh < 4; ++hh)
        for (int64_t j = 0; j < 16; ++j) y(0, t, hh, j) = yp(0, t - a, hh, j);
  }
  EXPECT_LT(rel_err(y, whole.y), 1e-11);
  EXPECT_LT(rel_err(h, whole.h), 1e-11);
}

TEST(Ssd, VarlenEqualsSeparateCalls) {
  const std::vector<int64_t> cu = {0, 20, 21, 90};
  const SsdInputs<double> in = make<double>(1, 90, 2, 8, 1, 16, 300, true, false, 3);
  SsdParams<double> p;
  p.dt_softplus = true;
  p.cu_seqlens = cu;
  for (bool reference : {false, true}) {
    const auto packed = run(in, p, reference);
    SsdParams<double> ps;
    ps.dt_softplus = true;
    for (int64_t n = 0; n < 3; ++n) {
      const int64_t a = cu[n], b = cu[n + 1];
      auto sl = [&](const Tensor<double>& t) {
        return Tensor<double>::from(t.view().slice(1, a, b));
      };
      SsdInputs<double> s{sl(in.x),
                          sl(in.dt),
                          Tensor<double>::from(in.A.view()),
                          sl(in.Bm),
                          sl(in.Cm),
                          Tensor<double>::from(in.D.view()),
                          Tensor<double>::from(in.dt_bias.view()),
                          sl(in.z),
                          Tensor<double>::from(in.h0.view().slice(0, n, n + 1))};
      const auto r = run(s, ps, reference);
      EXPECT_LT(max_abs_diff(r.y, Tensor<double>::from(packed.y.view().slice(1, a, b))), 1e-12);
      EXPECT_LT(max_abs_diff(r.h, Tensor<double>::from(packed.h.view().slice(0, n, n + 1))), 1e-12);
    }
  }
}

TEST(Ssd, ThreadsAndChunkSizesAgree) {
  const SsdInputs<float> in = make<float>(2, 150, 4, 16, 2, 32, 400, true, false);
  SsdParams<float> p;
  p.dt_softplus = true;
  p.num_threads = 1;
  const auto a = run(in, p);
  p.num_threads = 2;
  const auto b = run(in, p);
  EXPECT_LT(max_abs_diff(a.y, b.y), 1e-6);
  EXPECT_LT(max_abs_diff(a.h, b.h), 1e-6);
  for (int64_t c : {16, 32}) {
    p.chunk_size = c;
    const auto r = run(in, p);
    EXPECT_LT(rel_err(r.y, a.y), 1e-5) << c;
    EXPECT_LT(rel_err(r.h, a.h), 1e-5) << c;
  }
}

// Strong decay (dt A = -20 per token) stays finite and == recurrent.
TEST(Ssd, StrongDecayFinite) {
  SsdInputs<float> in = make<float>(1, 300, 2, 16, 1, 16, 500, false, false);
  in.dt.fill(1.0f);
  in.A.fill(-20.0f);
  SsdParams<float> p;
  p.form = LinearAttentionForm::kRecurrent;
  const auto rec = run(in, p);
  p.form = LinearAttentionForm::kChunk;
  const auto chk = run(in, p);
  for (int64_t i = 0; i < chk.y.numel(); ++i) ASSERT_TRUE(std::isfinite(chk.y.data()[i]));
  EXPECT_LT(rel_err(chk.y, rec.y), 1e-5);
  EXPECT_LT(rel_err(chk.h, rec.h), 1e-5);
}

TEST(Ssd, BadArguments) {
  const SsdInputs<float> in = make<float>(1, 10, 4, 8, 2, 16, 600, true, false);
  Tensor<float> y({1, 10, 4, 8});
  SsdParams<float> p;
  auto expect_error = [](auto&& f, const std::string& needle) {
    try {
      f();
      ADD_FAILURE() << "no error, expected one mentioning '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  const Tensor<float> B3({1, 10, 3, 16}), Dbad({4, 7}), Abad({3}), hbad({1, 4, 16, 8});
  expect_error([&] { ssd<float>(in.x, in.dt, in.A, B3, B3, in.D, in.dt_bias, in.z, y, p); },
               "not a multiple");
  expect_error([&] { ssd<float>(in.x, in.dt, in.A, in.Bm, in.Cm, Dbad, in.dt_bias, in.z, y, p); },
               "D has shape");
  expect_error([&] { ssd<float>(in.x, in.dt, Abad, in.Bm, in.Cm, in.D, in.dt_bias, in.z, y, p); },
               "A has shape");
  expect_error(
      [&] { ssd<float>(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, in.dt_bias, in.z, y, p, hbad); },
      "initial_state");
  p.dt_min = 1, p.dt_max = 0.5;
  expect_error([&] { ssd<float>(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, in.dt_bias, in.z, y, p); },
               "dt_limit");
}
