// Softmax attention, decode (flash-decoding / split-K): few queries, long keys. The keys of each
// sequence are cut into splits of `decode_split` keys; one work item computes the partial state
// {m, l, o} of all Hq*Tq query rows over its split (the G query heads sharing a kv head read
// each key row once), and the partials are then merged by their running
// max, in split order (so the result does not depend on the thread count). Vectorised along
// the head dims (dot / axpy), since there are too few queries to fill SIMD lanes.
//
// merge_states(o_a, lse_a, o_b, lse_b) is the same merge on normalised outputs.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "effattn/core/parallel.hpp"
#include "effattn/ops/attention/variant.hpp"
#include "effattn/simd/simd.hpp"

namespace effattn {
namespace attn_detail {

inline constexpr int64_t kDecodeBlock = 64;     // keys per score block
inline constexpr int64_t kDecodeSplit = 512;    // default keys per split-K partial
inline constexpr int64_t kDecodeMaxRows = 16;   // auto path: decode when Tq <= this

// Partial state of all rows of a segment over keys [j_begin, j_end): m [R], l [R],
// o [R, V] (unnormalised), R = Hq * tq, row r = h * tq + t (query t of head h). Every kv head
// is handled in the same pass, so the item streams whole key rows [Hkv, K] sequentially
// (the rows of one head alone are Hkv * K apart, a new page each for long contexts).
template <class T, class KV>
void decode_partial(const Problem<T, KV>& P, const Segment& sg, int64_t j_begin, int64_t j_end,
                    T* pm, T* pl, T* po, std::vector<T>& buf) {
  constexpr int64_t BK = kDecodeBlock;
  constexpr bool kConvert = !std::is_same_v<T, KV>;
  const T ninf = -std::numeric_limits<T>::infinity();
  const int64_t K = P.K, V = P.V, G = P.G, Hkv = P.Hkv, tq = sg.tq, R = P.Hq * tq;
  const int64_t RG = G * tq;  // rows per kv head
  const MaskPolicy mask = P.mask(sg);

  // Buffers: Qs [R, K] (scaled queries), S [R, BK], Kc [BK, Hkv, K], Vc [BK, Hkv, V].
  const std::size_t need =
      static_cast<std::size_t>(R * (K + BK) + (kConvert ? BK * Hkv * (K + V) : 0));
  if (buf.size() < need) buf.resize(need);
  T* Qs = buf.data();
  T* S = Qs + R * K;
  T* Kc = S + R * BK;
  T* Vc = Kc + BK * Hkv * K;
  std::vector<char> active(static_cast<std::size_t>(R));

  for (int64_t r = 0; r < R; ++r) {
    const T* qr = P.q.ptr(sg.bq, sg.q0 + r % tq, r / tq);
    for (int64_t d = 0; d < K; ++d) Qs[r * K + d] = P.scale * qr[d];
    pm[r] = ninf;
    pl[r] = T(0);
    std::fill(po + r * V, po + (r + 1) * V, T(0));
  }

  for (int64_t j0 = j_begin; j0 < j_end; j0 += BK) {
    const int64_t j1 = std::min(j0 + BK, j_end), bk = j1 - j0;
    const TileKind kind = mask.classify(0, tq, j0, j1);
    if (kind == TileKind::kHidden) continue;
    // key / value row of (key j, kv head hk)
    auto krow = [&](int64_t j, int64_t hk) -> const T* {
      if constexpr (kConvert) {
        return Kc + (j * Hkv + hk) * K;
      } else {
        return P.k.ptr(sg.bk, sg.k0 + j0 + j, hk);
      }
    };
    auto vrow = [&](int64_t j, int64_t hk) -> const T* {
      if constexpr (kConvert) {
        return Vc + (j * Hkv + hk) * V;
      } else {
        return P.v.ptr(sg.bk, sg.k0 + j0 + j, hk);
      }
    };
    if constexpr (kConvert) {
      for (int64_t j = 0; j < bk; ++j)
        for (int64_t hk = 0; hk < Hkv; ++hk) {
          load_row(P.k.ptr(sg.bk, sg.k0 + j0 + j, hk), Kc + (j * Hkv + hk) * K, K);
          load_row(P.v.ptr(sg.bk, sg.k0 + j0 + j, hk), Vc + (j * Hkv + hk) * V, V);
        }
    }

    // S[r, j] = Qs[r] . K[j, hk(r)]   (each key row read once for the G * tq rows of its head)
    for (int64_t j = 0; j < bk; ++j)
      for (int64_t hk = 0; hk < Hkv; ++hk) {
        const T* kj = krow(j, hk);
        for (int64_t r = hk * RG; r < (hk + 1) * RG; ++r)
          S[r * BK + j] = simd::dot(Qs + r * K, kj, K);
      }
    if (P.var.softcap > 0)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t j = 0; j < bk; ++j)
          S[r * BK + j] = softcap_scalar(S[r * BK + j], P.var.softcap);
    if (P.var.elementwise())
      for (int64_t r = 0; r < R; ++r)
        for (int64_t j = 0; j < bk; ++j)
          S[r * BK + j] += P.var.extra(sg.bq, r / tq, sg.q0 + r % tq, sg.k0 + j0 + j);
    if (kind == TileKind::kPartial)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t j = 0; j < bk; ++j)
          if (!mask.visible(r % tq, j0 + j)) S[r * BK + j] = ninf;

    // Per row: m' = max(m, max_j S);  o *= exp(m - m');  S = exp(S - m');  l = l e^(m-m') + sum S
    for (int64_t r = 0; r < R; ++r) {
      T* sr = S + r * BK;
      const T mx = std::max(pm[r], simd::reduce_max(sr, bk));
      active[r] = mx != ninf;
      if (!active[r]) continue;
      if (mx != pm[r]) {
        const T a = pm[r] == ninf ? T(0) : simd::exp_scalar(pm[r] - mx);
        simd::scale(a, po + r * V, V);
        pl[r] *= a;
        pm[r] = mx;
      }
      pl[r] += simd::exp_sub_sum(sr, mx, sr, bk);
    }
    // o[r] += sum_j S[r, j] V[j, hk(r)]
    for (int64_t j = 0; j < bk; ++j)
      for (int64_t hk = 0; hk < Hkv; ++hk) {
        const T* vj = vrow(j, hk);
        for (int64_t r = hk * RG; r < (hk + 1) * RG; ++r) {
          const T p = S[r * BK + j];
          if (active[r] && p != T(0)) simd::axpy(p, vj, po + r * V, V);
        }
      }
  }
}

}  // namespace attn_detail

template <class T, class KV>
void attention_decode_run(const attn_detail::Problem<T, KV>& P,
                          const std::vector<std::size_t>& seg_ids) {
  using namespace attn_detail;
  const T ninf = -std::numeric_limits<T>::infinity();
  const int64_t split = P.decode_split > 0 ? P.decode_split : kDecodeSplit;
  const int64_t V = P.V;
  struct Item {
    std::size_t seg;
    int64_t j0, j1;
    int64_t part;  // offset of its rows in the partial buffers
  };
  struct Group {
    std::size_t seg;
    int64_t first_item, nitems;
  };
  std::vector<Item> items;
  std::vector<Group> groups;
  int64_t rows_total = 0;
  for (std::size_t s : seg_ids) {
    const Segment& sg = P.segs[s];
    if (sg.tq == 0) continue;
    const MaskPolicy mask = P.mask(sg);
    const int64_t jlo = std::min(mask.lo(0), sg.tk), jhi = std::max(jlo, mask.hi(sg.tq - 1));
    const int64_t nsplit = std::max<int64_t>(1, (jhi - jlo + split - 1) / split);
    const int64_t R = P.Hq * sg.tq;
    groups.push_back({s, static_cast<int64_t>(items.size()), nsplit});
    for (int64_t n = 0; n < nsplit; ++n) {
      const int64_t a = jlo + n * split, b = std::min(jhi, a + split);
      items.push_back({s, a, b, rows_total});
      rows_total += R;
    }
  }
  std::vector<T> pm(static_cast<std::size_t>(rows_total)), pl(pm.size()),
      po(pm.size() * static_cast<std::size_t>(V));
  const int threads = get_num_threads(P.num_threads);
  std::vector<std::vector<T>> bufs(static_cast<std::size_t>(threads));
  parallel_for(
      0, static_cast<int64_t>(items.size()),
      [&](int64_t it) {
        int tid = 0;
#if defined(_OPENMP)
        if (threads > 1) tid = omp_get_thread_num();
#endif
        const Item& w = items[static_cast<std::size_t>(it)];
        decode_partial(P, P.segs[w.seg], w.j0, w.j1, pm.data() + w.part,
                       pl.data() + w.part, po.data() + w.part * V,
                       bufs[static_cast<std::size_t>(tid)]);
      },
      threads);

  // Merge the splits of each group in order: M = max m_s, l = sum l_s e^(m_s - M),
  // o = sum o_s e^(m_s - M); then the sink joins l, and o / l, lse = M + log l.
  parallel_for(
      0, static_cast<int64_t>(groups.size()),
      [&](int64_t gi) {
        const Group& g = groups[static_cast<std::size_t>(gi)];
        const Segment& sg = P.segs[g.seg];
        const int64_t R = P.Hq * sg.tq;
        std::vector<T> acc(static_cast<std::size_t>(V));
        for (int64_t r = 0; r < R; ++r) {
          const int64_t h = r / sg.tq, t = r % sg.tq;
          T M = ninf;
          for (int64_t n = 0; n < g.nitems; ++n)
            M = std::max(M, pm[items[g.first_item + n].part + r]);
          const T sink = P.var.sink(h);
          const T Mf = std::max(M, sink);
          T lsum = sink == ninf ? T(0) : std::exp(sink - Mf);
          std::fill(acc.begin(), acc.end(), T(0));
          if (M != ninf) {
            for (int64_t n = 0; n < g.nitems; ++n) {
              const int64_t row = items[g.first_item + n].part + r;
              if (pm[row] == ninf) continue;
              const T f = std::exp(pm[row] - Mf);
              lsum += pl[row] * f;
              simd::axpy(f, po.data() + row * V, acc.data(), V);
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
