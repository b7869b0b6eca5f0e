// RoPE: half-split and interleaved rotations against the formula written out in double,
// partial rotary dim, offsets == running the sequence in pieces, varlen, relative-position
// property of q.k, and bad arguments.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "effattn/ops/common/rope.hpp"
#include "test_util.hpp"

using namespace effattn;
using effattn::testing::max_abs_diff;
using effattn::testing::random_tensor;

namespace {

// out[b,t,h,:] = rotation of x[b,t,h,:] at position offset + t, written the obvious way.
Tensor<double> reference(const Tensor<double>& x, RopeStyle style, int64_t R, double theta,
                         int64_t offset) {
  Tensor<double> y = x;
  for (int64_t b = 0; b < x.size(0); ++b)
    for (int64_t t = 0; t < x.size(1); ++t)
      for (int64_t h = 0; h < x.size(2); ++h)
        for (int64_t i = 0; i < R / 2; ++i) {
          const double ang = double(offset + t) / std::pow(theta, double(2 * i) / double(R));
          const int64_t ia = style == RopeStyle::kHalfSplit ? i : 2 * i;
          const int64_t ib = style == RopeStyle::kHalfSplit ? i + R / 2 : 2 * i + 1;
          const double a = x(b, t, h, ia), c = x(b, t, h, ib);
          y(b, t, h, ia) = a * std::cos(ang) - c * std::sin(ang);
          y(b, t, h, ib) = a * std::sin(ang) + c * std::cos(ang);
        }
  return y;
}

}  // namespace

TEST(Rope, MatchesFormulaBothStylesPartialDims) {
  const Tensor<double> x = random_tensor<double>({2, 37, 3, 80}, 1);
  for (RopeStyle style : {RopeStyle::kHalfSplit, RopeStyle::kInterleaved})
    for (int64_t R : {80, 32, 2})
      for (int64_t off : {0, 5, 100000}) {
        Tensor<double> y = x;
        RopeParams p;
        p.style = style;
        p.rotary_dim = R == 80 ? 0 : R;
        p.theta = R == 32 ? 500000.0 : 10000.0;
        p.offset = off;
        apply_rope<double>(y, p);
        const Tensor<double> ref = reference(x, style, R, p.theta, off);
        EXPECT_LT(max_abs_diff(y, ref), 1e-9) << "style " << int(style) << " R " << R;
        // dims past R untouched
        if (R < 80) {
          EXPECT_EQ(y(1, 5, 2, 79), x(1, 5, 2, 79));
        }
      }
}

TEST(Rope, FloatMatchesDouble) {
  const Tensor<double> x = random_tensor<double>({1, 100, 2, 64}, 2);
  Tensor<float> y = Tensor<float>::from(x.view());
  RopeParams p;
  p.offset = 70000;
  apply_rope<float>(y, p);
  EXPECT_LT(max_abs_diff(y, reference(x, RopeStyle::kHalfSplit, 64, 10000.0, 70000)), 2e-6);
}

// Decode: rotating token by token with offset = tokens so far == rotating the whole sequence.
TEST(Rope, PiecesWithOffsetsEqualWholeSequence) {
  const Tensor<double> x = random_tensor<double>({2, 20, 2, 16}, 3);
  Tensor<double> whole = x;
  RopeParams p;
  p.style = RopeStyle::kInterleaved;
  apply_rope<double>(whole, p);
  Tensor<double> pieces = x;
  for (int64_t t0 : {0, 7, 8, 19}) {
    const int64_t t1 = t0 == 0 ? 7 : (t0 == 7 ? 8 : (t0 == 8 ? 19 : 20));
    RopeParams q = p;
    q.offset = t0;
    apply_rope<double>(pieces.view().slice(1, t0, t1), q);
  }
  EXPECT_LT(max_abs_diff(pieces, whole), 1e-12);

  // per-sequence offsets
  Tensor<double> y = x;
  RopeParams q = p;
  q.offsets = {3, 11};
  apply_rope<double>(y, q);
  Tensor<double> y0 = Tensor<double>::from(x.view().slice(0, 0, 1)),
                 y1 = Tensor<double>::from(x.view().slice(0, 1, 2));
  q.offsets.clear();
  q.offset = 3;
  apply_rope<double>(y0, q);
  q.offset = 11;
  apply_rope<double>(y1, q);
  EXPECT_LT(max_abs_diff(Tensor<double>::from(y.view().slice(0, 0, 1)), y0), 1e-12);
  EXPECT_LT(max_abs_diff(Tensor<double>::from(y.view().slice(0, 1, 2)), y1), 1e-12);
}

TEST(Rope, VarlenRestartsPositions) {
  const Tensor<double> x = random_tensor<double>({1, 30, 2, 16}, 4);
  Tensor<double> y = x;
  RopeParams p;
  p.cu_seqlens = {0, 10, 10, 30};
  p.offsets = {0, 4, 2};
  apply_rope<double>(y, p);
  const Tensor<double> a = reference(Tensor<double>::from(x.view().slice(1, 0, 10)),
                                     RopeStyle::kHalfSplit, 16, 10000.0, 0);
  const Tensor<double> b = reference(Tensor<double>::from(x.view().slice(1, 10, 30)),
                                     RopeStyle::kHalfSplit, 16, 10000.0, 2);
  EXPECT_LT(max_abs_diff(Tensor<double>::from(y.view().slice(1, 0, 10)), a), 1e-12);
  EXPECT_LT(max_abs_diff(Tensor<double>::from(y.view().slice(1, 10, 30)), b), 1e-12);
}

// q_m . k_n after RoPE depends on m - n only.
TEST(Rope, DotProductDependsOnRelativePosition) {
  const Tensor<double> base = random_tensor<double>({1, 2, 1, 32}, 5);
  double dots[2];
  for (int r = 0; r < 2; ++r) {
    Tensor<double> q = Tensor<double>::from(base.view().slice(1, 0, 1));
    Tensor<double> k = Tensor<double>::from(base.view().slice(1, 1, 2));
    RopeParams pq, pk;
    pq.offset = r == 0 ? 10 : 1010;
    pk.offset = r == 0 ? 3 : 1003;
    apply_rope<double>(q, pq);
    apply_rope<double>(k, pk);
    dots[r] = 0;
    for (int64_t d = 0; d < 32; ++d) dots[r] += q(0, 0, 0, d) * k(0, 0, 0, d);
  }
  EXPECT_NEAR(dots[0], dots[1], 1e-10);
}

TEST(Rope, BadArgumentsRaise) {
  Tensor<float> x({1, 4, 2, 10});
  RopeParams p;
  p.rotary_dim = 7;
  EXPECT_THROW(apply_rope<float>(x, p), Error);
  p.rotary_dim = 12;
  EXPECT_THROW(apply_rope<float>(x, p), Error);
  p = {};
  p.theta = 0;
  EXPECT_THROW(apply_rope<float>(x, p), Error);
  p = {};
  p.offsets = {1, 2};
  try {
    apply_rope<float>(x, p);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("offsets"), std::string::npos) << e.what();
  }
  p = {};
  p.cu_seqlens = {0, 3};
  EXPECT_THROW(apply_rope<float>(x, p), Error);
  Tensor<float> x3({4, 2, 10});
  EXPECT_THROW(apply_rope<float>(x3, RopeParams{}), Error);
}
