// Mamba mixers: the Mamba-1 block (Hugging Face MambaMixer / mamba_ssm Mamba) and the Mamba-2
// block (mamba_ssm Mamba2), with their conv and SSM states in a separate State.
//
// Mamba<T, S> (d = hidden, E = d_inner, N = state_size, R = dt_rank, W = conv_kernel):
//   x, z   = in_proj(h) [B, T, 2E] split in halves              (in_proj.weight [2E, d])
//   u      = silu(conv1d(x))                                   (conv1d.weight [E, 1, W], .bias)
//   dt, Bt, Ct = x_proj(u) [B, T, R + 2N] split R | N | N      (x_proj.weight [R + 2N, E])
//   delta  = dt_proj(dt) [B, T, E]                             (dt_proj.weight [E, R], .bias)
//   y      = selective_scan(u, delta, A = -exp(A_log), Bt, Ct, D, z)  with softplus(delta)
//            (A_log [E, N], D [E]; y = (C h + D u) * silu(z))
//   out    = out_proj(y)                                       (out_proj.weight [d, E])
//   in_proj / out_proj carry a bias with use_bias, conv1d with use_conv_bias (HF config names).
//
// Mamba2<T, S> (E = d_inner = nheads * headdim P, G = ngroups, N = state_size, H = nheads):
//   z, xBC, dt = in_proj(h) [B, T, E | E + 2GN | H]            (in_proj.weight [2E + 2GN + H, d])
//   xBC    = silu(conv1d(xBC))                                 (conv1d.weight [E + 2GN, 1, W])
//   x, Bt, Ct = xBC split E | GN | GN; x as [B, T, H, P], Bt, Ct as [B, T, G, N]
//   y      = ssd(x, dt, A = -exp(A_log), Bt, Ct, D) with dt' = softplus(dt + dt_bias), clamped
//            to dt_limit when one is configured           (dt_bias, A_log [H], D [H] or [E])
//   y      = norm(y, z): rmsnorm(y * silu(z)) * norm.weight over each group of E / G channels
//   out    = out_proj(y)                                       (out_proj.weight [d, E])
// The gated norm follows mamba_ssm's Mamba2 (RMSNormGated with group_size = d_inner / ngroups,
// norm_before_gate = False), which is what checkpoints were trained with; transformers'
// Mamba2Mixer normalises over all of d_inner instead, which agrees only for ngroups = 1.
//
// State (per sequence, made by make_state(B), zeros): conv, ShortConv's [B, W-1, C] oldest
// first (the reference caches keep [B, C, W]: conv[b, i, c] is their [b, c, i + 1]), and ssm,
// [B, E, N] for Mamba-1 (HF's ssm_states) or [B, H, P, N] for Mamba-2 (mamba_ssm's ssm_state).
// forward(x, state, y) continues from the state and leaves it after the last token: prompts run
// causal_conv1d and the chunked scan / SSD, a few tokens the conv update and the recurrent step,
// so feeding a sequence token by token gives what one call over it gives.
//
// Storage: the projection matrices (in_proj, x_proj, dt_proj, out_proj) are S (T, or bf16 with
// T = float); the vectors (conv, A_log, D, dt bias, norm) stay T as in the other layers.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "effattn/core/error.hpp"
#include "effattn/core/tensor.hpp"
#include "effattn/io/safetensors.hpp"
#include "effattn/layers/linear.hpp"
#include "effattn/layers/norm.hpp"
#include "effattn/layers/short_conv.hpp"
#include "effattn/layers/weights.hpp"
#include "effattn/ops/ssm/ssd.hpp"
#include "effattn/ops/ssm/ssm.hpp"
#include "effattn/simd/simd.hpp"

namespace effattn::layers {

namespace mamba_detail {

// a [n] = -exp(A_log [n]): the (negative) continuous-time decay of each state. Per call, with
// the array exp: E * N = 24K values for mamba-130m, a few microseconds (std::exp would cost as
// much as streaming in_proj at decode).
template <class T>
void neg_exp(const Param<T>& A_log, T* a) {
  simd::exp(A_log.data(), a, A_log.numel());
  simd::scale(T(-1), a, A_log.numel());
}

// mamba's dt initialisation: dt log-uniform in [dt_min, dt_max] (at least dt_floor), stored as
// its inverse softplus dt + log(-expm1(-dt)), so softplus(bias) = dt at the start.
template <class T>
void init_dt_bias(Param<T>& bias, uint64_t seed, double dt_min, double dt_max, double dt_floor) {
  const uint64_t key = derive_seed(seed, bias.name());
  T* p = bias.value().data();
  for (int64_t i = 0; i < bias.numel(); ++i) {
    const double r = 0.5 * (uniform_pm1(key, static_cast<uint64_t>(i)) + 1.0);  // [0, 1)
    const double dt =
        std::max(dt_floor, std::exp(r * (std::log(dt_max) - std::log(dt_min)) + std::log(dt_min)));
    p[i] = static_cast<T>(dt + std::log(-std::expm1(-dt)));
  }
}

// Checks x [B, T, d] and y [B, T, d].
template <class T>
void check_io(const char* L, const TensorView<const T>& x, const TensorView<T>& y, int64_t d) {
  check_shape(L, "x", x, {-1, -1, d}, "[B, T, d]");
  check_shape(L, "y", TensorView<const T>(y), {x.size(0), x.size(1), d}, "[B, T, d]");
}

// Checks a state tensor against its expected shape.
template <class T>
void check_state(const char* L, const char* arg, const Tensor<T>& s, const Shape& want,
                 const char* dims) {
  check(!s.empty() && s.shape() == want, L, ": ", arg, " has shape ",
        s.empty() ? std::string("<none>") : s.shape().str(), ", expected ", want.str(), " = ", dims,
        " (make it with make_state(B))");
}

// The projection lin(x) into y [B, T, out], through contiguous copies when x or y is a time slice.
template <class T, class S>
void project(const Linear<T, S>& lin, TensorView<const T> x, TensorView<T> y) {
  Tensor<T> xbuf;
  x = detail::rows_in(x, &xbuf);
  detail::rows_out(y, [&](TensorView<T> out) { lin.forward(x, out); });
}

// Runs f(x piece, y piece) over time pieces of at most `piece` tokens (0: one piece). A long
// prompt in pieces keeps the [B, T, ~2E] intermediates of a piece in L3 between the projection,
// the conv and the scan, and their buffers small enough for malloc to reuse instead of mapping
// fresh pages per call: measured 17% (Mamba) / 14% (Mamba2) faster at T = 2048, d = 2048 with
// pieces of 512 than in one piece; 256 was a little slower than 512.
template <class T, class F>
void in_pieces(const TensorView<const T>& x, const TensorView<T>& y, int64_t piece, F&& f) {
  const int64_t Tn = x.size(1);
  if (piece <= 0 || Tn <= piece) return f(x, y);
  for (int64_t t0 = 0; t0 < Tn; t0 += piece) {
    const int64_t t1 = std::min(Tn, t0 + piece);
    f(x.slice(1, t0, t1), y.slice(1, t0, t1));
  }
}

}  // namespace mamba_detail

// ------------------------------------------------------------------ Mamba-1

// Hugging Face MambaConfig names; 0 = the default derived from hidden.
struct MambaConfig {
  int64_t hidden = 0;        // d (hidden_size)
  int64_t intermediate = 0;  // E = d_inner; 0 = expand * hidden
  int64_t expand = 2;
  int64_t state_size = 16;      // N
  int64_t conv_kernel = 4;      // W
  int64_t time_step_rank = 0;   // R; 0 = ceil(hidden / 16)
  bool use_bias = false;        // in_proj / out_proj bias
  bool use_conv_bias = true;    // conv1d bias
  int64_t prefill_piece = 512;  // prompts run in time pieces of this many tokens (0: whole)
  // Initialisation only (init_random): dt = softplus(dt_proj.bias) in [dt_min, dt_max].
  double time_step_min = 1e-3, time_step_max = 1e-1, time_step_floor = 1e-4;
  double time_step_scale = 1.0;  // dt_proj.weight uniform in +-scale / sqrt(R)
};

template <class T, class S = T>
class Mamba {
 public:
  struct State {
    typename ShortConv<T>::State conv;  // conv [B, W-1, E], oldest first
    Tensor<T> ssm;                      // [B, E, N]
    int64_t batch() const { return ssm.empty() ? 0 : ssm.size(0); }
    int64_t bytes() const { return conv.bytes() + ssm.numel() * static_cast<int64_t>(sizeof(T)); }
    void reset() {
      conv.reset();
      ssm.fill(T(0));
    }
  };

  MambaConfig config;
  Linear<T, S> in_proj;   // [2E, d]
  ShortConv<T> conv1d;    // [E, 1, W], bias [E]
  Linear<T, S> x_proj;    // [R + 2N, E]
  Linear<T, S> dt_proj;   // [E, R], bias [E]
  Param<T> A_log;         // [E, N]
  Param<T> D;             // [E]
  Linear<T, S> out_proj;  // [d, E]

  Mamba() = default;
  explicit Mamba(const MambaConfig& c) : config(c) {
    const char* L = "Mamba";
    check(c.hidden > 0 && c.state_size > 0 && c.conv_kernel > 0, L, ": hidden (", c.hidden,
          "), state_size (", c.state_size, ") and conv_kernel (", c.conv_kernel,
          ") must be positive");
    if (config.intermediate == 0) config.intermediate = c.expand * c.hidden;
    if (config.time_step_rank == 0) config.time_step_rank = (c.hidden + 15) / 16;
    const int64_t d = c.hidden, E = config.intermediate, N = c.state_size,
                  R = config.time_step_rank;
    check(E > 0 && R > 0, L, ": intermediate (", E, ") and time_step_rank (", R,
          ") must be positive");
    in_proj = Linear<T, S>(d, 2 * E, c.use_bias);
    conv1d = ShortConv<T>(E, c.conv_kernel, c.use_conv_bias, ConvActivation::kSilu);
    x_proj = Linear<T, S>(E, R + 2 * N, false);
    dt_proj = Linear<T, S>(R, E, true);
    A_log = Param<T>("A_log", {E, N});
    D = Param<T>("D", {E});
    out_proj = Linear<T, S>(E, d, c.use_bias);
    init_a_d();
  }

  int64_t hidden() const { return config.hidden; }
  int64_t intermediate() const { return config.intermediate; }
  int64_t state_size() const { return config.state_size; }
  int64_t dt_rank() const { return config.time_step_rank; }

  State make_state(int64_t batch) const {
    check(batch >= 1, "Mamba::make_state: batch ", batch, " must be >= 1");
    State s;
    s.conv = conv1d.make_state(batch);
    s.ssm = Tensor<T>({batch, intermediate(), state_size()});
    return s;
  }

  // x [B, T, d] -> y [B, T, d], continuing from `state`. y must not overlap x. T = 0: no-op.
  void forward(TensorView<const T> x, State& state, TensorView<T> y) const {
    const char* L = "Mamba";
    mamba_detail::check_io(L, x, y, hidden());
    const int64_t B = x.size(0), Tn = x.size(1), E = intermediate(), N = state_size();
    mamba_detail::check_state(L, "state.ssm", state.ssm, {B, E, N}, "[B, E, N]");
    mamba_detail::check_state(L, "state.conv.conv", state.conv.conv, {B, conv1d.width() - 1, E},
                              "[B, W-1, E]");
    if (Tn == 0) return;
    mamba_detail::in_pieces(
        x, y, config.prefill_piece,
        [&](TensorView<const T> xp, TensorView<T> yp) { forward_piece(xp, state, yp); });
  }
  Tensor<T> operator()(TensorView<const T> x, State& state) const {
    check(!x.empty() && x.ndim() == 3, "Mamba: x must be [B, T, d]");
    Tensor<T> y(x.shape());
    forward(x, state, y);
    return y;
  }

  // Every tensor under the layer's prefix, in HF's names (load / save / bytes use it).
  template <class Self, class F>
  static void members(Self& l, F&& f) {
    f("in_proj", l.in_proj), f("conv1d", l.conv1d), f("x_proj", l.x_proj);
    f("dt_proj", l.dt_proj), f("A_log", l.A_log), f("D", l.D), f("out_proj", l.out_proj);
  }
  void load(const io::SafeTensors& st, const std::string& prefix) {
    load_members(*this, st, prefix, "Mamba");
  }
  void save(io::SafeTensorsWriter& w, const std::string& prefix) const {
    save_members(*this, w, prefix);
  }
  // As HF MambaPreTrainedModel / mamba_ssm: Linear and conv torch defaults; dt_proj.weight
  // uniform in +-scale/sqrt(R), dt_proj.bias the inverse softplus of a log-uniform dt;
  // A_log[e, n] = log(n + 1); D = 1.
  void init_random(uint64_t seed) {
    in_proj.init_random(derive_seed(seed, "in_proj"));
    conv1d.init_random(derive_seed(seed, "conv1d"));
    x_proj.init_random(derive_seed(seed, "x_proj"));
    const uint64_t dts = derive_seed(seed, "dt_proj");
    dt_proj.weight.init_uniform(dts, config.time_step_scale / std::sqrt(double(dt_rank())));
    mamba_detail::init_dt_bias(dt_proj.bias, dts, config.time_step_min, config.time_step_max,
                               config.time_step_floor);
    init_a_d();
    out_proj.init_random(derive_seed(seed, "out_proj"));
  }
  int64_t weight_bytes() const { return member_bytes(*this); }

 private:
  // One piece of forward(): x [B, T, d] (checked) -> y.
  void forward_piece(TensorView<const T> x, State& state, TensorView<T> y) const {
    const int64_t B = x.size(0), Tn = x.size(1), E = intermediate(), N = state_size(),
                  R = dt_rank();
    Tensor<T> xz({B, Tn, 2 * E});  // x | z
    mamba_detail::project(in_proj, x, xz.view());
    const TensorView<const T> xs = xz.view().slice(2, 0, E), z = xz.view().slice(2, E, 2 * E);
    Tensor<T> u({B, Tn, E});  // silu(conv1d(x))
    conv1d.forward(xs, state.conv, u);
    Tensor<T> dbc({B, Tn, R + 2 * N});  // dt | B | C
    x_proj.forward(u, dbc);
    Tensor<T> delta({B, Tn, E});  // dt_proj(dt), softplus inside the scan
    dt_proj.forward(dbc.view().slice(2, 0, R), delta);
    const TensorView<const T> Bt = dbc.view().slice(2, R, R + N);
    const TensorView<const T> Ct = dbc.view().slice(2, R + N, R + 2 * N);
    Tensor<T> A({E, N});
    mamba_detail::neg_exp(A_log, A.data());
    Tensor<T> ys({B, Tn, E});  // (C h + D u) * silu(z)
    SelectiveScanParams p;
    p.delta_softplus = true;
    TensorView<T> h = state.ssm.view();
    if (Tn <= kSelectiveScanRecurrentMaxLen) {
      selective_scan_step<T>(u, delta, A, Bt, Ct, D.view(), z, {}, h, ys, p);
    } else {
      selective_scan<T>(u, delta, A, Bt, Ct, D.view(), z, {}, TensorView<const T>(h), ys, h, p);
    }
    mamba_detail::project(out_proj, TensorView<const T>(ys.view()), y);
  }

  void init_a_d() {
    T* a = A_log.value().data();
    for (int64_t e = 0; e < intermediate(); ++e)
      for (int64_t n = 0; n < state_size(); ++n)
        a[e * state_size() + n] = static_cast<T>(std::log(double(n + 1)));
    D.fill(1.0);
  }
};

// ------------------------------------------------------------------ Mamba-2

// mamba_ssm Mamba2 argument names; 0 = the default derived from the others.
struct Mamba2Config {
  int64_t hidden = 0;       // d (d_model)
  int64_t expand = 2;       // d_inner = expand * d_model
  int64_t d_inner = 0;      // 0 = expand * hidden
  int64_t headdim = 64;     // P; nheads = d_inner / headdim
  int64_t ngroups = 1;      // G: B and C groups (and norm groups)
  int64_t d_state = 128;    // N
  int64_t d_conv = 4;       // W
  bool bias = false;        // in_proj / out_proj bias
  bool conv_bias = true;    // conv1d bias
  bool D_has_hdim = false;  // D [d_inner] instead of [nheads]
  double norm_eps = 1e-5;   // RMSNormGated eps
  double dt_limit_min = 0.0, dt_limit_max = std::numeric_limits<double>::infinity();
  int64_t chunk_size = 256;  // SSD chunk (mamba_ssm's default)
  // Prompts run in time pieces of this many tokens (0: whole); a multiple of chunk_size keeps
  // the SSD chunks of one forward.
  int64_t prefill_piece = 512;
  // Initialisation only (init_random).
  double dt_min = 1e-3, dt_max = 1e-1, dt_init_floor = 1e-4;
  double A_init_min = 1.0, A_init_max = 16.0;
};

template <class T, class S = T>
class Mamba2 {
 public:
  struct State {
    typename ShortConv<T>::State conv;  // conv [B, W-1, E + 2GN], oldest first
    Tensor<T> ssm;                      // [B, H, P, N]
    int64_t batch() const { return ssm.empty() ? 0 : ssm.size(0); }
    int64_t bytes() const { return conv.bytes() + ssm.numel() * static_cast<int64_t>(sizeof(T)); }
    void reset() {
      conv.reset();
      ssm.fill(T(0));
    }
  };

  Mamba2Config config;
  Linear<T, S> in_proj;   // [2E + 2GN + H, d]: z | xBC | dt
  ShortConv<T> conv1d;    // [E + 2GN, 1, W], bias
  Param<T> dt_bias;       // [H]
  Param<T> A_log;         // [H]
  Param<T> D;             // [H], or [E] with D_has_hdim
  GatedRMSNorm<T> norm;   // [E], silu gate, norm after the gate, groups of E / G
  Linear<T, S> out_proj;  // [d, E]

  Mamba2() = default;
  explicit Mamba2(const Mamba2Config& c) : config(c) {
    const char* L = "Mamba2";
    if (config.d_inner == 0) config.d_inner = c.expand * c.hidden;
    const int64_t d = c.hidden, E = config.d_inner, P = c.headdim, G = c.ngroups, N = c.d_state;
    check(d > 0 && E > 0 && P > 0 && G > 0 && N > 0 && c.d_conv > 0, L, ": hidden (", d,
          "), d_inner (", E, "), headdim (", P, "), ngroups (", G, "), d_state (", N,
          ") and d_conv (", c.d_conv, ") must be positive");
    check(E % P == 0, L, ": d_inner (", E, ") is not a multiple of headdim (", P, ")");
    const int64_t H = E / P;
    check(H % G == 0, L, ": nheads (", H, ") is not a multiple of ngroups (", G, ")");
    check(c.dt_limit_min <= c.dt_limit_max, L, ": dt_limit (", c.dt_limit_min, ", ", c.dt_limit_max,
          ") is empty");
    in_proj = Linear<T, S>(d, 2 * E + 2 * G * N + H, c.bias);
    conv1d = ShortConv<T>(E + 2 * G * N, c.d_conv, c.conv_bias, ConvActivation::kSilu);
    dt_bias = Param<T>("dt_bias", {H});
    A_log = Param<T>("A_log", {H});
    D = Param<T>("D", {c.D_has_hdim ? E : H});
    norm = GatedRMSNorm<T>(E, c.norm_eps, GateActivation::kSilu, /*norm_before_gate=*/false, E / G);
    out_proj = Linear<T, S>(E, d, c.bias);
    D.fill(1.0);
  }

  int64_t hidden() const { return config.hidden; }
  int64_t d_inner() const { return config.d_inner; }
  int64_t headdim() const { return config.headdim; }
  int64_t nheads() const { return config.d_inner / config.headdim; }
  int64_t ngroups() const { return config.ngroups; }
  int64_t d_state() const { return config.d_state; }
  int64_t conv_dim() const { return d_inner() + 2 * ngroups() * d_state(); }

  State make_state(int64_t batch) const {
    check(batch >= 1, "Mamba2::make_state: batch ", batch, " must be >= 1");
    State s;
    s.conv = conv1d.make_state(batch);
    s.ssm = Tensor<T>({batch, nheads(), headdim(), d_state()});
    return s;
  }

  // x [B, T, d] -> y [B, T, d], continuing from `state`. y must not overlap x. T = 0: no-op.
  void forward(TensorView<const T> x, State& state, TensorView<T> y) const {
    const char* L = "Mamba2";
    mamba_detail::check_io(L, x, y, hidden());
    const int64_t B = x.size(0), Tn = x.size(1), H = nheads(), P = headdim(), N = d_state(),
                  C = conv_dim();
    mamba_detail::check_state(L, "state.ssm", state.ssm, {B, H, P, N}, "[B, H, P, N]");
    mamba_detail::check_state(L, "state.conv.conv", state.conv.conv, {B, conv1d.width() - 1, C},
                              "[B, W-1, E + 2GN]");
    if (Tn == 0) return;
    mamba_detail::in_pieces(
        x, y, config.prefill_piece,
        [&](TensorView<const T> xp, TensorView<T> yp) { forward_piece(xp, state, yp); });
  }
  Tensor<T> operator()(TensorView<const T> x, State& state) const {
    check(!x.empty() && x.ndim() == 3, "Mamba2: x must be [B, T, d]");
    Tensor<T> y(x.shape());
    forward(x, state, y);
    return y;
  }

  // Every tensor under the layer's prefix, in mamba_ssm's names (load / save / init / bytes).
  template <class Self, class F>
  static void members(Self& l, F&& f) {
    f("in_proj", l.in_proj), f("conv1d", l.conv1d), f("dt_bias", l.dt_bias);
    f("A_log", l.A_log), f("D", l.D), f("norm", l.norm), f("out_proj", l.out_proj);
  }
  void load(const io::SafeTensors& st, const std::string& prefix) {
    load_members(*this, st, prefix, "Mamba2");
  }
  void save(io::SafeTensorsWriter& w, const std::string& prefix) const {
    save_members(*this, w, prefix);
  }
  // As mamba_ssm's Mamba2: Linear and conv torch defaults; dt_bias the inverse softplus of a
  // log-uniform dt in [dt_min, dt_max]; A_log = log(A), A uniform in [A_init_min, A_init_max];
  // D = 1; norm weight 1.
  void init_random(uint64_t seed) {
    init_members(*this, seed);
    mamba_detail::init_dt_bias(dt_bias, seed, config.dt_min, config.dt_max, config.dt_init_floor);
    const uint64_t key = derive_seed(seed, A_log.name());
    T* a = A_log.value().data();
    for (int64_t h = 0; h < nheads(); ++h) {
      const double r = 0.5 * (uniform_pm1(key, static_cast<uint64_t>(h)) + 1.0);  // [0, 1)
      a[h] =
          static_cast<T>(std::log(config.A_init_min + r * (config.A_init_max - config.A_init_min)));
    }
    D.fill(1.0);
  }
  int64_t weight_bytes() const { return member_bytes(*this); }

 private:
  // One piece of forward(): x [B, T, d] (checked) -> y.
  void forward_piece(TensorView<const T> x, State& state, TensorView<T> y) const {
    const int64_t B = x.size(0), Tn = x.size(1), E = d_inner(), H = nheads(), P = headdim(),
                  G = ngroups(), N = d_state(), C = conv_dim(), F = 2 * E + 2 * G * N + H;
    Tensor<T> zxd({B, Tn, F});  // z | xBC | dt
    mamba_detail::project(in_proj, x, zxd.view());
    const TensorView<T> zv = zxd.view();
    Tensor<T> xbc({B, Tn, C});  // silu(conv1d(xBC))
    conv1d.forward(zv.slice(2, E, E + C), state.conv, xbc);
    // Views into xbc [B, T, C] (row stride C): x [B, T, H, P], B and C [B, T, G, N].
    const int64_t sb = Tn * C, st = C;
    const TensorView<const T> xh(xbc.data(), Shape{B, Tn, H, P}, {sb, st, P, 1});
    const TensorView<const T> Bt(xbc.data() + E, Shape{B, Tn, G, N}, {sb, st, N, 1});
    const TensorView<const T> Ct(xbc.data() + E + G * N, Shape{B, Tn, G, N}, {sb, st, N, 1});
    const TensorView<const T> dt = zv.slice(2, E + C, F);  // [B, T, H]
    Tensor<T> A({H});
    mamba_detail::neg_exp(A_log, A.data());
    TensorView<const T> Dv = D.view();
    if (config.D_has_hdim) Dv = Dv.reshape({H, P});
    SsdParams<T> p;
    p.dt_softplus = true;
    p.dt_min = static_cast<T>(config.dt_limit_min);
    p.dt_max = static_cast<T>(config.dt_limit_max);
    p.chunk_size = config.chunk_size;
    Tensor<T> ys({B, Tn, H, P});  // the SSD output, then gated and normalised in place
    TensorView<T> h = state.ssm.view();
    ssd<T>(xh, dt, A, Bt, Ct, Dv, dt_bias.view(), {}, ys, p, TensorView<const T>(h), h);
    const TensorView<T> y2 = ys.view().reshape({B, Tn, E});
    norm.forward(y2, zv.slice(2, 0, E), y2);
    mamba_detail::project(out_proj, TensorView<const T>(y2), y);
  }
};

}  // namespace effattn::layers
