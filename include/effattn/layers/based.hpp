// LinearAttention: the Taylor linear attention of Based (HazyResearch; fla's
// BasedLinearAttention), with its recurrent state in a separate State.
//
//   q = q_proj(x), k = k_proj(x)   [B, T, H, K]     K = feature_dim (16): a small q/k width
//   v = v_proj(x)                  [B, T, H, V]     V = head_dim = hidden / num_heads
//   phi(x) = [1, x / K^(1/4), vec(x x^T) / (sqrt(2) sqrt(K))]   Kf = 1 + K + K^2 (273 for 16),
//            so phi(q).phi(k) = 1 + s + s^2 / 2 with s = q.k / sqrt(K): exp(s) to second order
//   o_t = sum_{j<=t} phi(q_t).phi(k_j) v_j / (sum_{j<=t} phi(q_t).phi(k_j) + eps)
//   y = o_proj(o [B, T, H*V])
// (fla: scale 1, normalize on, eps 1e-12; causal, or the whole sequence with causal = false.)
// fla's map lists the quadratic terms once each (upper triangle, off-diagonal doubled inside the
// norm); the op's full K x K outer product gives the same phi(q).phi(k).
//
// fla names under the layer's prefix: q_proj, k_proj [H*K, d], v_proj [H*V, d], o_proj [d, H*V],
// no biases; load also accepts HazyResearch based's proj_q, proj_k, proj_v, out_proj (same
// shapes; e.g. prefix "backbone.layers.1.mixer"). Both also have num_key_value_heads; only
// num_key_value_heads == num_heads is offered.
//
// State: S [B, H, Kf, V] = sum_j phi(k_j) v_j^T and z [B, H, Kf] = sum_j phi(k_j): a fixed size,
// however long the sequence (the op's layout). forward(x, state, y) continues from it, so token
// by token == one call; the op picks the chunk form for prompts and the recurrent one for a few
// tokens.
//
// The Based model puts this layer beside short convolutions (ShortConv) and sliding-window
// softmax attention (Attention with sliding_window); the model composes them.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "effattn/core/error.hpp"
#include "effattn/core/tensor.hpp"
#include "effattn/io/safetensors.hpp"
#include "effattn/layers/linear.hpp"
#include "effattn/layers/weights.hpp"
#include "effattn/ops/linear_attention/linear_attention.hpp"

namespace effattn::layers {

struct LinearAttentionConfig {
  int64_t hidden = 0;        // d
  int64_t num_heads = 0;     // H
  int64_t feature_dim = 16;  // K: q / k width per head, before the Taylor map
  int64_t head_dim = 0;      // V: v / o width per head; 0 = hidden / num_heads
  double eps = 1e-12;        // added to the normaliser
  bool causal = true;        // false: every token attends the whole sequence (encoder)
};

template <class T, class S = T>
class LinearAttention {
 public:
  // Per-sequence state of B sequences that advance together: make it with make_state(B).
  struct State {
    Tensor<T> s;  // [B, H, Kf, V]  sum_j phi(k_j) v_j^T
    Tensor<T> z;  // [B, H, Kf]     sum_j phi(k_j)
    int64_t batch() const { return s.empty() ? 0 : s.size(0); }
    int64_t bytes() const { return (s.numel() + z.numel()) * static_cast<int64_t>(sizeof(T)); }
    void reset() {
      s.fill(T(0));
      z.fill(T(0));
    }
  };

  LinearAttentionConfig config;
  Linear<T, S> q_proj, k_proj, v_proj, o_proj;

  LinearAttention() = default;
  explicit LinearAttention(const LinearAttentionConfig& c) : config(c) {
    const char* L = "LinearAttention";
    check(c.hidden > 0 && c.num_heads > 0 && c.feature_dim > 0, L, ": hidden (", c.hidden,
          "), num_heads (", c.num_heads, ") and feature_dim (", c.feature_dim,
          ") must be positive");
    if (config.head_dim == 0) {
      check(c.hidden % c.num_heads == 0, L, ": hidden (", c.hidden,
            ") is not a multiple of num_heads (", c.num_heads, "); give head_dim");
      config.head_dim = c.hidden / c.num_heads;
    }
    check(config.head_dim > 0, L, ": head_dim must be positive");
    check(c.eps >= 0 && std::isfinite(c.eps), L, ": eps must be finite and >= 0, got ", c.eps);
    const int64_t H = c.num_heads, K = c.feature_dim, V = config.head_dim;
    q_proj = Linear<T, S>(c.hidden, H * K);
    k_proj = Linear<T, S>(c.hidden, H * K);
    v_proj = Linear<T, S>(c.hidden, H * V);
    o_proj = Linear<T, S>(H * V, c.hidden);
  }

  int64_t hidden() const { return config.hidden; }
  int64_t num_heads() const { return config.num_heads; }
  int64_t feature_dim() const { return config.feature_dim; }
  int64_t head_dim() const { return config.head_dim; }
  // Kf: the width of the Taylor features, 1 + K + K^2.
  int64_t expanded_dim() const {
    return effattn::feature_dim(FeatureMap::kBasedTaylor, feature_dim());
  }

  State make_state(int64_t batch) const {
    check(batch >= 1, "LinearAttention::make_state: batch ", batch, " must be >= 1");
    State st;
    st.s = Tensor<T>({batch, num_heads(), expanded_dim(), head_dim()});
    st.z = Tensor<T>({batch, num_heads(), expanded_dim()});
    return st;
  }

  // Causal decoding: x [B, T, d] -> y [B, T, d], continuing from `state` (updated to the end of
  // the last token). T = 0 is a no-op.
  void forward(TensorView<const T> x, State& state, TensorView<T> y) const {
    const char* L = "LinearAttention";
    check(config.causal, L, ": forward with a State needs a causal layer; use forward(x, y)");
    check_shape(L, "x", x, {-1, -1, hidden()}, "[B, T, d]");
    const int64_t B = x.size(0);
    const Shape s_want({B, num_heads(), expanded_dim(), head_dim()});
    const Shape z_want({B, num_heads(), expanded_dim()});
    check(!state.s.empty() && !state.z.empty() && state.s.shape() == s_want &&
              state.z.shape() == z_want,
          L, ": state (s ", state.s.empty() ? std::string("<none>") : state.s.shape().str(), ", z ",
          state.z.empty() ? std::string("<none>") : state.z.shape().str(), ") does not fit x ",
          x.shape().str(), ": expected s ", s_want.str(), ", z ", z_want.str(),
          " (make it with make_state(B))");
    run(x, y, &state);
  }
  Tensor<T> operator()(TensorView<const T> x, State& state) const {
    check(!x.empty() && x.ndim() == 3, "LinearAttention: x must be [B, T, d]");
    Tensor<T> y({x.size(0), x.size(1), hidden()});
    forward(x, state, y);
    return y;
  }

  // One whole sequence from an empty state: causal or not per the config. lengths (B entries, or
  // none): a right-padded batch, sequence b is rows [0, lengths[b]) of x; padding rows are not
  // seen by any query, and their own output rows are o_proj(0).
  void forward(TensorView<const T> x, TensorView<T> y,
               const std::vector<int64_t>& lengths = {}) const {
    check_shape("LinearAttention", "x", x, {-1, -1, hidden()}, "[B, T, d]");
    detail::check_lengths("LinearAttention", "lengths", lengths, x.size(0), x.size(1));
    run(x, y, nullptr, lengths);
  }
  Tensor<T> operator()(TensorView<const T> x) const {
    check(!x.empty() && x.ndim() == 3, "LinearAttention: x must be [B, T, d]");
    Tensor<T> y({x.size(0), x.size(1), hidden()});
    forward(x, y);
    return y;
  }

  // fla's names, or HazyResearch based's proj_q / proj_k / proj_v / out_proj when the file has
  // those instead.
  void load(const io::SafeTensors& st, const std::string& prefix) {
    const bool hazy = !detail::has_any(st, prefix, {"q_proj", "k_proj", "v_proj", "o_proj"}) &&
                      detail::has_any(st, prefix, {"proj_q", "proj_k", "proj_v", "out_proj"});
    q_proj.load(st, join(prefix, hazy ? "proj_q" : "q_proj"));
    k_proj.load(st, join(prefix, hazy ? "proj_k" : "k_proj"));
    v_proj.load(st, join(prefix, hazy ? "proj_v" : "v_proj"));
    o_proj.load(st, join(prefix, hazy ? "out_proj" : "o_proj"));
  }
  void save(io::SafeTensorsWriter& w, const std::string& prefix) const {
    q_proj.save(w, join(prefix, "q_proj"));
    k_proj.save(w, join(prefix, "k_proj"));
    v_proj.save(w, join(prefix, "v_proj"));
    o_proj.save(w, join(prefix, "o_proj"));
  }
  void init_random(uint64_t seed) {
    q_proj.init_random(derive_seed(seed, "q_proj"));
    k_proj.init_random(derive_seed(seed, "k_proj"));
    v_proj.init_random(derive_seed(seed, "v_proj"));
    o_proj.init_random(derive_seed(seed, "o_proj"));
  }
  int64_t weight_bytes() const {
    return q_proj.weight_bytes() + k_proj.weight_bytes() + v_proj.weight_bytes() +
           o_proj.weight_bytes();
  }

 private:
  // x [B, T, d] (checked) -> y; with a state, from and into it (in place: the op allows it).
  void run(TensorView<const T> x, TensorView<T> y, State* state,
           const std::vector<int64_t>& lengths = {}) const {
    const int64_t B = x.size(0), Tn = x.size(1), H = num_heads(), K = feature_dim(), V = head_dim();
    check_shape("LinearAttention", "y", TensorView<const T>(y), {B, Tn, hidden()}, "[B, T, d]");
    if (Tn == 0) return;
    Tensor<T> xbuf;
    x = detail::rows_in(x, &xbuf);
    Tensor<T> q({B, Tn, H, K}), k({B, Tn, H, K}), v({B, Tn, H, V}), o({B, Tn, H, V});
    q_proj.forward(x, q.view().reshape({B, Tn, H * K}));
    k_proj.forward(x, k.view().reshape({B, Tn, H * K}));
    v_proj.forward(x, v.view().reshape({B, Tn, H * V}));
    LinearAttentionParams<T> p;
    p.feature_map = FeatureMap::kBasedTaylor;
    p.normalize = true;
    p.scale = T(1);
    p.eps = static_cast<T>(config.eps);
    p.causal = config.causal;
    if (state) {
      linear_attention<T>(q, k, v, o, p, state->s, state->s, state->z, state->z);
    } else if (lengths.empty()) {
      linear_attention<T>(q, k, v, o, p);
    } else {  // right padding: one packed varlen call
      p.cu_seqlens = detail::cu_seqlens_of(lengths, B, Tn);
      const Tensor<T> qp = detail::pack_rows(q, p.cu_seqlens);
      Tensor<T> op({1, qp.size(1), H, V});
      linear_attention<T>(qp, detail::pack_rows(k, p.cu_seqlens),
                          detail::pack_rows(v, p.cu_seqlens), op, p);
      detail::unpack_rows(op, p.cu_seqlens, o);
    }
    const TensorView<const T> o3 = o.view().reshape({B, Tn, H * V});
    detail::rows_out(y, [&](TensorView<T> out) { o_proj.forward(o3, out); });
  }
};

}  // namespace effattn::layers
