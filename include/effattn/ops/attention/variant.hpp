// Softmax attention: parameters, the mask policy and the logits variant shared by every form
// (naive, tiled prefill, split-K decode), plus argument validation.
//
//   q [B,Tq,Hq,K], k [B,Tk,Hkv,K], v [B,Tk,Hkv,V] -> o [B,Tq,Hq,V], lse [B,Tq,Hq] (optional)
//   s_ij  = scale * q_i . k_j                     (query head h reads kv head h / (Hq/Hkv))
//   s_ij  = c * tanh(s_ij / c)                    (soft-cap, if softcap > 0)
//   s_ij += bias[b,h,i,j]                         (additive bias, if given)
//   visible(i,j): p = i + off, off = Tk - Tq (bottom-right, default) or 0 (top-left);
//     causal: j <= p; window: p - window_left <= j <= p + window_right (-1 = unbounded);
//     dilation d: (p - j) % d == 0; boolean mask[b,h,i,j] (true = visible), if given
//   o_i   = sum_j softmax_j(s_ij) v_j;  with a sink logit z_h the denominator gains exp(z_h)
//   lse_i = log(sum_{visible j} exp(s_ij) [+ exp(z_h)]);  no visible key (and no sink): o = 0,
//           lse = -inf.
//
// Variants are a policy (MaskPolicy: which keys a query sees, as an interval per query plus an
// optional dilation test) and a logits hook (LogitsVariant: soft-cap, bias, boolean mask, sink)
// applied to one kernel, never a second copy of the kernel.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "effattn/core/bf16.hpp"
#include "effattn/core/error.hpp"
#include "effattn/core/tensor.hpp"
#include "effattn/simd/vec.hpp"

namespace effattn {

// Where query i sits relative to the keys: bottom-right p = i + Tk - Tq (FlashAttention,
// FlashInfer; for a KV cache the new queries are the last positions) or top-left p = i
// (PyTorch's is_causal).
enum class MaskAlign { kBottomRight, kTopLeft };

// Which code path runs: chosen by shape (kAuto), or forced (tests, benchmarks).
enum class AttentionPath { kAuto, kPrefill, kDecode };

struct AttentionParams {
  double scale = 0;  // <= 0: 1/sqrt(K)
  bool causal = false;
  MaskAlign align = MaskAlign::kBottomRight;
  int64_t window_left = -1;   // keys at most this far before p; -1 = unbounded
  int64_t window_right = -1;  // keys at most this far after p; -1 = unbounded
  int64_t dilation = 1;       // keep keys with (p - j) % dilation == 0
  double softcap = 0;         // > 0: logits become softcap * tanh(s / softcap)
  // Varlen: B = 1, q/k hold N packed sequences; sequence n is rows [cu[n], cu[n+1]).
  // Both empty (not varlen) or both of size N + 1.
  std::vector<int64_t> cu_seqlens_q, cu_seqlens_k;
  int num_threads = 0;  // 0 = global default
  AttentionPath path = AttentionPath::kAuto;
  int64_t decode_split = 0;  // keys per split-K partial in decode; 0 = auto (512)
};

// Optional inputs (empty views when not used).
template <class T>
struct AttentionExtras {
  TensorView<const T> sinks;    // [Hq]: a logit per head that joins the denominator only
  TensorView<const T> bias;     // [B|1, Hq|1, Tq, Tk], added after the soft-cap
  TensorView<const bool> mask;  // [B|1, Hq|1, Tq, Tk], true = visible
};

namespace attn_detail {

// Keeps a parameter out of template deduction (the caller names T; views convert).
template <class X>
struct NoDeduce {
  using type = X;
};
template <class X>
using nd_t = typename NoDeduce<X>::type;

inline constexpr int64_t kInf64 = std::numeric_limits<int64_t>::max() / 4;

// One (query sequence, key sequence) pair: rows q0..q0+tq of batch bq, keys k0..k0+tk of bk,
// and the aligned offset p = i + off of its mask.
struct Segment {
  int64_t bq = 0, q0 = 0, tq = 0;
  int64_t bk = 0, k0 = 0, tk = 0;
  int64_t off = 0;
};

enum class TileKind { kHidden, kPartial, kFull };

// Which keys a query sees. For query i the visible keys form the interval [lo(i), hi(i)), both
// non-decreasing in i, further thinned by the dilation test; so a block of queries sees a
// contiguous key range and a tile can be classified from its corners.
struct MaskPolicy {
  int64_t off = 0, tk = 0;
  bool causal = false;
  int64_t wl = -1, wr = -1, dil = 1;

  int64_t lo(int64_t i) const {
    const int64_t p = i + off;
    return wl >= 0 ? std::max<int64_t>(0, p - wl) : 0;
  }
  int64_t hi(int64_t i) const {
    const int64_t p = i + off;
    int64_t h = tk;
    if (causal) h = std::min(h, p + 1);
    if (wr >= 0) h = std::min(h, p + wr + 1);
    return std::max<int64_t>(h, 0);
  }
  bool dilated(int64_t i, int64_t j) const {
    if (dil <= 1) return true;
    const int64_t r = (i + off - j) % dil;
    return r == 0;
  }
  bool visible(int64_t i, int64_t j) const { return j >= lo(i) && j < hi(i) && dilated(i, j); }
  // The queries that see key j (0 <= j < tk) before the dilation test: i in [first, last].
  // From lo(i) <= j < hi(i): causal i >= j - off; window_right i >= j - off - wr;
  // window_left i <= j - off + wl.
  void queries_of(int64_t j, int64_t* first, int64_t* last) const {
    int64_t a = -kInf64, b = kInf64;
    if (causal) a = std::max(a, j - off);
    if (wr >= 0) a = std::max(a, j - off - wr);
    if (wl >= 0) b = j - off + wl;
    *first = a;
    *last = b;
  }
  // Queries [i0, i1) against keys [j0, j1).
  TileKind classify(int64_t i0, int64_t i1, int64_t j0, int64_t j1) const {
    // The smallest lo is lo(i0) and the largest hi is hi(i1 - 1): past them nobody looks.
    if (lo(i0) >= j1 || hi(i1 - 1) <= j0) return TileKind::kHidden;
    // Every query sees the whole tile when the largest lo and the smallest hi enclose it.
    if (lo(i1 - 1) <= j0 && hi(i0) >= j1 && dil <= 1) return TileKind::kFull;
    return TileKind::kPartial;  // (may still hide everything: the elementwise mask decides)
  }
};

// Logits hooks beyond the geometric mask: soft-cap, additive bias, boolean mask, sinks.
// Bias / mask are indexed [b, h, row, col] with the packed row / column for varlen; a size-1
// dim broadcasts (stride 0).
template <class T>
struct LogitsVariant {
  T softcap = 0;
  const T* bias = nullptr;
  const bool* mask = nullptr;
  int64_t bias_s[4] = {0, 0, 0, 0};
  int64_t mask_s[4] = {0, 0, 0, 0};
  const T* sinks = nullptr;
  int64_t sinks_s = 0;

  bool elementwise() const { return bias != nullptr || mask != nullptr; }
  T sink(int64_t h) const {
    return sinks ? sinks[h * sinks_s] : -std::numeric_limits<T>::infinity();
  }
  // Bias plus mask for one element: the value to add (-inf when the mask hides it).
  T extra(int64_t b, int64_t h, int64_t row, int64_t col) const {
    if (mask && !mask[b * mask_s[0] + h * mask_s[1] + row * mask_s[2] + col * mask_s[3]])
      return -std::numeric_limits<T>::infinity();
    return bias ? bias[b * bias_s[0] + h * bias_s[1] + row * bias_s[2] + col * bias_s[3]] : T(0);
  }
};

template <class T>
inline T softcap_scalar(T s, T c) {
  return c * std::tanh(s / c);
}

// Everything a kernel needs, resolved from the arguments once.
template <class T, class KV>
struct Problem {
  TensorView<const T> q;
  TensorView<const KV> k, v;
  TensorView<T> o, lse;
  int64_t Hq = 0, Hkv = 0, G = 1, K = 0, V = 0;
  T scale = 1;
  std::vector<Segment> segs;
  MaskPolicy mask_base;  // off / tk filled per segment
  LogitsVariant<T> var;
  int num_threads = 0;
  AttentionPath path = AttentionPath::kAuto;
  int64_t decode_split = 0;

  MaskPolicy mask(const Segment& s) const {
    MaskPolicy m = mask_base;
    m.off = s.off;
    m.tk = s.tk;
    return m;
  }
};

template <class B>
inline void broadcast_strides(const char* op, const char* arg, const TensorView<const B>& t,
                              int64_t B_, int64_t Hq, int64_t Tq, int64_t Tk, int64_t* s) {
  check(t.ndim() == 4, op, ": ", arg, " has shape ", t.shape().str(),
        ", expected [B|1, Hq|1, Tq, Tk] = [", B_, "|1, ", Hq, "|1, ", Tq, ", ", Tk, "]");
  const int64_t want[4] = {B_, Hq, Tq, Tk};
  for (int d = 0; d < 4; ++d) {
    const bool ok = t.size(d) == want[d] || (d < 2 && t.size(d) == 1);
    check(ok, op, ": ", arg, " has shape ", t.shape().str(), ", expected [B|1, Hq|1, Tq, Tk] = [",
          B_, "|1, ", Hq, "|1, ", Tq, ", ", Tk, "]");
    s[d] = t.size(d) == 1 ? 0 : t.stride(d);
  }
}

inline void check_cu(const char* op, const char* arg, const std::vector<int64_t>& cu,
                     int64_t total) {
  check(cu.size() >= 2, op, ": ", arg, " needs at least 2 offsets, got ", cu.size());
  check(cu.front() == 0, op, ": ", arg, "[0] must be 0, got ", cu.front());
  for (std::size_t i = 1; i < cu.size(); ++i)
    check(cu[i] >= cu[i - 1], op, ": ", arg, " must be non-decreasing (", arg, "[", i,
          "] = ", cu[i], " < ", cu[i - 1], ")");
  check(cu.back() == total, op, ": ", arg, " ends at ", cu.back(), " but the packed tensor has ",
        total, " rows");
}

// Validates every argument and resolves the problem. Throws effattn::Error naming the argument.
template <class T, class KV>
Problem<T, KV> make_problem(const char* op, TensorView<const T> q, TensorView<const KV> k,
                            TensorView<const KV> v, TensorView<T> o, TensorView<T> lse,
                            const AttentionParams& p, const AttentionExtras<T>& ex) {
  Problem<T, KV> P;
  check_shape(op, "q", q, {-1, -1, -1, -1}, "[B, Tq, Hq, K]");
  const int64_t B = q.size(0), Tq = q.size(1), Hq = q.size(2), K = q.size(3);
  check_shape(op, "k", k, {B, -1, -1, K}, "[B, Tk, Hkv, K]");
  const int64_t Tk = k.size(1), Hkv = k.size(2);
  check_shape(op, "v", v, {B, Tk, Hkv, -1}, "[B, Tk, Hkv, V]");
  const int64_t V = v.size(3);
  check_shape(op, "o", o, {B, Tq, Hq, V}, "[B, Tq, Hq, V]");
  check(Hkv > 0 && Hq % Hkv == 0, op, ": Hq (", Hq, ", q ", q.shape().str(),
        ") must be a multiple of Hkv (", Hkv, ", k ", k.shape().str(), ")");
  check(K > 0, op, ": head size K of q ", q.shape().str(), " must be positive");
  for (auto* a : {&q}) check_inner_contiguous(op, "q", *a);
  check_inner_contiguous(op, "k", k);
  check_inner_contiguous(op, "v", v);
  check_inner_contiguous(op, "o", o);
  if (!lse.empty()) check_shape(op, "lse", lse, {B, Tq, Hq}, "[B, Tq, Hq]");
  check(p.window_left >= -1, op, ": window_left must be >= -1 (-1 = unbounded), got ",
        p.window_left);
  check(p.window_right >= -1, op, ": window_right must be >= -1 (-1 = unbounded), got ",
        p.window_right);
  check(p.dilation >= 1, op, ": dilation must be >= 1, got ", p.dilation);
  check(p.softcap >= 0 && std::isfinite(p.softcap), op, ": softcap must be >= 0, got ", p.softcap);
  check(std::isfinite(p.scale), op, ": scale must be finite, got ", p.scale);
  check(p.decode_split >= 0, op, ": decode_split must be >= 0, got ", p.decode_split);

  P.q = q, P.k = k, P.v = v, P.o = o, P.lse = lse;
  P.Hq = Hq, P.Hkv = Hkv, P.G = Hq / Hkv, P.K = K, P.V = V;
  P.scale = static_cast<T>(p.scale > 0 ? p.scale : 1.0 / std::sqrt(static_cast<double>(K)));
  P.num_threads = p.num_threads;
  P.path = p.path;
  P.decode_split = p.decode_split;
  P.mask_base.causal = p.causal;
  P.mask_base.wl = p.window_left;
  P.mask_base.wr = p.window_right;
  P.mask_base.dil = p.dilation;
  const bool top_left = p.align == MaskAlign::kTopLeft;

  const bool varlen = !p.cu_seqlens_q.empty() || !p.cu_seqlens_k.empty();
  if (varlen) {
    check(B == 1, op, ": varlen (cu_seqlens) needs B = 1, q has shape ", q.shape().str());
    check_cu(op, "cu_seqlens_q", p.cu_seqlens_q, Tq);
    check_cu(op, "cu_seqlens_k", p.cu_seqlens_k, Tk);
    check(p.cu_seqlens_q.size() == p.cu_seqlens_k.size(), op, ": cu_seqlens_q has ",
          p.cu_seqlens_q.size(), " offsets but cu_seqlens_k has ", p.cu_seqlens_k.size());
    for (std::size_t n = 0; n + 1 < p.cu_seqlens_q.size(); ++n) {
      Segment s;
      s.bq = s.bk = 0;
      s.q0 = p.cu_seqlens_q[n], s.tq = p.cu_seqlens_q[n + 1] - s.q0;
      s.k0 = p.cu_seqlens_k[n], s.tk = p.cu_seqlens_k[n + 1] - s.k0;
      s.off = top_left ? 0 : s.tk - s.tq;
      P.segs.push_back(s);
    }
  } else {
    for (int64_t b = 0; b < B; ++b) {
      Segment s;
      s.bq = s.bk = b;
      s.tq = Tq, s.tk = Tk;
      s.off = top_left ? 0 : Tk - Tq;
      P.segs.push_back(s);
    }
  }

  P.var.softcap = static_cast<T>(p.softcap);
  if (!ex.sinks.empty()) {
    check_shape(op, "sinks", ex.sinks, {Hq}, "[Hq]");
    P.var.sinks = ex.sinks.data();
    P.var.sinks_s = ex.sinks.stride(0);
  }
  if (!ex.bias.empty()) {
    broadcast_strides(op, "bias", ex.bias, B, Hq, Tq, Tk, P.var.bias_s);
    P.var.bias = ex.bias.data();
  }
  if (!ex.mask.empty()) {
    broadcast_strides(op, "mask", ex.mask, B, Hq, Tq, Tk, P.var.mask_s);
    P.var.mask = ex.mask.data();
  }
  return P;
}

// Converts a storage row (float, double or bf16) to the compute type.
template <class T, class S>
inline void load_row(const S* src, T* dst, int64_t n) {
  simd::convert(src, dst, n);
}

// Hint: bring the n bytes at p towards the caches (no-op where unsupported). On x86 a volatile
// asm: GCC treats a loop of __builtin_prefetch as free of side effects and deletes it.
inline void prefetch_bytes(const void* p, int64_t n) {
  const char* c = static_cast<const char*>(p);
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  for (int64_t i = 0; i < n; i += 64) __asm__ volatile("prefetcht0 %0" : : "m"(c[i]));
#elif defined(__GNUC__)
  for (int64_t i = 0; i < n; i += 64) __builtin_prefetch(c + i, 0, 3);
#else
  (void)c;
  (void)n;
#endif
}

}  // namespace attn_detail
}  // namespace effattn
