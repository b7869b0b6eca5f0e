// Softmax attention, the reference: one full score row per (query, head), then softmax, then
// the weighted sum of values. O(Tk) scratch per row, any sizes, every variant; the tests
// compare the fast forms against it in double.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "effattn/ops/attention/variant.hpp"

namespace effattn {

// o [B,Tq,Hq,V] (and lse [B,Tq,Hq] if not empty) from q [B,Tq,Hq,K], k [B,Tk,Hkv,K],
// v [B,Tk,Hkv,V]; semantics in variant.hpp.
template <class T, class KV = T>
void attention_naive(attn_detail::nd_t<TensorView<const T>> q,
                     attn_detail::nd_t<TensorView<const KV>> k,
                     attn_detail::nd_t<TensorView<const KV>> v, attn_detail::nd_t<TensorView<T>> o,
                     const AttentionParams& params = {},
                     attn_detail::nd_t<TensorView<T>> lse = TensorView<T>{},
                     const attn_detail::nd_t<AttentionExtras<T>>& extras = {}) {
  using namespace attn_detail;
  const Problem<T, KV> P = make_problem("attention_naive", q, k, v, o, lse, params, extras);
  const T ninf = -std::numeric_limits<T>::infinity();
  std::vector<T> s, kr(P.K), vr(P.V);
  for (const Segment& sg : P.segs) {
    const MaskPolicy mask = P.mask(sg);
    s.assign(static_cast<std::size_t>(sg.tk), ninf);
    for (int64_t h = 0; h < P.Hq; ++h) {
      const int64_t hk = h / P.G;
      for (int64_t i = 0; i < sg.tq; ++i) {
        const T* qi = q.ptr(sg.bq, sg.q0 + i, h);
        // s_j = scale q.k_j -> soft-cap -> + bias, -inf where hidden
        T m = ninf;
        for (int64_t j = 0; j < sg.tk; ++j) {
          s[j] = ninf;
          if (!mask.visible(i, j)) continue;
          load_row(k.ptr(sg.bk, sg.k0 + j, hk), kr.data(), P.K);
          T acc = 0;
          for (int64_t d = 0; d < P.K; ++d) acc += qi[d] * kr[d];
          acc *= P.scale;
          if (P.var.softcap > 0) acc = softcap_scalar(acc, P.var.softcap);
          if (P.var.elementwise()) acc += P.var.extra(sg.bq, h, sg.q0 + i, sg.k0 + j);
          s[j] = acc;
          if (acc > m) m = acc;
        }
        const T sink = P.var.sink(h);
        if (sink > m) m = sink;
        T* oi = o.ptr(sg.bq, sg.q0 + i, h);
        for (int64_t e = 0; e < P.V; ++e) oi[e] = 0;
        if (m == ninf) {  // nothing visible, no sink
          if (!lse.empty()) lse(sg.bq, sg.q0 + i, h) = ninf;
          continue;
        }
        T d = sink == ninf ? T(0) : std::exp(sink - m);
        for (int64_t j = 0; j < sg.tk; ++j) {
          if (s[j] == ninf) continue;
          const T p = std::exp(s[j] - m);
          d += p;
          load_row(v.ptr(sg.bk, sg.k0 + j, hk), vr.data(), P.V);
          for (int64_t e = 0; e < P.V; ++e) oi[e] += p * vr[e];
        }
        for (int64_t e = 0; e < P.V; ++e) oi[e] /= d;
        if (!lse.empty()) lse(sg.bq, sg.q0 + i, h) = m + std::log(d);
      }
    }
  }
}

}  // namespace effattn
