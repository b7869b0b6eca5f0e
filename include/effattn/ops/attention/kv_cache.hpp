// KV cache for softmax attention: keys and values of a batch of B sequences that advance
// together, stored as S (float, double or bf16; bf16 halves the bytes decode reads, the kernel
// accumulates in float).
//
//   linear: k, v [B, capacity, Hkv, K|V]; token at position t in row t.
//   ring (window W > 0): k, v [B, W, Hkv, K|V]; position t in slot t % W, so a sliding-window
//     layer keeps O(W) memory however long the context grows.
//
// Those are the shapes of the views keys() / values(); the storage underneath is head-major,
// [B, Hkv, slots, K|V] (FlashInfer's HND; llama.cpp keeps each head's K contiguous too), and the
// views carry the strides (row K, head slots * K). So each kv head's keys are one contiguous
// stream, which decode reads at the hardware prefetcher's pace; in [B, T, Hkv, D] one head's
// rows are Hkv * D apart (4 KB for 8 heads of 128 floats), a page each, and streamed per head
// they read at half the speed. attention() takes the strided views as they are.
//
// cached_attention(q, k_new, v_new, cache, o) appends the new tokens and attends their queries
// (positions len .. len+T-1) causally over everything cached, plus the layer's window. On a ring
// the new queries read the old slots (at most two contiguous runs of positions) and the new
// keys separately, and the partial results are merged by their log-sum-exp (merge_states), so a
// chunk longer than the window still sees exactly its window.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "effattn/ops/attention/attention.hpp"

namespace effattn {

template <class S = float>
class KVCache {
 public:
  // window > 0 makes a ring of `window` slots (capacity is then ignored).
  KVCache(int64_t batch, int64_t heads, int64_t k_dim, int64_t v_dim, int64_t capacity,
          int64_t window = 0)
      : window_(window) {
    check(batch > 0 && heads > 0 && k_dim > 0 && v_dim > 0, "KVCache: batch (", batch, "), heads (",
          heads, "), k_dim (", k_dim, ") and v_dim (", v_dim, ") must be positive");
    check(window >= 0, "KVCache: window must be >= 0 (0 = no ring), got ", window);
    check(window > 0 || capacity > 0, "KVCache: capacity must be positive, got ", capacity);
    const int64_t slots = window > 0 ? window : capacity;
    k_ = Tensor<S>({batch, heads, slots, k_dim});
    v_ = Tensor<S>({batch, heads, slots, v_dim});
  }

  int64_t batch() const { return k_.size(0); }
  int64_t heads() const { return k_.size(1); }
  int64_t k_dim() const { return k_.size(3); }
  int64_t v_dim() const { return v_.size(3); }
  int64_t slots() const { return k_.size(2); }
  bool is_ring() const { return window_ > 0; }
  int64_t window() const { return window_; }
  // Tokens appended so far (the position of the next token).
  int64_t length() const { return len_; }
  // Tokens held: length() for a linear cache, min(length(), window) for a ring.
  int64_t stored() const { return std::min(len_, slots()); }
  void reset() { len_ = 0; }
  // Drops the tokens from position n on (a linear cache only: a ring has overwritten the slots
  // that would come back into its window). For rolling back rejected speculative tokens, and
  // for benchmarks that decode the same step again.
  void truncate(int64_t n) {
    check(!is_ring(), "KVCache::truncate: not supported on a ring (window ", window_, ")");
    check(n >= 0 && n <= len_, "KVCache::truncate: n (", n, ") must be in [0, length = ", len_,
          "]");
    len_ = n;
  }

  // The slots as [B, slots, Hkv, K|V] views of the head-major storage (strides
  // {Hkv * slots * K, K, slots * K, 1}); on a ring, position t is slot t % window.
  TensorView<const S> keys() const { return as_bthd(k_); }
  TensorView<const S> values() const { return as_bthd(v_); }

  // Appends k [B, T, Hkv, K], v [B, T, Hkv, V] (any float type; converted to S).
  template <class T>
  void append(attn_detail::nd_t<TensorView<const T>> k, attn_detail::nd_t<TensorView<const T>> v) {
    check_new("KVCache::append", k, v);
    const int64_t T_ = k.size(1);
    check(is_ring() || len_ + T_ <= slots(), "KVCache::append: ", T_, " tokens after ", len_,
          " exceed the capacity ", slots());
    // On a ring only the last `window` tokens of the chunk survive.
    for (int64_t b = 0; b < batch(); ++b)
      for (int64_t h = 0; h < heads(); ++h)
        for (int64_t t = std::max<int64_t>(0, T_ - slots()); t < T_; ++t) {
          const int64_t slot = (len_ + t) % slots();
          store_row(k.ptr(b, t, h), k_.view().ptr(b, h, slot), k_dim());
          store_row(v.ptr(b, t, h), v_.view().ptr(b, h, slot), v_dim());
        }
    len_ += T_;
  }

  template <class T>
  void check_new(const char* op, const TensorView<const T>& k, const TensorView<const T>& v) const {
    check_shape(op, "k", k, {batch(), -1, heads(), k_dim()}, "[B, T, Hkv, K]");
    check_shape(op, "v", v, {batch(), k.size(1), heads(), v_dim()}, "[B, T, Hkv, V]");
  }

 private:
  // Storage [B, Hkv, slots, D] seen as [B, slots, Hkv, D].
  static TensorView<const S> as_bthd(const Tensor<S>& x) {
    const int64_t H = x.size(1), N = x.size(2), D = x.size(3);
    return TensorView<const S>(x.data(), Shape{x.size(0), N, H, D}, {H * N * D, D, N * D, 1});
  }

  template <class T>
  static void store_row(const T* src, S* dst, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
      if constexpr (std::is_same_v<S, bf16>)
        dst[i] = bf16(static_cast<float>(src[i]));
      else
        dst[i] = static_cast<S>(src[i]);
    }
  }

  int64_t window_ = 0, len_ = 0;
  Tensor<S> k_, v_;
};

// Appends k_new [B,T,Hkv,K], v_new [B,T,Hkv,V] to `cache`, then writes
// o [B,T,Hq,V] = causal attention of q [B,T,Hq,K] (the new tokens, positions len .. len+T-1)
// over all cached tokens, and lse [B,T,Hq] if not empty. params.window_left limits the window
// (on a ring it defaults to, and may not exceed, window - 1); causal / align / window_right are
// implied (causal); scale, softcap, dilation and num_threads apply. sinks [Hq] optional.
template <class T, class S>
void cached_attention(attn_detail::nd_t<TensorView<const T>> q,
                      attn_detail::nd_t<TensorView<const T>> k_new,
                      attn_detail::nd_t<TensorView<const T>> v_new, KVCache<S>& cache,
                      attn_detail::nd_t<TensorView<T>> o, AttentionParams params = {},
                      attn_detail::nd_t<TensorView<T>> lse = TensorView<T>{},
                      attn_detail::nd_t<TensorView<const T>> sinks = TensorView<const T>{}) {
  using namespace attn_detail;
  const char* op = "cached_attention";
  cache.template check_new<T>(op, k_new, v_new);
  check_shape(op, "q", q, {cache.batch(), k_new.size(1), -1, cache.k_dim()}, "[B, T, Hq, K]");
  check(params.cu_seqlens_q.empty() && params.cu_seqlens_k.empty(), op,
        ": cu_seqlens are not supported (the cache holds B sequences)");
  const int64_t B = q.size(0), T_ = q.size(1), Hq = q.size(2), L = cache.length();
  check_shape(op, "o", o, {B, T_, Hq, cache.v_dim()}, "[B, T, Hq, V]");
  if (!lse.empty()) check_shape(op, "lse", lse, {B, T_, Hq}, "[B, T, Hq]");
  params.causal = true;
  params.align = MaskAlign::kBottomRight;
  params.window_right = -1;
  AttentionExtras<T> ex;
  ex.sinks = sinks;

  if (!cache.is_ring()) {
    cache.template append<T>(k_new, v_new);
    const int64_t n = cache.length();
    attention<T, S>(q, cache.keys().slice(1, 0, n), cache.values().slice(1, 0, n), o, params, lse,
                    ex);
    return;
  }

  const int64_t W = cache.window();
  check(params.window_left < W, op, ": window_left (", params.window_left,
        ") must be < the ring's window (", W, ")");
  if (params.window_left < 0) params.window_left = W - 1;

  // (B) the new keys, in S like the cache so pieces and one call round alike.
  Tensor<S> kn(k_new.shape()), vn(v_new.shape());
  kn.copy_from(k_new);  // (to bf16: round to nearest even, as append does)
  vn.copy_from(v_new);
  Tensor<T> lse_acc({B, T_, Hq});
  attention<T, S>(q, kn, vn, o, params, lse_acc.view(), ex);

  // (A) the old slots, positions [max(0, L - W), L), as up to two runs contiguous in slots.
  // Query i sits at position L + i; key j of a run starting at position a is at a + j:
  // aligned offset L - a, and the causal + window mask does the rest.
  Tensor<T> o_part({B, T_, Hq, cache.v_dim()}), lse_part({B, T_, Hq});
  const int64_t first = std::max<int64_t>(0, L - W);
  for (int64_t a = first; a < L;) {
    const int64_t slot = a % W, run = std::min(L - a, W - slot);
    Problem<T, S> P = make_problem(op, q, cache.keys().slice(1, slot, slot + run),
                                   cache.values().slice(1, slot, slot + run), o_part.view(),
                                   lse_part.view(), params, AttentionExtras<T>{});
    for (Segment& sg : P.segs) sg.off = L - a;
    dispatch(P);
    merge_states<T>(o, lse_acc.view(), o_part, lse_part);
    a += run;
  }
  if (!lse.empty())
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T_; ++t)
        for (int64_t h = 0; h < Hq; ++h) lse(b, t, h) = lse_acc(b, t, h);
  cache.template append<S>(kn, vn);
}

}  // namespace effattn
