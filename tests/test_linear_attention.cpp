// Tests of the gated-linear-recurrence engine: linear_attention, simple_gla (g or gamma), gla.
// Reference: the naive form in double. chunk == recurrent == naive on o and the final state,
// pieces with state passed == one call, chunk sizes agree, strong decay and long sequences stay
// finite, 1 thread == 2 threads, varlen == separate calls, bad arguments raise effattn::Error.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "effattn/ops/common/chunk_gates.hpp"
#include "effattn/ops/common/chunk_kernels.hpp"
#include "effattn/ops/linear_attention/linear_attention.hpp"
#include "test_util.hpp"

using namespace effattn;
using effattn::testing::max_abs;
using effattn::testing::max_abs_diff;
using effattn::testing::random_tensor;

namespace {

enum class Op { kLinear, kSimple, kGamma, kGla };
const char* op_name(Op op) {
  switch (op) {
    case Op::kLinear:
      return "linear";
    case Op::kSimple:
      return "simple_gla";
    case Op::kGamma:
      return "simple_gla(gamma)";
    case Op::kGla:
      return "gla";
  }
  return "?";
}

template <class T>
struct Inputs {
  Tensor<T> q, k, v, g, S0, z0;
  std::vector<T> gamma;
  int64_t Kf = 0;
};

// q, k, v uniform in [-1, 1); log-gates uniform in [glo, ghi]; states when asked.
template <class T>
Inputs<T> make_inputs(Op op, int64_t B, int64_t Tn, int64_t H, int64_t K, int64_t V, uint64_t seed,
                      int64_t N = -1, bool state = true, FeatureMap fm = FeatureMap::kIdentity,
                      double glo = -0.5, double ghi = 0.0) {
  Inputs<T> in;
  if (N < 0) N = B;
  in.Kf = feature_dim(fm, K);
  in.q = random_tensor<T>({B, Tn, H, K}, seed);
  in.k = random_tensor<T>({B, Tn, H, K}, seed + 1);
  in.v = random_tensor<T>({B, Tn, H, V}, seed + 2);
  if (op == Op::kSimple) in.g = random_tensor<T>({B, Tn, H}, seed + 3, glo, ghi);
  if (op == Op::kGla) in.g = random_tensor<T>({B, Tn, H, in.Kf}, seed + 3, glo, ghi);
  if (op == Op::kGamma)
    for (int64_t h = 0; h < H; ++h) in.gamma.push_back(T(std::log(1.0 - std::pow(2.0, -2.0 - h))));
  if (state) {
    in.S0 = random_tensor<T>({N, H, in.Kf, V}, seed + 4);
    in.z0 = random_tensor<T>({N, H, in.Kf}, seed + 5, 0.5, 1.5);
  }
  return in;
}

// Copies the non-empty tensors (copying a default-constructed Tensor is not safe).
template <class T>
Inputs<T> clone(const Inputs<T>& in) {
  Inputs<T> r;
  auto cp = [](const Tensor<T>& t) { return t.empty() ? Tensor<T>() : Tensor<T>::from(t.view()); };
  r.q = cp(in.q), r.k = cp(in.k), r.v = cp(in.v), r.g = cp(in.g), r.S0 = cp(in.S0),
  r.z0 = cp(in.z0);
  r.gamma = in.gamma;
  r.Kf = in.Kf;
  return r;
}

template <class T>
struct Outputs {
  Tensor<T> o, S, z;
};

using effattn::testing::opt;

// Runs op on the inputs; o, final state and (with normalize) final z.
template <class T>
Outputs<T> run(Op op, const Inputs<T>& in, LinearAttentionParams<T> p, bool use_state = true) {
  const int64_t B = in.q.size(0), Tn = in.q.size(1), H = in.v.size(2), V = in.v.size(3);
  const int64_t N = p.cu_seqlens.empty() ? B : static_cast<int64_t>(p.cu_seqlens.size()) - 1;
  Outputs<T> out;
  out.o = Tensor<T>({B, Tn, H, V});
  out.S = Tensor<T>({N, H, in.Kf, V});
  const bool z = p.normalize;
  if (z) out.z = Tensor<T>({N, H, in.Kf});
  const TensorView<const T> s0 = use_state ? opt(in.S0) : TensorView<const T>{};
  const TensorView<const T> z0 = use_state && z ? opt(in.z0) : TensorView<const T>{};
  const TensorView<T> zT = z ? out.z.view() : TensorView<T>{};
  switch (op) {
    case Op::kLinear:
      linear_attention<T>(in.q, in.k, in.v, out.o, p, s0, out.S, z0, zT);
      break;
    case Op::kSimple:
      simple_gla<T>(in.q, in.k, in.v, in.g, out.o, p, s0, out.S, z0, zT);
      break;
    case Op::kGamma:
      p.gamma = in.gamma;
      simple_gla<T>(in.q, in.k, in.v, {}, out.o, p, s0, out.S, z0, zT);
      break;
    case Op::kGla:
      gla<T>(in.q, in.k, in.v, in.g, out.o, p, s0, out.S, z0, zT);
      break;
  }
  return out;
}

// max |a - b| / max(1, max |b|)
template <class A, class B>
double rel_err(const Tensor<A>& a, const Tensor<B>& b) {
  return max_abs_diff(a, b) / std::max(1.0, max_abs(b));
}

template <class T>
LinearAttentionParams<T> params(LinearAttentionForm form, int64_t chunk = 64) {
  LinearAttentionParams<T> p;
  p.form = form;
  p.chunk_size = chunk;
  return p;
}

const Op kAllOps[] = {Op::kLinear, Op::kSimple, Op::kGamma, Op::kGla};

}  // namespace

// chunk == recurrent == naive in double, awkward T and K / V.
TEST(LinearAttention, FormsAgreeDouble) {
  struct Size {
    int64_t T, K, V;
  };
  const Size sizes[] = {{1, 16, 16},  {7, 40, 16},   {63, 16, 40},  {64, 64, 16},
                        {65, 16, 64}, {100, 40, 40}, {257, 16, 16}, {130, 128, 16}};
  uint64_t seed = 100;
  for (Op op : kAllOps)
    for (const Size& s : sizes) {
      const Inputs<double> in = make_inputs<double>(op, 2, s.T, 2, s.K, s.V, seed += 10);
      const auto ref = run(op, in, params<double>(LinearAttentionForm::kNaive));
      for (auto form : {LinearAttentionForm::kRecurrent, LinearAttentionForm::kChunk}) {
        const auto got = run(op, in, params<double>(form, 32));
        SCOPED_TRACE(std::string(op_name(op)) + " T=" + std::to_string(s.T) +
                     " K=" + std::to_string(s.K) + " V=" + std::to_string(s.V) +
                     " form=" + std::to_string(int(form)));
        EXPECT_LT(rel_err(got.o, ref.o), 1e-11);
        EXPECT_LT(rel_err(got.S, ref.S), 1e-11);
      }
    }
}

// A long sequence in double against the naive form: T = 1000.
TEST(LinearAttention, LongSequenceDouble) {
  for (Op op : {Op::kSimple, Op::kGla}) {
    const Inputs<double> in = make_inputs<double>(op, 1, 1000, 1, 16, 16, 7);
    const auto ref = run(op, in, params<double>(LinearAttentionForm::kNaive));
    const auto got = run(op, in, params<double>(LinearAttentionForm::kChunk));
    EXPECT_LT(rel_err(got.o, ref.o), 1e-11) << op_name(op);
    EXPECT_LT(rel_err(got.S, ref.S), 1e-11) << op_name(op);
  }
}

// Float chunk / recurrent against the double naive form.
TEST(LinearAttention, FormsAgreeFloat) {
  for (Op op : kAllOps) {
    const Inputs<double> ind = make_inputs<double>(op, 2, 100, 3, 64, 40, 21);
    Inputs<float> inf;
    inf.q = Tensor<float>::from(ind.q.view());
    inf.k = Tensor<float>::from(ind.k.view());
    inf.v = Tensor<float>::from(ind.v.view());
    if (!ind.g.empty()) inf.g = Tensor<float>::from(ind.g.view());
    inf.S0 = Tensor<float>::from(ind.S0.view());
    for (double g : ind.gamma) inf.gamma.push_back(float(g));
    inf.Kf = ind.Kf;
    const auto ref = run(op, ind, params<double>(LinearAttentionForm::kNaive));
    for (auto form : {LinearAttentionForm::kRecurrent, LinearAttentionForm::kChunk}) {
      const auto got = run(op, inf, params<float>(form));
      EXPECT_LT(rel_err(got.o, ref.o), 2e-5) << op_name(op) << " form " << int(form);
      EXPECT_LT(rel_err(got.S, ref.S), 2e-5) << op_name(op) << " form " << int(form);
    }
  }
}

// Feature maps, normalize with z in / out, non-causal, custom scale.
TEST(LinearAttention, FeatureMapsNormalizeNonCausal) {
  const FeatureMap maps[] = {FeatureMap::kIdentity, FeatureMap::kEluPlus1, FeatureMap::kRelu,
                             FeatureMap::kBasedTaylor};
  uint64_t seed = 300;
  for (FeatureMap fm : maps)
    for (bool causal : {true, false})
      for (bool normalize : {false, true}) {
        if (fm == FeatureMap::kIdentity && normalize) continue;  // denominators near 0
        const int64_t K = fm == FeatureMap::kBasedTaylor ? 6 : 20;
        const Inputs<double> in =
            make_inputs<double>(Op::kLinear, 2, 75, 2, K, 24, seed += 10, -1, true, fm);
        auto p = params<double>(LinearAttentionForm::kNaive, 16);
        p.feature_map = fm;
        p.causal = causal;
        p.normalize = normalize;
        if (fm == FeatureMap::kBasedTaylor) p.scale = 1;
        const auto ref = run(Op::kLinear, in, p);
        for (auto form : {LinearAttentionForm::kRecurrent, LinearAttentionForm::kChunk}) {
          p.form = form;
          const auto got = run(Op::kLinear, in, p);
          SCOPED_TRACE(std::string(feature_map_name(fm)) + " causal=" + std::to_string(causal) +
                       " normalize=" + std::to_string(normalize) +
                       " form=" + std::to_string(int(form)));
          EXPECT_LT(rel_err(got.o, ref.o), 1e-11);
          EXPECT_LT(rel_err(got.S, ref.S), 1e-11);
          if (normalize) {
            EXPECT_LT(rel_err(got.z, ref.z), 1e-11);
          }
        }
      }
}

// The feature maps themselves: Based's phi(q).phi(k) = 1 + s + s^2 / 2, elu+1, relu.
TEST(LinearAttention, FeatureMapDefinitions) {
  const int64_t K = 5;
  const std::vector<double> x = {0.3, -1.2, 0.7, 2.0, -0.1}, y = {-0.4, 0.9, 1.1, -0.6, 0.2};
  std::vector<double> px(feature_dim(FeatureMap::kBasedTaylor, K)), py(px.size());
  apply_feature_map(FeatureMap::kBasedTaylor, x.data(), K, 1.0, px.data());
  apply_feature_map(FeatureMap::kBasedTaylor, y.data(), K, 1.0, py.data());
  double d = 0, s = 0;
  for (size_t i = 0; i < px.size(); ++i) d += px[i] * py[i];
  for (int64_t i = 0; i < K; ++i) s += x[i] * y[i];
  s /= std::sqrt(double(K));
  EXPECT_NEAR(d, 1 + s + s * s / 2, 1e-14);
  EXPECT_NEAR(px[1 + K + 2 * K + 3], x[2] * x[3] / (std::sqrt(2.0) * std::sqrt(double(K))), 1e-15);
  std::vector<double> e(K);
  apply_feature_map(FeatureMap::kEluPlus1, x.data(), K, 1.0, e.data());
  EXPECT_DOUBLE_EQ(e[0], 1.3);
  EXPECT_DOUBLE_EQ(e[1], std::exp(-1.2));
  apply_feature_map(FeatureMap::kRelu, x.data(), K, 2.0, e.data());
  EXPECT_DOUBLE_EQ(e[1], 0.0);
  EXPECT_DOUBLE_EQ(e[3], 4.0);
}

// A sequence in pieces, state (and z) passed along, == one call; the pieces mix forms.
TEST(LinearAttention, PiecesEqualOneCall) {
  for (Op op : kAllOps) {
    Inputs<double> in = make_inputs<double>(op, 2, 100, 2, 24, 20, 500);
    auto p = params<double>(LinearAttentionForm::kChunk, 16);
    p.normalize = op == Op::kLinear;
    if (op == Op::kLinear) {  // elu+1 keeps the normalizer positive
      p.feature_map = FeatureMap::kEluPlus1;
    }
    const auto whole = run(op, in, p);
    const int64_t cuts[] = {0, 37, 38, 64, 100};
    Tensor<double> o({2, 100, 2, 20});
    Inputs<double> piece = clone(in);
    for (int i = 0; i + 1 < 5; ++i) {
      const int64_t a = cuts[i], b = cuts[i + 1];
      piece.q = Tensor<double>::from(in.q.view().slice(1, a, b));
      piece.k = Tensor<double>::from(in.k.view().slice(1, a, b));
      piece.v = Tensor<double>::from(in.v.view().slice(1, a, b));
      if (!in.g.empty()) piece.g = Tensor<double>::from(in.g.view().slice(1, a, b));
      p.form = i % 2 ? LinearAttentionForm::kRecurrent : LinearAttentionForm::kChunk;
      const auto r = run(op, piece, p);
      piece.S0 = r.S;
      if (p.normalize) piece.z0 = r.z;
      for (int64_t bb = 0; bb < 2; ++bb)
        for (int64_t t = a; t < b; ++t)
          for (int64_t h = 0; h < 2; ++h)
            for (int64_t j = 0; j < 20; ++j) o(bb, t, h, j) = r.o(bb, t - a, h, j);
    }
    EXPECT_LT(rel_err(o, whole.o), 1e-11) << op_name(op);
    EXPECT_LT(rel_err(piece.S0, whole.S), 1e-11) << op_name(op);
    if (p.normalize) {
      EXPECT_LT(rel_err(piece.z0, whole.z), 1e-11);
    }
  }
}

// Decode: token by token with the state updated in place (initial_state == final_state).
TEST(LinearAttention, InPlaceDecodeEqualsPrefill) {
  for (Op op : kAllOps) {
    const Inputs<float> in = make_inputs<float>(op, 1, 9, 2, 32, 16, 600);
    const auto whole = run(op, in, params<float>(LinearAttentionForm::kChunk));
    Tensor<float> S = Tensor<float>::from(in.S0.view());
    for (int64_t t = 0; t < 9; ++t) {
      Tensor<float> q = Tensor<float>::from(in.q.view().slice(1, t, t + 1));
      Tensor<float> k = Tensor<float>::from(in.k.view().slice(1, t, t + 1));
      Tensor<float> v = Tensor<float>::from(in.v.view().slice(1, t, t + 1));
      Tensor<float> o({1, 1, 2, 16});
      LinearAttentionParams<float> p;  // kAuto: recurrent for one token
      if (op == Op::kLinear) {
        linear_attention<float>(q, k, v, o, p, S, S);
      } else if (op == Op::kGamma) {
        p.gamma = in.gamma;
        simple_gla<float>(q, k, v, {}, o, p, S, S);
      } else {
        Tensor<float> g = Tensor<float>::from(in.g.view().slice(1, t, t + 1));
        if (op == Op::kSimple)
          simple_gla<float>(q, k, v, g, o, p, S, S);
        else
          gla<float>(q, k, v, g, o, p, S, S);
      }
      for (int64_t h = 0; h < 2; ++h)
        for (int64_t j = 0; j < 16; ++j)
          EXPECT_NEAR(o(0, 0, h, j), whole.o(0, t, h, j), 1e-5) << op_name(op) << " t " << t;
    }
    EXPECT_LT(rel_err(S, whole.S), 1e-5) << op_name(op);
  }
}

// Chunk sizes 16 / 32 / 64 (and an odd 7) give the same result.
TEST(LinearAttention, ChunkSizesAgree) {
  for (Op op : kAllOps) {
    const Inputs<double> in = make_inputs<double>(op, 1, 150, 2, 40, 24, 700);
    const auto ref = run(op, in, params<double>(LinearAttentionForm::kChunk, 64));
    for (int64_t c : {7, 16, 32}) {
      const auto got = run(op, in, params<double>(LinearAttentionForm::kChunk, c));
      EXPECT_LT(rel_err(got.o, ref.o), 1e-12) << op_name(op) << " chunk " << c;
      EXPECT_LT(rel_err(got.S, ref.S), 1e-12) << op_name(op) << " chunk " << c;
    }
  }
}

// Strong decay: g = -20 everywhere, and per-channel gates mixing -20 with weak decay (which
// drives GLA through its sub-block and term-by-term paths). Finite, == recurrent.
TEST(LinearAttention, StrongDecayFinite) {
  for (Op op : {Op::kSimple, Op::kGla}) {
    for (int mix = 0; mix < 2; ++mix) {
      Inputs<float> in = make_inputs<float>(op, 1, 200, 2, 32, 16, 800);
      for (int64_t i = 0; i < in.g.numel(); ++i)
        in.g.data()[i] = mix && (i % 3) ? -0.01f * float(i % 7) : -20.0f;
      const auto rec = run(op, in, params<float>(LinearAttentionForm::kRecurrent));
      const auto chk = run(op, in, params<float>(LinearAttentionForm::kChunk));
      for (int64_t i = 0; i < chk.o.numel(); ++i) ASSERT_TRUE(std::isfinite(chk.o.data()[i]));
      for (int64_t i = 0; i < chk.S.numel(); ++i) ASSERT_TRUE(std::isfinite(chk.S.data()[i]));
      EXPECT_LT(rel_err(chk.o, rec.o), 1e-5) << op_name(op) << " mix " << mix;
      EXPECT_LT(rel_err(chk.S, rec.S), 1e-5) << op_name(op) << " mix " << mix;
    }
  }
  // Double, against naive, with gates ramping from weak to strong inside chunks.
  Inputs<double> in = make_inputs<double>(Op::kGla, 1, 130, 1, 24, 8, 900);
  for (int64_t t = 0; t < 130; ++t)
    for (int64_t k = 0; k < 24; ++k) in.g(0, t, 0, k) = -(k % 4 == 0 ? 20.0 : 0.05 * (t % 50));
  const auto ref = run(Op::kGla, in, params<double>(LinearAttentionForm::kNaive));
  const auto got = run(Op::kGla, in, params<double>(LinearAttentionForm::kChunk));
  EXPECT_LT(rel_err(got.o, ref.o), 1e-11);
  EXPECT_LT(rel_err(got.S, ref.S), 1e-11);
  // Decay too strong for one factored chunk, weak enough for factored 16-row sub-blocks.
  for (int64_t i = 0; i < in.g.numel(); ++i) in.g.data()[i] = -5.0 - 7.0 * ((i * 37) % 11) / 10.0;
  const auto ref2 = run(Op::kGla, in, params<double>(LinearAttentionForm::kNaive));
  const auto got2 = run(Op::kGla, in, params<double>(LinearAttentionForm::kChunk));
  EXPECT_LT(rel_err(got2.o, ref2.o), 1e-11);
  EXPECT_LT(rel_err(got2.S, ref2.S), 1e-11);
}

// T = 100000 (small H / K / V): finite and == recurrent.
TEST(LinearAttention, VeryLongSequence) {
  for (Op op : {Op::kLinear, Op::kSimple, Op::kGla}) {
    Inputs<float> in = make_inputs<float>(op, 1, 100000, 1, 8, 8, 1000, -1, false,
                                          FeatureMap::kIdentity, -0.2, 0.0);
    auto p = params<float>(LinearAttentionForm::kRecurrent);
    if (op == Op::kLinear) {
      p.normalize = true;
      p.feature_map = FeatureMap::kEluPlus1;
    }
    const auto rec = run(op, in, p, false);
    p.form = LinearAttentionForm::kChunk;
    const auto chk = run(op, in, p, false);
    for (int64_t i = 0; i < chk.o.numel(); ++i) ASSERT_TRUE(std::isfinite(chk.o.data()[i]));
    EXPECT_LT(rel_err(chk.o, rec.o), 1e-4) << op_name(op);
    EXPECT_LT(max_abs_diff(chk.S, rec.S) / max_abs(rec.S), 1e-4) << op_name(op);
  }
}

// Results do not depend on the thread count.
TEST(LinearAttention, ThreadsAgree) {
  for (Op op : kAllOps) {
    const Inputs<float> in = make_inputs<float>(op, 2, 90, 3, 32, 16, 1100);
    for (auto form : {LinearAttentionForm::kRecurrent, LinearAttentionForm::kChunk}) {
      auto p = params<float>(form, 32);
      p.num_threads = 1;
      const auto a = run(op, in, p);
      p.num_threads = 2;
      const auto b = run(op, in, p);
      EXPECT_LT(max_abs_diff(a.o, b.o), 1e-6) << op_name(op);
      EXPECT_LT(max_abs_diff(a.S, b.S), 1e-6) << op_name(op);
    }
  }
}

// Packed sequences with cu_seqlens (one empty) == separate calls, states [N, H, K, V].
TEST(LinearAttention, VarlenEqualsSeparateCalls) {
  const std::vector<int64_t> cu = {0, 37, 37, 100, 165};
  for (Op op : kAllOps) {
    const Inputs<double> in = make_inputs<double>(op, 1, 165, 2, 20, 12, 1200, 4);
    for (auto form : {LinearAttentionForm::kAuto, LinearAttentionForm::kRecurrent,
                      LinearAttentionForm::kChunk, LinearAttentionForm::kNaive}) {
      auto p = params<double>(form, 16);
      p.cu_seqlens = cu;
      const auto packed = run(op, in, p);
      p.cu_seqlens.clear();
      for (int64_t n = 0; n < 4; ++n) {
        Inputs<double> s = clone(in);
        const int64_t a = cu[n], b = cu[n + 1];
        s.q = Tensor<double>::from(in.q.view().slice(1, a, b));
        s.k = Tensor<double>::from(in.k.view().slice(1, a, b));
        s.v = Tensor<double>::from(in.v.view().slice(1, a, b));
        if (!in.g.empty()) s.g = Tensor<double>::from(in.g.view().slice(1, a, b));
        s.S0 = Tensor<double>::from(in.S0.view().slice(0, n, n + 1));
        const auto r = run(op, s, p);
        EXPECT_LT(max_abs_diff(r.o, Tensor<double>::from(packed.o.view().slice(1, a, b))), 1e-12)
            << op_name(op) << " seq " << n;
        EXPECT_LT(max_abs_diff(r.S, Tensor<double>::from(packed.S.view().slice(0, n, n + 1))),
                  1e-12)
            << op_name(op) << " seq " << n;
      }
    }
  }
}

// Strided inputs (head slices of a fused qkv buffer) and fewer q/k heads than v heads.
TEST(LinearAttention, StridedViewsAndSharedQkHeads) {
  const int64_t B = 2, Tn = 50, H = 2, K = 16, V = 16;
  const Tensor<float> qkv = random_tensor<float>({B, Tn, H, 3 * K}, 1300);
  const auto view = TensorView<const float>(qkv.view());
  const auto q = view.slice(3, 0, K), k = view.slice(3, K, 2 * K), v = view.slice(3, 2 * K, 3 * K);
  const Tensor<float> g = random_tensor<float>({B, Tn, H, K}, 1301, -0.3, 0.0);
  Tensor<float> o1({B, Tn, H, V}), o2({B, Tn, H, V});
  LinearAttentionParams<float> p;
  gla<float>(q, k, v, g, o1, p);
  gla<float>(Tensor<float>::from(q), Tensor<float>::from(k), Tensor<float>::from(v), g, o2, p);
  EXPECT_EQ(max_abs_diff(o1, o2), 0.0);
  // q/k with 1 head shared by 4 v heads == q/k repeated.
  const Tensor<double> q1 = random_tensor<double>({1, 40, 1, K}, 1302),
                       k1 = random_tensor<double>({1, 40, 1, K}, 1303),
                       v4 = random_tensor<double>({1, 40, 4, V}, 1304),
                       g4 = random_tensor<double>({1, 40, 4}, 1305, -0.5, 0.0);
  Tensor<double> q4({1, 40, 4, K}), k4({1, 40, 4, K});
  for (int64_t t = 0; t < 40; ++t)
    for (int64_t h = 0; h < 4; ++h)
      for (int64_t i = 0; i < K; ++i)
        q4(0, t, h, i) = q1(0, t, 0, i), k4(0, t, h, i) = k1(0, t, 0, i);
  Tensor<double> oa({1, 40, 4, V}), ob({1, 40, 4, V});
  LinearAttentionParams<double> pd;
  simple_gla<double>(q1, k1, v4, g4, oa, pd);
  simple_gla<double>(q4, k4, v4, g4, ob, pd);
  EXPECT_LT(max_abs_diff(oa, ob), 1e-13);
}

// The chunk_gates stages directly.
TEST(ChunkGates, LocalCumsumAndMask) {
  const std::vector<double> g = {-1, -2, -3, -4, -5, -6, -7};
  std::vector<double> out(7);
  chunk_local_cumsum(g.data(), 7, 1, 3, out.data());
  const std::vector<double> want = {-1, -3, -6, -4, -9, -15, -7};
  EXPECT_EQ(out, want);
  // [T, K] with a row stride, chunk 2.
  const std::vector<double> gk = {-1, -10, 0, -2, -20, 0, -3, -30, 0};  // [3, 2] in stride 3
  std::vector<double> ok(6);
  chunk_local_cumsum(gk.data(), 3, 2, 3, 2, ok.data(), 2);
  EXPECT_EQ(ok, (std::vector<double>{-1, -10, -3, -30, -3, -30}));
  // View form on a strided [T] row.
  Tensor<double> gt({7, 2});
  for (int i = 0; i < 7; ++i) gt(i, 1) = g[i];
  Tensor<double> o2({7});
  chunk_local_cumsum<double>(TensorView<const double>(gt.view()).select(1, 1), 3, o2.view());
  for (int i = 0; i < 7; ++i) EXPECT_EQ(o2(i), want[i]);
  // Mask: exp(G_i - G_j) below the diagonal, zeros above, kStrict drops the diagonal.
  std::vector<double> A(9, 2.0), G = {0, -1, -3};
  apply_decay_mask(A.data(), 3, 3, G.data(), MaskDiag::kStrict);
  EXPECT_EQ(A[0], 0.0);
  EXPECT_NEAR(A[3], 2 * std::exp(-1.0), 1e-15);
  EXPECT_NEAR(A[7], 2 * std::exp(-2.0), 1e-15);
  EXPECT_EQ(A[5], 0.0);
  EXPECT_THROW(chunk_local_cumsum(g.data(), 7, 1, 0, out.data()), Error);
}

// The fused small products against loops: row counts that are not multiples of the register
// tile, column ranges with vector and scalar tails, strided / transposed a, tril terms, the
// lower-triangular output, row scales and beta; then one chunk's output and state passing.
template <class T>
void check_chunk_kernels() {
  std::mt19937 rng(5);
  std::uniform_real_distribution<double> u(-1, 1);
  auto fill = [&](std::vector<T>& x, int64_t n) {
    x.resize(static_cast<size_t>(n));
    for (auto& e : x) e = T(u(rng));
  };
  const double tol = sizeof(T) == 4 ? 1e-5 : 1e-13;
  for (int64_t m : {1, 7, 8, 13, 37}) {
    const int64_t depth = 19, cols = 53, ldb = 60, ldc = 61;
    std::vector<T> a, at, b, b2, c0, rs;
    fill(a, m * depth);  // a(i, k) = a[i * depth + k], 0 for k > i (the tril contract)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t k = i + 1; k < depth; ++k) a[i * depth + k] = T(0);
    fill(at, depth * m);   // a(i, k) = at[k * m + i]
    fill(b, depth * ldb);  // B [depth, ldb]
    fill(b2, m * ldb);     // B [m, ldb] for the tril term
    fill(c0, m * ldc);
    fill(rs, m);
    const ProductTerm<T> terms[2] = {
        {at.data(), 1, m, b.data(), ldb, depth, false},
        {a.data(), depth, 1, b2.data(), ldb, std::min(depth, m), true}};
    for (int mode = 0; mode < 4; ++mode) {  // 0: zero init, 1: row scale, 2: beta, 3: lower
      const int64_t col0 = mode == 1 ? 3 : 0, col1 = mode == 3 ? std::min(m, cols) : cols;
      std::vector<T> c = c0;
      product_sum(m, col0, col1, terms, 2, c.data(), ldc, mode == 0 || mode == 3,
                  mode == 1 ? rs.data() : nullptr, T(0.5), mode == 3);
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < ldc; ++j) {
          double want = c0[i * ldc + j];
          if (j >= col0 && j < col1) {
            want = mode == 0 || mode == 3 ? 0.0 : (mode == 1 ? rs[i] : 0.5) * want;
            for (int64_t k = 0; k < depth; ++k) want += double(at[k * m + i]) * b[k * ldb + j];
            for (int64_t k = 0; k <= std::min(i, depth - 1) && k < m; ++k)
              want += double(a[i * depth + k]) * b2[k * ldb + j];
            if (mode == 3 && j > i) want = 0.0;
          }
          ASSERT_NEAR(double(c[i * ldc + j]), want, tol)
              << "m " << m << " mode " << mode << " i " << i << " j " << j;
        }
    }
  }
  // chunk_output_and_state: O = Qe S + tril(A) V, S = diag(gamma) S + Kd^T V.
  const int64_t n = 11, K = 21, Vd = 45;
  std::vector<T> Qe, A, Vm, Kd, gamma, S, S0;
  fill(Qe, n * K);
  fill(A, n * n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i + 1; j < n; ++j) A[i * n + j] = T(0);
  fill(Vm, n * Vd);
  fill(Kd, K * n);  // Kd^T [K, n]
  fill(gamma, K);
  fill(S0, K * Vd);
  S = S0;
  std::vector<T> O(static_cast<size_t>(n * Vd), T(7));
  chunk_output_and_state(n, K, Vd, Qe.data(), K, A.data(), n, Vm.data(), Vd, Kd.data(), n,
                         int64_t(1), gamma.data(), T(1), S.data(), O.data(), Vd);
  for (int64_t j = 0; j < Vd; ++j) {
    for (int64_t i = 0; i < n; ++i) {
      double want = 0;
      for (int64_t k = 0; k < K; ++k) want += double(Qe[i * K + k]) * S0[k * Vd + j];
      for (int64_t t = 0; t <= i; ++t) want += double(A[i * n + t]) * Vm[t * Vd + j];
      EXPECT_NEAR(double(O[i * Vd + j]), want, tol);
    }
    for (int64_t k = 0; k < K; ++k) {
      double want = double(gamma[k]) * S0[k * Vd + j];
      for (int64_t t = 0; t < n; ++t) want += double(Kd[k * n + t]) * Vm[t * Vd + j];
      EXPECT_NEAR(double(S[k * Vd + j]), want, tol);
    }
  }
}

TEST(ChunkKernels, ProductSumAndOutputState) {
  check_chunk_kernels<double>();
  check_chunk_kernels<float>();
}

// The chunk form's transpose (16 x 16 register blocks for float with AVX-512, element by element
// otherwise): whole blocks, partial blocks on both sides, leading dimensions wider than the rows.
TEST(ChunkKernels, Transpose) {
  for (auto [rows, cols] :
       {std::pair<int64_t, int64_t>{16, 64}, {32, 48}, {16, 40}, {7, 16}, {33, 17}, {1, 1}}) {
    const int64_t lds = cols + 3, ldd = rows + 5;
    std::vector<float> src(static_cast<size_t>(rows * lds)), dst(static_cast<size_t>(cols * ldd));
    for (size_t i = 0; i < src.size(); ++i) src[i] = float(i) * 0.5f - 3.0f;
    linattn_detail::transpose(rows, cols, src.data(), lds, dst.data(), ldd);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j)
        ASSERT_EQ(dst[j * ldd + i], src[i * lds + j])
            << rows << "x" << cols << " " << i << "," << j;
  }
}

// Bad arguments raise effattn::Error naming the argument.
TEST(LinearAttention, BadArguments) {
  const Inputs<float> in = make_inputs<float>(Op::kGla, 2, 10, 2, 8, 4, 1400);
  Tensor<float> o({2, 10, 2, 4});
  LinearAttentionParams<float> p;
  auto expect_error = [](auto&& f, const std::string& needle) {
    try {
      f();
      ADD_FAILURE() << "no error, expected one mentioning '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  const Tensor<float> kbad({2, 10, 2, 9}), gbad({2, 10, 2}), sbad({2, 2, 4, 8});
  Tensor<float> obad({2, 9, 2, 4});
  expect_error([&] { gla<float>(in.q, kbad, in.v, in.g, o, p); }, "k has shape");
  expect_error([&] { gla<float>(in.q, in.k, in.v, gbad, o, p); }, "g has shape");
  expect_error([&] { gla<float>(in.q, in.k, in.v, in.g, obad, p); }, "o has shape");
  expect_error([&] { gla<float>(in.q, in.k, in.v, in.g, o, p, sbad); }, "initial_state");
  expect_error([&] { simple_gla<float>(in.q, in.k, in.v, {}, o, p); }, "gamma");
  auto pc = p;
  pc.chunk_size = 0;
  expect_error([&] { linear_attention<float>(in.q, in.k, in.v, o, pc); }, "chunk_size");
  auto pn = p;
  pn.causal = false;
  expect_error([&] { gla<float>(in.q, in.k, in.v, in.g, o, pn); }, "non-causal");
  auto pv = p;
  pv.cu_seqlens = {0, 4, 10};
  expect_error([&] { linear_attention<float>(in.q, in.k, in.v, o, pv); }, "cu_seqlens");
  pv.cu_seqlens = {0, 4, 9};
  const Tensor<float> q1({1, 10, 2, 8}), v1({1, 10, 2, 4});
  Tensor<float> o1({1, 10, 2, 4});
  expect_error([&] { linear_attention<float>(q1, q1, v1, o1, pv); }, "cu_seqlens");
  const Tensor<float> v3({2, 10, 3, 4});
  Tensor<float> o3({2, 10, 3, 4});
  expect_error([&] { linear_attention<float>(in.q, in.k, v3, o3, p); }, "heads");
}
