// Softmax attention: the front door. One entry point for every pattern (non-causal / causal,
// self / cross, sliding and two-sided windows, dilation, soft-cap, sinks, bias / boolean mask,
// GQA / MQA, K != V, varlen), dispatching each sequence to the tiled prefill kernel or, for few
// queries, the split-K decode path. Semantics in variant.hpp; reference in naive.hpp.
//
//   effattn::AttentionParams p;  p.causal = true;
//   effattn::attention<float>(q, k, v, o, p);            // q [B,Tq,Hq,K] ... o [B,Tq,Hq,V]
//   effattn::attention<float, effattn::bf16>(q, kc, vc, o, p, lse);   // bf16 keys / values
//
// The scalar type is given explicitly (T = float or double; KV = T or bf16), so Tensors and
// views of T or const T convert without help.
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include "effattn/ops/attention/decode.hpp"
#include "effattn/ops/attention/naive.hpp"
#include "effattn/ops/attention/prefill.hpp"
#include "effattn/ops/attention/variant.hpp"

namespace effattn {

namespace attn_detail {
// Runs a resolved problem: each sequence to the prefill kernel or the decode path.
template <class T, class KV>
void dispatch(const Problem<T, KV>& P) {
  std::vector<std::size_t> pre, dec;
  for (std::size_t s = 0; s < P.segs.size(); ++s) {
    const Segment& sg = P.segs[s];
    if (sg.tq == 0) continue;
    const bool decode = P.path == AttentionPath::kDecode ||
                        (P.path == AttentionPath::kAuto && sg.tq <= kDecodeMaxRows);
    (decode ? dec : pre).push_back(s);
  }
  if (!pre.empty()) attention_prefill_run(P, pre);
  if (!dec.empty()) attention_decode_run(P, dec);
}
}  // namespace attn_detail

// o [B,Tq,Hq,V] = softmax attention of q [B,Tq,Hq,K] over k [B,Tk,Hkv,K], v [B,Tk,Hkv,V];
// lse [B,Tq,Hq] (natural log) if not empty.
template <class T, class KV = T>
void attention(attn_detail::nd_t<TensorView<const T>> q, attn_detail::nd_t<TensorView<const KV>> k,
               attn_detail::nd_t<TensorView<const KV>> v, attn_detail::nd_t<TensorView<T>> o,
               const AttentionParams& params = {},
               attn_detail::nd_t<TensorView<T>> lse = TensorView<T>{},
               const attn_detail::nd_t<AttentionExtras<T>>& extras = {}) {
  static_assert(std::is_floating_point_v<T>, "attention: T must be float or double");
  using namespace attn_detail;
  attn_detail::dispatch(make_problem("attention", q, k, v, o, lse, params, extras));
}

// Convenience: allocates and returns o [B,Tq,Hq,V].
template <class T, class KV = T>
Tensor<T> attention(attn_detail::nd_t<TensorView<const T>> q,
                    attn_detail::nd_t<TensorView<const KV>> k,
                    attn_detail::nd_t<TensorView<const KV>> v, const AttentionParams& params = {}) {
  check(q.ndim() == 4 && v.ndim() == 4, "attention: q and v must be 4-D, got q ",
        q.empty() ? std::string("<none>") : q.shape().str(), ", v ",
        v.empty() ? std::string("<none>") : v.shape().str());
  Tensor<T> o({q.size(0), q.size(1), q.size(2), v.size(3)});
  attention<T, KV>(q, k, v, o.view(), params);
  return o;
}

}  // namespace effattn
