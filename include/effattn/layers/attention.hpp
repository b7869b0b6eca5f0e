// Attention: the softmax-attention mixer of Llama / Qwen / Mistral, with its KV cache in a
// separate State.
//
//   q = q_proj(x) [B, T, Hq, D],  k = k_proj(x), v = v_proj(x) [B, T, Hkv, D]   (Hq % Hkv == 0)
//   q, k <- RMSNorm over D per head            (qk_norm: Qwen3's q_norm / k_norm, weight [D])
//   q, k <- RoPE at positions pos .. pos+T-1   (rope: half-split by default, or interleaved;
//                                               rotary_dim < D rotates the first dims only)
//   o    = softmax(scale q k^T + mask) v       (scale = 1/sqrt(D) unless given)
//   y    = o_proj(o [B, T, Hq*D])
//
// Hugging Face names under the layer's prefix (e.g. "model.layers.3.self_attn"):
// q_proj / k_proj / v_proj (weight [H*D, d], bias [H*D] with qkv_bias: Qwen2), o_proj
// (weight [d, Hq*D], bias with o_bias), q_norm.weight / k_norm.weight [D] (Qwen3).
//
// Masks: causal: key j is visible to query i when j <= i; with sliding_window W also
// i - j < W (W keys including itself: transformers' sliding_window, flash-attn window_size
// (W-1, 0)). Non-causal (encoder): all keys, or |i - j| < W with a window.
//
// Three uses:
//   forward(x, state, y)        causal decoding: appends k, v to state's cache (a linear cache of
//                               a fixed capacity, or with a window a ring of W slots, so memory
//                               is O(W)) and attends the new queries over everything cached.
//                               Prompts run the tiled prefill kernel, a few tokens the split-K
//                               decode path (chosen inside the op by T).
//   forward(x, y [, lengths])   one whole sequence, no cache: causal or non-causal (encoder);
//                               lengths: a right-padded batch of sequences of their own lengths.
//   forward_cross(x, ctx, y)    cross attention: queries from x [B, Tq, d] over the keys and
//                               values of a context [B, Tk, kv_hidden] of another length,
//                               encoded once by encode_context() (no mask, no RoPE: the two
//                               sequences' positions are unrelated).
//
// Template: T compute (float, double), S weight storage (T, or bf16 with T = float), KV cache
// storage (T, or bf16 with T = float: half the bytes a decode step streams; keys and values
// are rounded when they enter the cache, so the State paths see rounded k, v and forward(x, y)
// does not).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "effattn/core/error.hpp"
#include "effattn/core/tensor.hpp"
#include "effattn/io/safetensors.hpp"
#include "effattn/layers/linear.hpp"
#include "effattn/layers/norm.hpp"
#include "effattn/layers/weights.hpp"
#include "effattn/ops/attention/attention.hpp"
#include "effattn/ops/attention/kv_cache.hpp"
#include "effattn/ops/common/rope.hpp"

namespace effattn::layers {

struct AttentionConfig {
  int64_t hidden = 0;        // d: width of x and y
  int64_t num_heads = 0;     // Hq
  int64_t num_kv_heads = 0;  // Hkv; 0 = num_heads (MHA), 1 = MQA
  int64_t head_dim = 0;      // D; 0 = hidden / num_heads
  int64_t kv_hidden = 0;     // width k_proj / v_proj read; 0 = hidden (differs for cross attention)
  bool qkv_bias = false;     // Qwen2: biases on q_proj, k_proj, v_proj
  bool o_bias = false;
  bool qk_norm = false;  // Qwen3: RMSNorm of q and k per head
  double norm_eps = 1e-6;
  bool rope = true;
  RopeStyle rope_style = RopeStyle::kHalfSplit;
  int64_t rotary_dim = 0;  // 0 = D (partial rotary: fewer)
  double rope_theta = 10000.0;
  bool causal = true;
  int64_t sliding_window = 0;  // W > 0: W keys per query (ring-buffer cache); 0 = none
  double scale = 0;            // <= 0: 1/sqrt(D)
};

template <class T, class S = T, class KV = T>
class Attention {
  static_assert(std::is_same_v<KV, T> || (std::is_same_v<KV, bf16> && std::is_same_v<T, float>),
                "Attention<T, S, KV>: KV must be T, or bf16 with T = float");

 public:
  // Per-sequence state: the KV cache of B sequences that advance together. Make it with
  // make_state(B, capacity).
  struct State {
    KVCache<KV> cache;                                   // k, v [B, capacity | W, Hkv, D]
    int64_t position() const { return cache.length(); }  // tokens seen = the next position
    int64_t batch() const { return cache.batch(); }
    int64_t bytes() const {
      return 2 * cache.batch() * cache.slots() * cache.heads() * cache.k_dim() *
             static_cast<int64_t>(sizeof(KV));
    }
    void reset() { cache.reset(); }
  };

  // Keys and values of a cross-attention context, k, v [B, Tk, Hkv, D].
  struct Context {
    Tensor<KV> k, v;
  };

  AttentionConfig config;
  Linear<T, S> q_proj, k_proj, v_proj, o_proj;
  RMSNorm<T> q_norm, k_norm;  // [D], with qk_norm

  Attention() = default;
  explicit Attention(const AttentionConfig& c) : config(c) {
    const char* L = "Attention";
    check(c.hidden > 0 && c.num_heads > 0, L, ": hidden (", c.hidden, ") and num_heads (",
          c.num_heads, ") must be positive");
    if (config.num_kv_heads == 0) config.num_kv_heads = c.num_heads;
    if (config.kv_hidden == 0) config.kv_hidden = c.hidden;
    if (config.head_dim == 0) {
      check(c.hidden % c.num_heads == 0, L, ": hidden (", c.hidden,
            ") is not a multiple of num_heads (", c.num_heads, "); give head_dim");
      config.head_dim = c.hidden / c.num_heads;
    }
    const int64_t Hq = config.num_heads, Hkv = config.num_kv_heads, D = config.head_dim;
    check(Hkv > 0 && Hq % Hkv == 0, L, ": num_heads (", Hq,
          ") must be a multiple of num_kv_heads (", Hkv, ")");
    check(config.kv_hidden > 0 && D > 0, L, ": kv_hidden and head_dim must be positive");
    check(c.sliding_window >= 0, L, ": sliding_window must be >= 0, got ", c.sliding_window);
    if (c.rope) {
      const int64_t R = c.rotary_dim == 0 ? D : c.rotary_dim;
      check(R > 0 && R <= D && R % 2 == 0, L, ": rotary_dim (", c.rotary_dim,
            ") must be even and in (0, head_dim = ", D, "]");
    }
    q_proj = Linear<T, S>(c.hidden, Hq * D, c.qkv_bias);
    k_proj = Linear<T, S>(config.kv_hidden, Hkv * D, c.qkv_bias);
    v_proj = Linear<T, S>(config.kv_hidden, Hkv * D, c.qkv_bias);
    o_proj = Linear<T, S>(Hq * D, c.hidden, c.o_bias);
    if (c.qk_norm) {
      q_norm = RMSNorm<T>(D, c.norm_eps);
      k_norm = RMSNorm<T>(D, c.norm_eps);
    }
  }

  int64_t hidden() const { return config.hidden; }
  int64_t num_heads() const { return config.num_heads; }
  int64_t num_kv_heads() const { return config.num_kv_heads; }
  int64_t head_dim() const { return config.head_dim; }

  // A cache for B sequences of up to `capacity` tokens (ignored with a sliding window: the ring
  // holds W tokens, however long the sequence).
  State make_state(int64_t batch, int64_t capacity) const {
    check(batch >= 1, "Attention::make_state: batch ", batch, " must be >= 1");
    check(config.sliding_window > 0 || capacity >= 1, "Attention::make_state: capacity ", capacity,
          " must be >= 1");
    check(config.causal, "Attention::make_state: a KV cache needs a causal layer (causal = false)");
    return State{KVCache<KV>(batch, num_kv_heads(), head_dim(), head_dim(), capacity,
                             config.sliding_window)};
  }

  // Causal decoding: x [B, T, d] -> y [B, T, d] at positions state.position() .., appending the
  // tokens' keys and values to the cache. T = 0 is a no-op.
  void forward(TensorView<const T> x, State& state, TensorView<T> y) const {
    const char* L = "Attention";
    check(config.causal, L, ": forward with a State needs a causal layer; use forward(x, y)");
    check_self();
    check_shape(L, "x", x, {-1, -1, hidden()}, "[B, T, d]");
    const int64_t B = x.size(0), Tn = x.size(1);
    check_shape(L, "y", TensorView<const T>(y), {B, Tn, hidden()}, "[B, T, d]");
    check(state.batch() == B && state.cache.heads() == num_kv_heads() &&
              state.cache.k_dim() == head_dim() && state.cache.window() == config.sliding_window,
          L, ": state (batch ", state.batch(), ", ", state.cache.heads(), " kv heads of ",
          state.cache.k_dim(), ", window ", state.cache.window(), ") does not fit x ",
          x.shape().str(), " and this layer (", num_kv_heads(), " kv heads of ", head_dim(),
          ", window ", config.sliding_window, "): make it with make_state(B, capacity)");
    if (Tn == 0) return;
    Tensor<T> xbuf, q, k, v;
    x = detail::rows_in(x, &xbuf);
    project_qkv(x, x, state.position(), &q, &k, &v);
    Tensor<T> o({B, Tn, num_heads(), head_dim()});
    cached_attention<T, KV>(q, k, v, state.cache, o, params(true));
    project_out(o, y);
  }
  Tensor<T> operator()(TensorView<const T> x, State& state) const {
    check(!x.empty() && x.ndim() == 3, "Attention: x must be [B, T, d]");
    Tensor<T> y({x.size(0), x.size(1), hidden()});
    forward(x, state, y);
    return y;
  }

  // One whole sequence at positions 0 .. T-1, no cache: causal or non-causal per the config.
  // lengths (B entries, or none): a right-padded batch, sequence b is rows [0, lengths[b]) of x;
  // padding rows are not seen by any query, and their own output rows are o_proj(0).
  void forward(TensorView<const T> x, TensorView<T> y,
               const std::vector<int64_t>& lengths = {}) const {
    const char* L = "Attention";
    check_self();
    check_shape(L, "x", x, {-1, -1, hidden()}, "[B, T, d]");
    const int64_t B = x.size(0), Tn = x.size(1);
    check_shape(L, "y", TensorView<const T>(y), {B, Tn, hidden()}, "[B, T, d]");
    detail::check_lengths(L, "lengths", lengths, B, Tn);
    if (Tn == 0) return;
    Tensor<T> xbuf, q, k, v;
    x = detail::rows_in(x, &xbuf);
    project_qkv(x, x, 0, &q, &k, &v);
    Tensor<T> o({B, Tn, num_heads(), head_dim()});
    attend<T>(q, k, v, o, params(config.causal), lengths, lengths);
    project_out(o, y);
  }
  Tensor<T> operator()(TensorView<const T> x) const {
    check(!x.empty() && x.ndim() == 3, "Attention: x must be [B, T, d]");
    Tensor<T> y({x.size(0), x.size(1), hidden()});
    forward(x, y);
    return y;
  }

  // Keys and values of a context [B, Tk, kv_hidden] for forward_cross (k_norm applies, RoPE not).
  Context encode_context(TensorView<const T> ctx) const {
    const char* L = "Attention::encode_context";
    check_shape(L, "ctx", ctx, {-1, -1, config.kv_hidden}, "[B, Tk, kv_hidden]");
    const int64_t B = ctx.size(0), Tk = ctx.size(1);
    Tensor<T> k({B, Tk, num_kv_heads(), head_dim()}), v(k.shape());
    Context c;
    c.k = Tensor<KV>(k.shape());
    c.v = Tensor<KV>(v.shape());
    if (Tk == 0) return c;
    Tensor<T> cbuf;
    ctx = detail::rows_in(ctx, &cbuf);
    k_proj.forward(ctx, k.view().reshape({B, Tk, num_kv_heads() * head_dim()}));
    v_proj.forward(ctx, v.view().reshape({B, Tk, num_kv_heads() * head_dim()}));
    if (config.qk_norm) k_norm.forward(k, k);
    c.k.copy_from(TensorView<const T>(k.view()));  // (to bf16: round to nearest even)
    c.v.copy_from(TensorView<const T>(v.view()));
    return c;
  }

  // Cross attention: queries from x [B, Tq, d] over the context's keys and values (every key
  // visible, or the first ctx_lengths[b] of sequence b's) -> y [B, Tq, d].
  void forward_cross(TensorView<const T> x, const Context& ctx, TensorView<T> y,
                     const std::vector<int64_t>& ctx_lengths = {}) const {
    const char* L = "Attention::forward_cross";
    check_shape(L, "x", x, {-1, -1, hidden()}, "[B, Tq, d]");
    const int64_t B = x.size(0), Tq = x.size(1);
    check_shape(L, "y", TensorView<const T>(y), {B, Tq, hidden()}, "[B, Tq, d]");
    check(!ctx.k.empty() && ctx.k.ndim() == 4 && ctx.k.size(0) == B, L,
          ": the context's batch does not match x ", x.shape().str(),
          " (make it with "
          "encode_context)");
    detail::check_lengths(L, "ctx_lengths", ctx_lengths, B, ctx.k.size(1));
    if (Tq == 0) return;
    Tensor<T> xbuf, q({B, Tq, num_heads(), head_dim()});
    x = detail::rows_in(x, &xbuf);
    q_proj.forward(x, q.view().reshape({B, Tq, num_heads() * head_dim()}));
    if (config.qk_norm) q_norm.forward(q, q);
    Tensor<T> o({B, Tq, num_heads(), head_dim()});
    AttentionParams p;
    p.scale = scale();
    attend<KV>(q, ctx.k, ctx.v, o, p, {}, ctx_lengths);
    project_out(o, y);
  }
  void forward_cross(TensorView<const T> x, TensorView<const T> ctx, TensorView<T> y,
                     const std::vector<int64_t>& ctx_lengths = {}) const {
    forward_cross(x, encode_context(ctx), y, ctx_lengths);
  }

  double scale() const {
    return config.scale > 0 ? config.scale : 1.0 / std::sqrt(static_cast<double>(head_dim()));
  }

  void load(const io::SafeTensors& st, const std::string& prefix) {
    q_proj.load(st, join(prefix, "q_proj"));
    k_proj.load(st, join(prefix, "k_proj"));
    v_proj.load(st, join(prefix, "v_proj"));
    o_proj.load(st, join(prefix, "o_proj"));
    for (const char* n : {"q_norm", "k_norm"}) {
      const std::string full = join(join(prefix, n), "weight");
      check(config.qk_norm || !st.contains(full), "Attention: tensor '", full, "' is in ",
            st.source(), " but the layer was configured without qk_norm");
    }
    if (config.qk_norm) {
      q_norm.load(st, join(prefix, "q_norm"));
      k_norm.load(st, join(prefix, "k_norm"));
    }
  }
  void save(io::SafeTensorsWriter& w, const std::string& prefix) const {
    q_proj.save(w, join(prefix, "q_proj"));
    k_proj.save(w, join(prefix, "k_proj"));
    v_proj.save(w, join(prefix, "v_proj"));
    o_proj.save(w, join(prefix, "o_proj"));
    if (config.qk_norm) {
      q_norm.save(w, join(prefix, "q_norm"));
      k_norm.save(w, join(prefix, "k_norm"));
    }
  }
  void init_random(uint64_t seed) {
    q_proj.init_random(derive_seed(seed, "q_proj"));
    k_proj.init_random(derive_seed(seed, "k_proj"));
    v_proj.init_random(derive_seed(seed, "v_proj"));
    o_proj.init_random(derive_seed(seed, "o_proj"));
    if (config.qk_norm) {
      q_norm.init_random(derive_seed(seed, "q_norm"));
      k_norm.init_random(derive_seed(seed, "k_norm"));
    }
  }
  int64_t weight_bytes() const {
    int64_t n = q_proj.weight_bytes() + k_proj.weight_bytes() + v_proj.weight_bytes() +
                o_proj.weight_bytes();
    if (config.qk_norm) n += q_norm.weight.bytes() + k_norm.weight.bytes();
    return n;
  }

 private:
  // y [B, T, d] = o_proj(o [B, T, Hq, D])
  void project_out(const Tensor<T>& o, TensorView<T> y) const {
    const TensorView<const T> o3 =
        o.view().reshape({o.size(0), o.size(1), num_heads() * head_dim()});
    detail::rows_out(y, [&](TensorView<T> out) { o_proj.forward(o3, out); });
  }

  // o = attention(q, k, v): q / o [B, Tq, Hq, D], k / v [B, Tk, Hkv, D]. With lengths for either
  // side (right padding), as one packed varlen call: padded keys are never seen, padded query
  // rows of o are zero.
  template <class KS>
  static void attend(const Tensor<T>& q, const Tensor<KS>& k, const Tensor<KS>& v, Tensor<T>& o,
                     AttentionParams p, const std::vector<int64_t>& q_lengths,
                     const std::vector<int64_t>& k_lengths) {
    if (q_lengths.empty() && k_lengths.empty()) return attention<T, KS>(q, k, v, o, p);
    const int64_t B = q.size(0);
    p.cu_seqlens_q = detail::cu_seqlens_of(q_lengths, B, q.size(1));
    p.cu_seqlens_k = detail::cu_seqlens_of(k_lengths, B, k.size(1));
    const Tensor<T> qp = detail::pack_rows(q, p.cu_seqlens_q);
    Tensor<T> op(qp.shape());
    attention<T, KS>(qp, detail::pack_rows(k, p.cu_seqlens_k), detail::pack_rows(v, p.cu_seqlens_k),
                     op, p);
    detail::unpack_rows(op, p.cu_seqlens_q, o);
  }

  void check_self() const {
    check(config.kv_hidden == config.hidden, "Attention: self-attention needs kv_hidden (",
          config.kv_hidden, ") == hidden (", config.hidden, "); this layer is for forward_cross");
  }

  AttentionParams params(bool causal) const {
    AttentionParams p;
    p.scale = scale();
    p.causal = causal;
    if (config.sliding_window > 0) {
      p.window_left = config.sliding_window - 1;
      if (!causal) p.window_right = config.sliding_window - 1;
    }
    return p;
  }

  // q [B, T, Hq, D], k, v [B, T, Hkv, D] of x (queries) and xkv (keys, values), normalised and
  // rotated for positions pos .. pos+T-1.
  void project_qkv(TensorView<const T> x, TensorView<const T> xkv, int64_t pos, Tensor<T>* q,
                   Tensor<T>* k, Tensor<T>* v) const {
    const int64_t B = x.size(0), Tn = x.size(1), Hq = num_heads(), Hkv = num_kv_heads(),
                  D = head_dim();
    *q = Tensor<T>({B, Tn, Hq, D});
    *k = Tensor<T>({B, Tn, Hkv, D});
    *v = Tensor<T>({B, Tn, Hkv, D});
    q_proj.forward(x, q->view().reshape({B, Tn, Hq * D}));
    k_proj.forward(xkv, k->view().reshape({B, Tn, Hkv * D}));
    v_proj.forward(xkv, v->view().reshape({B, Tn, Hkv * D}));
    if (config.qk_norm) {
      q_norm.forward(*q, *q);
      k_norm.forward(*k, *k);
    }
    if (config.rope) {
      RopeParams rp;
      rp.style = config.rope_style;
      rp.rotary_dim = config.rotary_dim;
      rp.theta = config.rope_theta;
      rp.offset = pos;
      apply_rope<T>(q->view(), rp);
      apply_rope<T>(k->view(), rp);
    }
  }
};

}  // namespace effattn::layers
