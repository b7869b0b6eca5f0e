// Softmax attention, decode (flash-decoding / split-K): few queries, long keys. The keys of each
// sequence are cut into splits of `decode_split` keys; one work item computes the partial state
// {m, l, o} of all Hq*Tq query rows over its split, streaming whole key rows [Hkv, K] in order
// (the G query heads sharing a kv head read each key row once). The partials are then merged
// by their running max, in split order, so the result does not depend on the thread count.
// Scores: 4 query rows x (L/4) keys per register block, reduced with one transposing sum;
// the online softmax runs across query rows in SIMD lanes; P.V is the prefill micro-kernel.
// bf16 keys / values are widened inside the loads (no conversion pass).
// Head-major keys / values (rows contiguous within a kv head, as KVCache stores them) take a
// second form, decode_partial_head: one item per (kv head, split), each streaming one head's
// contiguous keys and values with a software prefetch kDecodeHeadAhead keys ahead. Partials
// of the split-K items live in a per-thread buffer reused across calls.
//
// merge_states(o_a, lse_a, o_b, lse_b) is the same merge on normalised outputs.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "effattn/core/parallel.hpp"
#include "effattn/ops/attention/prefill.hpp"
#include "effattn/ops/attention/variant.hpp"
#include "effattn/simd/simd.hpp"

namespace effattn {
namespace attn_detail {

inline constexpr int64_t kDecodeBlock = 32;  // keys per score block (all kv heads)
// Software prefetch distances (keys) of the score loop. Rows of one head are a page apart, so
// every row of a head lands on the same few L1 sets. For a float cache (512 B per head row at
// D=128) key rows go to L1 (prefetcht0) only 4 keys ahead and value rows to L2 (prefetcht2), so
// the prefetched lines do not evict each other before use (A/B, Hq=32 Hkv=8 D=128 Tk=32768,
// median of interleaved runs, 1 thread 18.4 -> 20 GB/s, 2 threads ~28.5 -> ~32 GB/s, against
// 8 keys ahead, both to L1). bf16 rows are half as big and keep that old scheme, which
// measured faster for them.
template <class T, class KV>
inline constexpr bool kDecodeSplitPrefetch = std::is_same_v<T, KV>;
template <class T, class KV>
inline constexpr int64_t kDecodeAheadK = kDecodeSplitPrefetch<T, KV> ? 4 : 8;
inline constexpr int64_t kDecodeAheadV = 8;
inline constexpr int64_t kDecodeSplit = 512;   // default keys per split-K partial
inline constexpr int64_t kDecodeMaxRows = 16;  // auto path: decode when Tq <= this

// St[j, c0 + r] = Qs[r0 + r] . K_j for 4 query rows and keys j < bk of one kv head: blocks of
// 4 rows x (L/4) keys accumulate in L registers along the head dim, and one transposing
// reduction (simd::hsum_rows: lane i = sum of register i) yields their L scores at once, instead
// of one horizontal sum per score. Keys past the last whole block use simd::dot.

// Software prefetch of n bytes with a locality hint (0: prefetcht0, 1: t1, 2: t2, 3: nta).
template <int Hint>
inline void decode_prefetch(const void* p, int64_t n) {
  const char* c = static_cast<const char*>(p);
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  for (int64_t i = 0; i < n; i += 64) {
    if constexpr (Hint == 0)
      __asm__ volatile("prefetcht0 %0" : : "m"(c[i]));
    else if constexpr (Hint == 1)
      __asm__ volatile("prefetcht1 %0" : : "m"(c[i]));
    else if constexpr (Hint == 2)
      __asm__ volatile("prefetcht2 %0" : : "m"(c[i]));
    else
      __asm__ volatile("prefetchnta %0" : : "m"(c[i]));
  }
#else
  prefetch_bytes(c, n);
#endif
}

// q . k for k stored as S (T or bf16).
template <class T, class S>
inline T dot_as(const T* q, const S* k, int64_t n) {
  if constexpr (std::is_same_v<S, T>) {
    return simd::dot(q, k, n);
  } else {
    int64_t i = 0;
    T acc = 0;
#if EFFATTN_HAS_SIMD
    constexpr int64_t L = kL<T>;
    VecT<T> s0(T(0)), s1(T(0));
    for (; i + 2 * L <= n; i += 2 * L) {
      s0 = vfma(vld(q + i), vld_as<T>(k + i), s0);
      s1 = vfma(vld(q + i + L), vld_as<T>(k + i + L), s1);
    }
    for (; i + L <= n; i += L) s0 = vfma(vld(q + i), vld_as<T>(k + i), s0);
    acc = simd::hsum(s0 + s1);
#endif
    for (; i < n; ++i) acc += q[i] * to_t<T>(k[i]);
    return acc;
  }
}

// St[j * ldj + r * ldr] for query row r < 4 and key j < bk. hook(j) runs before each register
// block of keys j .. (a place to issue prefetches spread over the FMAs).
template <class T, class KRow, class Hook>
inline void scores_4rows(const T* Qs, int64_t K, int64_t bk, KRow&& krow, T* St, int64_t ldj,
                         int64_t ldr, [[maybe_unused]] Hook&& hook) {
  int64_t j = 0;
#if EFFATTN_HAS_SIMD
  constexpr int64_t L = kL<T>;
  if constexpr (L >= 4) {
    constexpr int64_t KB = L / 4;  // keys per block
    const int64_t kv = K / L * L;
    for (; j + KB <= bk; j += KB) {
      hook(j);
      VecT<T> acc[L];
      decltype(krow(0)) kr[KB];
      for (int64_t b = 0; b < KB; ++b) kr[b] = krow(j + b);
      for (int64_t i = 0; i < L; ++i) acc[i] = VecT<T>(T(0));
      for (int64_t d = 0; d < kv; d += L) {
        VecT<T> kd[KB];
        for (int64_t b = 0; b < KB; ++b) {
          kd[b] = vld_as<T>(kr[b] + d);
          pin(kd[b]);
        }
        for (int64_t r = 0; r < 4; ++r) {
          VecT<T> qd = vld(Qs + r * K + d);
          pin(qd);
          for (int64_t b = 0; b < KB; ++b) acc[b * 4 + r] = vfma(qd, kd[b], acc[b * 4 + r]);
        }
      }
      alignas(64) T sums[L];
      simd::hsum_rows(acc).store_aligned(sums);  // sums[b * 4 + r]
      for (int64_t b = 0; b < KB; ++b)
        for (int64_t r = 0; r < 4; ++r) {
          T t = sums[b * 4 + r];
          for (int64_t d = kv; d < K; ++d) t += Qs[r * K + d] * to_t<T>(kr[b][d]);
          St[(j + b) * ldj + r * ldr] = t;
        }
    }
  }
#endif
  for (; j < bk; ++j)
    for (int64_t r = 0; r < 4; ++r) St[j * ldj + r * ldr] = dot_as(Qs + r * K, krow(j), K);
}

// Partial state of all rows of a segment over keys [j_begin, j_end): m [R], l [R],
// o [R, V] (unnormalised), R = Hq * tq, row r = h * tq + t (query t of head h). Every kv head
// is handled in the same pass, so the item streams whole key rows [Hkv, K] sequentially
// (the rows of one head alone are Hkv * K apart, a new page each for long contexts).
// Scores are kept key-major, St [BK, Rp] (Rp = R rounded up to the lanes), so the online
// softmax runs across rows in SIMD lanes, and P.V is the micro-kernel of the prefill tile.
// o[r, e] += sum_j A[r * ars + j * aks] V[j * vstep + e] for rows r < R, keys j < bk: the
// prefill tile's micro-kernel over whole vectors of V, the V % L tail columns scalar.
template <class T, class KV>
inline void accumulate_pv(int64_t R, int64_t V, int64_t bk, const T* A, int64_t ars, int64_t aks,
                          const KV* v, int64_t vstep, T* o) {
  const int64_t nvec = V / kL<T>, tail0 = nvec * kL<T>;
  if (nvec > 0) tile_gemm<T, KV>(R, nvec, bk, A, ars, aks, v, vstep, o, V, true, nullptr);
  for (int64_t r = 0; r < R && tail0 < V; ++r)
    for (int64_t j = 0; j < bk; ++j) {
      const T p = A[r * ars + j * aks];
      const KV* vj = v + j * vstep;
      for (int64_t e = tail0; e < V; ++e) o[r * V + e] += p * to_t<T>(vj[e]);
    }
}

template <class T, class KV>
void decode_partial(const Problem<T, KV>& P, const Segment& sg, int64_t j_begin, int64_t j_end,
                    T* pm, T* pl, T* po, std::vector<T>& buf) {
  constexpr int64_t BK = kDecodeBlock;
  constexpr int64_t L = kL<T>;
  const T ninf = -std::numeric_limits<T>::infinity();
  const int64_t K = P.K, V = P.V, G = P.G, Hkv = P.Hkv, tq = sg.tq, R = P.Hq * tq;
  const int64_t RG = G * tq;  // rows per kv head
  const int64_t Rp = (R + L - 1) / L * L, nrv = Rp / L;
  const MaskPolicy mask = P.mask(sg);

  // Buffers: Qs [R, K] (scaled queries), St [BK, Rp], m, l, alpha [Rp].
  const std::size_t need = static_cast<std::size_t>(R * K + BK * Rp + 3 * Rp);
  if (buf.size() < need) buf.resize(need);
  T* Qs = buf.data();
  T* St = Qs + R * K;
  T* m = St + BK * Rp;
  T* l = m + Rp;
  T* alpha = l + Rp;
  std::fill(St, St + BK * Rp, T(0));  // padded lanes stay finite
  std::fill(m, m + Rp, ninf);
  std::fill(l, l + Rp, T(0));

  for (int64_t r = 0; r < R; ++r) {
    const T* qr = P.q.ptr(sg.bq, sg.q0 + r % tq, r / tq);
    for (int64_t d = 0; d < K; ++d) Qs[r * K + d] = P.scale * qr[d];
    std::fill(po + r * V, po + (r + 1) * V, T(0));
  }

  // Key and value rows [Hkv, K|V] of key j, towards the caches (one range when the heads are
  // contiguous, as in [B, T, H, D]).
  const int64_t khs_in = P.k.stride(2), vhs_in = P.v.stride(2);
  const int64_t kbytes = K * int64_t(sizeof(KV)), vbytes = V * int64_t(sizeof(KV));
  auto prefetch_key = [&](int64_t j) {
    const KV* kp = P.k.ptr(sg.bk, sg.k0 + j);
    const KV* vp = P.v.ptr(sg.bk, sg.k0 + j);
    if (khs_in == K && vhs_in == V) {
      prefetch_bytes(kp, Hkv * kbytes);
      prefetch_bytes(vp, Hkv * vbytes);
    } else {
      for (int64_t hk = 0; hk < Hkv; ++hk) {
        prefetch_bytes(kp + hk * khs_in, kbytes);
        prefetch_bytes(vp + hk * vhs_in, vbytes);
      }
    }
  };
  auto prefetch_head = [&](int64_t j, int64_t hk) {
    decode_prefetch<0>(P.k.ptr(sg.bk, sg.k0 + j) + hk * khs_in, kbytes);
    if constexpr (!kDecodeSplitPrefetch<T, KV>)
      decode_prefetch<0>(P.v.ptr(sg.bk, sg.k0 + j) + hk * vhs_in, vbytes);
  };
  auto prefetch_headv = [&](int64_t j, int64_t hk) {
    decode_prefetch<2>(P.v.ptr(sg.bk, sg.k0 + j) + hk * vhs_in, vbytes);
  };
  for (int64_t jp = j_begin; jp < std::min(j_begin + kDecodeAheadV, j_end); ++jp) prefetch_key(jp);
  // Keys / values are read in place (bf16 widened in the loads), rows kstep apart, heads khs.
  const int64_t kstep = P.k.stride(1), vstep = P.v.stride(1);
  const int64_t khs = P.k.stride(2), vhs = P.v.stride(2);
  for (int64_t j0 = j_begin; j0 < j_end; j0 += BK) {
    const int64_t j1 = std::min(j0 + BK, j_end), bk = j1 - j0;
    const TileKind kind = mask.classify(0, tq, j0, j1);
    if (kind == TileKind::kHidden) continue;

    const KV* kbase = P.k.ptr(sg.bk, sg.k0 + j0, 0);
    const KV* vbase = P.v.ptr(sg.bk, sg.k0 + j0, 0);

    // St[j, r] = Qs[r] . K[j, hk(r)], key-major so that memory is read in order. A key row
    // [Hkv, K] is a page or so, which the hardware prefetchers do not cross: prefetch the key
    // rows kDecodeAheadK keys ahead and the value rows kDecodeAheadV keys ahead (see above;
    // read by P.V below) by hand.
    constexpr int64_t kStep = L >= 4 ? L / 4 : 1;  // keys per score block of scores_4rows
    for (int64_t jb = 0; jb < bk; jb += kStep) {
      const int64_t nb = std::min(kStep, bk - jb);
      const int64_t jp0 = j0 + jb + kDecodeAheadK<T, KV>, jp1 = std::min(jp0 + nb, j_end);
      const int64_t jv0 = j0 + jb + kDecodeAheadV, jv1 = std::min(jv0 + nb, j_end);
      for (int64_t hk = 0; hk < Hkv; ++hk) {
        // spread over the heads, so the misses in flight stay steady
        for (int64_t jp = jp0; jp < jp1; ++jp) prefetch_head(jp, hk);
        if constexpr (kDecodeSplitPrefetch<T, KV>)
          for (int64_t jp = jv0; jp < jv1; ++jp) prefetch_headv(jp, hk);
        auto krow = [&](int64_t j) { return kbase + (jb + j) * kstep + hk * khs; };
        T* Sb = St + jb * Rp;
        int64_t r = hk * RG;
        for (; r + 4 <= (hk + 1) * RG; r += 4)
          scores_4rows(Qs + r * K, K, nb, krow, Sb + r, Rp, 1, [](int64_t) {});
        for (; r < (hk + 1) * RG; ++r)
          for (int64_t j = 0; j < nb; ++j) Sb[j * Rp + r] = dot_as(Qs + r * K, krow(j), K);
      }
    }
    if (P.var.softcap > 0)
      for (int64_t j = 0; j < bk; ++j)
        for (int64_t r = 0; r < R; ++r)
          St[j * Rp + r] = softcap_scalar(St[j * Rp + r], P.var.softcap);
    if (P.var.elementwise())
      for (int64_t j = 0; j < bk; ++j)
        for (int64_t r = 0; r < R; ++r)
          St[j * Rp + r] += P.var.extra(sg.bq, r / tq, sg.q0 + r % tq, sg.k0 + j0 + j);
    if (kind == TileKind::kPartial)
      for (int64_t j = 0; j < bk; ++j)
        for (int64_t r = 0; r < R; ++r)
          if (!mask.visible(r % tq, j0 + j)) St[j * Rp + r] = ninf;

    online_softmax_columns(St, Rp, bk, nrv, m, l, alpha);  // rows of o in lanes
    bool rescale = false;
    for (int64_t r = 0; r < R; ++r) rescale = rescale || alpha[r] != T(1);
    if (rescale)
      for (int64_t r = 0; r < R; ++r)
        if (alpha[r] != T(1)) simd::scale(alpha[r], po + r * V, V);

    // o[r, e] += sum_j St[j, r] V[j, hk(r), e]: the micro-kernel keeps a [4 rows x 4 vectors]
    // block of o in registers across the key block.
    for (int64_t hk = 0; hk < Hkv; ++hk) {
      const KV* v0 = vbase + hk * vhs;
      const T* A = St + hk * RG;
      T* o0 = po + hk * RG * V;
      accumulate_pv<T, KV>(RG, V, bk, A, 1, Rp, v0, vstep, o0);
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    pm[r] = m[r];
    pl[r] = l[r];
  }
}

// Online softmax along the keys of each row: St [R, ld], keys j < bk. For row r:
// M = max(m, max_j s_j), alpha = e^(m - M), p_j = e^(s_j - M) (in place), l = alpha l + sum p.
template <class T>
inline void online_softmax_rows(T* St, int64_t ld, int64_t R, int64_t bk, T* m, T* l, T* alpha) {
  const T ninf = -std::numeric_limits<T>::infinity();
  for (int64_t r = 0; r < R; ++r) {
    T* s = St + r * ld;
    const T mx = std::max(m[r], simd::reduce_max(s, bk));
    if (mx == ninf) {  // nothing visible yet: p = 0, o and l stay 0
      std::fill(s, s + bk, T(0));
      alpha[r] = T(1);
      continue;
    }
    const T a = m[r] == ninf ? T(0) : std::exp(m[r] - mx);
    l[r] = a * l[r] + simd::exp_sub_sum(s, mx, s, bk);
    m[r] = mx;
    alpha[r] = a;
  }
}

// Per-thread scratch, reused across calls (grows to the largest need, never shrinks); Tag
// names the user, so two users on one thread never share a buffer.
struct DecodeRowsTag;      // decode_partial's Qs, St, m, l, alpha
struct DecodeHeadRowsTag;  // decode_partial_head's
struct DecodePartialsTag;  // attention_decode_run's split partials
template <class Tag, class T>
inline std::vector<T>& decode_scratch() {
  thread_local std::vector<T> buf;
  return buf;
}

// Prefetch distance (keys) of the head-major path. Even one contiguous stream needs it here:
// without it the hardware prefetcher keeps too few lines in flight while the core does the
// FMAs (Hq=32 Hkv=8 D=128 float, 1 thread: 12 GB/s with no prefetch; 8 / 16 / 32 / 64 keys
// ahead 27 / 28 / 26 / 25 GB/s from DRAM; prefetching every second line: 13.5).
inline constexpr int64_t kDecodeHeadAhead = 16;

// Head-major form of decode_partial, for caches whose rows are contiguous within a kv head
// (k.stride(1) == K, v.stride(1) == V: the KVCache's storage [B, Hkv, slots, D]). One item is
// one kv head hk over keys [j_begin, j_end): its G * tq query rows against one contiguous key
// stream and one contiguous value stream (no page-strided rows). Partials of
// rows hk * RG .. (hk + 1) * RG: pm, pl [RG], po [RG, V].
// Scores are row-major, St [RG, BK]: each block of 4 query rows reads a key row once (from L1
// for the next 4 rows), the softmax runs along the keys in lanes, and P.V is the micro-kernel
// with the probabilities as A (row stride BK).
template <class T, class KV>
void decode_partial_head(const Problem<T, KV>& P, const Segment& sg, int64_t hk, int64_t j_begin,
                         int64_t j_end, T* pm, T* pl, T* po) {
  constexpr int64_t BK = kDecodeBlock;
  constexpr int64_t L = kL<T>;
  const T ninf = -std::numeric_limits<T>::infinity();
  const int64_t K = P.K, V = P.V, G = P.G, tq = sg.tq, RG = G * tq;
  const MaskPolicy mask = P.mask(sg);

  // Buffers: Qs [RG, K] (scaled queries), St [RG, BK], m, l, alpha [RG].
  std::vector<T>& buf = decode_scratch<DecodeHeadRowsTag, T>();
  const std::size_t need = static_cast<std::size_t>(RG * K + RG * BK + 3 * RG);
  if (buf.size() < need) buf.resize(need);
  T* Qs = buf.data();
  T* St = Qs + RG * K;
  T* m = St + RG * BK;
  T* l = m + RG;
  T* alpha = l + RG;
  std::fill(m, m + RG, ninf);
  std::fill(l, l + RG, T(0));
  // row r: query head h = hk * G + r / tq, query t = r % tq
  for (int64_t r = 0; r < RG; ++r) {
    const T* qr = P.q.ptr(sg.bq, sg.q0 + r % tq, hk * G + r / tq);
    for (int64_t d = 0; d < K; ++d) Qs[r * K + d] = P.scale * qr[d];
    std::fill(po + r * V, po + (r + 1) * V, T(0));
  }

  const KV* khead = P.k.ptr(sg.bk, sg.k0, hk);
  const KV* vhead = P.v.ptr(sg.bk, sg.k0, hk);
  const int64_t kstep = P.k.stride(1), vstep = P.v.stride(1);  // == K, V
  // Software prefetch kDecodeHeadAhead keys ahead of the score loop, key and value rows, one
  // register block of keys at a time (spread over the FMAs).
  auto prefetch = [&](int64_t j, int64_t n) {
    if constexpr (kDecodeHeadAhead > 0) {
      const int64_t a = j + kDecodeHeadAhead, b = std::min(a + n, j_end);
      if (a < b) {
        decode_prefetch<0>(khead + a * kstep, (b - a) * kstep * int64_t(sizeof(KV)));
        decode_prefetch<0>(vhead + a * vstep, (b - a) * vstep * int64_t(sizeof(KV)));
      }
    }
  };
  constexpr int64_t kStep = L >= 4 ? L / 4 : 1;  // keys per register block of scores_4rows
  for (int64_t j0 = j_begin; j0 < j_end; j0 += BK) {
    const int64_t j1 = std::min(j0 + BK, j_end), bk = j1 - j0;
    const TileKind kind = mask.classify(0, tq, j0, j1);
    if (kind == TileKind::kHidden) continue;
    const KV* kb = khead + j0 * kstep;
    const KV* vb = vhead + j0 * vstep;
    auto krow = [&](int64_t j) { return kb + j * kstep; };

    // St[r, j] = Qs[r] . K[j]
    int64_t r = 0;
    for (; r + 4 <= RG; r += 4)  // (the first 4 rows issue the prefetches)
      scores_4rows(Qs + r * K, K, bk, krow, St + r * BK, 1, BK, [&, r](int64_t j) {
        if (r == 0) prefetch(j0 + j, kStep);
      });
    for (const int64_t r0 = r; r < RG; ++r)  // (G * tq < 4: these rows prefetch)
      for (int64_t j = 0; j < bk; ++j) {
        if (r0 == 0 && r == 0) prefetch(j0 + j, 1);
        St[r * BK + j] = dot_as(Qs + r * K, krow(j), K);
      }

    if (P.var.softcap > 0)
      for (int64_t r2 = 0; r2 < RG; ++r2)
        for (int64_t j = 0; j < bk; ++j)
          St[r2 * BK + j] = softcap_scalar(St[r2 * BK + j], P.var.softcap);
    if (P.var.elementwise())
      for (int64_t r2 = 0; r2 < RG; ++r2)
        for (int64_t j = 0; j < bk; ++j)
          St[r2 * BK + j] += P.var.extra(sg.bq, hk * G + r2 / tq, sg.q0 + r2 % tq, sg.k0 + j0 + j);
    if (kind == TileKind::kPartial)
      for (int64_t r2 = 0; r2 < RG; ++r2)
        for (int64_t j = 0; j < bk; ++j)
          if (!mask.visible(r2 % tq, j0 + j)) St[r2 * BK + j] = ninf;

    online_softmax_rows(St, BK, RG, bk, m, l, alpha);
    for (int64_t r2 = 0; r2 < RG; ++r2)
      if (alpha[r2] != T(1)) simd::scale(alpha[r2], po + r2 * V, V);

    // o[r, e] += sum_j St[r, j] V[j, e]
    accumulate_pv<T, KV>(RG, V, bk, St, BK, 1, vb, vstep, po);
  }
  for (int64_t r = 0; r < RG; ++r) {
    pm[r] = m[r];
    pl[r] = l[r];
  }
}

}  // namespace attn_detail

template <class T, class KV>
void attention_decode_run(const attn_detail::Problem<T, KV>& P,
                          const std::vector<std::size_t>& seg_ids) {
  using namespace attn_detail;
  const T ninf = -std::numeric_limits<T>::infinity();
  const int64_t V = P.V;
  // Head-major keys / values (rows contiguous within a kv head, as the KVCache stores them):
  // one item per (kv head, split), see decode_partial_head. Otherwise items cover all kv heads.
  const bool by_head = P.Hkv > 1 && P.k.stride(1) == P.K && P.v.stride(1) == P.V;
  struct Item {
    std::size_t seg;
    int64_t hk;  // kv head (by_head), else -1: all heads
    int64_t j0, j1;
    int64_t part;  // offset of its rows in the partial buffers
  };
  // The splits of one segment's rows [r0, r1), merged in order.
  struct Group {
    std::size_t seg;
    int64_t r0, r1, first_item, nitems;
  };
  std::vector<Item> items;
  std::vector<Group> groups;
  int64_t rows_total = 0;
  for (std::size_t s : seg_ids) {
    const Segment& sg = P.segs[s];
    if (sg.tq == 0) continue;
    const MaskPolicy mask = P.mask(sg);
    const int64_t jlo = std::min(mask.lo(0), sg.tk), jhi = std::max(jlo, mask.hi(sg.tq - 1));
    // Split size: given, or kDecodeSplit keys; by head, at least 1/8 of the keys, so there are
    // few partials to merge (never from the thread count: results must not depend on it).
    int64_t split = P.decode_split;
    if (split <= 0) split = by_head ? std::max(kDecodeSplit, (jhi - jlo + 7) / 8) : kDecodeSplit;
    const int64_t nsplit = std::max<int64_t>(1, (jhi - jlo + split - 1) / split);
    const int64_t RG = P.G * sg.tq;
    for (int64_t hk = 0; hk < (by_head ? P.Hkv : 1); ++hk) {
      const int64_t rows = by_head ? RG : P.Hq * sg.tq, r0 = by_head ? hk * RG : 0;
      groups.push_back({s, r0, r0 + rows, static_cast<int64_t>(items.size()), nsplit});
      for (int64_t n = 0; n < nsplit; ++n) {
        const int64_t a = jlo + n * split, b = std::min(jhi, a + split);
        items.push_back({s, by_head ? hk : -1, a, b, rows_total});
        rows_total += rows;
      }
    }
  }
  // Partials m, l [rows_total], o [rows_total, V], reused across calls.
  std::vector<T>& part = decode_scratch<DecodePartialsTag, T>();
  const std::size_t nrows = static_cast<std::size_t>(rows_total);
  if (part.size() < nrows * static_cast<std::size_t>(V + 2))
    part.resize(nrows * static_cast<std::size_t>(V + 2));
  T* pm = part.data();
  T* pl = pm + nrows;
  T* po = pl + nrows;
  const int threads = get_num_threads(P.num_threads);
  parallel_for(
      0, static_cast<int64_t>(items.size()),
      [&](int64_t it) {
        const Item& w = items[static_cast<std::size_t>(it)];
        if (w.hk >= 0)
          decode_partial_head(P, P.segs[w.seg], w.hk, w.j0, w.j1, pm + w.part, pl + w.part,
                              po + w.part * V);
        else
          decode_partial(P, P.segs[w.seg], w.j0, w.j1, pm + w.part, pl + w.part, po + w.part * V,
                         decode_scratch<DecodeRowsTag, T>());
      },
      threads);

  // Merge the splits of each group in order: M = max m_s, l = sum l_s e^(m_s - M),
  // o = sum o_s e^(m_s - M); then the sink joins l, and o / l, lse = M + log l.
  parallel_for(
      0, static_cast<int64_t>(groups.size()),
      [&](int64_t gi) {
        const Group& g = groups[static_cast<std::size_t>(gi)];
        const Segment& sg = P.segs[g.seg];
        std::vector<T> acc(static_cast<std::size_t>(V));
        for (int64_t r = g.r0; r < g.r1; ++r) {
          const int64_t h = r / sg.tq, t = r % sg.tq;
          auto row = [&](int64_t n) { return items[g.first_item + n].part + (r - g.r0); };
          T M = ninf;
          for (int64_t n = 0; n < g.nitems; ++n) M = std::max(M, pm[row(n)]);
          const T sink = P.var.sink(h);
          const T Mf = std::max(M, sink);
          T lsum = sink == ninf ? T(0) : std::exp(sink - Mf);
          std::fill(acc.begin(), acc.end(), T(0));
          if (M != ninf) {
            for (int64_t n = 0; n < g.nitems; ++n) {
              const int64_t rw = row(n);
              if (pm[rw] == ninf) continue;
              const T f = std::exp(pm[rw] - Mf);
              lsum += pl[rw] * f;
              simd::axpy(f, po + rw * V, acc.data(), V);
            }
          }
          const bool empty = Mf == ninf || lsum == T(0);
          const T inv = empty ? T(0) : T(1) / lsum;
          T* orow = P.o.ptr(sg.bq, sg.q0 + t, h);
          for (int64_t e = 0; e < V; ++e) orow[e] = acc[e] * inv;
          if (!P.lse.empty()) P.lse(sg.bq, sg.q0 + t, h) = empty ? ninf : Mf + std::log(lsum);
        }
      },
      threads);
}

// Merges two attention results over disjoint key sets, in place into (o_a, lse_a):
//   lse = log(e^lse_a + e^lse_b),  o = (e^lse_a o_a + e^lse_b o_b) / e^lse
// o [..., V] with lse [...] (the shape of o without its last dim, e.g. [B,T,H,V] and [B,T,H]);
// a side with lse = -inf contributes nothing; both -inf gives o = 0, lse = -inf.
// (With sinks, pass each sink to one side only: it is part of that side's denominator.)
template <class T>
void merge_states(TensorView<T> o_a, TensorView<T> lse_a, TensorView<const T> o_b,
                  TensorView<const T> lse_b) {
  const char* op = "merge_states";
  check(!o_a.empty() && o_a.ndim() >= 1, op, ": o_a must have at least 1 dim, got ",
        o_a.empty() ? std::string("<none>") : o_a.shape().str());
  check(!o_b.empty() && o_b.shape() == o_a.shape(), op, ": o_b has shape ",
        o_b.empty() ? std::string("<none>") : o_b.shape().str(), ", expected o_a's ",
        o_a.shape().str());
  std::vector<int64_t> lead(o_a.shape().begin(), o_a.shape().end() - 1);
  const Shape ls(lead);
  check(!lse_a.empty() && lse_a.shape() == ls, op, ": lse_a has shape ",
        lse_a.empty() ? std::string("<none>") : lse_a.shape().str(), ", expected ", ls.str());
  check(!lse_b.empty() && lse_b.shape() == ls, op, ": lse_b has shape ",
        lse_b.empty() ? std::string("<none>") : lse_b.shape().str(), ", expected ", ls.str());
  check_inner_contiguous(op, "o_a", o_a);
  check_inner_contiguous(op, "o_b", o_b);
  const int nd = ls.ndim();
  const int64_t V = o_a.size(o_a.ndim() - 1), n = ls.numel();
  const T ninf = -std::numeric_limits<T>::infinity();
  for (int64_t idx = 0; idx < n; ++idx) {
    int64_t rem = idx, offa = 0, offb = 0, offla = 0, offlb = 0;
    for (int d = nd - 1; d >= 0; --d) {
      const int64_t i = rem % ls[d];
      rem /= ls[d];
      offa += i * o_a.stride(d);
      offb += i * o_b.stride(d);
      offla += i * lse_a.stride(d);
      offlb += i * lse_b.stride(d);
    }
    T* oa = o_a.data() + offa;
    const T* ob = o_b.data() + offb;
    const T la = lse_a.data()[offla], lb = lse_b.data()[offlb];
    const T mx = std::max(la, lb);
    if (mx == ninf) {
      for (int64_t e = 0; e < V; ++e) oa[e] = T(0);
      lse_a.data()[offla] = ninf;
      continue;
    }
    const T wa = std::exp(la - mx), wb = std::exp(lb - mx), s = wa + wb;
    simd::axpby(wb / s, ob, wa / s, oa, V);  // o_a = (wa o_a + wb o_b) / s
    lse_a.data()[offla] = mx + std::log(s);
  }
}

}  // namespace effattn
