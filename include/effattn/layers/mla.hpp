// MultiHeadLatentAttention (MLA): DeepSeek-V2/V3's attention, also the full-attention layer of
// Kimi Linear. Keys and values come from one low-rank latent per token, so the cache holds
// r + R numbers per token instead of 2 * H * D.
//
// Shapes: d hidden, H heads, N = qk_nope_head_dim, R = qk_rope_head_dim, V = v_head_dim,
// r = kv_lora_rank, rq = q_lora_rank.
//   q         = q_b_proj(q_a_layernorm(q_a_proj(x)))  [B, T, H, N + R]     (rq > 0)
//             = q_proj(x)                                                (rq = 0)
//   [c, kr]   = kv_a_proj_with_mqa(x)                 [B, T, r + R]
//   c         = kv_a_layernorm(c)                     the latent, shared by all heads
//   q[.., N:], kr <- RoPE at positions pos ..          INTERLEAVED pairs (x[2i], x[2i+1]): the
//                                                      DeepSeek rotation (DESIGN.md, Layer notes)
//   [k_nope, v] = kv_b_proj(c)                        [B, T, H, N + V]: per head W_uk [N, r]
//                                                      then W_uv [V, r] (rows of kv_b_proj)
//   k_h       = [k_nope_h, kr]                        (the rope key is shared by the heads)
//   o_h       = causal softmax(scale q_h k_h^T) v_h,  scale = (N + R)^-1/2 unless given
//   y         = o_proj(o [B, T, H*V])
// yarn's mscale (DeepSeek-V3's rope_scaling) is not applied: give it through `scale` and a
// pre-scaled theta if a checkpoint needs it. Kimi Linear's MLA layers use no RoPE: rope = false.
//
// Hugging Face DeepSeek-V3 names under the prefix ("model.layers.3.self_attn"): q_a_proj,
// q_a_layernorm, q_b_proj (or q_proj when q_lora_rank = 0), kv_a_proj_with_mqa, kv_a_layernorm,
// kv_b_proj, o_proj. attention_bias puts biases on q_a_proj (q_proj), kv_a_proj_with_mqa and
// o_proj, as transformers' DeepseekV3Attention does.
//
// State: per token only the normalised latent c and the rotated rope key kr, [B, cap, r + R]
// (stored as KV: T or bf16). Two ways to attend over it, equal up to round-off:
//   expanded  k, v of every cached token through kv_b_proj, then ordinary attention with
//             H heads of N + R / V: cheaper for long prompts (O(n r H (N+V)) once).
//   absorbed  the up-projections folded into the query and the output:
//               q_h . k_h,j = (W_uk,h^T q_nope,h) . c_j + q_rope,h . kr_j
//               o_h        = W_uv,h (sum_j p_j c_j)
//             i.e. MQA of H heads over one kv head [c | kr] (K = r + R) whose values are c
//             (V = r), reading the cache in place: the decode path.
// forward() picks per call by the cost per cached token: absorbed when
// T (2r + R) <= r (N + V) + T (N + R + V) (i.e. for few new tokens), expanded otherwise.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "effattn/core/error.hpp"
#include "effattn/core/parallel.hpp"
#include "effattn/core/tensor.hpp"
#include "effattn/io/safetensors.hpp"
#include "effattn/layers/attention.hpp"
#include "effattn/layers/linear.hpp"
#include "effattn/layers/norm.hpp"
#include "effattn/layers/weights.hpp"
#include "effattn/ops/attention/attention.hpp"
#include "effattn/ops/common/gemm.hpp"
#include "effattn/ops/common/rope.hpp"

namespace effattn::layers {

struct MlaConfig {
  int64_t hidden = 0;            // d
  int64_t num_heads = 0;         // H
  int64_t q_lora_rank = 0;       // rq; 0 = q_proj straight from x (DeepSeek-V2-Lite, Kimi)
  int64_t kv_lora_rank = 0;      // r
  int64_t qk_nope_head_dim = 0;  // N
  int64_t qk_rope_head_dim = 0;  // R (even; 0 = no rope part)
  int64_t v_head_dim = 0;        // V
  bool attention_bias = false;
  double rms_eps = 1e-6;
  bool rope = true;  // false: the rope part is not rotated (Kimi Linear's NoPE MLA)
  double rope_theta = 10000.0;
  double scale = 0;  // <= 0: 1/sqrt(N + R)
};

enum class MlaPath { kAuto, kExpanded, kAbsorbed };

namespace mla_detail {

// C [M, n] (ldc) = A [M, k] (lda) op(W), W a contiguous block of storage S: [k, n] (kNo) or
// [n, k] (kYes); bf16 is widened to a float copy of the block first (`wide` scratch).
template <class T, class S>
void rows_times(int64_t M, int64_t n, int64_t k, const T* A, int64_t lda, const S* W, Trans tw,
                T* C, int64_t ldc, std::vector<T>* wide) {
  const int64_t ldw = tw == Trans::kNo ? n : k;
  const T* w = nullptr;
  if constexpr (std::is_same_v<S, T>) {
    w = W;
  } else {
    wide->resize(static_cast<std::size_t>(n * k));
    attn_detail::load_row(W, wide->data(), n * k);
    w = wide->data();
  }
  gemm<T>(M, n, k, A, lda, Trans::kNo, w, ldw, tw, C, ldc);
}

}  // namespace mla_detail

template <class T, class S = T, class KV = T>
class MultiHeadLatentAttention {
  static_assert(std::is_same_v<KV, T> || (std::is_same_v<KV, bf16> && std::is_same_v<T, float>),
                "MultiHeadLatentAttention<T, S, KV>: KV must be T, or bf16 with T = float");

 public:
  // Per-sequence state: latent and rope key of every token so far, B sequences in step.
  struct State {
    Tensor<KV> cache;  // [B, capacity, r + R]: c (normalised latent), then kr (rotated)
    int64_t len = 0;   // tokens cached = the position of the next token
    int64_t position() const { return len; }
    int64_t batch() const { return cache.empty() ? 0 : cache.size(0); }
    int64_t capacity() const { return cache.empty() ? 0 : cache.size(1); }
    int64_t bytes() const { return cache.numel() * static_cast<int64_t>(sizeof(KV)); }
    void reset() { len = 0; }
  };

  MlaConfig config;
  Linear<T, S> q_a_proj;            // [rq, d]          (rq > 0)
  RMSNorm<T> q_a_layernorm;         // [rq]             (rq > 0)
  Linear<T, S> q_b_proj;            // [H (N + R), rq]  (rq > 0)
  Linear<T, S> q_proj;              // [H (N + R), d]   (rq = 0)
  Linear<T, S> kv_a_proj_with_mqa;  // [r + R, d]
  RMSNorm<T> kv_a_layernorm;        // [r]
  Linear<T, S> kv_b_proj;           // [H (N + V), r]
  Linear<T, S> o_proj;              // [d, H V]

  MultiHeadLatentAttention() = default;
  explicit MultiHeadLatentAttention(const MlaConfig& c) : config(c) {
    const char* L = "MultiHeadLatentAttention";
    check(c.hidden > 0 && c.num_heads > 0 && c.kv_lora_rank > 0 && c.v_head_dim > 0, L,
          ": hidden (", c.hidden, "), num_heads (", c.num_heads, "), kv_lora_rank (",
          c.kv_lora_rank, ") and v_head_dim (", c.v_head_dim, ") must be positive");
    check(c.q_lora_rank >= 0 && c.qk_nope_head_dim >= 0 && c.qk_rope_head_dim >= 0 &&
              c.qk_nope_head_dim + c.qk_rope_head_dim > 0,
          L, ": q_lora_rank (", c.q_lora_rank, "), qk_nope_head_dim (", c.qk_nope_head_dim,
          ") and qk_rope_head_dim (", c.qk_rope_head_dim,
          ") must be >= 0, with a positive query head size");
    check(c.qk_rope_head_dim % 2 == 0, L, ": qk_rope_head_dim (", c.qk_rope_head_dim,
          ") must be even");
    const int64_t d = c.hidden, H = c.num_heads, r = c.kv_lora_rank;
    if (c.q_lora_rank > 0) {
      q_a_proj = Linear<T, S>(d, c.q_lora_rank, c.attention_bias);
      q_a_layernorm = RMSNorm<T>(c.q_lora_rank, c.rms_eps);
      q_b_proj = Linear<T, S>(c.q_lora_rank, H * qk_head_dim(), false);
    } else {
      q_proj = Linear<T, S>(d, H * qk_head_dim(), c.attention_bias);
    }
    kv_a_proj_with_mqa = Linear<T, S>(d, r + rope_dim(), c.attention_bias);
    kv_a_layernorm = RMSNorm<T>(r, c.rms_eps);
    kv_b_proj = Linear<T, S>(r, H * (nope_dim() + v_dim()), false);
    o_proj = Linear<T, S>(H * v_dim(), d, c.attention_bias);
  }

  int64_t hidden() const { return config.hidden; }
  int64_t num_heads() const { return config.num_heads; }
  int64_t nope_dim() const { return config.qk_nope_head_dim; }
  int64_t rope_dim() const { return config.qk_rope_head_dim; }
  int64_t qk_head_dim() const { return nope_dim() + rope_dim(); }
  int64_t v_dim() const { return config.v_head_dim; }
  int64_t latent_dim() const { return config.kv_lora_rank; }
  double scale() const {
    return config.scale > 0 ? config.scale : 1.0 / std::sqrt(static_cast<double>(qk_head_dim()));
  }

  // A cache for B sequences of up to `capacity` tokens: B * capacity * (r + R) values of KV.
  State make_state(int64_t batch, int64_t capacity) const {
    check(batch >= 1 && capacity >= 1, "MultiHeadLatentAttention::make_state: batch (", batch,
          ") and capacity (", capacity, ") must be >= 1");
    State s;
    s.cache = Tensor<KV>({batch, capacity, latent_dim() + rope_dim()});
    return s;
  }

  // Causal: x [B, T, d] -> y [B, T, d] at positions state.position() .., caching the tokens'
  // latents. `path` forces the expanded or the absorbed form (tests, benchmarks).
  void forward(TensorView<const T> x, State& state, TensorView<T> y,
               MlaPath path = MlaPath::kAuto) const {
    const char* L = "MultiHeadLatentAttention";
    check_shape(L, "x", x, {-1, -1, hidden()}, "[B, T, d]");
    const int64_t B = x.size(0), Tn = x.size(1);
    check_shape(L, "y", TensorView<const T>(y), {B, Tn, hidden()}, "[B, T, d]");
    const int64_t H = num_heads(), QK = qk_head_dim(), r = latent_dim(), C = r + rope_dim();
    check(!state.cache.empty() && state.batch() == B && state.cache.size(2) == C, L,
          ": state.cache has shape ",
          state.cache.empty() ? std::string("<none>") : state.cache.shape().str(), ", expected [",
          B, ", capacity, ", C, "] (make it with make_state(B, capacity))");
    const int64_t pos = state.len, n = pos + Tn;
    check(n <= state.capacity(), L, ": ", Tn, " tokens after ", pos, " exceed the capacity ",
          state.capacity());
    if (Tn == 0) return;
    Tensor<T> xbuf;
    x = detail::rows_in(x, &xbuf);

    // Queries [B, T, H, N + R] and the new latents [B, T, r + R].
    Tensor<T> q({B, Tn, H, QK}), ckv({B, Tn, C});
    const TensorView<T> q2 = q.view().reshape({B, Tn, H * QK});
    if (config.q_lora_rank > 0) {
      Tensor<T> qa({B, Tn, config.q_lora_rank});
      q_a_proj.forward(x, qa);
      q_a_layernorm.forward(qa, qa);
      q_b_proj.forward(qa, q2);
    } else {
      q_proj.forward(x, q2);
    }
    kv_a_proj_with_mqa.forward(x, ckv);
    const TensorView<T> c_new = ckv.view().slice(2, 0, r);
    kv_a_layernorm.forward(c_new, c_new);
    if (config.rope && rope_dim() > 0) {
      RopeParams rp;
      rp.style = RopeStyle::kInterleaved;
      rp.theta = config.rope_theta;
      rp.offset = pos;
      apply_rope<T>(q.view().slice(3, nope_dim(), QK), rp);
      apply_rope<T>(TensorView<T>(ckv.data() + r, {B, Tn, 1, rope_dim()}, {Tn * C, C, C, 1}), rp);
    }
    // Into the cache (rounded to KV), then attend over positions [0, n) read back from it, so
    // every path sees the same keys whether tokens came in one call or one at a time.
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < Tn; ++t) {
        const T* src = ckv.view().ptr(b, t);
        KV* dst = state.cache.view().ptr(b, pos + t);
        for (int64_t i = 0; i < C; ++i) dst[i] = static_cast<KV>(src[i]);
      }
    state.len = n;

    Tensor<T> o({B, Tn, H, v_dim()});
    const bool absorbed =
        path == MlaPath::kAbsorbed ||
        (path == MlaPath::kAuto &&
         Tn * (2 * r + rope_dim()) <= r * (nope_dim() + v_dim()) + Tn * (QK + v_dim()));
    if (absorbed) {
      attend_absorbed(q, state, o);
    } else {
      attend_expanded(q, state, o);
    }
    const TensorView<const T> o3 = o.view().reshape({B, Tn, H * v_dim()});
    detail::rows_out(y, [&](TensorView<T> out) { o_proj.forward(o3, out); });
  }
  Tensor<T> operator()(TensorView<const T> x, State& state) const {
    check(!x.empty() && x.ndim() == 3, "MultiHeadLatentAttention: x must be [B, T, d]");
    Tensor<T> y({x.size(0), x.size(1), hidden()});
    forward(x, state, y);
    return y;
  }

  void load(const io::SafeTensors& st, const std::string& prefix) {
    const char* L = "MultiHeadLatentAttention";
    const bool lora = config.q_lora_rank > 0;
    for (const char* n : {"q_a_proj.weight", "q_a_layernorm.weight", "q_b_proj.weight"}) {
      const std::string full = join(prefix, n);
      check(lora || !st.contains(full), L, ": tensor '", full, "' is in ", st.source(),
            " but the layer was configured with q_lora_rank = 0 (q_proj)");
    }
    const std::string qp = join(prefix, "q_proj.weight");
    check(!lora || !st.contains(qp), L, ": tensor '", qp, "' is in ", st.source(),
          " but the layer was configured with q_lora_rank = ", config.q_lora_rank,
          " (q_a_proj / q_b_proj)");
    if (lora) {
      q_a_proj.load(st, join(prefix, "q_a_proj"));
      q_a_layernorm.load(st, join(prefix, "q_a_layernorm"));
      q_b_proj.load(st, join(prefix, "q_b_proj"));
    } else {
      q_proj.load(st, join(prefix, "q_proj"));
    }
    kv_a_proj_with_mqa.load(st, join(prefix, "kv_a_proj_with_mqa"));
    kv_a_layernorm.load(st, join(prefix, "kv_a_layernorm"));
    kv_b_proj.load(st, join(prefix, "kv_b_proj"));
    o_proj.load(st, join(prefix, "o_proj"));
  }
  void save(io::SafeTensorsWriter& w, const std::string& prefix) const {
    if (config.q_lora_rank > 0) {
      q_a_proj.save(w, join(prefix, "q_a_proj"));
      q_a_layernorm.save(w, join(prefix, "q_a_layernorm"));
      q_b_proj.save(w, join(prefix, "q_b_proj"));
    } else {
      q_proj.save(w, join(prefix, "q_proj"));
    }
    kv_a_proj_with_mqa.save(w, join(prefix, "kv_a_proj_with_mqa"));
    kv_a_layernorm.save(w, join(prefix, "kv_a_layernorm"));
    kv_b_proj.save(w, join(prefix, "kv_b_proj"));
    o_proj.save(w, join(prefix, "o_proj"));
  }
  void init_random(uint64_t seed) {
    if (config.q_lora_rank > 0) {
      q_a_proj.init_random(derive_seed(seed, "q_a_proj"));
      q_a_layernorm.init_random(derive_seed(seed, "q_a_layernorm"));
      q_b_proj.init_random(derive_seed(seed, "q_b_proj"));
    } else {
      q_proj.init_random(derive_seed(seed, "q_proj"));
    }
    kv_a_proj_with_mqa.init_random(derive_seed(seed, "kv_a_proj_with_mqa"));
    kv_a_layernorm.init_random(derive_seed(seed, "kv_a_layernorm"));
    kv_b_proj.init_random(derive_seed(seed, "kv_b_proj"));
    o_proj.init_random(derive_seed(seed, "o_proj"));
  }
  int64_t weight_bytes() const {
    int64_t n = kv_a_proj_with_mqa.weight_bytes() + kv_a_layernorm.weight.bytes() +
                kv_b_proj.weight_bytes() + o_proj.weight_bytes();
    if (config.q_lora_rank > 0) {
      n += q_a_proj.weight_bytes() + q_a_layernorm.weight.bytes() + q_b_proj.weight_bytes();
    } else {
      n += q_proj.weight_bytes();
    }
    return n;
  }

 private:
  // Cached rows [0, n) as a 4-D view [B, n, 1, width] starting at column c0.
  static TensorView<const KV> cached(const State& s, int64_t n, int64_t c0, int64_t width) {
    const int64_t C = s.cache.size(2);
    return TensorView<const KV>(s.cache.data() + c0, {s.batch(), n, 1, width},
                                {s.capacity() * C, C, C, 1});
  }

  AttentionParams params() const {
    AttentionParams p;
    p.scale = scale();
    p.causal = true;  // bottom-right: the T new queries are the last T positions
    return p;
  }

  // o [B, T, H, V] from q [B, T, H, N + R] over the cached latents, through kv_b_proj first.
  void attend_expanded(const Tensor<T>& q, const State& s, Tensor<T>& o) const {
    const int64_t B = q.size(0), n = s.len, H = num_heads(), N = nope_dim(), R = rope_dim(),
                  V = v_dim(), r = latent_dim(), QK = N + R, NV = N + V;
    Tensor<T> c({B, n, r});  // the latents as T
    c.copy_from(cached(s, n, 0, r).select(2, 0));
    Tensor<T> kvb({B, n, H * NV});  // per head [k_nope | v]
    kv_b_proj.forward(c, kvb);
    Tensor<T> k({B, n, H, QK});  // per head [k_nope | kr]
    const TensorView<const KV> kr = cached(s, n, r, R);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < n; ++j)
        for (int64_t h = 0; h < H; ++h) {
          T* kp = k.view().ptr(b, j, h);
          const T* src = kvb.view().ptr(b, j) + h * NV;
          std::copy(src, src + N, kp);
          attn_detail::load_row(kr.ptr(b, j, 0), kp + N, R);
        }
    const TensorView<const T> v(kvb.data() + N, {B, n, H, V}, {n * H * NV, H * NV, NV, 1});
    attention<T, T>(q, k, v, o, params());
  }

  // The same through the absorbed up-projections, reading the cache in place.
  void attend_absorbed(const Tensor<T>& q, const State& s, Tensor<T>& o) const {
    const int64_t B = q.size(0), Tn = q.size(1), n = s.len, H = num_heads(), N = nope_dim(),
                  R = rope_dim(), V = v_dim(), r = latent_dim(), QK = N + R, C = r + R, NV = N + V,
                  M = B * Tn;
    const S* Wkv = kv_b_proj.weight.data();  // [H (N + V), r]: head h rows [h NV, h NV + N) W_uk
    const int threads = double(M) * double(H) * double(NV) * double(r) >= double(1 << 20) ? 0 : 1;
    // qc [B, T, H, r + R] = [W_uk,h^T q_nope,h | q_rope,h]
    Tensor<T> qc({B, Tn, H, C});
    parallel_for(
        0, H,
        [&](int64_t h) {
          std::vector<T> wide;
          // qc[m, h, :r] = q_nope[m, h, :] W_uk,h   ([M, N] x [N, r])
          mla_detail::rows_times<T, S>(M, r, N, q.data() + h * QK, H * QK, Wkv + h * NV * r,
                                       Trans::kNo, qc.data() + h * C, H * C, &wide);
          for (int64_t m = 0; m < M; ++m)
            std::copy(q.data() + m * H * QK + h * QK + N, q.data() + m * H * QK + (h + 1) * QK,
                      qc.data() + m * H * C + h * C + r);
        },
        threads);
    // oc [B, T, H, r] = attention over keys [c | kr], values c: one kv head for all H.
    Tensor<T> oc({B, Tn, H, r});
    attention<T, KV>(qc, cached(s, n, 0, C), cached(s, n, 0, r), oc, params());
    // o[m, h, :] = oc[m, h, :] W_uv,h^T   ([M, r] x [r, V])
    parallel_for(
        0, H,
        [&](int64_t h) {
          std::vector<T> wide;
          mla_detail::rows_times<T, S>(M, V, r, oc.data() + h * r, H * r, Wkv + (h * NV + N) * r,
                                       Trans::kYes, o.data() + h * V, H * V, &wide);
        },
        threads);
  }
};

}  // namespace effattn::layers
