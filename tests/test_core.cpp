// core/: views and slicing, shape checks and their messages, parallel_for, bf16.
#include <gtest/gtest.h>

#include <algorithm>

#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "effattn/core/bf16.hpp"
#include "effattn/core/error.hpp"
#include "effattn/core/parallel.hpp"
#include "effattn/core/tensor.hpp"

using namespace effattn;

namespace {

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

}  // namespace

TEST(Tensor, AlignedZeroedRowMajor) {
  Tensor<float> t({2, 3, 4, 5});
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data()) % kAlignment, 0u);
  EXPECT_EQ(t.numel(), 120);
  for (int64_t i = 0; i < t.numel(); ++i) EXPECT_EQ(t.data()[i], 0.0f);
  t(1, 2, 3, 4) = 7.0f;
  EXPECT_EQ(t.data()[((1 * 3 + 2) * 4 + 3) * 5 + 4], 7.0f);
  Tensor<float> empty({0, 4});
  EXPECT_EQ(empty.numel(), 0);
  EXPECT_NE(empty.data(), nullptr);
}

TEST(Tensor, CopyIsDeep) {
  Tensor<double> a({3});
  a(1) = 2.0;
  Tensor<double> b = a;
  b(1) = 5.0;
  EXPECT_EQ(a(1), 2.0);
  a = b;
  EXPECT_EQ(a(1), 5.0);
  // A default-constructed (empty) tensor copies as empty; a 0-d tensor holds one element.
  Tensor<float> none;
  Tensor<float> none2 = none;
  EXPECT_TRUE(none2.empty());
  Tensor<float> scalar{Shape{}};
  scalar.data()[0] = 3.0f;
  Tensor<float> scalar2 = scalar;
  EXPECT_EQ(scalar2.data()[0], 3.0f);
}

// Freed storage of >= 1 MiB is recycled: the next tensor that fits (at most 1/4 to spare) gets the
// block, zeroed again; nothing smaller, nothing much larger, nothing past the limit.
TEST(Tensor, LargeBlocksAreRecycledAndZeroed) {
  if (!detail::BlockCache::enabled()) {  // sanitizer builds: every block goes back at once
    { Tensor<float> a({512, 1024}); }
    EXPECT_EQ(tensor_cache_bytes(), 0u);
    return;
  }
  const std::size_t limit = tensor_cache_limit();
  set_tensor_cache_limit(0);  // start empty
  set_tensor_cache_limit(std::size_t(64) << 20);
  const float* first;
  {
    Tensor<float> a({512, 1024});  // 2 MiB
    a.fill(3.0f);
    first = a.data();
  }
  EXPECT_EQ(tensor_cache_bytes(), std::size_t(2) << 20);
  {
    Tensor<float> small({1000});  // too small to come from the cache
    EXPECT_NE(small.data(), first);
    Tensor<float> big({1024, 1024});  // 4 MiB: the 2 MiB block does not fit
    EXPECT_NE(big.data(), first);
    EXPECT_EQ(tensor_cache_bytes(), std::size_t(2) << 20);
  }
  EXPECT_EQ(tensor_cache_bytes(), std::size_t(6) << 20);  // big is kept too
  {
    Tensor<float> b({500, 1000});  // 1.9 MiB: fits the 2 MiB block
    EXPECT_EQ(b.data(), first);
    EXPECT_EQ(*std::max_element(b.data(), b.data() + b.numel()), 0.0f);  // zeroed again
    EXPECT_EQ(tensor_cache_bytes(), std::size_t(4) << 20);
    Tensor<float> c({300, 1024});  // 1.2 MiB: the 4 MiB block has too much to spare
    EXPECT_EQ(tensor_cache_bytes(), std::size_t(4) << 20);
  }
  set_tensor_cache_limit(std::size_t(5) << 20);  // drops the oldest until under the limit
  EXPECT_LE(tensor_cache_bytes(), std::size_t(5) << 20);
  set_tensor_cache_limit(0);
  EXPECT_EQ(tensor_cache_bytes(), 0u);
  { Tensor<float> d({512, 1024}); }
  EXPECT_EQ(tensor_cache_bytes(), 0u);  // limit 0: nothing kept
  set_tensor_cache_limit(limit);
}

TEST(TensorView, SelectHeadWithoutCopy) {
  // [B, T, H, D] = [2, 3, 4, 5]: head 2 is a [B, T, D] view with strides (60, 20, 1).
  Tensor<float> x({2, 3, 4, 5});
  for (int64_t i = 0; i < x.numel(); ++i) x.data()[i] = float(i);
  TensorView<float> h = x.view().select(2, 2);
  EXPECT_EQ(h.shape(), (Shape{2, 3, 5}));
  EXPECT_EQ(h.stride(0), 60);
  EXPECT_EQ(h.stride(1), 20);
  EXPECT_EQ(h.stride(2), 1);
  EXPECT_FALSE(h.is_contiguous());
  for (int b = 0; b < 2; ++b)
    for (int t = 0; t < 3; ++t)
      for (int d = 0; d < 5; ++d) EXPECT_EQ(&h(b, t, d), &x(b, t, 2, d));
  h(1, 2, 4) = -1.0f;
  EXPECT_EQ(x(1, 2, 2, 4), -1.0f);
}

TEST(TensorView, SliceTransposeReshape) {
  Tensor<int> x({4, 6});
  for (int64_t i = 0; i < x.numel(); ++i) x.data()[i] = int(i);
  auto s = x.view().slice(1, 2, 5);  // columns 2..4
  EXPECT_EQ(s.shape(), (Shape{4, 3}));
  EXPECT_EQ(s(3, 0), 3 * 6 + 2);
  auto t = s.transpose(0, 1);
  EXPECT_EQ(t.shape(), (Shape{3, 4}));
  EXPECT_EQ(t(2, 1), 1 * 6 + 4);
  auto r = x.view().reshape(Shape{2, 12});
  EXPECT_EQ(r(1, 0), 12);
  EXPECT_THROW(s.reshape(Shape{12}), Error);
  EXPECT_THROW(x.view().slice(1, 4, 7), Error);
  EXPECT_THROW(x.view().select(2, 0), Error);
  EXPECT_THROW(x.view().select(0, 4), Error);
  // A strided view copies into a contiguous tensor element by element.
  Tensor<double> c = Tensor<double>::from(TensorView<const int>(t));
  EXPECT_EQ(c(2, 3), double(3 * 6 + 4));
  // A mutable view converts to a const view.
  TensorView<const int> cv = s;
  EXPECT_EQ(cv(0, 0), 2);
}

TEST(TensorView, FiveDims) {
  Tensor<float> x({2, 1, 3, 2, 2});
  x(1, 0, 2, 1, 1) = 3.0f;
  EXPECT_EQ(x.view().select(0, 1).select(1, 2)(0, 1, 1), 3.0f);
  EXPECT_THROW(Shape({1, 2, 3, 4, 5, 6}), Error);
  EXPECT_THROW(Shape({1, -2}), Error);
}

TEST(Check, ShapeMessageNamesArgumentShapeAndExpectation) {
  Tensor<float> k({2, 37, 3, 16});
  const std::string msg = message_of([&] {
    check_shape("attention", "k", TensorView<const float>(k.view()), {2, -1, 3, 32},
                "[B, Tk, Hkv, K]");
  });
  EXPECT_NE(msg.find("attention"), std::string::npos) << msg;
  EXPECT_NE(msg.find("k has shape [2, 37, 3, 16]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[B, Tk, Hkv, K] = [2, *, 3, 32]"), std::string::npos) << msg;
  EXPECT_NO_THROW(check_shape("attention", "k", TensorView<const float>(k.view()), {2, -1, 3, 16},
                              "[B, Tk, Hkv, K]"));
  // Wrong rank and a missing tensor are errors too.
  EXPECT_THROW(check_shape("op", "x", TensorView<const float>(k.view()), {2, 37, 3}, "[B, T, H]"),
               Error);
  EXPECT_NE(message_of([] {
              check_shape("op", "x", TensorView<const float>{}, {1}, "[N]");
            }).find("<none>"),
            std::string::npos);
  const std::string m2 = message_of([] { check(1 + 1 == 3, "x: expected ", 3, ", got ", 2); });
  EXPECT_EQ(m2, "x: expected 3, got 2");
  auto strided = k.view().transpose(2, 3);
  EXPECT_THROW(check_inner_contiguous("op", "q", TensorView<const float>(strided)), Error);
}

TEST(Parallel, CoversEveryIndexOnceAnyThreadCount) {
  for (int threads : {1, 2, 3}) {
    for (int64_t n : {0, 1, 7, 1000}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      parallel_for(
          0, n, [&](int64_t i) { hits[size_t(i)]++; }, threads, 3);
      for (auto& h : hits) EXPECT_EQ(h.load(), 1);
      std::vector<std::atomic<int>> hits2(static_cast<size_t>(n));
      parallel_for_range(
          0, n,
          [&](int64_t lo, int64_t hi) {
            for (int64_t i = lo; i < hi; ++i) hits2[size_t(i)]++;
          },
          threads);
      for (auto& h : hits2) EXPECT_EQ(h.load(), 1);
    }
  }
}

TEST(Parallel, ExceptionsReachTheCaller) {
  EXPECT_THROW(parallel_for(
                   0, 100, [](int64_t i) { check(i != 57, "bad index ", i); }, 2),
               Error);
}

TEST(Parallel, GlobalAndPerCallThreadCount) {
  set_num_threads(1);
  EXPECT_EQ(get_num_threads(), 1);
#if defined(_OPENMP)
  EXPECT_EQ(get_num_threads(2), 2);
#endif
  set_num_threads(0);
  EXPECT_GE(get_num_threads(), 1);
}

TEST(Bf16, RoundToNearestEven) {
  auto bits = [](float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
  };
  auto from_bits = [](uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  };
  EXPECT_EQ(bf16(1.0f).bits, 0x3f80);
  // Exactly halfway between 0x3f80 and 0x3f81: ties to even (0x3f80).
  EXPECT_EQ(bf16(from_bits(0x3f808000u)).bits, 0x3f80);
  // Halfway between 0x3f81 and 0x3f82: ties to even (0x3f82).
  EXPECT_EQ(bf16(from_bits(0x3f818000u)).bits, 0x3f82);
  // Just above halfway rounds up, just below rounds down.
  EXPECT_EQ(bf16(from_bits(0x3f808001u)).bits, 0x3f81);
  EXPECT_EQ(bf16(from_bits(0x3f807fffu)).bits, 0x3f80);
  // Negative numbers round symmetrically.
  EXPECT_EQ(bf16(from_bits(0xbf818000u)).bits, 0xbf82);
  // Overflow past the largest bf16 goes to inf; inf stays inf.
  EXPECT_EQ(bf16(std::numeric_limits<float>::max()).bits, 0x7f80);
  EXPECT_EQ(bf16(std::numeric_limits<float>::infinity()).bits, 0x7f80);
  EXPECT_EQ(bf16(-std::numeric_limits<float>::infinity()).bits, 0xff80);
  // NaN stays NaN (including a NaN whose payload sits only in the dropped low bits).
  EXPECT_TRUE(std::isnan(float(bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isnan(float(bf16(from_bits(0x7f800001u)))));
  EXPECT_TRUE(std::isnan(float(bf16(from_bits(0xff800001u)))));
  // Signed zero and subnormals.
  EXPECT_EQ(bf16(-0.0f).bits, 0x8000);
  EXPECT_EQ(bf16(from_bits(0x00010000u)).bits, 0x0001);
  (void)bits;
}

TEST(Bf16, RoundTripIsExactForBf16ValuesAndHalfUlpOtherwise) {
  // Every bf16 bit pattern that is not NaN survives bf16 -> float -> bf16.
  for (uint32_t b = 0; b < 0x10000u; ++b) {
    const float f = bf16::to_float(static_cast<uint16_t>(b));
    if (std::isnan(f)) continue;
    EXPECT_EQ(bf16(f).bits, b);
  }
  // A float's rounding error is at most half a bf16 ulp (2^-8 relative).
  for (float f : {0.1f, 3.14159265f, -1234.5678f, 1e-30f, 6.5e4f}) {
    const float r = float(bf16(f));
    EXPECT_LE(std::abs(r - f), std::abs(f) * (1.0f / 256.0f)) << f;
  }
}
