// KV cache: a sequence fed through the cache in pieces == one causal call; the ring buffer of a
// sliding-window layer == a full cache with the window mask (also for chunks longer than the
// window); bf16 storage == attention on bf16-rounded keys / values; bad arguments.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "effattn/ops/attention/kv_cache.hpp"
#include "test_util.hpp"

using namespace effattn;
using effattn::testing::max_abs_diff;
using effattn::testing::random_tensor;

namespace {

struct Seq {
  Tensor<double> q, k, v;
};
Seq make_seq(int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t K, int64_t V, uint64_t seed) {
  return {random_tensor<double>({B, T, Hq, K}, seed, -2, 2),
          random_tensor<double>({B, T, Hkv, K}, seed + 1, -2, 2),
          random_tensor<double>({B, T, Hkv, V}, seed + 2)};
}

// Feeds the sequence through the cache in chunks of the given sizes; returns o [B,T,Hq,V] and
// lse [B,T,Hq] assembled from the chunks.
template <class S>
void run_pieces(const Seq& s, KVCache<S>& cache, const std::vector<int64_t>& chunks,
                const AttentionParams& p, Tensor<double>& o, Tensor<double>& lse,
                const Tensor<double>* sinks = nullptr) {
  int64_t t0 = 0;
  for (int64_t n : chunks) {
    auto sl = [&](const Tensor<double>& x) { return x.view().slice(1, t0, t0 + n); };
    cached_attention<double, S>(sl(s.q), sl(s.k), sl(s.v), cache, o.view().slice(1, t0, t0 + n), p,
                                lse.view().slice(1, t0, t0 + n),
                                sinks ? sinks->view() : TensorView<const double>{});
    t0 += n;
  }
  ASSERT_EQ(t0, s.q.size(1));
}

}  // namespace

TEST(KVCache, PiecesEqualOneCall) {
  const Seq s = make_seq(2, 100, 4, 2, 40, 48, 1);
  AttentionParams p;
  p.causal = true;
  Tensor<double> full({2, 100, 4, 48}), full_lse({2, 100, 4});
  attention<double>(s.q, s.k, s.v, full, p, full_lse);
  for (const auto& chunks :
       std::vector<std::vector<int64_t>>{{100}, {1, 1, 1, 97}, {37, 63}, {50, 1, 20, 29}}) {
    KVCache<double> cache(2, 2, 40, 48, 128);
    Tensor<double> o({2, 100, 4, 48}), lse({2, 100, 4});
    run_pieces(s, cache, chunks, AttentionParams{}, o, lse);
    EXPECT_LT(max_abs_diff(o, full), 1e-12);
    EXPECT_LT(max_abs_diff(lse, full_lse), 1e-12);
    EXPECT_EQ(cache.length(), 100);
  }
}

// A ring of W slots with window_left = W - 1 == a full cache with a sliding-window mask,
// whether tokens come one at a time or in chunks longer than the window; and with sinks.
TEST(KVCache, RingBufferEqualsFullCacheWithWindow) {
  const int64_t W = 16;
  const Seq s = make_seq(1, 90, 4, 1, 32, 32, 2);
  const Tensor<double> sinks = random_tensor<double>({4}, 9);
  AttentionParams p;
  p.causal = true;
  p.window_left = W - 1;
  Tensor<double> full({1, 90, 4, 32}), full_lse({1, 90, 4});
  AttentionExtras<double> ex;
  ex.sinks = sinks.view();
  attention<double>(s.q, s.k, s.v, full, p, full_lse, ex);
  for (const auto& chunks : std::vector<std::vector<int64_t>>{
           {1, 1, 1, 1, 1, 85}, {40, 1, 1, 48}, {7, 9, 16, 17, 1, 40}}) {
    KVCache<double> ring(1, 1, 32, 32, 0, W);
    Tensor<double> o({1, 90, 4, 32}), lse({1, 90, 4});
    run_pieces(s, ring, chunks, AttentionParams{}, o, lse, &sinks);
    EXPECT_LT(max_abs_diff(o, full), 1e-12);
    EXPECT_LT(max_abs_diff(lse, full_lse), 1e-12);
    EXPECT_EQ(ring.slots(), W);  // O(window) memory
    EXPECT_EQ(ring.stored(), W);
  }
  // A narrower window than the ring holds.
  AttentionParams p5 = p;
  p5.window_left = 5;
  attention<double>(s.q, s.k, s.v, full, p5, full_lse);
  KVCache<double> ring(1, 1, 32, 32, 0, W);
  Tensor<double> o({1, 90, 4, 32}), lse({1, 90, 4});
  AttentionParams pc;
  pc.window_left = 5;
  run_pieces(s, ring, {3, 30, 1, 56}, pc, o, lse);
  EXPECT_LT(max_abs_diff(o, full), 1e-12);
}

// bf16 storage: equals attention in float on the bf16-rounded keys and values, and stays close
// to the unrounded result.
TEST(KVCache, Bf16StorageMatchesRoundedInputs) {
  const Seq sd = make_seq(1, 70, 4, 2, 64, 64, 3);
  const Tensor<float> q = Tensor<float>::from(sd.q.view()), k = Tensor<float>::from(sd.k.view()),
                      v = Tensor<float>::from(sd.v.view());
  Tensor<float> kr(k.shape()), vr(v.shape());
  for (int64_t i = 0; i < k.numel(); ++i) kr.data()[i] = float(bf16(k.data()[i]));
  for (int64_t i = 0; i < v.numel(); ++i) vr.data()[i] = float(bf16(v.data()[i]));
  AttentionParams p;
  p.causal = true;
  Tensor<float> ref({1, 70, 4, 64}), exact({1, 70, 4, 64});
  attention<float>(q, kr, vr, ref, p);
  attention<float>(q, k, v, exact, p);
  for (int64_t window : {0, 24}) {
    KVCache<bf16> cache(1, 2, 64, 64, 80, window);
    Tensor<float> o({1, 70, 4, 64});
    int64_t t0 = 0;
    for (int64_t n : {20, 1, 1, 48}) {
      auto sl = [&](const Tensor<float>& x) { return x.view().slice(1, t0, t0 + n); };
      AttentionParams pc;
      if (window) pc.window_left = window - 1;
      cached_attention<float, bf16>(sl(q), sl(k), sl(v), cache, o.view().slice(1, t0, t0 + n), pc);
      t0 += n;
    }
    if (window == 0) {
      EXPECT_LT(max_abs_diff(o, ref), 2e-6);
      EXPECT_LT(max_abs_diff(o, exact), 2e-2);  // bf16 rounding of k and v, not more
    } else {
      AttentionParams pw = p;
      pw.window_left = window - 1;
      Tensor<float> refw({1, 70, 4, 64});
      attention<float>(q, kr, vr, refw, pw);
      EXPECT_LT(max_abs_diff(o, refw), 2e-6);
    }
  }
}

TEST(KVCache, BadArgumentsRaise) {
  EXPECT_THROW(KVCache<float>(0, 1, 8, 8, 10), Error);
  EXPECT_THROW(KVCache<float>(1, 1, 8, 8, 0), Error);
  EXPECT_THROW(KVCache<float>(1, 1, 8, 8, 10, -1), Error);
  KVCache<float> cache(1, 2, 8, 8, 10);
  Tensor<float> k({1, 11, 2, 8}), v({1, 11, 2, 8}), q({1, 11, 4, 8}), o({1, 11, 4, 8});
  EXPECT_THROW(cache.append<float>(k, v), Error);  // over capacity
  EXPECT_THROW(cache.append<float>(Tensor<float>({1, 3, 1, 8}), Tensor<float>({1, 3, 1, 8})),
               Error);
  EXPECT_THROW(cached_attention<float>(q, k, v, cache, Tensor<float>({1, 11, 4, 7})), Error);
  KVCache<float> ring(1, 2, 8, 8, 0, 4);
  AttentionParams p;
  p.window_left = 4;  // the ring only holds 4 tokens
  EXPECT_THROW(cached_attention<float>(q, k, v, ring, o, p), Error);
}
