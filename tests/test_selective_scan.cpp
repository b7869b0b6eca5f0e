// Mamba-1 selective scan: the chunk (prefill), recurrent and step (decode) forms and the front
// end against the naive token loop, in double at ~1e-10, plus state passing, varlen, threads,
// grouped B/C, optional inputs and argument errors.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "effattn/ops/ssm/ssm.hpp"
#include "test_util.hpp"

namespace {

using effattn::Error;
using effattn::SelectiveScanParams;
using effattn::Shape;
using effattn::Tensor;
using effattn::TensorView;
using effattn::testing::max_abs;
using effattn::testing::max_abs_diff;
using effattn::testing::random_tensor;

using effattn::testing::opt;

struct Config {
  int64_t B = 1, T = 1, D = 1, N = 1, G = 0;  // G = 0: B/C as [B, T, N]; else [B, T, G, N]
  bool z = true, Dskip = true, bias = true, init = false, softplus = true;
  std::string str() const {
    return "B=" + std::to_string(B) + " T=" + std::to_string(T) + " D=" + std::to_string(D) +
           " N=" + std::to_string(N) + " G=" + std::to_string(G) + " z=" + std::to_string(z) +
           " Dskip=" + std::to_string(Dskip) + " bias=" + std::to_string(bias) +
           " init=" + std::to_string(init) + " softplus=" + std::to_string(softplus);
  }
};

// Inputs at the ranges of a trained Mamba layer: A = -exp(A_log) in [-e^2.5, -e^-1],
// dt = softplus(delta + bias) around 1e-3 .. 1e-1 (or up to ~1 without softplus).
template <class T>
struct Inputs {
  Tensor<T> u, delta, z, A, B, C, D, bias, h0;
  Inputs(const Config& c, uint64_t seed) {
    u = random_tensor<T>({c.B, c.T, c.D}, seed + 1);
    delta = random_tensor<T>({c.B, c.T, c.D}, seed + 2, -1.0, 1.0);
    if (c.z) z = random_tensor<T>({c.B, c.T, c.D}, seed + 3, -2.0, 2.0);
    A = random_tensor<T>({c.D, c.N}, seed + 4, -1.0, 2.5);
    for (int64_t i = 0; i < A.numel(); ++i) A.data()[i] = -std::exp(A.data()[i]);
    const Shape bc = c.G ? Shape{c.B, c.T, c.G, c.N} : Shape{c.B, c.T, c.N};
    B = random_tensor<T>(bc, seed + 5);
    C = random_tensor<T>(bc, seed + 6);
    if (c.Dskip) D = random_tensor<T>({c.D}, seed + 7);
    if (c.bias) bias = random_tensor<T>({c.D}, seed + 8, c.softplus ? -4.0 : 0.0, -1.0);
    if (c.init) h0 = random_tensor<T>({c.B, c.D, c.N}, seed + 9);
    if (!c.softplus) {  // dt must be positive without softplus
      for (int64_t i = 0; i < delta.numel(); ++i)
        delta.data()[i] = std::abs(delta.data()[i]) + 0.01;
    }
  }
};

enum class Form { kNaive, kChunk, kRecurrent, kFront };
const char* form_name(Form f) {
  switch (f) {
    case Form::kNaive:
      return "naive";
    case Form::kChunk:
      return "chunk";
    case Form::kRecurrent:
      return "recurrent";
    default:
      return "selective_scan";
  }
}

template <class T>
void run(Form f, const Inputs<T>& in, TensorView<const T> h0, TensorView<T> y, TensorView<T> h1,
         const SelectiveScanParams& p) {
  auto call = [&](auto fn) {
    fn(in.u, in.delta, in.A, in.B, in.C, opt(in.D), opt(in.z), opt(in.bias), h0, y, h1, p);
  };
  switch (f) {
    case Form::kNaive:
      call(effattn::selective_scan_naive<T>);
      break;
    case Form::kChunk:
      call(effattn::selective_scan_chunk<T>);
      break;
    case Form::kRecurrent:
      call(effattn::selective_scan_recurrent<T>);
      break;
    default:
      call(effattn::selective_scan<T>);
      break;
  }
}

struct Outputs {
  Tensor<double> y, h;
};

template <class T>
Outputs run_config(Form f, const Config& c, const Inputs<T>& in, int threads = 0) {
  Tensor<T> y({c.B, c.T, c.D}), h({c.B, c.D, c.N});
  SelectiveScanParams p;
  p.delta_softplus = c.softplus;
  p.num_threads = threads;
  run<T>(f, in, opt(in.h0), y, h, p);
  return {Tensor<double>::from(TensorView<const T>(y.view())),
          Tensor<double>::from(TensorView<const T>(h.view()))};
}

// |a - b| <= tol * max(1, max|b|)
void expect_close(const Tensor<double>& a, const Tensor<double>& b, double tol,
                  const std::string& what) {
  const double scale = std::max(1.0, max_abs(b));
  EXPECT_LE(max_abs_diff(a, b), tol * scale) << what << " (scale " << scale << ")";
}

// A representative subset of T in {1,2,7,63,100,257,1000} x D in {1,5,24,40,1536} x N in
// {1,16,24}, each with a different mix of optional inputs and B/C grouping.
std::vector<Config> configs() {
  std::vector<Config> cs;
  auto add = [&](int64_t B, int64_t T, int64_t D, int64_t N, int64_t G, bool z, bool Ds, bool bias,
                 bool init, bool sp = true) {
    Config c;
    c.B = B, c.T = T, c.D = D, c.N = N, c.G = G, c.z = z, c.Dskip = Ds, c.bias = bias,
    c.init = init, c.softplus = sp;
    cs.push_back(c);
  };
  add(1, 1, 1, 1, 0, true, true, true, false);
  add(2, 1, 40, 16, 0, true, true, true, true);
  add(2, 2, 5, 16, 0, false, true, true, true);
  add(1, 7, 24, 24, 3, true, false, true, false);
  add(2, 63, 40, 16, 4, true, true, false, true);
  add(1, 100, 5, 24, 0, false, false, false, false);
  add(2, 100, 24, 1, 2, true, true, true, true, false);
  add(1, 257, 24, 16, 0, true, true, true, true);
  add(1, 257, 40, 24, 8, false, true, true, false);
  add(1, 1000, 40, 16, 0, true, true, true, true);
  add(1, 1000, 5, 1, 1, true, false, true, false);
  add(1, 7, 1536, 16, 0, true, true, true, true);
  add(1, 2, 1536, 24, 2, false, true, true, false);
  add(1, 63, 1536, 1, 0, true, true, false, true);
  return cs;
}

TEST(SelectiveScan, FastFormsMatchNaiveInDouble) {
  uint64_t seed = 100;
  for (const Config& c : configs()) {
    const Inputs<double> in(c, seed += 10);
    const Outputs ref = run_config(Form::kNaive, c, in);
    EXPECT_GT(max_abs(ref.y), 1e-3) << c.str();  // the comparison is not vacuous
    for (Form f : {Form::kChunk, Form::kRecurrent, Form::kFront}) {
      const Outputs got = run_config(f, c, in);
      expect_close(got.y, ref.y, 1e-12, std::string(form_name(f)) + " y, " + c.str());
      expect_close(got.h, ref.h, 1e-12, std::string(form_name(f)) + " state, " + c.str());
    }
  }
}

TEST(SelectiveScan, FloatMatchesDoubleReference) {
  Config c;
  c.B = 2, c.T = 1000, c.D = 40, c.N = 16, c.init = true;
  const Inputs<double> ind(c, 7);
  const Outputs ref = run_config(Form::kNaive, c, ind);
  Inputs<float> inf(c, 7);  // same seeds: the same values, rounded to float
  for (Form f : {Form::kNaive, Form::kChunk, Form::kRecurrent}) {
    const Outputs got = run_config(f, c, inf);
    expect_close(got.y, ref.y, 2e-5, std::string(form_name(f)) + " y");
    expect_close(got.h, ref.h, 2e-5, std::string(form_name(f)) + " state");
  }
}

// Running [0, a), [a, b), [b, T) with the state passed along == one call.
TEST(SelectiveScan, PiecesWithStatePassedMatchOneCall) {
  for (Form f : {Form::kChunk, Form::kRecurrent, Form::kFront}) {
    Config c;
    c.B = 2, c.T = 257, c.D = 40, c.N = 16, c.G = 2, c.init = true;
    const Inputs<double> in(c, 21);
    const Outputs whole = run_config(f, c, in);
    const int64_t cuts[] = {0, 1, 65, 200, 257};
    Tensor<double> y({c.B, c.T, c.D}), h = in.h0;
    SelectiveScanParams p;
    for (int i = 0; i + 1 < 5; ++i) {
      const int64_t a = cuts[i], b = cuts[i + 1];
      auto piece = [&](const Tensor<double>& x) {
        return x.empty() ? TensorView<const double>{}
                         : TensorView<const double>(x.view()).slice(1, a, b);
      };
      Tensor<double> h_next({c.B, c.D, c.N});
      auto fn = f == Form::kChunk       ? effattn::selective_scan_chunk<double>
                : f == Form::kRecurrent ? effattn::selective_scan_recurrent<double>
                                        : effattn::selective_scan<double>;
      fn(piece(in.u), piece(in.delta), in.A, piece(in.B), piece(in.C), opt(in.D), piece(in.z),
         opt(in.bias), h, y.view().slice(1, a, b), h_next, p);
      h = h_next;
    }
    expect_close(y, whole.y, 1e-12, std::string(form_name(f)) + " y");
    expect_close(h, whole.h, 1e-12, std::string(form_name(f)) + " state");
  }
}

// Prefill T0 tokens, then decode the rest one token at a time with the in-place step.
TEST(SelectiveScan, StepByStepDecodeMatchesPrefill) {
  Config c;
  c.B = 2, c.T = 40, c.D = 24, c.N = 16, c.G = 3, c.init = true;
  const Inputs<double> in(c, 33);
  const Outputs whole = run_config(Form::kChunk, c, in);
  const int64_t T0 = 17;
  auto piece = [&](const Tensor<double>& x, int64_t a, int64_t b) {
    return x.empty() ? TensorView<const double>{}
                     : TensorView<const double>(x.view()).slice(1, a, b);
  };
  Tensor<double> y({c.B, c.T, c.D}), state({c.B, c.D, c.N});
  effattn::selective_scan_chunk<double>(
      piece(in.u, 0, T0), piece(in.delta, 0, T0), in.A, piece(in.B, 0, T0), piece(in.C, 0, T0),
      opt(in.D), piece(in.z, 0, T0), opt(in.bias), in.h0, y.view().slice(1, 0, T0), state);
  for (int64_t t = T0; t < c.T; ++t) {
    effattn::selective_scan_step<double>(piece(in.u, t, t + 1), piece(in.delta, t, t + 1), in.A,
                                         piece(in.B, t, t + 1), piece(in.C, t, t + 1), opt(in.D),
                                         piece(in.z, t, t + 1), opt(in.bias), state,
                                         y.view().slice(1, t, t + 1));
  }
  expect_close(y, whole.y, 1e-12, "y");
  expect_close(state, whole.h, 1e-12, "state");
}

// Channel d reads group d / (D / G): equal to G separate calls on channel slices with that
// group's B/C as [B, T, N].
TEST(SelectiveScan, GroupedBCMatchesPerGroupCalls) {
  for (Form f : {Form::kNaive, Form::kChunk, Form::kRecurrent}) {
    Config c;
    c.B = 2, c.T = 70, c.D = 40, c.N = 16, c.G = 4, c.init = true;
    const Inputs<double> in(c, 44);
    const Outputs whole = run_config(f, c, in);
    const int64_t dpg = c.D / c.G;
    Tensor<double> y({c.B, c.T, c.D}), h({c.B, c.D, c.N});
    for (int64_t g = 0; g < c.G; ++g) {
      auto ch = [&](const Tensor<double>& x, int dim) {
        return TensorView<const double>(x.view()).slice(dim, g * dpg, (g + 1) * dpg);
      };
      const TensorView<const double> Bg = TensorView<const double>(in.B.view()).select(2, g);
      const TensorView<const double> Cg = TensorView<const double>(in.C.view()).select(2, g);
      auto fn = f == Form::kNaive   ? effattn::selective_scan_naive<double>
                : f == Form::kChunk ? effattn::selective_scan_chunk<double>
                                    : effattn::selective_scan_recurrent<double>;
      fn(ch(in.u, 2), ch(in.delta, 2), ch(in.A, 0), Bg, Cg, ch(in.D, 0), ch(in.z, 2),
         ch(in.bias, 0), ch(in.h0, 1), y.view().slice(2, g * dpg, (g + 1) * dpg),
         h.view().slice(1, g * dpg, (g + 1) * dpg), {});
    }
    expect_close(y, whole.y, 1e-12, std::string(form_name(f)) + " y");
    expect_close(h, whole.h, 1e-12, std::string(form_name(f)) + " state");
  }
}

// No D == D of zeros; no delta_bias == zeros; no initial state == zeros; no z differs from z.
TEST(SelectiveScan, OptionalInputsMeanZeros) {
  Config c;
  c.B = 1, c.T = 63, c.D = 24, c.N = 16, c.init = false;
  const Inputs<double> in(c, 55);
  for (Form f : {Form::kChunk, Form::kRecurrent}) {
    const Outputs base = run_config(f, c, in);
    // (Fresh Inputs, same seed: copying a Tensor that is empty() is not supported by Tensor.)
    Inputs<double> zeros(c, 55);
    zeros.D = Tensor<double>({c.D});
    zeros.bias = Tensor<double>({c.D});
    zeros.h0 = Tensor<double>({c.B, c.D, c.N});
    Config cz = c;
    cz.init = true;
    const Outputs with_zeros = run_config(f, cz, zeros);
    Inputs<double> none(c, 55);
    none.D = Tensor<double>();
    none.bias = Tensor<double>();
    const Outputs without = run_config(f, c, none);
    expect_close(without.y, with_zeros.y, 1e-14, form_name(f));
    expect_close(without.h, with_zeros.h, 1e-14, form_name(f));
    Inputs<double> noz(c, 55);
    noz.z = Tensor<double>();
    EXPECT_GT(max_abs_diff(run_config(f, c, noz).y, base.y), 1e-3) << form_name(f);
  }
}

TEST(SelectiveScan, OneThreadEqualsTwoThreads) {
  Config c;
  c.B = 2, c.T = 64, c.D = 520, c.N = 16, c.init = true;  // 33 channel blocks (one partial)
  const Inputs<float> in(c, 66);
  for (Form f : {Form::kChunk, Form::kRecurrent}) {
    const Outputs one = run_config(f, c, in, 1), two = run_config(f, c, in, 2);
    EXPECT_EQ(max_abs_diff(one.y, two.y), 0.0) << form_name(f);
    EXPECT_EQ(max_abs_diff(one.h, two.h), 0.0) << form_name(f);
  }
}

// Packed sequences with cu_seqlens (one empty) == separate calls, states [S, D, N].
TEST(SelectiveScan, VarlenMatchesSeparateCalls) {
  const std::vector<int64_t> cu = {0, 5, 5, 75, 76, 140};
  const int64_t S = 5, T = 140, D = 40, N = 16, G = 2;
  Config c;
  c.B = 1, c.T = T, c.D = D, c.N = N, c.G = G, c.init = false;
  const Inputs<double> in(c, 77);
  const Tensor<double> h0 = random_tensor<double>({S, D, N}, 78);
  for (Form f : {Form::kNaive, Form::kChunk, Form::kRecurrent, Form::kFront}) {
    Tensor<double> y({1, T, D}), h({S, D, N});
    SelectiveScanParams p;
    p.cu_seqlens = cu;
    run<double>(f, in, h0, y, h, p);
    for (int64_t s = 0; s < S; ++s) {
      const int64_t a = cu[s], b = cu[s + 1];
      auto piece = [&](const Tensor<double>& x) {
        return TensorView<const double>(x.view()).slice(1, a, b);
      };
      Tensor<double> ys({1, b - a, D}), hs({1, D, N});
      effattn::selective_scan_naive<double>(
          piece(in.u), piece(in.delta), in.A, piece(in.B), piece(in.C), in.D, piece(in.z), in.bias,
          TensorView<const double>(h0.view()).slice(0, s, s + 1), ys, hs);
      const Tensor<double> yv =
          Tensor<double>::from(TensorView<const double>(y.view()).slice(1, a, b));
      const Tensor<double> hv =
          Tensor<double>::from(TensorView<const double>(h.view()).slice(0, s, s + 1));
      expect_close(yv, ys, 1e-12, std::string(form_name(f)) + " y, seq " + std::to_string(s));
      expect_close(hv, hs, 1e-12, std::string(form_name(f)) + " state, seq " + std::to_string(s));
    }
  }
}

// Strided inputs (channel slices of a fused projection) and an in-place state.
TEST(SelectiveScan, StridedViewsAndInPlaceState) {
  const int64_t Bsz = 2, T = 50, D = 24, N = 16;
  const Tensor<double> fused = random_tensor<double>({Bsz, T, 3 * D}, 88);  // [u | delta | z]
  const TensorView<const double> fv = fused.view();
  Config c;
  c.B = Bsz, c.T = T, c.D = D, c.N = N, c.init = true;
  Inputs<double> in(c, 89);
  in.u = Tensor<double>::from(fv.slice(2, 0, D));
  in.delta = Tensor<double>::from(fv.slice(2, D, 2 * D));
  in.z = Tensor<double>::from(fv.slice(2, 2 * D, 3 * D));
  const Outputs ref = run_config(Form::kNaive, c, in);
  for (Form f : {Form::kChunk, Form::kRecurrent}) {
    Tensor<double> yb({Bsz, T, 2 * D});  // y written into the second half of a wider buffer
    Tensor<double> h = in.h0;            // updated in place
    auto fn = f == Form::kChunk ? effattn::selective_scan_chunk<double>
                                : effattn::selective_scan_recurrent<double>;
    fn(fv.slice(2, 0, D), fv.slice(2, D, 2 * D), in.A, in.B, in.C, in.D, fv.slice(2, 2 * D, 3 * D),
       in.bias, h, yb.view().slice(2, D, 2 * D), h, {});
    const Tensor<double> y =
        Tensor<double>::from(TensorView<const double>(yb.view()).slice(2, D, 2 * D));
    expect_close(y, ref.y, 1e-12, form_name(f));
    expect_close(h, ref.h, 1e-12, form_name(f));
  }
}

// T = 0 (and an empty varlen sequence above): nothing to write, final state = initial state.
TEST(SelectiveScan, EmptySequenceKeepsState) {
  Config c;
  c.B = 2, c.T = 0, c.D = 24, c.N = 16, c.init = true;
  const Inputs<double> in(c, 111);
  for (Form f : {Form::kNaive, Form::kChunk, Form::kRecurrent, Form::kFront}) {
    const Outputs got = run_config(f, c, in);
    EXPECT_EQ(max_abs_diff(got.h, Tensor<double>::from(TensorView<const double>(in.h0.view()))),
              0.0)
        << form_name(f);
  }
}

TEST(SelectiveScan, BadArgumentsRaise) {
  Config c;
  c.B = 2, c.T = 10, c.D = 8, c.N = 4, c.init = true;
  const Inputs<float> in(c, 99);
  Tensor<float> y({2, 10, 8}), h({2, 8, 4});
  using Fn = std::function<void()>;
  auto expect_error = [](const Fn& fn, const std::string& needle) {
    try {
      fn();
      ADD_FAILURE() << "no error, expected one naming '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  auto fronts = {effattn::selective_scan_naive<float>, effattn::selective_scan_chunk<float>,
                 effattn::selective_scan_recurrent<float>, effattn::selective_scan<float>};
  for (auto fn : fronts) {
    const Tensor<float> A_bad({7, 4}), B_bad({2, 10, 5}), B_g3({2, 10, 3, 4}), D_bad({9});
    const Tensor<float> u_bad({2, 11, 8});
    Tensor<float> h_bad({2, 8, 5});
    expect_error([&] { fn(in.u, in.delta, A_bad, in.B, in.C, in.D, in.z, in.bias, {}, y, {}, {}); },
                 "A has shape [7, 4]");
    expect_error([&] { fn(in.u, in.delta, in.A, B_bad, in.C, in.D, in.z, in.bias, {}, y, {}, {}); },
                 "B has shape");
    expect_error([&] { fn(in.u, in.delta, in.A, B_g3, B_g3, in.D, in.z, in.bias, {}, y, {}, {}); },
                 "G = 3 groups must divide D = 8");
    expect_error([&] { fn(in.u, in.delta, in.A, in.B, in.C, D_bad, in.z, in.bias, {}, y, {}, {}); },
                 "D has shape [9]");
    expect_error([&] { fn(in.u, u_bad, in.A, in.B, in.C, in.D, in.z, in.bias, {}, y, {}, {}); },
                 "delta has shape");
    expect_error(
        [&] { fn(in.u, in.delta, in.A, in.B, in.C, in.D, in.z, in.bias, h_bad, y, {}, {}); },
        "initial_state has shape [2, 8, 5]");
    expect_error(
        [&] { fn(in.u, in.delta, in.A, in.B, in.C, in.D, in.z, in.bias, {}, y, h_bad, {}); },
        "final_state has shape");
    expect_error([&] { fn(in.u, in.delta, in.A, in.B, {}, in.D, in.z, in.bias, {}, y, {}, {}); },
                 "C has shape <none>");
    SelectiveScanParams p;
    p.cu_seqlens = {0, 4, 10};
    expect_error([&] { fn(in.u, in.delta, in.A, in.B, in.C, in.D, in.z, in.bias, {}, y, {}, p); },
                 "batch is 2, expected 1");
    // A non-unit stride in the last dim.
    const Tensor<float> wide({2, 10, 16});
    const TensorView<const float> wv = wide.view();
    const TensorView<const float> strided(wv.data(), Shape{2, 10, 8}, {160, 16, 2});
    expect_error(
        [&] { fn(strided, in.delta, in.A, in.B, in.C, in.D, in.z, in.bias, {}, y, {}, {}); },
        "u of shape [2, 10, 8] must have a unit stride");
  }
  // Varlen offsets that do not cover T.
  const Tensor<float> u1({1, 10, 8}), B1({1, 10, 4});
  Tensor<float> y1({1, 10, 8});
  SelectiveScanParams p;
  p.cu_seqlens = {0, 4, 9};
  expect_error(
      [&] {
        effattn::selective_scan_chunk<float>(u1, u1, in.A, B1, B1, {}, {}, {}, {}, y1, {}, p);
      },
      "cu_seqlens ends at 9, expected T = 10");
  p.cu_seqlens = {0, 6, 4, 10};
  expect_error(
      [&] {
        effattn::selective_scan_chunk<float>(u1, u1, in.A, B1, B1, {}, {}, {}, {}, y1, {}, p);
      },
      "not non-decreasing");
  expect_error(
      [&] { effattn::selective_scan_step<float>(u1, u1, in.A, B1, B1, {}, {}, {}, {}, y1, {}); },
      "state is required");
}

}  // namespace
