// Softmax attention, tiled prefill (flash attention): one work item per (sequence, query head,
// query tile of kQTile rows); it streams the key tiles its mask can reach, keeps the running
// max m, sum l and output accumulator of its rows, and never materialises more than one
// [kKTile x kQTile] score tile. Memory beyond inputs/outputs: O(kQTile * (K + V + kKTile)) per
// thread. Tiles the mask hides entirely are skipped, so a window W costs O(Tq * W).
//
// The tile works "query-in-lanes": the query tile is packed transposed, Qt [K, kQTile] (scaled),
// so that
//   S^T [kKTile, kQTile] = K_tile [kKTile, K] . Qt             (keys broadcast, queries in lanes)
//   O^T [V, kQTile]     += V_tile^T [V, kKTile] . P^T           (values broadcast)
// are both one register-blocked micro-kernel C[R, CV lanes-vectors] += A(r, k) B[k, :] that
// reads K and V rows in place (no transposition of the keys), and the online softmax runs
// down the columns of S^T with plain vertical max / add, no horizontal reductions.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "effattn/core/parallel.hpp"
#include "effattn/ops/attention/variant.hpp"
#include "effattn/simd/simd.hpp"

namespace effattn {
namespace attn_detail {

inline constexpr int64_t kQTile = 64;  // query rows per work item (a multiple of any lane count)
// Keys per score tile: 32 measured 2-4% faster than 64 (S [32, 64], K and V tiles of 16 KB for
// D = 128 stay in L1 beside Qt) and than 16 / 48 / 128 (T = 4096, Hkv = 2 and 8, 1 and 2 threads).
inline constexpr int64_t kKTile = 32;

// A "vector" of the compute type: xsimd's batch, or the scalar itself without SIMD.
#if EFFATTN_HAS_SIMD
template <class T>
using VecT = simd::Vec<T>;
template <class T>
inline constexpr int64_t kL = simd::kLanes<T>;
template <class T>
inline VecT<T> vld(const T* p) {
  return simd::load(p);
}
template <class T>
inline void vst(T* p, const VecT<T>& x) {
  simd::store(p, x);
}
template <class T>
inline VecT<T> vfma(const VecT<T>& a, const VecT<T>& b, const VecT<T>& c) {
  return xsimd::fma(a, b, c);
}
template <class T>
inline VecT<T> vmax(const VecT<T>& a, const VecT<T>& b) {
  return xsimd::max(a, b);
}
template <class T>
inline VecT<T> vexp(const VecT<T>& x) {
  return simd::exp(x);
}
// c * tanh(s / c) = c * (1 - 2 / (exp(2 s / c) + 1))  (saturates cleanly at +-inf)
template <class T>
inline VecT<T> vsoftcap(const VecT<T>& s, T c) {
  if constexpr (std::is_same_v<T, float>) {
    const VecT<T> e = simd::exp(s * VecT<T>(T(2) / c));
    return VecT<T>(c) - VecT<T>(T(2) * c) / (e + VecT<T>(T(1)));
  } else {
    alignas(64) T buf[VecT<T>::size];
    s.store_aligned(buf);
    for (auto& x : buf) x = softcap_scalar(x, c);
    return VecT<T>::load_aligned(buf);
  }
}
template <class T>
inline VecT<T> vsel_ninf_to_zero(const VecT<T>& m) {
  return xsimd::select(m == VecT<T>(-std::numeric_limits<T>::infinity()), VecT<T>(T(0)), m);
}
#else
template <class T>
using VecT = T;
template <class T>
inline constexpr int64_t kL = 1;
template <class T>
inline T vld(const T* p) {
  return *p;
}
template <class T>
inline void vst(T* p, T x) {
  *p = x;
}
template <class T>
inline T vfma(T a, T b, T c) {
  return a * b + c;
}
template <class T>
inline T vmax(T a, T b) {
  return a > b ? a : b;
}
template <class T>
inline T vexp(T x) {
  return simd::exp_scalar(x);
}
template <class T>
inline T vsoftcap(T s, T c) {
  return softcap_scalar(s, c);
}
template <class T>
inline T vsel_ninf_to_zero(T m) {
  return m == -std::numeric_limits<T>::infinity() ? T(0) : m;
}
#endif

// Online softmax down the columns of a score block S [bk, ld] (one query per column; nvec
// vectors of columns), shared by the prefill tile and the decode block:
//   m' = max(m, max_j S[j]);  alpha = exp(m - m');  S[j] = exp(S[j] - m');  l = alpha l + sum_j
//   S[j]
// A column that has seen no key keeps m = -inf and gets exp(-inf - 0) = 0.
template <class T>
inline void online_softmax_columns(T* S, int64_t ld, int64_t bk, int64_t nvec, T* m, T* l,
                                   T* alpha) {
  constexpr int64_t L = kL<T>;
  for (int64_t v0 = 0; v0 < nvec; ++v0) {
    const int64_t c = v0 * L;
    VecT<T> mx = vld(m + c);
    for (int64_t j = 0; j < bk; ++j) mx = vmax(mx, vld(S + j * ld + c));
    const VecT<T> mu = vsel_ninf_to_zero(mx);
    const VecT<T> a = vexp(vld(m + c) - mu);
    VecT<T> sum(T(0));
    for (int64_t j = 0; j < bk; ++j) {
      const VecT<T> p = vexp(vld(S + j * ld + c) - mu);
      vst(S + j * ld + c, p);
      sum = sum + p;
    }
    vst(l + c, vfma(a, vld(l + c), sum));
    vst(m + c, mx);
    vst(alpha + c, a);
  }
}

// Loads L elements stored as S (T, or bf16 widened to float) as a vector of T.
template <class T, class S>
inline VecT<T> vld_as(const S* p) {
#if EFFATTN_HAS_SIMD
  return simd::load_as<T>(p);
#else
  T x;
  simd::convert(p, &x, 1);
  return x;
#endif
}

// One element stored as S, as T.
template <class T, class S>
inline T to_t(const S& x) {
  if constexpr (std::is_same_v<S, bf16>)
    return static_cast<T>(bf16::to_float(x.bits));
  else
    return static_cast<T>(x);
}

// Keeps a loaded vector in a register: without it GCC folds the load into every FMA that uses
// the vector (a memory operand each time), doubling the loads of a micro-kernel and making it
// load-port bound instead of FMA bound.
template <class V>
inline void pin(V& x) {
#if EFFATTN_HAS_SIMD && defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __asm__("" : "+v"(x.data));
#else
  (void)x;
#endif
}

// C[r, c*L .. c*L+L) = (acc ? C * cs : 0) + sum_k A[r*ars + k*aks] * B[k*ldb + c*L ..]
// for r < R, c < CV. cs (per column, may be null) rescales the old C: the online-softmax
// correction exp(m_old - m_new) folded into the accumulator load.
template <class T, int R, int CV, class TB = T>
inline void ukernel(int64_t kd, const T* A, int64_t ars, int64_t aks, const TB* B, int64_t ldb,
                    T* C, int64_t ldc, bool acc, const T* cs) {
  constexpr int64_t L = kL<T>;
  VecT<T> c[R][CV];
  if (acc) {
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < CV; ++j) {
        c[r][j] = vld(C + r * ldc + j * L);
        if (cs) c[r][j] = c[r][j] * vld(cs + j * L);
      }
  } else {
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < CV; ++j) c[r][j] = VecT<T>(T(0));
  }
  for (int64_t k = 0; k < kd; ++k) {
    VecT<T> b[CV];
    for (int j = 0; j < CV; ++j) {
      b[j] = vld_as<T>(B + k * ldb + j * L);
      pin(b[j]);
    }
    for (int r = 0; r < R; ++r) {
      const VecT<T> a(A[r * ars + k * aks]);
      for (int j = 0; j < CV; ++j) c[r][j] = vfma(a, b[j], c[r][j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < CV; ++j) vst(C + r * ldc + j * L, c[r][j]);
}

// C[rows, ncols] (ld ldc) (+)= A(rows, kd) B[kd, ncols], ncols a multiple of L: the
// micro-kernel over blocks of kR rows and kCV vectors, remainders by smaller instances.
template <class T, class TB = T>
inline void tile_gemm(int64_t rows, int64_t nvec, int64_t kd, const T* A, int64_t ars, int64_t aks,
                      const TB* B, int64_t ldb, T* C, int64_t ldc, bool acc, const T* cs) {
  constexpr int64_t L = kL<T>;
  constexpr int kR = 4, kCV = 4;  // 16 accumulators + 4 B vectors (6 x 4 measured slower)
  for (int64_t c0 = 0; c0 < nvec; c0 += kCV) {
    const int64_t cv = std::min<int64_t>(kCV, nvec - c0);
    const TB* Bc = B + c0 * L;
    T* Cc = C + c0 * L;
    const T* csc = cs ? cs + c0 * L : nullptr;
    int64_t r = 0;
    auto run = [&](auto R_, auto CV_) {
      constexpr int R = decltype(R_)::value, CVn = decltype(CV_)::value;
      ukernel<T, R, CVn, TB>(kd, A + r * ars, ars, aks, Bc, ldb, Cc + r * ldc, ldc, acc, csc);
    };
    using I1 = std::integral_constant<int, 1>;
    using I2 = std::integral_constant<int, 2>;
    using I3 = std::integral_constant<int, 3>;
    using I4 = std::integral_constant<int, 4>;
    auto by_cv = [&](auto R_) {
      switch (cv) {
        case 4:
          run(R_, I4{});
          break;
        case 3:
          run(R_, I3{});
          break;
        case 2:
          run(R_, I2{});
          break;
        default:
          run(R_, I1{});
          break;
      }
    };
    for (; r + kR <= rows; r += kR) by_cv(I4{});
    switch (rows - r) {
      case 3:
        by_cv(I3{});
        break;
      case 2:
        by_cv(I2{});
        break;
      case 1:
        by_cv(I1{});
        break;
      default:
        break;
    }
  }
}

// One query tile of head h. kh / vh: key / value rows of this segment's kv head (row j at
// kh + j * ks), already in the compute type.
template <class T, class KV>
void prefill_tile(const Problem<T, KV>& P, const Segment& sg, int64_t h, int64_t i0, const T* kh,
                  int64_t ks, const T* vh, int64_t vs, std::vector<T>& buf) {
  constexpr int64_t L = kL<T>;
  constexpr int64_t BQ = kQTile, BK = kKTile;
  const T ninf = -std::numeric_limits<T>::infinity();
  const int64_t K = P.K, V = P.V;
  const int64_t bq = std::min(BQ, sg.tq - i0), i1 = i0 + bq;
  const int64_t nvec = (bq + L - 1) / L;
  const MaskPolicy mask = P.mask(sg);

  // Buffers: Qt [K, BQ], S [BK, BQ], Ot [V, BQ], m, l, alpha [BQ].
  const std::size_t need = static_cast<std::size_t>(BQ * (K + BK + V + 3));
  if (buf.size() < need) buf.resize(need);
  T* Qt = buf.data();
  T* S = Qt + BQ * K;
  T* Ot = S + BQ * BK;
  T* m = Ot + BQ * V;
  T* l = m + BQ;
  T* alpha = l + BQ;

  // Qt[d, i] = scale * q[i, d]; lanes past the tile stay 0 (finite scores, never written out).
  for (int64_t d = 0; d < K; ++d)
    for (int64_t i = bq; i < nvec * L; ++i) Qt[d * BQ + i] = T(0);
  for (int64_t i = 0; i < bq; ++i) {
    const T* qi = P.q.ptr(sg.bq, sg.q0 + i0 + i, h);
    for (int64_t d = 0; d < K; ++d) Qt[d * BQ + i] = P.scale * qi[d];
  }
  std::fill(Ot, Ot + BQ * V, T(0));
  std::fill(m, m + BQ, ninf);
  std::fill(l, l + BQ, T(0));

  const int64_t jlo = mask.lo(i0), jhi = std::min(mask.hi(i1 - 1), sg.tk);
  bool first = true;
  for (int64_t j0 = jlo; j0 < jhi; j0 += BK) {
    const int64_t j1 = std::min(j0 + BK, jhi), bk = j1 - j0;
    const TileKind kind = mask.classify(i0, i1, j0, j1);
    if (kind == TileKind::kHidden) continue;
    const T* Kt = kh + j0 * ks;
    const T* Vt = vh + j0 * vs;

    // S^T[j, i] = sum_d K[j, d] Qt[d, i]
    tile_gemm<T>(bk, nvec, K, Kt, ks, 1, Qt, BQ, S, BQ, false, nullptr);

    // Variant hooks on the logits, then the geometric mask of partial tiles.
    if (P.var.softcap > 0) {
      const T c = P.var.softcap;
      for (int64_t j = 0; j < bk; ++j)
        for (int64_t v0 = 0; v0 < nvec; ++v0)
          vst(S + j * BQ + v0 * L, vsoftcap(vld(S + j * BQ + v0 * L), c));
    }
    if (P.var.elementwise()) {
      for (int64_t j = 0; j < bk; ++j)
        for (int64_t i = 0; i < bq; ++i)
          S[j * BQ + i] += P.var.extra(sg.bq, h, sg.q0 + i0 + i, sg.k0 + j0 + j);
    }
    if (kind == TileKind::kPartial) {
      for (int64_t j = 0; j < bk; ++j) {
        // key j is seen by the queries [first, last] of the tile: -inf outside
        T* sj = S + j * BQ;
        const int64_t jj = j0 + j;
        int64_t first, last;
        mask.queries_of(jj, &first, &last);
        const int64_t a = std::clamp<int64_t>(first - i0, 0, bq);
        const int64_t b = std::clamp<int64_t>(last - i0 + 1, a, bq);
        std::fill(sj, sj + a, ninf);
        std::fill(sj + b, sj + bq, ninf);
        if (mask.dil > 1)
          for (int64_t i = a; i < b; ++i)
            if (!mask.dilated(i0 + i, jj)) sj[i] = ninf;
      }
    }

    online_softmax_columns(S, BQ, bk, nvec, m, l, alpha);

    // O^T[e, i] = alpha[i] O^T[e, i] + sum_j V[j, e] P^T[j, i]
    tile_gemm<T>(V, nvec, bk, Vt, 1, vs, S, BQ, Ot, BQ, !first, first ? nullptr : alpha);
    first = false;
  }

  // Finish: fold in the sink, normalise, write o rows and lse.
  const T sink = P.var.sink(h);
  for (int64_t i = 0; i < bq; ++i) {
    T mi = m[i], li = l[i];
    T f = T(1);
    if (sink != ninf) {
      const T mn = std::max(mi, sink);
      f = mi == ninf ? T(0) : std::exp(mi - mn);
      li = li * f + std::exp(sink - mn);
      mi = mn;
    }
    const bool empty = mi == ninf || li == T(0);
    const T inv = empty ? T(0) : f / li;
    T* oi = P.o.ptr(sg.bq, sg.q0 + i0 + i, h);
    for (int64_t e = 0; e < V; ++e) oi[e] = Ot[e * BQ + i] * inv;
    if (!P.lse.empty()) P.lse(sg.bq, sg.q0 + i0 + i, h) = empty ? ninf : mi + std::log(li);
  }
}

}  // namespace attn_detail

// Tiled prefill over all (sequence, head, query tile) work items.
template <class T, class KV>
void attention_prefill_run(const attn_detail::Problem<T, KV>& P,
                           const std::vector<std::size_t>& seg_ids) {
  using namespace attn_detail;
  struct Item {
    std::size_t seg;
    int64_t h, i0;
  };
  // Items head by head, and within a head the last query tiles first: under a causal mask
  // they are the longest, which balances threads; and consecutive items (on both threads) read
  // the same kv head, whose keys / values stay in L2 / L3 from one item to the next. (Tile by
  // tile over all heads re-streams every head's K / V from DRAM: Hkv = 8, T = 4096 ran ~10%
  // slower on one thread.)
  std::vector<Item> items;
  for (std::size_t s : seg_ids) {
    const Segment& sg = P.segs[s];
    const int64_t nt = (sg.tq + kQTile - 1) / kQTile;
    for (int64_t hk = 0; hk < P.Hkv; ++hk)
      for (int64_t t = nt - 1; t >= 0; --t)
        for (int64_t h = hk * P.G; h < (hk + 1) * P.G; ++h) items.push_back({s, h, t * kQTile});
  }
  const int threads = get_num_threads(P.num_threads);

  // Keys and values head-major and contiguous in the compute type, Kp [B, Hkv, Tk, K] and
  // Vp [B, Hkv, Tk, V] (O(Tk (K + V)) memory, one pass): rows of one head are 4 KB apart in
  // [B, T, H, D] for H = 8, D = 128, which maps a whole key tile onto a few L1 sets; and a bf16
  // cache is converted once instead of once per query tile. Rows already contiguous within a
  // head (k.stride(1) == K: the KVCache's head-major storage, or Hkv = 1) are read in place.
  const int64_t B = P.k.size(0), Tk = P.k.size(1), Hkv = P.Hkv, K = P.K, V = P.V;
  const bool pack = !std::is_same_v<T, KV> || P.k.stride(1) != K || P.v.stride(1) != V;
  std::unique_ptr<T[]> Kp, Vp;  // not value-initialised: every element is written below
  if (pack) {
    Kp.reset(new T[static_cast<std::size_t>(B * Hkv * Tk * K)]);
    Vp.reset(new T[static_cast<std::size_t>(B * Hkv * Tk * V)]);
    constexpr int64_t kRows = 256;
    const int64_t nchunk = (Tk + kRows - 1) / kRows;
    parallel_for(
        0, B * Hkv * nchunk,
        [&](int64_t w) {
          const int64_t c = w % nchunk, bh = w / nchunk, b = bh / Hkv, hk = bh % Hkv;
          for (int64_t t = c * kRows; t < std::min(Tk, (c + 1) * kRows); ++t) {
            load_row(P.k.ptr(b, t, hk), Kp.get() + (bh * Tk + t) * K, K);
            load_row(P.v.ptr(b, t, hk), Vp.get() + (bh * Tk + t) * V, V);
          }
        },
        threads);
  }
  auto rows = [&](const Segment& sg, int64_t hk, const T** kh, int64_t* ks, const T** vh,
                  int64_t* vs) {
    if (pack) {
      *kh = Kp.get() + ((sg.bk * Hkv + hk) * Tk + sg.k0) * K;
      *vh = Vp.get() + ((sg.bk * Hkv + hk) * Tk + sg.k0) * V;
      *ks = K, *vs = V;
    } else if constexpr (std::is_same_v<T, KV>) {
      *kh = P.k.ptr(sg.bk, sg.k0, hk), *ks = P.k.stride(1);
      *vh = P.v.ptr(sg.bk, sg.k0, hk), *vs = P.v.stride(1);
    }
  };

  std::vector<std::vector<T>> bufs(static_cast<std::size_t>(threads));
  parallel_for(
      0, static_cast<int64_t>(items.size()),
      [&](int64_t it) {
        int tid = 0;
#if defined(_OPENMP)
        if (threads > 1) tid = omp_get_thread_num();
#endif
        const Item& w = items[static_cast<std::size_t>(it)];
        const Segment& sg = P.segs[w.seg];
        const T* kh = nullptr;
        const T* vh = nullptr;
        int64_t ks = 0, vs = 0;
        if (sg.tk > 0) rows(sg, w.h / P.G, &kh, &ks, &vh, &vs);
        prefill_tile(P, sg, w.h, w.i0, kh, ks, vh, vs, bufs[static_cast<std::size_t>(tid)]);
      },
      threads);
}

}  // namespace effattn
