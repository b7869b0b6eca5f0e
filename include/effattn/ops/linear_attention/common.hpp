// The gated-linear-recurrence problem shared by the naive, recurrent and chunk forms and by
// every front end (linear attention, simple GLA / RetNet / Lightning, GLA, Mamba-2 SSD):
//
//   S_t = Decay_t S_{t-1} + phi(k_t) (c_t v_t)^T        S [Kf, V] per (sequence, head)
//   o_t = scale S_t^T phi(q_t)                          (/ (scale phi(q_t).z_t + eps) with
//   normalize) Decay_t = 1 (none), exp(m_h g_t) (scalar, g [B,T,H], or a constant gamma_h),
//   diag(exp(g_t)) (channel, g [B,T,H,Kf]); z_t = Decay_t z_{t-1} + phi(k_t).
//
// c_t (v_scale [B,T,H], SSD's dt) and m_h (gate_mul [H], SSD's A) exist for the SSD front end.
// q / k may have fewer heads than v (Hqk divides H; head h reads q/k head h / (H / Hqk)):
// SSD's groups of B / C. States are [N, H, Kf, V], or [N, H, V, Kf] with state_vk (SSD's
// [B, H, P, N]); N = B, or the number of sequences with cu_seqlens.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "effattn/core/error.hpp"
#include "effattn/core/tensor.hpp"
#include "effattn/ops/linear_attention/feature_maps.hpp"

namespace effattn {

enum class DecayKind { kNone, kScalar, kChannel };

// Which algorithm runs. kAuto: recurrent for sequences shorter than kAutoChunkMinLen tokens
// (decode), chunk otherwise (prefill).
enum class LinearAttentionForm { kAuto, kChunk, kRecurrent, kNaive };

// Options of linear_attention / simple_gla / gla.
template <class T>
struct LinearAttentionParams {
  FeatureMap feature_map = FeatureMap::kIdentity;  // applied to q and k (any op)
  T scale = 0;             // <= 0: Kf^-1/2 (Kf = feature size after the map)
  bool causal = true;      // false: S = S0 + sum over the whole sequence (decay none only)
  bool normalize = false;  // divide by scale phi(q).z + eps (z state)
  T eps = T(1e-10);
  std::vector<T> gamma;     // simple_gla without g: constant per-head log decay [H] (RetNet)
  int64_t chunk_size = 16;  // tokens per chunk of the chunk form (16: fastest measured)
  std::vector<int64_t> cu_seqlens;  // varlen offsets (N+1), B must be 1; empty = not varlen
  int num_threads = 0;              // 0 = global default
  LinearAttentionForm form = LinearAttentionForm::kAuto;
};

namespace linattn_detail {

inline constexpr int64_t kAutoChunkMinLen = 16;
// Below this many state-element updates (tokens x H x Kf x V) a call runs single-threaded.
inline constexpr double kMinParallelWork = 1 << 15;

// Everything the three forms read; built and validated by the front ends.
template <class T>
struct Problem {
  const char* op = "linear_attention";
  TensorView<const T> q, k;     // [B, T, Hqk, K] raw (before the feature map)
  TensorView<const T> v;        // [B, T, H, V]
  TensorView<const T> v_scale;  // empty or [B, T, H]: v_t multiplied by it
  TensorView<const T> g;        // empty, [B, T, H] (scalar) or [B, T, H, Kf] (channel)
  const T* gate_mul = nullptr;  // [H] or null: scalar gate = gate_mul[h] * g
  const T* gamma = nullptr;     // [H]: scalar decay when g is empty
  DecayKind decay = DecayKind::kNone;
  TensorView<const T> s0, z0;  // [N, H, Kf, V] (or [N, H, V, Kf]), [N, H, Kf]; may be empty
  TensorView<T> o;             // [B, T, H, V]
  TensorView<T> sT, zT;        // may be empty
  bool state_vk = false;
  FeatureMap fm = FeatureMap::kIdentity;
  T scale = 1;
  bool normalize = false, causal = true;
  T eps = T(1e-10);
  int64_t chunk = 64;
  std::vector<int64_t> cu;  // N+1 offsets (always filled by validate)
  int threads = 0;
  LinearAttentionForm form = LinearAttentionForm::kAuto;
  // Sizes, filled by validate.
  int64_t B = 0, T_ = 0, H = 0, Hqk = 0, K = 0, Kf = 0, V = 0, N = 0;

  int64_t qk_head(int64_t h) const { return h / (H / Hqk); }
  // Sequence n's batch row and first token.
  int64_t batch_of(int64_t n) const { return cu_varlen ? 0 : n; }
  int64_t start_of(int64_t n) const { return cu_varlen ? cu[n] : 0; }
  int64_t len_of(int64_t n) const { return cu_varlen ? cu[n + 1] - cu[n] : T_; }
  bool cu_varlen = false;
};

template <class V>
std::string shape_str(const V& v) {
  return v.empty() ? std::string("<none>") : v.shape().str();
}

// Checks every argument and fills the sizes. `state_names` spells the state dims for messages.
template <class T>
void validate(Problem<T>& p, const std::vector<int64_t>& cu_seqlens) {
  const char* op = p.op;
  check(p.q.ndim() == 4, op, ": q has shape ", shape_str(p.q), ", expected [B, T, H, K]");
  p.B = p.q.size(0);
  p.T_ = p.q.size(1);
  p.Hqk = p.q.size(2);
  p.K = p.q.size(3);
  check_shape(op, "k", p.k, {p.B, p.T_, p.Hqk, p.K}, "[B, T, H, K]");
  check(p.v.ndim() == 4, op, ": v has shape ", shape_str(p.v), ", expected [B, T, H, V]");
  p.H = p.v.size(2);
  p.V = p.v.size(3);
  check_shape(op, "v", p.v, {p.B, p.T_, -1, -1}, "[B, T, H, V]");
  check(p.Hqk > 0 && p.H % p.Hqk == 0, op, ": v has ", p.H, " heads, not a multiple of the ", p.Hqk,
        " heads of q/k");
  check(p.K > 0 && p.V > 0, op, ": K and V must be > 0 (q ", p.q.shape().str(), ", v ",
        p.v.shape().str(), ")");
  p.Kf = feature_dim(p.fm, p.K);
  check_inner_contiguous(op, "q", p.q);
  check_inner_contiguous(op, "k", p.k);
  check_inner_contiguous(op, "v", p.v);
  check_shape(op, "o", p.o, {p.B, p.T_, p.H, p.V}, "[B, T, H, V]");
  check_inner_contiguous(op, "o", p.o);
  if (!p.v_scale.empty()) check_shape(op, "dt", p.v_scale, {p.B, p.T_, p.H}, "[B, T, H]");
  if (p.decay == DecayKind::kScalar && p.gamma == nullptr) {
    check_shape(op, "g", p.g, {p.B, p.T_, p.H}, "[B, T, H]");
  } else if (p.decay == DecayKind::kChannel) {
    check_shape(op, "g", p.g, {p.B, p.T_, p.H, p.Kf}, "[B, T, H, K]");
    check_inner_contiguous(op, "g", p.g);
  }
  check(p.chunk > 0, op, ": chunk_size must be > 0 (got ", p.chunk, ")");
  check(p.causal || p.decay == DecayKind::kNone, op,
        ": the non-causal form is only defined without decay");
  check(std::isfinite(static_cast<double>(p.scale)), op, ": scale is not finite");
  // Varlen.
  if (cu_seqlens.empty()) {
    p.cu_varlen = false;
    p.N = p.B;
    p.cu = {0, p.T_};
  } else {
    check(p.B == 1, op, ": cu_seqlens needs B == 1 (q has shape ", p.q.shape().str(), ")");
    check(cu_seqlens.size() >= 2 && cu_seqlens.front() == 0 && cu_seqlens.back() == p.T_, op,
          ": cu_seqlens must start at 0 and end at T = ", p.T_, " (has ", cu_seqlens.size(),
          " entries)");
    for (std::size_t i = 1; i < cu_seqlens.size(); ++i)
      check(cu_seqlens[i] >= cu_seqlens[i - 1], op, ": cu_seqlens is not non-decreasing at ", i);
    p.cu_varlen = true;
    p.cu = cu_seqlens;
    p.N = static_cast<int64_t>(cu_seqlens.size()) - 1;
  }
  const bool vk = p.state_vk;
  const char* sn = vk ? "[N, H, V, K]" : "[N, H, K, V]";
  auto check_state = [&](const char* arg, const auto& s) {
    if (s.empty()) return;
    if (vk)
      check_shape(op, arg, s, {p.N, p.H, p.V, p.Kf}, sn);
    else
      check_shape(op, arg, s, {p.N, p.H, p.Kf, p.V}, sn);
    check_inner_contiguous(op, arg, s);
  };
  check_state("initial_state", p.s0);
  check_state("final_state", p.sT);
  if (!p.z0.empty() || !p.zT.empty())
    check(p.normalize, op, ": z state given but normalize is off");
  if (!p.z0.empty()) check_shape(op, "z0", p.z0, {p.N, p.H, p.Kf}, "[N, H, K]");
  if (!p.zT.empty()) check_shape(op, "z_final", p.zT, {p.N, p.H, p.Kf}, "[N, H, K]");
}

// Per-(sequence, head) raw pointers: row t of each stream at base + t * stride.
template <class T>
struct HeadIO {
  int64_t len = 0;
  const T *q = nullptr, *k = nullptr, *v = nullptr;
  int64_t q_st = 0, k_st = 0, v_st = 0;
  const T* vs = nullptr;  // v scale, stride vs_st
  int64_t vs_st = 0;
  const T* g = nullptr;  // scalar: g[t * g_st]; channel: row g + t * g_st
  int64_t g_st = 0;
  T gmul = T(1);   // scalar gate multiplier
  T gamma = T(0);  // constant scalar gate (when g is null)
  T* o = nullptr;
  int64_t o_st = 0;
  // States (null = absent). s: element (k, v) at s[k * s_k + v * s_v]; z contiguous-strided.
  const T* s0 = nullptr;
  T* sT = nullptr;
  int64_t s0_k = 0, s0_v = 0, sT_k = 0, sT_v = 0;
  const T* z0 = nullptr;
  T* zT = nullptr;
  int64_t z0_st = 0, zT_st = 0;
};

template <class T>
HeadIO<T> head_io(const Problem<T>& p, int64_t n, int64_t h) {
  HeadIO<T> io;
  const int64_t b = p.batch_of(n), t0 = p.start_of(n), hq = p.qk_head(h);
  io.len = p.len_of(n);
  if (io.len > 0) {
    io.q = p.q.ptr(b, t0, hq);
    io.k = p.k.ptr(b, t0, hq);
    io.v = p.v.ptr(b, t0, h);
    io.o = p.o.ptr(b, t0, h);
    if (!p.v_scale.empty()) io.vs = p.v_scale.ptr(b, t0, h);
    if (!p.g.empty()) io.g = p.g.ptr(b, t0, h);
  }
  io.q_st = p.q.stride(1);
  io.k_st = p.k.stride(1);
  io.v_st = p.v.stride(1);
  io.o_st = p.o.stride(1);
  if (!p.v_scale.empty()) io.vs_st = p.v_scale.stride(1);
  if (!p.g.empty()) io.g_st = p.g.stride(1);
  io.gmul = p.gate_mul ? p.gate_mul[h] : T(1);
  io.gamma = p.gamma ? p.gamma[h] : T(0);
  auto sk = [&](const auto& s) { return p.state_vk ? s.stride(3) : s.stride(2); };
  auto sv = [&](const auto& s) { return p.state_vk ? s.stride(2) : s.stride(3); };
  if (!p.s0.empty()) {
    io.s0 = p.s0.ptr(n, h);
    io.s0_k = sk(p.s0);
    io.s0_v = sv(p.s0);
  }
  if (!p.sT.empty()) {
    io.sT = p.sT.ptr(n, h);
    io.sT_k = sk(p.sT);
    io.sT_v = sv(p.sT);
  }
  if (!p.z0.empty()) {
    io.z0 = p.z0.ptr(n, h);
    io.z0_st = p.z0.stride(2);
  }
  if (!p.zT.empty()) {
    io.zT = p.zT.ptr(n, h);
    io.zT_st = p.zT.stride(2);
  }
  return io;
}

}  // namespace linattn_detail
}  // namespace effattn
