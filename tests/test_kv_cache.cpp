// KV cache: a sequence fed through the cache in pieces == one causal call; the ring buffer of a
// sliding-window layer == a full cache with the window mask (also for chunks longer than the
// window); bf16 storage == attention on bf16-rounded keys / values; bad arguments. The cache
// stores its slots head-major and hands attention() strided views [B, slots, Hkv, D]: decode
// over such views (the per-kv-head path of decode.hpp) == naive on a contiguous copy, for every
// option, and does not depend on the thread count; cached decode == naive at awkward sizes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "effattn/ops/attention/kv_cache.hpp"
#include "effattn/ops/attention/naive.hpp"
#include "test_util.hpp"

using namespace effattn;
using effattn::testing::max_abs_diff;
using effattn::testing::random_tensor;

namespace {

// x [B, T, H, D] copied head-major, returned as a [B, T, H, D] view of `store` [B, H, T, D]
// (row stride D, head stride T * D), the layout of KVCache::keys().
template <class T>
TensorView<const T> head_major(const Tensor<T>& x, Tensor<T>& store) {
  const int64_t B = x.size(0), T_ = x.size(1), H = x.size(2), D = x.size(3);
  store = Tensor<T>({B, H, T_, D});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T_; ++t)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t d = 0; d < D; ++d) store(b, h, t, d) = x(b, t, h, d);
  return TensorView<const T>(store.data(), Shape{B, T_, H, D}, {H * T_ * D, D, T_ * D, 1});
}

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

// attention() on head-major strided k, v (as the cache hands them out) == naive on the
// contiguous tensors, in double, at awkward sizes and with every option the decode path takes:
// GQA groups of 1 / 3 / 4 query heads, 1..16 queries, K != V, masks, soft-cap, sinks, bias, and
// given / automatic split sizes; both paths (prefill packs the strided rows).
TEST(KVCache, HeadMajorViewEqualsContiguous) {
  struct D {
    int64_t B, Tq, Tk, Hq, Hkv, K, V;
  };
  const D dims[] = {{1, 1, 1, 4, 2, 40, 40},    {2, 1, 7, 6, 2, 40, 24},
                    {1, 1, 257, 8, 2, 64, 64},  {1, 3, 63, 12, 4, 96, 48},
                    {2, 16, 100, 4, 4, 32, 32}, {1, 1, 600, 8, 2, 128, 128},
                    {1, 5, 130, 2, 2, 17, 9}};
  uint64_t seed = 100;
  for (const D& d : dims)
    for (int opt = 0; opt < 6; ++opt) {
      const Tensor<double> q = random_tensor<double>({d.B, d.Tq, d.Hq, d.K}, seed, -2, 2);
      const Tensor<double> k = random_tensor<double>({d.B, d.Tk, d.Hkv, d.K}, seed + 1, -2, 2);
      const Tensor<double> v = random_tensor<double>({d.B, d.Tk, d.Hkv, d.V}, seed + 2);
      const Tensor<double> sinks = random_tensor<double>({d.Hq}, seed + 3, -1, 3);
      const Tensor<double> bias = random_tensor<double>({d.B, d.Hq, d.Tq, d.Tk}, seed + 4, -2, 2);
      seed += 10;
      Tensor<double> ks, vs;
      const TensorView<const double> kh = head_major(k, ks), vh = head_major(v, vs);
      AttentionParams p;
      AttentionExtras<double> ex;
      p.causal = opt != 1;
      if (opt == 2) p.window_left = 20;
      if (opt == 3) p.softcap = 3.0;
      if (opt == 4) ex.sinks = sinks.view();
      if (opt == 5) ex.bias = bias.view();
      if (opt == 5) p.dilation = 2;
      Tensor<double> ref({d.B, d.Tq, d.Hq, d.V}), ref_lse({d.B, d.Tq, d.Hq});
      attention_naive<double>(q, k, v, ref, p, ref_lse, ex);
      for (AttentionPath path : {AttentionPath::kDecode, AttentionPath::kPrefill})
        for (int64_t split : {0, 48}) {
          p.path = path;
          p.decode_split = split;
          Tensor<double> o({d.B, d.Tq, d.Hq, d.V}), lse({d.B, d.Tq, d.Hq});
          attention<double>(q, kh, vh, o, p, lse, ex);
          const std::string ctx = "Tq=" + std::to_string(d.Tq) + " Tk=" + std::to_string(d.Tk) +
                                  " Hq=" + std::to_string(d.Hq) + " Hkv=" + std::to_string(d.Hkv) +
                                  " opt=" + std::to_string(opt) +
                                  " path=" + std::to_string(int(path)) +
                                  " split=" + std::to_string(split);
          EXPECT_LT(max_abs_diff(o, ref), 1e-10) << ctx;
          for (int64_t i = 0; i < lse.numel(); ++i) {
            const double a = lse.data()[i], b = ref_lse.data()[i];
            if (std::isinf(a) || std::isinf(b))
              EXPECT_EQ(a, b) << ctx;
            else
              EXPECT_NEAR(a, b, 1e-10) << ctx;
          }
        }
    }
}

// The per-kv-head decode path splits the keys by a rule that ignores the thread count, and
// merges the splits in order: 1 thread == 2 threads bitwise (float and bf16 storage).
TEST(KVCache, HeadMajorDecodeThreadIndependent) {
  const Tensor<float> q = random_tensor<float>({2, 1, 8, 64}, 7, -2, 2);
  const Tensor<float> k = random_tensor<float>({2, 3000, 2, 64}, 8, -2, 2);
  const Tensor<float> v = random_tensor<float>({2, 3000, 2, 64}, 9);
  Tensor<float> ks, vs;
  const TensorView<const float> kh = head_major(k, ks), vh = head_major(v, vs);
  Tensor<bf16> kb({2, 2, 3000, 64}), vb({2, 2, 3000, 64});
  for (int64_t i = 0; i < ks.numel(); ++i) {
    kb.data()[i] = bf16(ks.data()[i]);
    vb.data()[i] = bf16(vs.data()[i]);
  }
  auto strided = [](const Tensor<bf16>& x) {
    return TensorView<const bf16>(x.data(), Shape{2, 3000, 2, 64},
                                  {2 * 3000 * 64, 64, 3000 * 64, 1});
  };
  Tensor<float> o1({2, 1, 8, 64}), o2({2, 1, 8, 64}), l1({2, 1, 8}), l2({2, 1, 8});
  AttentionParams p;
  p.causal = true;
  for (int bf : {0, 1}) {
    for (int th : {1, 2}) {
      p.num_threads = th;
      if (bf)
        attention<float, bf16>(q, strided(kb), strided(vb), th == 1 ? o1 : o2, p,
                               th == 1 ? l1 : l2);
      else
        attention<float>(q, kh, vh, th == 1 ? o1 : o2, p, th == 1 ? l1 : l2);
    }
    EXPECT_EQ(max_abs_diff(o1, o2), 0.0) << "bf16=" << bf;
    EXPECT_EQ(max_abs_diff(l1, l2), 0.0) << "bf16=" << bf;
  }
}

// Token-by-token decode through the cache == naive attention over the prefix, in double, with
// a GQA group of 3 and K != V; the cache's views have the public shape and carry the tokens.
TEST(KVCache, CachedDecodeEqualsNaive) {
  const int64_t T = 70, Hq = 6, Hkv = 2, K = 40, V = 24;
  const Seq s = make_seq(2, T, Hq, Hkv, K, V, 11);
  KVCache<double> cache(2, Hkv, K, V, T);
  Tensor<double> o({2, 1, Hq, V}), lse({2, 1, Hq}), ref({2, 1, Hq, V}), ref_lse({2, 1, Hq});
  for (int64_t t = 0; t < T; ++t) {
    auto tok = [&](const Tensor<double>& x) { return x.view().slice(1, t, t + 1); };
    cached_attention<double, double>(tok(s.q), tok(s.k), tok(s.v), cache, o, {}, lse);
    AttentionParams p;
    p.causal = true;
    attention_naive<double>(tok(s.q), s.k.view().slice(1, 0, t + 1), s.v.view().slice(1, 0, t + 1),
                            ref, p, ref_lse);
    ASSERT_LT(max_abs_diff(o, ref), 1e-10) << "t=" << t;
    ASSERT_LT(max_abs_diff(lse, ref_lse), 1e-10) << "t=" << t;
  }
  EXPECT_EQ(cache.keys().shape(), Shape({2, T, Hkv, K}));
  EXPECT_EQ(cache.values().shape(), Shape({2, T, Hkv, V}));
  EXPECT_EQ(max_abs_diff(TensorView<const double>(cache.keys()), s.k.view()), 0.0);
  EXPECT_EQ(max_abs_diff(TensorView<const double>(cache.values()), s.v.view()), 0.0);
  // truncate: drop the last 10 tokens, feed them again, same answer.
  cache.truncate(T - 10);
  EXPECT_EQ(cache.length(), T - 10);
  Tensor<double> o2({2, 10, Hq, V}), full({2, T, Hq, V});
  cached_attention<double, double>(s.q.view().slice(1, T - 10, T), s.k.view().slice(1, T - 10, T),
                                   s.v.view().slice(1, T - 10, T), cache, o2);
  AttentionParams pc;
  pc.causal = true;
  attention_naive<double>(s.q, s.k, s.v, full, pc);
  EXPECT_LT(max_abs_diff(TensorView<const double>(o2.view()),
                         TensorView<const double>(full.view().slice(1, T - 10, T))),
            1e-10);
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
  EXPECT_THROW(ring.truncate(0), Error);   // a ring cannot roll back
  EXPECT_THROW(cache.truncate(1), Error);  // past length()
}
