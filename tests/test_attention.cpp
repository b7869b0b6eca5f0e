// Softmax attention: the tiled prefill kernel and the split-K decode path against the naive
// reference in double, at awkward sizes, for every pattern and option; plus decode == a row of
// prefill, varlen == separate calls, 1 thread == 2 threads, merge_states, fully masked rows,
// bf16 keys / values, strided views and bad arguments.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "effattn/ops/attention/attention.hpp"
#include "test_util.hpp"

using namespace effattn;
using effattn::testing::max_abs_diff;
using effattn::testing::random_tensor;

namespace {

struct Dims {
  int64_t B, Tq, Tk, Hq, Hkv, K, V;
};

// Inputs and optional extras of one case, in T.
template <class T>
struct Case {
  Tensor<T> q, k, v, sinks, bias;
  Tensor<bool> mask;
  AttentionExtras<T> extras() const {
    AttentionExtras<T> e;
    if (!sinks.empty()) e.sinks = sinks.view();
    if (!bias.empty()) e.bias = bias.view();
    if (!mask.empty()) e.mask = mask.view();
    return e;
  }
};

template <class T>
Case<T> make_case(const Dims& d, uint64_t seed, bool sinks = false, bool bias = false,
                  bool mask = false) {
  Case<T> c;
  c.q = random_tensor<T>({d.B, d.Tq, d.Hq, d.K}, seed, -2, 2);
  c.k = random_tensor<T>({d.B, d.Tk, d.Hkv, d.K}, seed + 1, -2, 2);
  c.v = random_tensor<T>({d.B, d.Tk, d.Hkv, d.V}, seed + 2);
  if (sinks) c.sinks = random_tensor<T>({d.Hq}, seed + 3, -1, 3);
  if (bias) c.bias = random_tensor<T>({d.B, 1, d.Tq, d.Tk}, seed + 4, -2, 2);
  if (mask) {
    c.mask = Tensor<bool>({1, d.Hq, d.Tq, d.Tk});
    const Tensor<double> u = random_tensor<double>({c.mask.numel()}, seed + 5, 0, 1);
    for (int64_t i = 0; i < c.mask.numel(); ++i) c.mask.data()[i] = u.data()[i] < 0.7;
  }
  return c;
}

// max |a - b| where both may hold -inf (lse of fully masked rows): infinities must match.
template <class A, class B>
double lse_diff(const Tensor<A>& a, const Tensor<B>& b) {
  EXPECT_EQ(a.shape(), b.shape());
  double m = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double x = double(a.data()[i]), y = double(b.data()[i]);
    if (std::isinf(x) || std::isinf(y)) {
      if (x != y) return INFINITY;
      continue;
    }
    if (std::isnan(x) || std::isnan(y)) return INFINITY;
    m = std::max(m, std::abs(x - y));
  }
  return m;
}

struct Result {
  Tensor<double> o, lse;
};

template <class T>
Result run(const Case<T>& c, const AttentionParams& p, bool naive) {
  Result r;
  Tensor<T> o({c.q.size(0), c.q.size(1), c.q.size(2), c.v.size(3)});
  Tensor<T> lse({c.q.size(0), c.q.size(1), c.q.size(2)});
  if (naive)
    attention_naive<T>(c.q, c.k, c.v, o, p, lse, c.extras());
  else
    attention<T>(c.q, c.k, c.v, o, p, lse, c.extras());
  r.o = Tensor<double>::from(o.view());
  r.lse = Tensor<double>::from(lse.view());
  return r;
}

// Both paths (forced prefill, forced decode; kAuto picks one of them) against the naive form,
// in double.
void expect_paths_match_naive(const Dims& d, AttentionParams p, uint64_t seed,
                              const std::string& what, bool sinks = false, bool bias = false,
                              bool mask = false) {
  const Case<double> c = make_case<double>(d, seed, sinks, bias, mask);
  const Result ref = run(c, p, true);
  for (AttentionPath path : {AttentionPath::kPrefill, AttentionPath::kDecode}) {
    p.path = path;
    p.decode_split = 48;  // several partials to merge even at small Tk
    const Result got = run(c, p, false);
    const std::string ctx = what + " Tq=" + std::to_string(d.Tq) + " Tk=" + std::to_string(d.Tk) +
                            " K=" + std::to_string(d.K) + " V=" + std::to_string(d.V) +
                            " path=" + std::to_string(int(path));
    EXPECT_LT(max_abs_diff(got.o, ref.o), 1e-10) << ctx;
    EXPECT_LT(lse_diff(got.lse, ref.lse), 1e-10) << ctx;
  }
}

const int64_t kSizes[] = {1, 7, 63, 100, 257};
const int64_t kHeadDims[][2] = {{40, 40}, {64, 64}, {80, 80}, {128, 128}, {96, 48}};

AttentionParams pattern(int which) {
  AttentionParams p;
  switch (which) {
    case 0:
      break;  // non-causal
    case 1:
      p.causal = true;
      break;  // causal, bottom-right
    case 2:
      p.causal = true;
      p.align = MaskAlign::kTopLeft;
      break;
    case 3:
      p.causal = true;
      p.window_left = 15;
      p.window_right = 0;
      break;  // sliding window
    case 4:
      p.window_left = 8;
      p.window_right = 5;
      break;  // two-sided local
    default:
      break;
  }
  return p;
}
const char* kPatternNames[] = {"noncausal", "causal", "causal_topleft", "sliding16", "local8_5"};

}  // namespace

// Every pattern at every (Tq, Tk) of the awkward sizes; head dims rotate through the list.
TEST(Attention, PatternsAtAwkwardSizesMatchNaive) {
  int n = 0;
  for (int64_t Tq : kSizes)
    for (int64_t Tk : kSizes)
      for (int pat = 0; pat < 5; ++pat, ++n) {
        const auto* hd = kHeadDims[n % 5];
        const Dims d{1, Tq, Tk, 2, 1, hd[0], hd[1]};
        expect_paths_match_naive(d, pattern(pat), 100 + n, kPatternNames[pat]);
      }
}

TEST(Attention, HeadDimsMatchNaive) {
  for (const auto& hd : kHeadDims) {
    AttentionParams p;
    p.causal = true;
    expect_paths_match_naive({2, 100, 100, 2, 1, hd[0], hd[1]}, p, 7, "head dims");
  }
}

TEST(Attention, GqaMqaMatchNaive) {
  AttentionParams p;
  p.causal = true;
  expect_paths_match_naive({2, 63, 100, 6, 2, 40, 40}, p, 11, "gqa");
  expect_paths_match_naive({1, 100, 100, 4, 1, 64, 48}, AttentionParams{}, 12, "mqa");
  expect_paths_match_naive({1, 7, 257, 8, 1, 64, 64}, p, 13, "mqa decode");
}

TEST(Attention, DilationMatchesNaive) {
  for (int64_t dil : {2, 3}) {
    AttentionParams p;
    p.dilation = dil;
    p.window_left = 20;
    p.window_right = 20;
    expect_paths_match_naive({1, 100, 100, 2, 2, 40, 40}, p, 20 + dil, "dilated local");
    p.causal = true;
    p.window_right = -1;
    p.window_left = -1;
    expect_paths_match_naive({1, 257, 257, 2, 1, 40, 40}, p, 30 + dil, "dilated causal");
  }
}

TEST(Attention, SoftcapMatchesNaive) {
  AttentionParams p;
  p.causal = true;
  p.softcap = 2.0;
  p.scale = 1.0;  // big logits, so the cap matters
  for (int64_t Tq : {1, 63, 100})
    expect_paths_match_naive({1, Tq, 100, 2, 1, 40, 40}, p, 40, "softcap");
}

TEST(Attention, SinksMatchNaive) {
  AttentionParams p;
  p.causal = true;
  p.window_left = 10;
  for (int64_t Tq : {1, 7, 100})
    expect_paths_match_naive({2, Tq, 100, 4, 2, 40, 40}, p, 50, "sinks", true);
}

TEST(Attention, BiasAndBoolMaskMatchNaive) {
  AttentionParams p;
  expect_paths_match_naive({2, 63, 100, 2, 2, 40, 40}, p, 60, "bias", false, true, false);
  expect_paths_match_naive({2, 100, 63, 2, 1, 40, 40}, p, 61, "mask", false, false, true);
  p.causal = true;
  expect_paths_match_naive({1, 7, 100, 4, 2, 40, 48}, p, 62, "bias+mask+sinks", true, true, true);
}

// Float kernel against the double reference at float tolerances.
TEST(Attention, FloatMatchesDoubleReference) {
  const Dims d{1, 257, 257, 2, 1, 128, 128};
  for (int pat = 0; pat < 5; ++pat) {
    const Case<double> cd = make_case<double>(d, 70 + pat);
    Case<float> cf;
    cf.q = Tensor<float>::from(cd.q.view());
    cf.k = Tensor<float>::from(cd.k.view());
    cf.v = Tensor<float>::from(cd.v.view());
    const Result ref = run(cd, pattern(pat), true);
    for (AttentionPath path : {AttentionPath::kPrefill, AttentionPath::kDecode}) {
      AttentionParams p = pattern(pat);
      p.path = path;
      const Result got = run(cf, p, false);
      EXPECT_LT(max_abs_diff(got.o, ref.o), 2e-5) << kPatternNames[pat];
      EXPECT_LT(lse_diff(got.lse, ref.lse), 2e-5) << kPatternNames[pat];
    }
  }
}

// bf16 keys / values: the kernel accumulates in float; equals the reference on the rounded
// values.
TEST(Attention, Bf16KeysValuesMatchRoundedReference) {
  const Dims d{1, 100, 257, 4, 2, 64, 64};
  const Case<double> cd = make_case<double>(d, 80);
  Tensor<float> qf = Tensor<float>::from(cd.q.view());
  Tensor<bf16> kb(cd.k.shape()), vb(cd.v.shape());
  Case<double> rounded;
  rounded.q = Tensor<double>::from(qf.view());
  rounded.k = Tensor<double>(cd.k.shape());
  rounded.v = Tensor<double>(cd.v.shape());
  for (int64_t i = 0; i < kb.numel(); ++i) {
    kb.data()[i] = bf16(float(cd.k.data()[i]));
    rounded.k.data()[i] = double(float(kb.data()[i]));
  }
  for (int64_t i = 0; i < vb.numel(); ++i) {
    vb.data()[i] = bf16(float(cd.v.data()[i]));
    rounded.v.data()[i] = double(float(vb.data()[i]));
  }
  AttentionParams p;
  p.causal = true;
  const Result ref = run(rounded, p, true);
  for (int64_t Tq : {int64_t(100), int64_t(1)}) {
    for (AttentionPath path : {AttentionPath::kPrefill, AttentionPath::kDecode}) {
      p.path = path;
      const int64_t q0 = 100 - Tq;
      auto qs = qf.view().slice(1, q0, 100);
      Tensor<float> o({1, Tq, 4, 64}), lse({1, Tq, 4});
      attention<float, bf16>(qs, kb, vb, o, p, lse);
      // rows q0.. of the reference (bottom-right alignment keeps the same keys per row)
      Tensor<double> ro = Tensor<double>::from(ref.o.view().slice(1, q0, 100));
      EXPECT_LT(max_abs_diff(Tensor<double>::from(o.view()), ro), 2e-5);
    }
  }
}

// Decoding token t (one query against keys 0..t) equals row t of a full causal prefill.
TEST(Attention, DecodeEqualsRowOfCausalPrefill) {
  const Dims d{2, 100, 100, 4, 2, 64, 48};
  const Case<double> c = make_case<double>(d, 90);
  AttentionParams p;
  p.causal = true;
  const Result full = run(c, p, false);
  for (int64_t t : {0, 1, 37, 63, 64, 99}) {
    Tensor<double> o({2, 1, 4, 48}), lse({2, 1, 4});
    attention<double>(c.q.view().slice(1, t, t + 1), c.k.view().slice(1, 0, t + 1),
                      c.v.view().slice(1, 0, t + 1), o, p, lse);
    EXPECT_LT(max_abs_diff(Tensor<double>::from(o.view()),
                           Tensor<double>::from(full.o.view().slice(1, t, t + 1))),
              1e-12)
        << "t=" << t;
    EXPECT_LT(lse_diff(lse, Tensor<double>::from(full.lse.view().slice(1, t, t + 1))), 1e-12);
  }
}

// Varlen packed sequences == one call per sequence (including an empty query sequence).
TEST(Attention, VarlenEqualsSeparateCalls) {
  const std::vector<int64_t> cq = {0, 7, 70, 70, 170, 171};
  const std::vector<int64_t> ck = {0, 7, 100, 140, 240, 497};
  const Dims d{1, cq.back(), ck.back(), 4, 2, 40, 48};
  for (bool causal : {false, true}) {
    const Case<double> c = make_case<double>(d, 95, true, true, false);
    AttentionParams p;
    p.causal = causal;
    p.window_left = causal ? 50 : -1;
    p.cu_seqlens_q = cq;
    p.cu_seqlens_k = ck;
    Tensor<double> o({1, cq.back(), 4, 48}), lse({1, cq.back(), 4});
    attention<double>(c.q, c.k, c.v, o, p, lse, c.extras());
    Tensor<double> on({1, cq.back(), 4, 48}), lsen({1, cq.back(), 4});
    attention_naive<double>(c.q, c.k, c.v, on, p, lsen, c.extras());
    EXPECT_LT(max_abs_diff(o, on), 1e-10);
    EXPECT_LT(lse_diff(lse, lsen), 1e-10);
    for (std::size_t n = 0; n + 1 < cq.size(); ++n) {
      if (cq[n + 1] == cq[n]) continue;
      AttentionParams ps = p;
      ps.cu_seqlens_q.clear();
      ps.cu_seqlens_k.clear();
      AttentionExtras<double> ex;
      ex.sinks = c.sinks.view();
      ex.bias = c.bias.view().slice(2, cq[n], cq[n + 1]).slice(3, ck[n], ck[n + 1]);
      const int64_t tq = cq[n + 1] - cq[n];
      Tensor<double> os({1, tq, 4, 48}), ls({1, tq, 4});
      attention<double>(c.q.view().slice(1, cq[n], cq[n + 1]),
                        c.k.view().slice(1, ck[n], ck[n + 1]),
                        c.v.view().slice(1, ck[n], ck[n + 1]), os, ps, ls, ex);
      EXPECT_LT(max_abs_diff(Tensor<double>::from(os.view()),
                             Tensor<double>::from(o.view().slice(1, cq[n], cq[n + 1]))),
                1e-12)
          << "sequence " << n;
    }
  }
}

// The work split does not depend on the thread count: results are bitwise equal.
TEST(Attention, OneThreadEqualsTwoThreads) {
  const Dims d{2, 257, 257, 4, 2, 64, 64};
  const Case<float> c = make_case<float>(d, 99);
  for (AttentionPath path : {AttentionPath::kPrefill, AttentionPath::kDecode}) {
    AttentionParams p;
    p.causal = true;
    p.path = path;
    p.num_threads = 1;
    const Result r1 = run(c, p, false);
    p.num_threads = 2;
    const Result r2 = run(c, p, false);
    EXPECT_EQ(max_abs_diff(r1.o, r2.o), 0.0);
    EXPECT_EQ(lse_diff(r1.lse, r2.lse), 0.0);
  }
}

// Queries that see no key: zeros and lse = -inf, never NaN (causal with Tq > Tk, a window
// right of every key, an all-false boolean mask row); a sink alone gives zeros and lse = sink.
TEST(Attention, FullyMaskedRowsAreZero) {
  const Dims d{1, 100, 37, 2, 1, 40, 40};
  for (AttentionPath path : {AttentionPath::kPrefill, AttentionPath::kDecode}) {
    Case<double> c = make_case<double>(d, 120, false, false, true);
    for (int64_t j = 0; j < 37; ++j) c.mask(0, 1, 80, j) = false;
    AttentionParams p;
    p.causal = true;  // bottom-right: rows i < 63 see nothing
    p.path = path;
    const Result r = run(c, p, false);
    const Result ref = run(c, p, true);
    EXPECT_LT(max_abs_diff(r.o, ref.o), 1e-10);
    EXPECT_LT(lse_diff(r.lse, ref.lse), 1e-10);
    for (int64_t i : {0, 10, 62})
      for (int64_t h = 0; h < 2; ++h) {
        EXPECT_EQ(r.lse(0, i, h), -std::numeric_limits<double>::infinity());
        for (int64_t e = 0; e < 40; ++e) EXPECT_EQ(r.o(0, i, h, e), 0.0);
      }
    EXPECT_EQ(r.lse(0, 80, 1), -std::numeric_limits<double>::infinity());
    for (int64_t e = 0; e < 40; ++e) EXPECT_EQ(r.o(0, 80, 1, e), 0.0);

    // top-left causal with window_left: never empty; a window entirely to the right of Tk is
    c.mask = Tensor<bool>();
    AttentionParams p2;
    p2.align = MaskAlign::kTopLeft;
    p2.window_left = 0;
    p2.window_right = 0;  // key j == i only: rows i >= 37 see nothing
    p2.path = path;
    const Result r2 = run(c, p2, false);
    EXPECT_EQ(r2.lse(0, 50, 0), -std::numeric_limits<double>::infinity());
    EXPECT_NEAR(r2.o(0, 5, 0, 3), c.v(0, 5, 0, 3), 1e-12);  // a single visible key

    Case<double> cs = make_case<double>(d, 121, true);
    const Result r3 = run(cs, p2, false);
    EXPECT_NEAR(r3.lse(0, 50, 1), cs.sinks(1), 1e-12);
    EXPECT_EQ(r3.o(0, 50, 1, 0), 0.0);
  }
}

TEST(Attention, MergeStatesOfKeyHalvesEqualsFull) {
  const Dims d{2, 63, 200, 4, 2, 40, 48};
  const Case<double> c = make_case<double>(d, 130);
  AttentionParams p;  // non-causal: keys split freely
  const Result full = run(c, p, false);
  Tensor<double> oa({2, 63, 4, 48}), la({2, 63, 4}), ob({2, 63, 4, 48}), lb({2, 63, 4});
  attention<double>(c.q, c.k.view().slice(1, 0, 77), c.v.view().slice(1, 0, 77), oa, p, la);
  attention<double>(c.q, c.k.view().slice(1, 77, 200), c.v.view().slice(1, 77, 200), ob, p, lb);
  merge_states<double>(oa, la, ob, lb);
  EXPECT_LT(max_abs_diff(oa, full.o), 1e-12);
  EXPECT_LT(lse_diff(la, full.lse), 1e-12);

  // An empty side is the identity; both empty stays empty.
  Tensor<double> o1({1, 3}), l1({1}), o2({1, 3}), l2({1});
  o1.fill(2.0);
  l1.fill(0.5);
  o2.fill(7.0);
  l2.fill(-INFINITY);
  merge_states<double>(o1, l1, o2, l2);
  EXPECT_EQ(o1(0, 0), 2.0);
  EXPECT_EQ(l1(0), 0.5);
  l1.fill(-INFINITY);
  merge_states<double>(o1, l1, o2, l2);
  EXPECT_EQ(o1(0, 1), 0.0);
  EXPECT_EQ(l1(0), -INFINITY);
  EXPECT_THROW(merge_states<double>(o1, l1, Tensor<double>({2, 3}), l2), Error);
}

// q, k, v as head slices of fused projections (non-contiguous views) == contiguous copies.
TEST(Attention, StridedViewsEqualContiguous) {
  const Tensor<double> qkv = random_tensor<double>({2, 100, 4 + 2 + 2, 40}, 140);
  auto q = qkv.view().slice(2, 0, 4), k = qkv.view().slice(2, 4, 6), v = qkv.view().slice(2, 6, 8);
  Tensor<double> big({2, 100, 4, 100});  // o written into a slice of a wider buffer
  auto o = big.view().slice(3, 10, 50);
  AttentionParams p;
  p.causal = true;
  attention<double>(q, k, v, o, p);
  const Tensor<double> qc = Tensor<double>::from(q), kc = Tensor<double>::from(k),
                       vc = Tensor<double>::from(v);
  Tensor<double> oc({2, 100, 4, 40});
  attention_naive<double>(qc, kc, vc, oc, p);
  EXPECT_LT(max_abs_diff(Tensor<double>::from(o), oc), 1e-10);
  EXPECT_EQ(big(1, 50, 2, 9), 0.0);  // untouched outside the slice
  EXPECT_EQ(big(1, 50, 2, 50), 0.0);
}

// Keys / values stored head-major [B, Hkv, Tk, D] (the KVCache layout) and passed as strided
// [B, Tk, Hkv, D] views: the prefill kernel reads their rows in place instead of packing them,
// with the same result as contiguous inputs (bitwise) and as the naive form.
TEST(Attention, HeadMajorKeysValuesReadInPlace) {
  const int64_t B = 2, T = 257, Hq = 4, Hkv = 2, K = 40, V = 48;
  const Tensor<float> q = random_tensor<float>({B, T, Hq, K}, 150);
  const Tensor<float> kh = random_tensor<float>({B, Hkv, T, K}, 151);
  const Tensor<float> vh = random_tensor<float>({B, Hkv, T, V}, 152);
  const TensorView<const float> k(kh.data(), Shape{B, T, Hkv, K}, {Hkv * T * K, K, T * K, 1});
  const TensorView<const float> v(vh.data(), Shape{B, T, Hkv, V}, {Hkv * T * V, V, T * V, 1});
  const Tensor<float> kc = Tensor<float>::from(k), vc = Tensor<float>::from(v);
  for (bool causal : {false, true}) {
    AttentionParams p;
    p.causal = causal;
    p.path = AttentionPath::kPrefill;
    Tensor<float> o({B, T, Hq, V}), oc({B, T, Hq, V});
    attention<float>(q, k, v, o, p);
    attention<float>(q, kc, vc, oc, p);
    EXPECT_EQ(max_abs_diff(o, oc), 0.0) << "causal " << causal;
    Tensor<double> ref({B, T, Hq, V});
    attention_naive<double>(Tensor<double>::from(q.view()), Tensor<double>::from(kc.view()),
                            Tensor<double>::from(vc.view()), ref, p);
    EXPECT_LT(max_abs_diff(o, ref), 2e-5) << "causal " << causal;
  }
}

namespace {
template <class F>
void expect_error_naming(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error, expected one naming '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}
}  // namespace

TEST(Attention, BadArgumentsRaise) {
  const Tensor<float> q({1, 5, 4, 16}), k({1, 6, 2, 16}), v({1, 6, 2, 8});
  Tensor<float> o({1, 5, 4, 8}), lse({1, 5, 4});
  AttentionParams p;
  expect_error_naming(
      [&] {
        attention<float>(q, Tensor<float>({1, 6, 3, 16}), Tensor<float>({1, 6, 3, 8}), o, p);
      },
      "Hkv");
  expect_error_naming(
      [&] {
        attention<float>(q, Tensor<float>({1, 6, 2, 12}), v, o, p);
      },
      "k has shape");
  expect_error_naming(
      [&] {
        attention<float>(q, k, Tensor<float>({1, 7, 2, 8}), o, p);
      },
      "v has shape");
  expect_error_naming(
      [&] {
        attention<float>(q, k, v, Tensor<float>({1, 5, 4, 9}), p);
      },
      "o has shape");
  expect_error_naming(
      [&] {
        attention<float>(q, k, v, o, p, Tensor<float>({1, 5}));
      },
      "lse has shape");
  AttentionParams bad = p;
  bad.window_left = -2;
  expect_error_naming([&] { attention<float>(q, k, v, o, bad); }, "window_left");
  bad = p;
  bad.dilation = 0;
  expect_error_naming([&] { attention<float>(q, k, v, o, bad); }, "dilation");
  bad = p;
  bad.softcap = -1;
  expect_error_naming([&] { attention<float>(q, k, v, o, bad); }, "softcap");
  bad = p;
  bad.cu_seqlens_q = {0, 2, 5};
  bad.cu_seqlens_k = {0, 6};
  expect_error_naming([&] { attention<float>(q, k, v, o, bad); }, "cu_seqlens");
  bad.cu_seqlens_k = {0, 3, 7};
  expect_error_naming([&] { attention<float>(q, k, v, o, bad); }, "cu_seqlens_k");
  bad.cu_seqlens_q = {0, 4, 2, 5};
  bad.cu_seqlens_k = {0, 1, 2, 6};
  expect_error_naming([&] { attention<float>(q, k, v, o, bad); }, "cu_seqlens_q");
  AttentionExtras<float> ex;
  const Tensor<float> sinks({3}), bias({1, 4, 5, 7});
  ex.sinks = sinks.view();
  expect_error_naming([&] { attention<float>(q, k, v, o, p, TensorView<float>{}, ex); }, "sinks");
  ex = {};
  ex.bias = bias.view();
  expect_error_naming([&] { attention<float>(q, k, v, o, p, TensorView<float>{}, ex); }, "bias");
  const Tensor<float> kt({1, 6, 16, 2});  // [B, Tk, K, Hkv] viewed as [B, Tk, Hkv, K]
  expect_error_naming([&] { attention<float>(q, kt.view().transpose(2, 3), v, o); },
                      "k of shape [1, 6, 2, 16] must have a unit stride");
  expect_error_naming(
      [&] {
        attention_naive<float>(q, k, v, Tensor<float>({2, 5, 4, 8}));
      },
      "o has shape");
}
