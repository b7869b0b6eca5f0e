// Delta-rule family (DeltaNet, Gated DeltaNet, Kimi Delta Attention): options, argument
// validation and the per-token input reader shared by the naive, recurrent and chunk forms.
//
// State S [HV, K, V] per sequence, beta [B, T, HV]; for every token t of head hv:
//   S <- decay_t(S)                     none | exp(g_t) S (g [B,T,HV]) | diag(exp(g_t)) S (g
//   [B,T,HV,K]) u  = beta_t (v_t - S^T k_t)         [V] S <- S + k_t u^T                    [K, V]
//   o_t = scale S^T q_t                 [V]  (inclusive: reads the state after token t)
// q, k [B, T, H, K] are shared by the HV / H value heads hv with hv / (HV / H) == h.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "effattn/core/error.hpp"
#include "effattn/core/tensor.hpp"
#include "effattn/simd/simd.hpp"

namespace effattn {

// How S decays before each token: DeltaNet (none), Gated DeltaNet (scalar g [B,T,HV]), KDA
// (per key channel, g [B,T,HV,K]). Inferred from the rank of g (empty view = none).
enum class DeltaRuleGate { kNone, kScalar, kChannel };

// Which form runs: kAuto picks recurrent for short sequences (decode) and chunk for prefill.
enum class DeltaRuleAlgo { kAuto, kNaive, kRecurrent, kChunk };

template <class T>
struct DeltaRuleParams {
  T scale = T(0);              // <= 0: K^-1/2
  bool use_qk_l2norm = false;  // q, k <- x / sqrt(sum x^2 + l2norm_eps)  (fla's in-kernel form)
  T l2norm_eps = T(1e-6);
  bool beta_is_logit = false;  // beta holds b and the op uses sigmoid(b)
  // Gate computed in the op (Qwen3-Next / Kimi Linear): when A_log is given, g holds the raw
  // projection x and the op uses g = -exp(A_log[hv]) * softplus(x + dt_bias).
  TensorView<const T> A_log;    // [HV]
  TensorView<const T> dt_bias;  // [HV] (scalar gate) or [HV, K] (per-channel gate); optional
  // Varlen: B == 1, N + 1 offsets into T; states are then [N, HV, K, V].
  std::vector<int64_t> cu_seqlens;
  // State snapshots for speculative-decoding rollback: with snapshot_every = n > 0, the state
  // after token j*n of each sequence (j = 1, 2, ...) is written to snapshots[seq, j-1]; shape
  // [N, S, HV, K, V] with S = max over sequences of floor(len / n). Slots past a shorter
  // sequence's last snapshot are left untouched.
  int64_t snapshot_every = 0;
  TensorView<T> snapshots;
  // Chunk form: tokens per chunk (the KDA form may cut chunks shorter). 16: fastest measured
  // (GDN, K = V = 128: the intra-chunk products shrink with C, the state products do not).
  int64_t chunk_size = 16;
  DeltaRuleAlgo algo = DeltaRuleAlgo::kAuto;
  int num_threads = 0;  // 0 = global default
};

namespace delta_rule_detail {

// Sizes and the sequence table of one call, after validation.
struct Problem {
  int64_t B = 0, T = 0, H = 0, HV = 0, K = 0, V = 0;
  int64_t N = 0;        // sequences (B, or cu_seqlens.size() - 1)
  int64_t groups = 1;   // HV / H
  int64_t max_len = 0;  // longest sequence
  DeltaRuleGate gate = DeltaRuleGate::kNone;
  bool varlen = false;
  std::vector<int64_t> bos;  // [N + 1] token offsets (0, T for non-varlen)
  // Sequence n reads batch row batch(n), tokens [begin(n), end(n)).
  int64_t batch(int64_t n) const { return varlen ? 0 : n; }
  int64_t begin(int64_t n) const { return varlen ? bos[n] : 0; }
  int64_t end(int64_t n) const { return varlen ? bos[n + 1] : T; }
  int64_t num_snapshots = 0;
};

inline std::string seq_dims(bool varlen) { return varlen ? "[N, HV, K, V]" : "[B, HV, K, V]"; }

// Checks every argument; throws effattn::Error naming the argument, its shape and what was
// expected. Nothing is read before this returns.
template <class T>
Problem validate(const char* op, const TensorView<const T>& q, const TensorView<const T>& k,
                 const TensorView<const T>& v, const TensorView<const T>& beta,
                 const TensorView<const T>& g, const TensorView<T>& o,
                 const TensorView<const T>& initial_state, const TensorView<T>& final_state,
                 const DeltaRuleParams<T>& p) {
  Problem pr;
  check(!q.empty() && q.ndim() == 4, op, ": q has shape ",
        q.empty() ? std::string("<none>") : q.shape().str(), ", expected [B, T, H, K]");
  pr.B = q.size(0);
  pr.T = q.size(1);
  pr.H = q.size(2);
  pr.K = q.size(3);
  check(pr.H > 0 && pr.K > 0, op, ": q has shape ", q.shape().str(), ", expected H > 0, K > 0");
  check_shape(op, "k", k, {pr.B, pr.T, pr.H, pr.K}, "[B, T, H, K]");
  check(!v.empty() && v.ndim() == 4, op, ": v has shape ",
        v.empty() ? std::string("<none>") : v.shape().str(), ", expected [B, T, HV, V]");
  pr.HV = v.size(2);
  pr.V = v.size(3);
  check_shape(op, "v", v, {pr.B, pr.T, -1, -1}, "[B, T, HV, V]");
  check(pr.HV > 0 && pr.V > 0, op, ": v has shape ", v.shape().str(), ", expected HV > 0, V > 0");
  check(pr.HV % pr.H == 0, op, ": v has HV = ", pr.HV,
        " value heads, not a multiple of q/k's H = ", pr.H);
  pr.groups = pr.HV / pr.H;
  check_shape(op, "beta", beta, {pr.B, pr.T, pr.HV}, "[B, T, HV]");
  check_shape(op, "o", o, {pr.B, pr.T, pr.HV, pr.V}, "[B, T, HV, V]");
  check_inner_contiguous(op, "q", q);
  check_inner_contiguous(op, "k", k);
  check_inner_contiguous(op, "v", v);
  check_inner_contiguous(op, "o", o);
  if (g.empty()) {
    pr.gate = DeltaRuleGate::kNone;
  } else if (g.ndim() == 3) {
    pr.gate = DeltaRuleGate::kScalar;
    check_shape(op, "g", g, {pr.B, pr.T, pr.HV}, "[B, T, HV]");
  } else {
    pr.gate = DeltaRuleGate::kChannel;
    check_shape(op, "g", g, {pr.B, pr.T, pr.HV, pr.K}, "[B, T, HV, K] (or [B, T, HV])");
    check_inner_contiguous(op, "g", g);
  }
  if (!p.A_log.empty()) {
    check(pr.gate != DeltaRuleGate::kNone, op,
          ": A_log is given but g is empty (A_log computes the gate from the raw g)");
    check_shape(op, "A_log", p.A_log, {pr.HV}, "[HV]");
  }
  if (!p.dt_bias.empty()) {
    check(!p.A_log.empty(), op, ": dt_bias is given without A_log");
    if (pr.gate == DeltaRuleGate::kScalar) {
      check_shape(op, "dt_bias", p.dt_bias, {pr.HV}, "[HV]");
    } else {
      check_shape(op, "dt_bias", p.dt_bias, {pr.HV, pr.K}, "[HV, K]");
    }
  }
  check(std::isfinite(static_cast<double>(p.scale)), op, ": scale is not finite (", p.scale, ")");
  check(p.chunk_size > 0, op, ": chunk_size must be > 0 (got ", p.chunk_size, ")");
  check(p.snapshot_every >= 0, op, ": snapshot_every must be >= 0 (got ", p.snapshot_every, ")");
  check(p.l2norm_eps >= T(0), op, ": l2norm_eps must be >= 0 (got ", p.l2norm_eps, ")");

  pr.varlen = !p.cu_seqlens.empty();
  if (pr.varlen) {
    const auto& cu = p.cu_seqlens;
    check(pr.B == 1, op, ": cu_seqlens needs B == 1 (packed sequences), q has shape ",
          q.shape().str());
    check(cu.size() >= 2, op, ": cu_seqlens needs N + 1 >= 2 offsets, got ", cu.size());
    check(cu.front() == 0 && cu.back() == pr.T, op,
          ": cu_seqlens must start at 0 and end at T = ", pr.T, " (got ", cu.front(), " .. ",
          cu.back(), ")");
    for (std::size_t i = 1; i < cu.size(); ++i) {
      check(cu[i] >= cu[i - 1], op, ": cu_seqlens must be non-decreasing (cu_seqlens[", i,
            "] = ", cu[i], " < ", cu[i - 1], ")");
    }
    pr.N = static_cast<int64_t>(cu.size()) - 1;
    pr.bos = cu;
  } else {
    pr.N = pr.B;
    pr.bos = {0, pr.T};
  }
  for (int64_t n = 0; n < pr.N; ++n) pr.max_len = std::max(pr.max_len, pr.end(n) - pr.begin(n));

  const std::string sd = seq_dims(pr.varlen);
  if (!initial_state.empty()) {
    check_shape(op, "initial_state", initial_state, {pr.N, pr.HV, pr.K, pr.V}, sd.c_str());
    check_inner_contiguous(op, "initial_state", initial_state);
  }
  if (!final_state.empty()) {
    check_shape(op, "final_state", final_state, {pr.N, pr.HV, pr.K, pr.V}, sd.c_str());
    check_inner_contiguous(op, "final_state", final_state);
  }
  if (p.snapshot_every > 0) {
    pr.num_snapshots = pr.max_len / p.snapshot_every;
    check_shape(op, "snapshots", p.snapshots, {pr.N, pr.num_snapshots, pr.HV, pr.K, pr.V},
                pr.varlen ? "[N, max_len / snapshot_every, HV, K, V]"
                          : "[B, T / snapshot_every, HV, K, V]");
    check_inner_contiguous(op, "snapshots", p.snapshots);
  } else {
    check(p.snapshots.empty(), op, ": snapshots is given but snapshot_every is 0");
  }
  return pr;
}

// Reads one token's inputs in the form the recurrences consume: q, k rows (L2-normalised if
// asked), beta (sigmoid if logits), the log-gate (computed from the raw input if A_log).
template <class T>
class TokenReader {
 public:
  TokenReader(const TensorView<const T>& q, const TensorView<const T>& k,
              const TensorView<const T>& v, const TensorView<const T>& beta,
              const TensorView<const T>& g, const Problem& pr, const DeltaRuleParams<T>& p)
      : q_(q), k_(k), v_(v), beta_(beta), g_(g), pr_(pr), p_(p) {}

  int64_t qk_head(int64_t hv) const { return hv / pr_.groups; }

  // dst [K] = q[b, t, h(hv)] (normalised if use_qk_l2norm), times `mul`.
  // Kept out of line: inlined into recurrent_impl (as GCC 12 chose once the chunk form stopped
  // calling it as often) the recurrent GDN prefill measured ~10% slower, 41 -> 45-47 ms.
  [[gnu::noinline]] void q_row(int64_t b, int64_t t, int64_t hv, T* dst, T mul = T(1)) const {
    load_row(q_.ptr(b, t, qk_head(hv)), dst, mul);
  }
  // Out of line too (for the same reason): the chunk form reads its rows itself.
  [[gnu::noinline]] void k_row(int64_t b, int64_t t, int64_t hv, T* dst, T mul = T(1)) const {
    load_row(k_.ptr(b, t, qk_head(hv)), dst, mul);
  }
  const T* v_row(int64_t b, int64_t t, int64_t hv) const { return v_.ptr(b, t, hv); }

  // Asks for token t's rows ahead of use: one head's rows are H*K apart in time, so the
  // hardware prefetcher (which stops at page boundaries) misses them.
  void prefetch(int64_t b, int64_t t, int64_t hv) const {
#if defined(__GNUC__)
    const int64_t h = qk_head(hv);
    auto rows = [](const T* x, int64_t n) {
      for (int64_t i = 0; i < n; i += int64_t(64 / sizeof(T))) __builtin_prefetch(x + i, 0, 2);
    };
    rows(q_.ptr(b, t, h), pr_.K);
    rows(k_.ptr(b, t, h), pr_.K);
    rows(v_.ptr(b, t, hv), pr_.V);
    if (pr_.gate == DeltaRuleGate::kChannel) rows(g_.ptr(b, t, hv), pr_.K);
#else
    (void)b, (void)t, (void)hv;
#endif
  }

  // Brings token t's rows into L2 ahead of the chunk form's gather (a prefetch instruction per
  // cache line; asm volatile on x86 so the compiler keeps every one). One head's rows sit on a
  // new 4 KB page every token. Chunk form, GDN, H = 16, K = V = 128, T = 2048, 1 thread,
  // issued for the next chunk during the state pass: nothing 26.8 ms, a demand load per line
  // (session 2's touch) 24.1, prefetcht0 23.0-23.7, prefetcht1 23.2-23.5, prefetcht2 23.2-23.3.
  void prefetch_l2(int64_t b, int64_t t, int64_t hv) const {
    const int64_t h = qk_head(hv);
    auto rows = [](const T* x, int64_t n) {
      const char* p = reinterpret_cast<const char*>(x);
      for (int64_t i = 0; i < n * int64_t(sizeof(T)); i += 64) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
        __asm__ volatile("prefetcht1 %0" : : "m"(p[i]));
#elif defined(__GNUC__)
        __builtin_prefetch(p + i, 0, 2);
#else
        (void)p;
#endif
      }
    };
    rows(q_.ptr(b, t, h), pr_.K);
    rows(k_.ptr(b, t, h), pr_.K);
    rows(v_.ptr(b, t, hv), pr_.V);
    if (pr_.gate == DeltaRuleGate::kChannel) rows(g_.ptr(b, t, hv), pr_.K);
  }

  T beta(int64_t b, int64_t t, int64_t hv) const {
    const T x = beta_(b, t, hv);
    return p_.beta_is_logit ? simd::sigmoid_scalar(x) : x;
  }
  // Scalar log-gate g[b, t, hv] (kScalar only).
  T gate(int64_t b, int64_t t, int64_t hv) const {
    const T x = g_(b, t, hv);
    if (p_.A_log.empty()) return x;
    const T bias = p_.dt_bias.empty() ? T(0) : p_.dt_bias(hv);
    return -std::exp(p_.A_log(hv)) * simd::softplus_scalar(x + bias);
  }
  // Per-channel log-gate row dst [K] (kChannel only).
  void gate_row(int64_t b, int64_t t, int64_t hv, T* dst) const {
    const T* x = g_.ptr(b, t, hv);
    if (p_.A_log.empty()) {
      std::copy(x, x + pr_.K, dst);
      return;
    }
    const T a = -std::exp(p_.A_log(hv));
    for (int64_t c = 0; c < pr_.K; ++c) {
      const T bias = p_.dt_bias.empty() ? T(0) : p_.dt_bias(hv, c);
      dst[c] = x[c] + bias;
    }
    simd::softplus(dst, dst, pr_.K);
    simd::scale(a, dst, pr_.K);
  }

 private:
  void load_row(const T* src, T* dst, T mul) const {
    const int64_t K = pr_.K;
    if (p_.use_qk_l2norm) mul /= std::sqrt(simd::dot(src, src, K) + p_.l2norm_eps);
    for (int64_t c = 0; c < K; ++c) dst[c] = mul * src[c];
  }

  const TensorView<const T>& q_;
  const TensorView<const T>& k_;
  const TensorView<const T>& v_;
  const TensorView<const T>& beta_;
  const TensorView<const T>& g_;
  const Problem& pr_;
  const DeltaRuleParams<T>& p_;
};

template <class T>
T default_scale(const DeltaRuleParams<T>& p, int64_t K) {
  return p.scale > T(0) ? p.scale : T(1) / std::sqrt(static_cast<T>(K));
}

// Copies a [K, V] state (inner-contiguous rows, row stride `ld_src`) to another.
template <class T>
void copy_state(const T* src, int64_t ld_src, T* dst, int64_t ld_dst, int64_t K, int64_t V) {
  if (src == dst && ld_src == ld_dst) return;
  for (int64_t r = 0; r < K; ++r)
    std::copy(src + r * ld_src, src + r * ld_src + V, dst + r * ld_dst);
}

}  // namespace delta_rule_detail
}  // namespace effattn
