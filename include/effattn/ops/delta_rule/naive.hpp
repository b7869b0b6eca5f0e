// Delta rule, naive form: the token loop of the definition, written for clarity. The reference
// of the tests (run it in double). Any T, any sizes; no SIMD beyond the input reader.
#pragma once

#include <cstdint>
#include <vector>

#include "effattn/core/parallel.hpp"
#include "effattn/ops/delta_rule/params.hpp"

namespace effattn {

// q, k [B, T, H, K]; v [B, T, HV, V]; beta [B, T, HV]; g empty | [B, T, HV] | [B, T, HV, K]
// -> o [B, T, HV, V]; optional initial_state / final_state [N, HV, K, V] (N = B or varlen
// sequences). final_state may be the same tensor as initial_state.
template <class T>
void delta_rule_naive(TensorView<const T> q, TensorView<const T> k, TensorView<const T> v,
                      TensorView<const T> beta, TensorView<const T> g, TensorView<T> o,
                      TensorView<const T> initial_state = {}, TensorView<T> final_state = {},
                      const DeltaRuleParams<T>& p = {}) {
  using namespace delta_rule_detail;
  const Problem pr =
      validate("delta_rule_naive", q, k, v, beta, g, o, initial_state, final_state, p);
  const TokenReader<T> rd(q, k, v, beta, g, pr, p);
  const int64_t K = pr.K, V = pr.V;
  const T scale = default_scale(p, K);

  parallel_for(
      0, pr.N * pr.HV,
      [&](int64_t task) {
        const int64_t n = task / pr.HV, hv = task % pr.HV, b = pr.batch(n);
        std::vector<T> S(K * V, T(0)), qt(K), kt(K), gt(K, T(0)), u(V);  // S [K, V]
        if (!initial_state.empty()) {
          for (int64_t r = 0; r < K; ++r)
            for (int64_t c = 0; c < V; ++c) S[r * V + c] = initial_state(n, hv, r, c);
        }
        for (int64_t t = pr.begin(n); t < pr.end(n); ++t) {
          rd.q_row(b, t, hv, qt.data());
          rd.k_row(b, t, hv, kt.data());
          const T bt = rd.beta(b, t, hv);
          // S <- decay(S)
          if (pr.gate == DeltaRuleGate::kScalar) {
            const T a = std::exp(rd.gate(b, t, hv));
            for (T& s : S) s *= a;
          } else if (pr.gate == DeltaRuleGate::kChannel) {
            rd.gate_row(b, t, hv, gt.data());
            for (int64_t r = 0; r < K; ++r)
              for (int64_t c = 0; c < V; ++c) S[r * V + c] *= std::exp(gt[r]);
          }
          // u = beta (v - S^T k)
          const T* vt = rd.v_row(b, t, hv);
          for (int64_t c = 0; c < V; ++c) {
            T stk = 0;
            for (int64_t r = 0; r < K; ++r) stk += S[r * V + c] * kt[r];
            u[c] = bt * (vt[c] - stk);
          }
          // S <- S + k u^T;  o = scale S^T q
          for (int64_t r = 0; r < K; ++r)
            for (int64_t c = 0; c < V; ++c) S[r * V + c] += kt[r] * u[c];
          for (int64_t c = 0; c < V; ++c) {
            T acc = 0;
            for (int64_t r = 0; r < K; ++r) acc += S[r * V + c] * qt[r];
            o(b, t, hv, c) = scale * acc;
          }
          const int64_t done = t + 1 - pr.begin(n);
          if (p.snapshot_every > 0 && done % p.snapshot_every == 0) {
            const int64_t j = done / p.snapshot_every - 1;
            for (int64_t r = 0; r < K; ++r)
              for (int64_t c = 0; c < V; ++c) p.snapshots(n, j, hv, r, c) = S[r * V + c];
          }
        }
        if (!final_state.empty()) {
          for (int64_t r = 0; r < K; ++r)
            for (int64_t c = 0; c < V; ++c) final_state(n, hv, r, c) = S[r * V + c];
        }
      },
      p.num_threads);
}

}  // namespace effattn
