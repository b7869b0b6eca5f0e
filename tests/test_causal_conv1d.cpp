// Causal conv1d: the prefill kernel and the decode update against the naive loop, in double at
// ~1e-12, plus state passing, step-by-step decode, varlen, threads, widths with and without a
// SIMD kernel and argument errors.
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "effattn/ops/ssm/ssm.hpp"
#include "test_util.hpp"

namespace {

using effattn::CausalConv1dParams;
using effattn::ConvActivation;
using effattn::Error;
using effattn::Shape;
using effattn::Tensor;
using effattn::TensorView;
using effattn::testing::max_abs;
using effattn::testing::max_abs_diff;
using effattn::testing::random_tensor;

using effattn::testing::opt;

struct Config {
  int64_t B = 1, T = 1, D = 1, W = 4;
  bool bias = true, silu = true, init = true;
  std::string str() const {
    return "B=" + std::to_string(B) + " T=" + std::to_string(T) + " D=" + std::to_string(D) +
           " W=" + std::to_string(W) + " bias=" + std::to_string(bias) +
           " silu=" + std::to_string(silu) + " init=" + std::to_string(init);
  }
  CausalConv1dParams params(int threads = 0) const {
    CausalConv1dParams p;
    p.activation = silu ? ConvActivation::kSilu : ConvActivation::kNone;
    p.num_threads = threads;
    return p;
  }
};

template <class T>
struct Inputs {
  Tensor<T> x, w, bias, s0;
  Inputs(const Config& c, uint64_t seed) {
    x = random_tensor<T>({c.B, c.T, c.D}, seed + 1, -2.0, 2.0);
    w = random_tensor<T>({c.D, c.W}, seed + 2);
    if (c.bias) bias = random_tensor<T>({c.D}, seed + 3);
    if (c.init) s0 = random_tensor<T>({c.B, c.W - 1, c.D}, seed + 4, -2.0, 2.0);
  }
};

struct Outputs {
  Tensor<double> y, s;
};

template <class T>
Outputs to_double(const Tensor<T>& y, const Tensor<T>& s) {
  return {Tensor<double>::from(TensorView<const T>(y.view())),
          Tensor<double>::from(TensorView<const T>(s.view()))};
}

template <class T>
Outputs run_naive(const Config& c, const Inputs<T>& in) {
  Tensor<T> y({c.B, c.T, c.D}), s({c.B, c.W - 1, c.D});
  effattn::causal_conv1d_naive<T>(in.x, in.w, opt(in.bias), opt(in.s0), y, s, c.params());
  return to_double(y, s);
}
template <class T>
Outputs run_fast(const Config& c, const Inputs<T>& in, int threads = 0) {
  Tensor<T> y({c.B, c.T, c.D}), s({c.B, c.W - 1, c.D});
  effattn::causal_conv1d<T>(in.x, in.w, opt(in.bias), opt(in.s0), y, s, c.params(threads));
  return to_double(y, s);
}
template <class T>
Outputs run_update(const Config& c, const Inputs<T>& in) {
  Tensor<T> y({c.B, c.T, c.D});
  Tensor<T> s = in.s0.empty() ? Tensor<T>({c.B, c.W - 1, c.D}) : in.s0;
  effattn::causal_conv1d_update<T>(in.x, in.w, opt(in.bias), s, y, c.params());
  return to_double(y, s);
}

void expect_close(const Tensor<double>& a, const Tensor<double>& b, double tol,
                  const std::string& what) {
  const double scale = std::max(1.0, max_abs(b));
  EXPECT_LE(max_abs_diff(a, b), tol * scale) << what << " (scale " << scale << ")";
}

// T in {1,2,7,63,100,257,1000} x D in {1,5,24,40,1536} x W (SIMD kernels for W <= 8, the
// scalar loop beyond), a representative subset with a mix of options.
std::vector<Config> configs() {
  std::vector<Config> cs;
  auto add = [&](int64_t B, int64_t T, int64_t D, int64_t W, bool bias, bool silu, bool init) {
    Config c;
    c.B = B, c.T = T, c.D = D, c.W = W, c.bias = bias, c.silu = silu, c.init = init;
    cs.push_back(c);
  };
  add(1, 1, 1, 4, true, true, true);
  add(2, 1, 40, 4, true, true, true);
  add(2, 2, 5, 4, false, true, true);
  add(1, 7, 24, 3, true, false, false);
  add(2, 63, 40, 4, true, true, false);
  add(1, 100, 5, 2, false, false, true);
  add(2, 100, 24, 1, true, true, false);
  add(1, 257, 40, 4, false, false, false);
  add(1, 257, 24, 5, true, true, true);
  add(1, 1000, 40, 4, true, true, true);
  add(1, 1000, 1, 8, true, false, true);
  add(1, 7, 1536, 4, true, true, true);
  add(1, 63, 1536, 4, false, true, false);
  add(1, 300, 1536, 4, true, true, true);
  add(1, 100, 24, 9, true, true, true);
  add(1, 2, 40, 9, true, false, true);
  return cs;
}

TEST(CausalConv1d, FastAndUpdateMatchNaiveInDouble) {
  uint64_t seed = 200;
  for (const Config& c : configs()) {
    const Inputs<double> in(c, seed += 10);
    const Outputs ref = run_naive(c, in);
    EXPECT_GT(max_abs(ref.y), 1e-2) << c.str();
    const Outputs fast = run_fast(c, in), up = run_update(c, in);
    expect_close(fast.y, ref.y, 1e-13, "causal_conv1d y, " + c.str());
    expect_close(fast.s, ref.s, 0, "causal_conv1d state, " + c.str());
    expect_close(up.y, ref.y, 1e-13, "causal_conv1d_update y, " + c.str());
    expect_close(up.s, ref.s, 0, "causal_conv1d_update state, " + c.str());
  }
}

TEST(CausalConv1d, FloatMatchesDoubleReference) {
  Config c;
  c.B = 2, c.T = 100, c.D = 1536;
  const Inputs<double> ind(c, 3);
  const Outputs ref = run_naive(c, ind);
  const Inputs<float> inf(c, 3);
  expect_close(run_fast(c, inf).y, ref.y, 1e-5, "y");
  expect_close(run_update(c, inf).y, ref.y, 1e-5, "update y");
}

// Pieces of T (some shorter than W - 1) with the state passed along == one call.
TEST(CausalConv1d, PiecesWithStatePassedMatchOneCall) {
  Config c;
  c.B = 2, c.T = 300, c.D = 40, c.W = 4;
  const Inputs<double> in(c, 11);
  const Outputs whole = run_fast(c, in);
  const int64_t cuts[] = {0, 1, 2, 40, 41, 300};
  Tensor<double> y({c.B, c.T, c.D}), s = in.s0;
  for (int i = 0; i + 1 < 6; ++i) {
    const int64_t a = cuts[i], b = cuts[i + 1];
    Tensor<double> s_next({c.B, c.W - 1, c.D});
    effattn::causal_conv1d<double>(TensorView<const double>(in.x.view()).slice(1, a, b), in.w,
                                   in.bias, s, y.view().slice(1, a, b), s_next, c.params());
    s = s_next;
  }
  expect_close(y, whole.y, 1e-14, "y");
  expect_close(s, whole.s, 0, "state");
}

// Prefill T0 tokens, then decode one token (and then three) at a time with the in-place update.
TEST(CausalConv1d, StepByStepDecodeMatchesPrefill) {
  Config c;
  c.B = 3, c.T = 61, c.D = 40, c.W = 4;
  const Inputs<double> in(c, 12);
  const Outputs whole = run_fast(c, in);
  const TensorView<const double> xv = in.x.view();
  Tensor<double> y({c.B, c.T, c.D}), state({c.B, c.W - 1, c.D});
  const int64_t T0 = 20;
  effattn::causal_conv1d<double>(xv.slice(1, 0, T0), in.w, in.bias, in.s0, y.view().slice(1, 0, T0),
                                 state, c.params());
  int64_t t = T0;
  for (; t < 40; ++t)
    effattn::causal_conv1d_update<double>(xv.slice(1, t, t + 1), in.w, in.bias, state,
                                          y.view().slice(1, t, t + 1), c.params());
  for (; t < c.T; t += 3)
    effattn::causal_conv1d_update<double>(xv.slice(1, t, t + 3), in.w, in.bias, state,
                                          y.view().slice(1, t, t + 3), c.params());
  expect_close(y, whole.y, 1e-14, "y");
  expect_close(state, whole.s, 0, "state");
}

TEST(CausalConv1d, OneThreadEqualsTwoThreads) {
  Config c;
  c.B = 2, c.T = 600, c.D = 520, c.W = 4;  // 3 work items per sequence, a partial register
  const Inputs<float> in(c, 13);
  const Outputs one = run_fast(c, in, 1), two = run_fast(c, in, 2);
  EXPECT_EQ(max_abs_diff(one.y, two.y), 0.0);
  EXPECT_EQ(max_abs_diff(one.s, two.s), 0.0);
}

// Packed sequences (one empty, some shorter than W - 1) == separate calls; states [S, W-1, D].
TEST(CausalConv1d, VarlenMatchesSeparateCalls) {
  const std::vector<int64_t> cu = {0, 2, 2, 300, 301, 340};
  const int64_t S = 5, T = 340, D = 40, W = 4;
  Config c;
  c.B = 1, c.T = T, c.D = D, c.W = W, c.init = false;
  const Inputs<double> in(c, 14);
  const Tensor<double> s0 = random_tensor<double>({S, W - 1, D}, 15);
  for (int form = 0; form < 3; ++form) {
    CausalConv1dParams p = c.params();
    p.cu_seqlens = cu;
    Tensor<double> y({1, T, D}), s = s0;
    if (form == 0) effattn::causal_conv1d_naive<double>(in.x, in.w, in.bias, s0, y, s, p);
    if (form == 1) effattn::causal_conv1d<double>(in.x, in.w, in.bias, s0, y, s, p);
    if (form == 2) effattn::causal_conv1d_update<double>(in.x, in.w, in.bias, s, y, p);
    for (int64_t q = 0; q < S; ++q) {
      const int64_t a = cu[q], b = cu[q + 1];
      Tensor<double> yq({1, b - a, D}), sq({1, W - 1, D});
      effattn::causal_conv1d_naive<double>(
          TensorView<const double>(in.x.view()).slice(1, a, b), in.w, in.bias,
          TensorView<const double>(s0.view()).slice(0, q, q + 1), yq, sq, c.params());
      const std::string what = "form " + std::to_string(form) + ", seq " + std::to_string(q);
      expect_close(Tensor<double>::from(TensorView<const double>(y.view()).slice(1, a, b)), yq,
                   1e-13, what + " y");
      expect_close(Tensor<double>::from(TensorView<const double>(s.view()).slice(0, q, q + 1)), sq,
                   0, what + " state");
    }
  }
}

// Strided input: a channel slice of a wider buffer, output into a slice of another.
TEST(CausalConv1d, StridedViews) {
  Config c;
  c.B = 2, c.T = 70, c.D = 24, c.W = 4;
  const Tensor<double> wide = random_tensor<double>({c.B, c.T, 3 * c.D}, 16);
  Inputs<double> in(c, 17);
  in.x = Tensor<double>::from(TensorView<const double>(wide.view()).slice(2, c.D, 2 * c.D));
  const Outputs ref = run_naive(c, in);
  Tensor<double> yb({c.B, c.T, 2 * c.D}), s({c.B, c.W - 1, c.D});
  effattn::causal_conv1d<double>(TensorView<const double>(wide.view()).slice(2, c.D, 2 * c.D), in.w,
                                 in.bias, in.s0, yb.view().slice(2, c.D, 2 * c.D), s, c.params());
  expect_close(Tensor<double>::from(TensorView<const double>(yb.view()).slice(2, c.D, 2 * c.D)),
               ref.y, 1e-13, "y");
  expect_close(Tensor<double>::from(TensorView<const double>(s.view())), ref.s, 0, "state");
}

// T = 0: nothing to write, final state = initial state.
TEST(CausalConv1d, EmptySequenceKeepsState) {
  Config c;
  c.B = 2, c.T = 0, c.D = 24, c.W = 4;
  const Inputs<double> in(c, 19);
  const Tensor<double> s0 = Tensor<double>::from(TensorView<const double>(in.s0.view()));
  EXPECT_EQ(max_abs_diff(run_fast(c, in).s, s0), 0.0);
  EXPECT_EQ(max_abs_diff(run_update(c, in).s, s0), 0.0);
}

TEST(CausalConv1d, BadArgumentsRaise) {
  Config c;
  c.B = 2, c.T = 10, c.D = 8, c.W = 4;
  const Inputs<float> in(c, 18);
  Tensor<float> y({2, 10, 8}), s({2, 3, 8});
  auto expect_error = [](const std::function<void()>& fn, const std::string& needle) {
    try {
      fn();
      ADD_FAILURE() << "no error, expected one naming '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  const Tensor<float> w_bad({9, 4}), b_bad({7}), x_bad({2, 8});
  Tensor<float> s_bad({2, 4, 8});
  auto forms = {effattn::causal_conv1d_naive<float>, effattn::causal_conv1d<float>};
  for (auto fn : forms) {
    expect_error([&] { fn(in.x, w_bad, in.bias, {}, y, {}, {}); }, "weight has shape [9, 4]");
    expect_error([&] { fn(in.x, in.w, b_bad, {}, y, {}, {}); }, "bias has shape [7]");
    expect_error([&] { fn(in.x, in.w, in.bias, s_bad, y, {}, {}); },
                 "initial_state has shape [2, 4, 8], expected [B, W-1, D]");
    expect_error([&] { fn(in.x, in.w, in.bias, {}, y, s_bad, {}); }, "final_state has shape");
    expect_error([&] { fn(x_bad, in.w, in.bias, {}, y, {}, {}); }, "x has shape [2, 8]");
    CausalConv1dParams p;
    p.cu_seqlens = {0, 10};
    expect_error([&] { fn(in.x, in.w, in.bias, {}, y, {}, p); }, "batch is 2, expected 1");
  }
  expect_error([&] { effattn::causal_conv1d_update<float>(in.x, in.w, in.bias, {}, y, {}); },
               "conv_state is required");
  expect_error(
      [&] {
        effattn::causal_conv1d_update<float>(in.x, in.w, in.bias, s.view().slice(1, 0, 2), y, {});
      },
      "causal_conv1d_update: initial_state has shape [2, 2, 8]");
}

}  // namespace
