// Delta-rule mixers: GatedDeltaNet (Gated DeltaNet, Qwen3-Next's linear layers) and
// KimiDeltaAttention (Kimi Linear's KDA), as fla's layers (fla/layers/gated_deltanet.py,
// fla/layers/kda.py), with the conv states and the recurrent state in a separate State.
//
// Sizes: d = hidden, H = num_heads (q/k heads), HV = num_v_heads (value heads, HV % H == 0;
// value head hv reads q/k head hv / (HV / H)), K = head_dim, V = K * expand_v, W = conv_size.
//
// GatedDeltaNet, fla's names under the layer's prefix:
//   q = silu(q_conv1d(q_proj(x)))    [B, T, H, K]   q_proj [H*K, d], q_conv1d [H*K, 1, W]
//   k = silu(k_conv1d(k_proj(x)))    [B, T, H, K]   k_proj, k_conv1d likewise
//   v = silu(v_conv1d(v_proj(x)))    [B, T, HV, V]  v_proj [HV*V, d], v_conv1d [HV*V, 1, W]
//   g = -exp(A_log) softplus(a_proj(x) + dt_bias)   [B, T, HV]   a_proj [HV, d], A_log [HV],
//                                                                dt_bias [HV]
//   beta = sigmoid(b_proj(x))                       [B, T, HV]   b_proj [HV, d]
//   o = gated_delta_rule(l2norm(q), l2norm(k), v, beta, g)       [B, T, HV, V], scale K^-1/2
//   o = rmsnorm(o) * o_norm.weight * silu(g_proj(x))  per head   o_norm [V], g_proj [HV*V, d]
//   y = o_proj(o [B, T, HV*V])                                   o_proj [d, HV*V]
// (Linears are "<name>.weight", convs "<name>.weight" and, with conv_bias, "<name>.bias".)
//
// KimiDeltaAttention: q, k, v as above; the decay is per key channel, from a low-rank projection:
//   f = f_b_proj(f_a_proj(x))                       [B, T, H, K]  f_a [V, d], f_b [H*K, V]
//   g = -exp(A_log[h]) softplus(f + dt_bias[h])     [B, T, H, K]  A_log [H], dt_bias [H*K]
//   beta = sigmoid(b_proj(x))                       [B, T, H]     b_proj [H, d]
//   o = kda(l2norm(q), l2norm(k), v, beta, g)       [B, T, HV, V]
//   o = rmsnorm(o) * o_norm.weight * sigmoid(g_b_proj(g_a_proj(x)))   g_a [V, d],
//                                                   g_b [HV*V, V] + bias [HV*V] (fla)
//   y = o_proj(o)
// With HV > H, fla repeats the per-H gate and beta over the HV / H value heads of a group; so
// does this layer (A_log, dt_bias and g, beta are widened to HV heads before the op).
// Tensor names: fla's nn.Sequential ones, f_proj.0 / f_proj.1 / g_proj.0 / g_proj.1 (KdaNames::
// kFla, default), or Kimi Linear's f_a_proj / f_b_proj / g_a_proj / g_b_proj (KdaNames::kKimi,
// whose g_b_proj has no bias: set g_bias = false).
//
// State: the last W-1 inputs of each conv ([B, W-1, C], ShortConv's layout) and the recurrent
// state S [B, HV, K, V] (the op's layout; fla's newer caches with state_v_first keep its
// transpose [B, HV, V, K]). forward(x, state, y) continues from the state and leaves it after the
// last token: prompts run the op's chunk form, a few tokens the recurrent form (DeltaRuleAlgo::
// kAuto; the config can force one), so token by token == one call.
//
// Template: T compute (float, double), S projection-weight storage (T, or bf16 with T = float).
// Vectors (conv weights, A_log, dt_bias, norm weights, biases) are kept in T.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "effattn/core/error.hpp"
#include "effattn/core/tensor.hpp"
#include "effattn/io/safetensors.hpp"
#include "effattn/layers/linear.hpp"
#include "effattn/layers/norm.hpp"
#include "effattn/layers/short_conv.hpp"
#include "effattn/layers/weights.hpp"
#include "effattn/ops/delta_rule/delta_rule.hpp"

namespace effattn::layers {

// What both delta-rule layers are configured with (fla's constructor arguments).
struct DeltaLayerConfig {
  int64_t hidden = 0;       // d
  int64_t num_heads = 0;    // H: q/k heads
  int64_t num_v_heads = 0;  // HV; 0 = H. HV > H: grouped value heads (HV % H == 0)
  int64_t head_dim = 0;     // K
  double expand_v = 1.0;    // V = K * expand_v (must be an integer)
  int64_t conv_size = 4;    // W
  bool conv_bias = false;
  bool allow_neg_eigval = false;  // beta = 2 sigmoid(b): eigenvalues of (I - beta k k^T) in [-1, 1]
  double norm_eps = 1e-5;
  DeltaRuleAlgo algo = DeltaRuleAlgo::kAuto;  // the op's form: chunk for prompts, else recurrent

  int64_t head_v_dim() const { return static_cast<int64_t>(std::llround(head_dim * expand_v)); }
};

struct GatedDeltaNetConfig : DeltaLayerConfig {
  GatedDeltaNetConfig() { expand_v = 2.0; }  // fla's default
};

enum class KdaNames { kFla, kKimi };

struct KdaConfig : DeltaLayerConfig {
  KdaNames names = KdaNames::kFla;
  bool g_bias = true;  // bias of the output gate's second linear (fla: yes; Kimi Linear: no)
};

// Per-sequence state of either layer: make it with the layer's make_state(B).
template <class T>
struct DeltaLayerState {
  typename ShortConv<T>::State q_conv, k_conv, v_conv;  // [B, W-1, H*K | H*K | HV*V]
  Tensor<T> recurrent;                                  // S [B, HV, K, V]
  int64_t batch() const { return recurrent.empty() ? 0 : recurrent.size(0); }
  int64_t bytes() const {
    return q_conv.bytes() + k_conv.bytes() + v_conv.bytes() +
           recurrent.numel() * static_cast<int64_t>(sizeof(T));
  }
  void reset() {
    q_conv.reset();
    k_conv.reset();
    v_conv.reset();
    recurrent.fill(T(0));
  }
};

namespace delta_layer_detail {

// Checks the config; returns it with num_v_heads filled in.
inline DeltaLayerConfig checked(const char* L, DeltaLayerConfig c) {
  check(c.hidden > 0 && c.num_heads > 0 && c.head_dim > 0, L, ": hidden (", c.hidden,
        "), num_heads (", c.num_heads, ") and head_dim (", c.head_dim, ") must be positive");
  if (c.num_v_heads == 0) c.num_v_heads = c.num_heads;
  check(c.num_v_heads > 0 && c.num_v_heads % c.num_heads == 0, L, ": num_v_heads (", c.num_v_heads,
        ") must be a multiple of num_heads (", c.num_heads, ")");
  const double v = double(c.head_dim) * c.expand_v;
  check(c.head_v_dim() >= 1 && std::abs(v - double(c.head_v_dim())) < 1e-6, L, ": head_dim (",
        c.head_dim, ") * expand_v (", c.expand_v, ") = ", v, " is not a positive integer");
  check(c.conv_size >= 1, L, ": conv_size must be >= 1, got ", c.conv_size);
  check(c.norm_eps >= 0, L, ": norm_eps must be >= 0, got ", c.norm_eps);
  return c;
}

// p [n] = values of `f(i)`, for a parameter whose init is not a plain uniform.
template <class T, class F>
void fill_with(Param<T>& p, F&& f) {
  T* d = p.value().data();
  for (int64_t i = 0; i < p.numel(); ++i) d[i] = static_cast<T>(f(i));
}
// Uniform in [0, 1) from (seed, name, i), as Param::init_uniform draws it.
inline double uniform01(uint64_t seed, const std::string& name, int64_t i) {
  return 0.5 * (1.0 + uniform_pm1(derive_seed(seed, name), static_cast<uint64_t>(i)));
}

// The q/k/v projections with their short convs, shared by both layers.
template <class T, class S>
struct QkvConv {
  // q, k [B, T, H*K], v [B, T, HV*V] = silu(conv(proj(x))), the conv states advanced.
  static void run(const Linear<T, S>& qp, const Linear<T, S>& kp, const Linear<T, S>& vp,
                  const ShortConv<T>& qc, const ShortConv<T>& kc, const ShortConv<T>& vc,
                  TensorView<const T> x, DeltaLayerState<T>& st, Tensor<T>* q, Tensor<T>* k,
                  Tensor<T>* v) {
    const int64_t B = x.size(0), Tn = x.size(1);
    auto one = [&](const Linear<T, S>& p, const ShortConv<T>& c, typename ShortConv<T>::State& s,
                   Tensor<T>* out) {
      Tensor<T> lin({B, Tn, p.out_features()});
      p.forward(x, lin);
      *out = Tensor<T>(lin.shape());
      c.forward(lin, s, *out);
    };
    one(qp, qc, st.q_conv, q);
    one(kp, kc, st.k_conv, k);
    one(vp, vc, st.v_conv, v);
  }
};

// Checks x [B, T, d], y [B, T, d] and the state against the layer; returns B.
template <class T>
int64_t check_call(const char* L, const DeltaLayerConfig& c, const TensorView<const T>& x,
                   const TensorView<T>& y, const DeltaLayerState<T>& st) {
  check_shape(L, "x", x, {-1, -1, c.hidden}, "[B, T, d]");
  const int64_t B = x.size(0), Tn = x.size(1), K = c.head_dim, V = c.head_v_dim();
  check_shape(L, "y", TensorView<const T>(y), {B, Tn, c.hidden}, "[B, T, d]");
  const Shape want({B, c.num_v_heads, K, V});
  const auto conv_ok = [&](const typename ShortConv<T>::State& s, int64_t C) {
    return !s.conv.empty() && s.conv.shape() == Shape({B, c.conv_size - 1, C});
  };
  check(!st.recurrent.empty() && st.recurrent.shape() == want &&
            conv_ok(st.q_conv, c.num_heads * K) && conv_ok(st.k_conv, c.num_heads * K) &&
            conv_ok(st.v_conv, c.num_v_heads * V),
        L, ": state (recurrent ",
        st.recurrent.empty() ? std::string("<none>") : st.recurrent.shape().str(),
        ") does not fit x ", x.shape().str(), " and this layer (recurrent ", want.str(),
        " = [B, HV, K, V], convs of width ", c.conv_size, "): make it with make_state(B)");
  return B;
}

template <class T>
DeltaLayerState<T> make_state(const char* L, const DeltaLayerConfig& c, const ShortConv<T>& qc,
                              const ShortConv<T>& kc, const ShortConv<T>& vc, int64_t batch) {
  check(batch >= 1, L, "::make_state: batch ", batch, " must be >= 1");
  DeltaLayerState<T> s;
  s.q_conv = qc.make_state(batch);
  s.k_conv = kc.make_state(batch);
  s.v_conv = vc.make_state(batch);
  s.recurrent = Tensor<T>({batch, c.num_v_heads, c.head_dim, c.head_v_dim()});
  return s;
}

// beta [B, T, HV] <- 2 sigmoid(beta) (allow_neg_eigval), or left as logits for the op.
template <class T>
void beta_form(const DeltaLayerConfig& c, Tensor<T>& beta, DeltaRuleParams<T>& p) {
  if (!c.allow_neg_eigval) {
    p.beta_is_logit = true;
    return;
  }
  T* b = beta.data();
  for (int64_t i = 0; i < beta.numel(); ++i) b[i] = T(2) * simd::sigmoid_scalar(b[i]);
}

// y [B, T, d] = o_proj(o_norm(o, gate)); o [B, T, HV, V] is normalised in place, gate [B, T, HV*V].
template <class T, class S>
void output(const GatedRMSNorm<T>& norm, const Linear<T, S>& o_proj, Tensor<T>& o,
            const Tensor<T>& gate, TensorView<T> y) {
  const int64_t B = o.size(0), Tn = o.size(1);
  norm.forward(o, gate.view().reshape(o.shape()), o);
  const TensorView<const T> o3 = o.view().reshape({B, Tn, o.size(2) * o.size(3)});
  detail::rows_out(y, [&](TensorView<T> out) { o_proj.forward(o3, out); });
}

}  // namespace delta_layer_detail

// ---- GatedDeltaNet ------------------------------------------------------------------------------

template <class T, class S = T>
class GatedDeltaNet {
 public:
  using State = DeltaLayerState<T>;

  GatedDeltaNetConfig config;
  Linear<T, S> q_proj, k_proj, v_proj;  // [H*K, d], [H*K, d], [HV*V, d]
  Linear<T, S> a_proj, b_proj;          // [HV, d]
  Param<T> A_log;                       // [HV]
  Param<T> dt_bias;                     // [HV]
  ShortConv<T> q_conv1d, k_conv1d, v_conv1d;
  Linear<T, S> g_proj;     // [HV*V, d]
  GatedRMSNorm<T> o_norm;  // [V], silu gate
  Linear<T, S> o_proj;     // [d, HV*V]

  GatedDeltaNet() = default;
  explicit GatedDeltaNet(const GatedDeltaNetConfig& c) : config(c) {
    static_cast<DeltaLayerConfig&>(config) = delta_layer_detail::checked("GatedDeltaNet", c);
    const int64_t d = c.hidden, HV = num_v_heads(), key = num_heads() * head_dim(),
                  value = HV * head_v_dim();
    q_proj = Linear<T, S>(d, key);
    k_proj = Linear<T, S>(d, key);
    v_proj = Linear<T, S>(d, value);
    a_proj = Linear<T, S>(d, HV);
    b_proj = Linear<T, S>(d, HV);
    A_log = Param<T>("A_log", {HV});
    dt_bias = Param<T>("dt_bias", {HV});
    q_conv1d = ShortConv<T>(key, c.conv_size, c.conv_bias);
    k_conv1d = ShortConv<T>(key, c.conv_size, c.conv_bias);
    v_conv1d = ShortConv<T>(value, c.conv_size, c.conv_bias);
    g_proj = Linear<T, S>(d, value);
    o_norm = GatedRMSNorm<T>(head_v_dim(), c.norm_eps, GateActivation::kSilu, true);
    o_proj = Linear<T, S>(value, d);
  }

  int64_t hidden() const { return config.hidden; }
  int64_t num_heads() const { return config.num_heads; }
  int64_t num_v_heads() const { return config.num_v_heads; }
  int64_t head_dim() const { return config.head_dim; }
  int64_t head_v_dim() const { return config.head_v_dim(); }

  State make_state(int64_t batch) const {
    return delta_layer_detail::make_state("GatedDeltaNet", config, q_conv1d, k_conv1d, v_conv1d,
                                          batch);
  }

  // x [B, T, d] -> y [B, T, d], continuing from `state` (left after the last token).
  void forward(TensorView<const T> x, State& state, TensorView<T> y) const {
    namespace dd = delta_layer_detail;
    const int64_t B = dd::check_call("GatedDeltaNet", config, x, y, state);
    const int64_t Tn = x.size(1), H = num_heads(), HV = num_v_heads(), K = head_dim(),
                  V = head_v_dim();
    if (Tn == 0) return;
    Tensor<T> xbuf, q, k, v;
    x = detail::rows_in(x, &xbuf);
    dd::QkvConv<T, S>::run(q_proj, k_proj, v_proj, q_conv1d, k_conv1d, v_conv1d, x, state, &q, &k,
                           &v);
    Tensor<T> a({B, Tn, HV}), beta({B, Tn, HV});
    a_proj.forward(x, a);  // the raw gate input: the op applies A_log, dt_bias
    b_proj.forward(x, beta);
    DeltaRuleParams<T> p;
    p.use_qk_l2norm = true;
    p.A_log = A_log.view();
    p.dt_bias = dt_bias.view();
    p.algo = config.algo;
    dd::beta_form(config, beta, p);
    Tensor<T> o({B, Tn, HV, V});
    gated_delta_rule<T>(q.view().reshape({B, Tn, H, K}), k.view().reshape({B, Tn, H, K}),
                        v.view().reshape({B, Tn, HV, V}), beta, a, o, state.recurrent,
                        state.recurrent, p);
    Tensor<T> gate({B, Tn, HV * V});
    g_proj.forward(x, gate);
    dd::output(o_norm, o_proj, o, gate, y);
  }
  Tensor<T> operator()(TensorView<const T> x, State& state) const {
    check(!x.empty() && x.ndim() == 3, "GatedDeltaNet: x must be [B, T, d]");
    Tensor<T> y({x.size(0), x.size(1), hidden()});
    forward(x, state, y);
    return y;
  }
  // One whole sequence from a zero state.
  Tensor<T> operator()(TensorView<const T> x) const {
    check(!x.empty() && x.ndim() == 3, "GatedDeltaNet: x must be [B, T, d]");
    State s = make_state(x.size(0));
    return (*this)(x, s);
  }

  // Every tensor under the layer's prefix, in fla's names (load / save / init / bytes use it).
  template <class Self, class F>
  static void members(Self& l, F&& f) {
    f("q_proj", l.q_proj), f("k_proj", l.k_proj), f("v_proj", l.v_proj);
    f("a_proj", l.a_proj), f("b_proj", l.b_proj), f("A_log", l.A_log), f("dt_bias", l.dt_bias);
    f("q_conv1d", l.q_conv1d), f("k_conv1d", l.k_conv1d), f("v_conv1d", l.v_conv1d);
    f("g_proj", l.g_proj), f("o_norm", l.o_norm), f("o_proj", l.o_proj);
  }
  void load(const io::SafeTensors& st, const std::string& prefix) {
    load_members(*this, st, prefix, "GatedDeltaNet");
  }
  void save(io::SafeTensorsWriter& w, const std::string& prefix) const {
    save_members(*this, w, prefix);
  }
  // torch's defaults for the linears and convs, ones for the norm; A_log = log(A), A uniform in
  // (0, 16]; dt_bias = softplus^-1(dt), dt log-uniform in [0.001, 0.1] (fla's init).
  void init_random(uint64_t seed) {
    namespace dd = delta_layer_detail;
    init_members(*this, seed);
    dd::fill_with(A_log, [&](int64_t i) {
      return std::log(16.0 * (1.0 - dd::uniform01(seed, "A_log", i)));  // 1 - u in (0, 1]
    });
    dd::fill_with(dt_bias, [&](int64_t i) {
      const double lo = std::log(0.001), hi = std::log(0.1);
      const double dt =
          std::max(1e-4, std::exp(lo + dd::uniform01(seed, "dt_bias", i) * (hi - lo)));
      return dt + std::log(-std::expm1(-dt));  // softplus(dt_bias) = dt
    });
  }
  int64_t weight_bytes() const { return member_bytes(*this); }
};

// ---- KimiDeltaAttention -------------------------------------------------------------------------

template <class T, class S = T>
class KimiDeltaAttention {
 public:
  using State = DeltaLayerState<T>;

  KdaConfig config;
  Linear<T, S> q_proj, k_proj, v_proj;  // [H*K, d], [H*K, d], [HV*V, d]
  ShortConv<T> q_conv1d, k_conv1d, v_conv1d;
  Linear<T, S> f_a_proj, f_b_proj;  // [V, d], [H*K, V]   (fla: f_proj.0, f_proj.1)
  Linear<T, S> b_proj;              // [H, d]
  Param<T> A_log;                   // [H]
  Param<T> dt_bias;                 // [H*K]
  Linear<T, S> g_a_proj, g_b_proj;  // [V, d], [HV*V, V] + bias   (fla: g_proj.0, g_proj.1)
  GatedRMSNorm<T> o_norm;           // [V], sigmoid gate
  Linear<T, S> o_proj;              // [d, HV*V]

  KimiDeltaAttention() = default;
  explicit KimiDeltaAttention(const KdaConfig& c) : config(c) {
    static_cast<DeltaLayerConfig&>(config) = delta_layer_detail::checked("KimiDeltaAttention", c);
    const int64_t d = c.hidden, H = num_heads(), V = head_v_dim(), key = H * head_dim(),
                  value = num_v_heads() * V;
    q_proj = Linear<T, S>(d, key);
    k_proj = Linear<T, S>(d, key);
    v_proj = Linear<T, S>(d, value);
    q_conv1d = ShortConv<T>(key, c.conv_size, c.conv_bias);
    k_conv1d = ShortConv<T>(key, c.conv_size, c.conv_bias);
    v_conv1d = ShortConv<T>(value, c.conv_size, c.conv_bias);
    f_a_proj = Linear<T, S>(d, V);
    f_b_proj = Linear<T, S>(V, key);
    b_proj = Linear<T, S>(d, H);
    A_log = Param<T>("A_log", {H});
    dt_bias = Param<T>("dt_bias", {key});
    g_a_proj = Linear<T, S>(d, V);
    g_b_proj = Linear<T, S>(V, value, c.g_bias);
    o_norm = GatedRMSNorm<T>(V, c.norm_eps, GateActivation::kSigmoid, true);
    o_proj = Linear<T, S>(value, d);
  }

  int64_t hidden() const { return config.hidden; }
  int64_t num_heads() const { return config.num_heads; }
  int64_t num_v_heads() const { return config.num_v_heads; }
  int64_t head_dim() const { return config.head_dim; }
  int64_t head_v_dim() const { return config.head_v_dim(); }

  State make_state(int64_t batch) const {
    return delta_layer_detail::make_state("KimiDeltaAttention", config, q_conv1d, k_conv1d,
                                          v_conv1d, batch);
  }

  // x [B, T, d] -> y [B, T, d], continuing from `state` (left after the last token).
  void forward(TensorView<const T> x, State& state, TensorView<T> y) const {
    namespace dd = delta_layer_detail;
    const int64_t B = dd::check_call("KimiDeltaAttention", config, x, y, state);
    const int64_t Tn = x.size(1), H = num_heads(), HV = num_v_heads(), K = head_dim(),
                  V = head_v_dim(), G = HV / H;
    if (Tn == 0) return;
    Tensor<T> xbuf, q, k, v;
    x = detail::rows_in(x, &xbuf);
    dd::QkvConv<T, S>::run(q_proj, k_proj, v_proj, q_conv1d, k_conv1d, v_conv1d, x, state, &q, &k,
                           &v);
    Tensor<T> lat({B, Tn, V}), f({B, Tn, H * K}), beta({B, Tn, H});
    f_a_proj.forward(x, lat);
    f_b_proj.forward(lat, f);  // the raw gate input: the op applies A_log, dt_bias
    b_proj.forward(x, beta);
    DeltaRuleParams<T> p;
    p.use_qk_l2norm = true;
    p.algo = config.algo;
    dd::beta_form(config, beta, p);
    // Per value head: g, beta and the gate parameters of its q/k head (copies only when HV > H).
    Tensor<T> f_hv, beta_hv, A_hv, dt_hv;
    TensorView<const T> g4 = f.view().reshape({B, Tn, H, K}), beta3 = beta, A = A_log.view(),
                        dt = dt_bias.view().reshape({H, K});
    if (G > 1) {
      f_hv = repeat_heads(g4, G);
      beta_hv = repeat_heads(beta.view().reshape({B, Tn, H, 1}), G);
      A_hv = repeat_heads(A_log.view().reshape({1, 1, H, 1}), G);
      dt_hv = repeat_heads(dt.reshape({1, 1, H, K}), G);
      g4 = f_hv;
      beta3 = beta_hv.view().reshape({B, Tn, HV});
      A = A_hv.view().reshape({HV});
      dt = dt_hv.view().reshape({HV, K});
    }
    p.A_log = A;
    p.dt_bias = dt;
    Tensor<T> o({B, Tn, HV, V});
    kda<T>(q.view().reshape({B, Tn, H, K}), k.view().reshape({B, Tn, H, K}),
           v.view().reshape({B, Tn, HV, V}), beta3, g4, o, state.recurrent, state.recurrent, p);
    Tensor<T> gate({B, Tn, HV * V});
    g_a_proj.forward(x, lat);
    g_b_proj.forward(lat, gate);
    dd::output(o_norm, o_proj, o, gate, y);
  }
  Tensor<T> operator()(TensorView<const T> x, State& state) const {
    check(!x.empty() && x.ndim() == 3, "KimiDeltaAttention: x must be [B, T, d]");
    Tensor<T> y({x.size(0), x.size(1), hidden()});
    forward(x, state, y);
    return y;
  }
  // One whole sequence from a zero state.
  Tensor<T> operator()(TensorView<const T> x) const {
    check(!x.empty() && x.ndim() == 3, "KimiDeltaAttention: x must be [B, T, d]");
    State s = make_state(x.size(0));
    return (*this)(x, s);
  }

  // The name of each low-rank linear under the configured convention.
  const char* f_a_name() const { return config.names == KdaNames::kFla ? "f_proj.0" : "f_a_proj"; }
  const char* f_b_name() const { return config.names == KdaNames::kFla ? "f_proj.1" : "f_b_proj"; }
  const char* g_a_name() const { return config.names == KdaNames::kFla ? "g_proj.0" : "g_a_proj"; }
  const char* g_b_name() const { return config.names == KdaNames::kFla ? "g_proj.1" : "g_b_proj"; }

  // Every tensor under the layer's prefix (load / save / init / bytes use it).
  template <class Self, class F>
  static void members(Self& l, F&& f) {
    f("q_proj", l.q_proj), f("k_proj", l.k_proj), f("v_proj", l.v_proj);
    f("q_conv1d", l.q_conv1d), f("k_conv1d", l.k_conv1d), f("v_conv1d", l.v_conv1d);
    f(l.f_a_name(), l.f_a_proj), f(l.f_b_name(), l.f_b_proj), f("b_proj", l.b_proj);
    f("A_log", l.A_log), f("dt_bias", l.dt_bias);
    f(l.g_a_name(), l.g_a_proj), f(l.g_b_name(), l.g_b_proj);
    f("o_norm", l.o_norm), f("o_proj", l.o_proj);
  }
  void load(const io::SafeTensors& st, const std::string& prefix) {
    load_members(*this, st, prefix, "KimiDeltaAttention");
  }
  void save(io::SafeTensorsWriter& w, const std::string& prefix) const {
    save_members(*this, w, prefix);
  }
  // torch's defaults for the linears and convs, ones for the norm; A_log = log(A), A uniform in
  // [1, 16); dt_bias zeros (fla's init).
  void init_random(uint64_t seed) {
    init_members(*this, seed);
    delta_layer_detail::fill_with(A_log, [&](int64_t i) {
      return std::log(1.0 + 15.0 * delta_layer_detail::uniform01(seed, "A_log", i));
    });
    dt_bias.fill(0.0);
  }
  int64_t weight_bytes() const { return member_bytes(*this); }

 private:
  // x [B, T, H, C] -> [B, T, H*G, C]: head h repeated for value heads h*G .. h*G + G-1 (fla's
  // repeat '... h d -> ... (h g) d').
  static Tensor<T> repeat_heads(TensorView<const T> x, int64_t G) {
    const int64_t B = x.size(0), Tn = x.size(1), H = x.size(2), C = x.size(3);
    Tensor<T> y({B, Tn, H * G, C});
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < Tn; ++t)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t j = 0; j < G; ++j)
            for (int64_t c = 0; c < C; ++c) y(b, t, h * G + j, c) = x(b, t, h, c);
    return y;
  }
};

}  // namespace effattn::layers
