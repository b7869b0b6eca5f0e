// Delta rule, recurrent form: token by token from a state (decode, speculative verification,
// short prompts).
//
// Why column tiles: every column S[:, c] of the state evolves on its own (u[c] reads only
// S[:, c]; the update and the readout touch only S[:, c]). So the op walks S in tiles of
// 2 SIMD registers of columns ([K, 2L], 16 KB for K = 128 floats: L1-resident) and runs a
// whole block of tokens over one tile before moving on. Per token and tile, two passes:
//   pass 1:  x = S'^T k                  (S' = decayed S; the decay is folded into k or x)
//   pass 2:  S = S' + k u^T, o = q^T S   (u = beta (v - x); update and readout fused)
// With final_state given the op updates it in place (initial_state may be the same tensor):
// no copy of the state for a decode step.

#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "effattn/core/parallel.hpp"
#include "effattn/ops/delta_rule/params.hpp"
#include "effattn/simd/simd.hpp"

namespace effattn {
namespace delta_rule_detail {

// One token's prepared inputs (pointers into a token block).
template <class T>
struct TokenData {
  const T* k;    // [K] key (normalised)
  const T* kd;   // [K] exp(g) * k (kChannel), else k: the key pass 1 uses
  const T* dec;  // [K] exp(g) (kChannel)
  T dec_s;       // exp(g) (kScalar)
  const T* q;    // [K] query, times scale
  T beta;
  const T* v;  // [V] row of v
  T* o;        // [V] row of o
};

#if EFFATTN_HAS_SIMD
// One token on the NV * L columns at S (row stride ld), v and o offset to the same columns.
// Accumulators are named registers (4 row phases in pass 1, 2 in pass 2) so the FMA latency
// is hidden without spilling.
// Out of line at a 64-byte boundary, so its two loops sit at the same offsets within the
// instruction fetch blocks whatever code is linked before it: with the identical function at
// another address (after an unrelated change to chunk.hpp), the recurrent GDN prefill measured
// 39 -> 42 ms (1 thread) and 21 -> 24-26 ms (2 threads), KDA 47 -> 62 ms.
template <class T, DeltaRuleGate G, int NV>
[[gnu::noinline, gnu::aligned(64)]] void step_tile(T* S, int64_t ld, int64_t K,
                                                   const TokenData<T>& d, int64_t c0) {
  using VT = simd::Vec<T>;
  constexpr int64_t L = simd::kLanes<T>;
  VT a0[NV], a1[NV], a2[NV], a3[NV];
  for (int j = 0; j < NV; ++j) a0[j] = a1[j] = a2[j] = a3[j] = VT(T(0));
  // pass 1: x = sum_r kd[r] S[r, :]
  int64_t r = 0;
  for (; r + 3 < K; r += 4) {
    const VT k0(d.kd[r]), k1(d.kd[r + 1]), k2(d.kd[r + 2]), k3(d.kd[r + 3]);
    const T* s0 = S + r * ld;
    for (int j = 0; j < NV; ++j) {
      a0[j] = xsimd::fma(simd::load(s0 + j * L), k0, a0[j]);
      a1[j] = xsimd::fma(simd::load(s0 + ld + j * L), k1, a1[j]);
      a2[j] = xsimd::fma(simd::load(s0 + 2 * ld + j * L), k2, a2[j]);
      a3[j] = xsimd::fma(simd::load(s0 + 3 * ld + j * L), k3, a3[j]);
    }
  }
  for (; r < K; ++r) {
    const VT k0(d.kd[r]);
    for (int j = 0; j < NV; ++j) a0[j] = xsimd::fma(simd::load(S + r * ld + j * L), k0, a0[j]);
  }
  // u = beta (v - dec x)
  VT u[NV];
  const VT vb(d.beta), vdec(d.dec_s);
  for (int j = 0; j < NV; ++j) {
    VT x = (a0[j] + a1[j]) + (a2[j] + a3[j]);
    if constexpr (G == DeltaRuleGate::kScalar) x *= vdec;
    u[j] = vb * (simd::load(d.v + c0 + j * L) - x);
  }
  // pass 2: S[r, :] = dec[r] S[r, :] + k[r] u;  o += q[r] S[r, :]
  for (int j = 0; j < NV; ++j) a0[j] = a1[j] = VT(T(0));
  auto row = [&](int64_t rr, VT* acc) {
    T* s = S + rr * ld;
    const VT kr(d.k[rr]), qr(d.q[rr]);
    VT dr;
    if constexpr (G == DeltaRuleGate::kScalar) dr = vdec;
    if constexpr (G == DeltaRuleGate::kChannel) dr = VT(d.dec[rr]);
    for (int j = 0; j < NV; ++j) {
      VT x = simd::load(s + j * L);
      if constexpr (G != DeltaRuleGate::kNone) x *= dr;
      x = xsimd::fma(kr, u[j], x);
      simd::store(s + j * L, x);
      acc[j] = xsimd::fma(qr, x, acc[j]);
    }
  };
  for (r = 0; r + 1 < K; r += 2) {
    row(r, a0);
    row(r + 1, a1);
  }
  if (r < K) row(r, a0);
  for (int j = 0; j < NV; ++j) simd::store(d.o + c0 + j * L, a0[j] + a1[j]);
}
#endif

// Scalar form of step_tile for the ncols columns left over at the right edge.
template <class T, DeltaRuleGate G>
inline void step_cols(T* S, int64_t ld, int64_t K, const TokenData<T>& d, int64_t c0,
                      int64_t ncols) {
  for (int64_t c = c0; c < c0 + ncols; ++c) {
    T x = 0;
    for (int64_t r = 0; r < K; ++r) x += S[r * ld] * d.kd[r];
    if constexpr (G == DeltaRuleGate::kScalar) x *= d.dec_s;
    const T u = d.beta * (d.v[c] - x);
    T acc = 0;
    for (int64_t r = 0; r < K; ++r) {
      T s = S[r * ld];
      if constexpr (G == DeltaRuleGate::kScalar) s *= d.dec_s;
      if constexpr (G == DeltaRuleGate::kChannel) s *= d.dec[r];
      s += d.k[r] * u;
      S[r * ld] = s;
      acc += d.q[r] * s;
    }
    d.o[c] = acc;
    ++S;
  }
}

// Runs `count` tokens over the columns [c0, c0 + w) of S. `snap(i)` is called after token i
// (it copies the tile to a snapshot when one is due).
template <class T, DeltaRuleGate G, class Snap>
void run_tile(T* S, int64_t ld, int64_t K, const TokenData<T>* toks, int64_t count, int64_t c0,
              int64_t w, int nv, Snap&& snap) {
  for (int64_t i = 0; i < count; ++i) {
#if EFFATTN_HAS_SIMD
    if (nv == 2) step_tile<T, G, 2>(S + c0, ld, K, toks[i], c0);
    if (nv == 1) step_tile<T, G, 1>(S + c0, ld, K, toks[i], c0);
#endif
    if (nv == 0) step_cols<T, G>(S + c0, ld, K, toks[i], c0, w);
    snap(i);
  }
}

template <class T, DeltaRuleGate G>
void recurrent_impl(const TensorView<const T>& q, const TensorView<const T>& k,
                    const TensorView<const T>& v, const TensorView<const T>& beta,
                    const TensorView<const T>& g, const TensorView<T>& o,
                    const TensorView<const T>& initial_state, const TensorView<T>& final_state,
                    const DeltaRuleParams<T>& p, const Problem& pr) {
  const TokenReader<T> rd(q, k, v, beta, g, pr, p);
  const int64_t K = pr.K, V = pr.V;
  const T scale = default_scale(p, K);
  constexpr int64_t kBlock = 32;  // tokens prepared at once (their q, k rows stay in L1)
#if EFFATTN_HAS_SIMD
  constexpr int64_t L = simd::kLanes<T>;
#else
  constexpr int64_t L = 1 << 30;  // no vector tiles
#endif

  parallel_for(
      0, pr.N * pr.HV,
      [&](int64_t task) {
        const int64_t n = task / pr.HV, hv = task % pr.HV, b = pr.batch(n);
        // The working state: final_state's rows (in place), else scratch. [K, V], row stride ld.
        std::vector<T> scratch;
        T* S;
        int64_t ld;
        if (!final_state.empty()) {
          S = final_state.ptr(n, hv);
          ld = final_state.stride(2);
        } else {
          scratch.assign(K * V, T(0));
          S = scratch.data();
          ld = V;
        }
        if (!initial_state.empty()) {
          copy_state(initial_state.ptr(n, hv), initial_state.stride(2), S, ld, K, V);
        } else if (!final_state.empty()) {
          for (int64_t r = 0; r < K; ++r) std::fill(S + r * ld, S + r * ld + V, T(0));
        }

        // Token block buffers [kBlock, K]: q, k, kd, dec.
        std::vector<T> qb(kBlock * K), kb(kBlock * K), kdb, decb;
        if (G == DeltaRuleGate::kChannel) {
          kdb.resize(kBlock * K);
          decb.resize(kBlock * K);
        }
        TokenData<T> toks[kBlock];
        const int64_t t_begin = pr.begin(n), t_end = pr.end(n);
        for (int64_t t0 = t_begin; t0 < t_end; t0 += kBlock) {
          const int64_t cnt = std::min(kBlock, t_end - t0);
          // The next block's rows arrive while this block runs.
          for (int64_t t = t0 + cnt; t < std::min(t0 + cnt + kBlock, t_end); ++t)
            rd.prefetch(b, t, hv);
          for (int64_t i = 0; i < cnt; ++i) {
            const int64_t t = t0 + i;
            TokenData<T>& d = toks[i];
            T* qi = qb.data() + i * K;
            T* ki = kb.data() + i * K;
            rd.q_row(b, t, hv, qi, scale);
            rd.k_row(b, t, hv, ki);
            d.q = qi;
            d.k = ki;
            d.kd = ki;
            d.dec = nullptr;
            d.dec_s = T(1);
            if constexpr (G == DeltaRuleGate::kScalar) d.dec_s = std::exp(rd.gate(b, t, hv));
            if constexpr (G == DeltaRuleGate::kChannel) {
              T* di = decb.data() + i * K;
              T* kdi = kdb.data() + i * K;
              rd.gate_row(b, t, hv, di);
              simd::exp(di, di, K);       // dec = exp(g)
              simd::mul(ki, di, kdi, K);  // kd = exp(g) * k
              d.dec = di;
              d.kd = kdi;
            }
            d.beta = rd.beta(b, t, hv);
            d.v = rd.v_row(b, t, hv);
            d.o = o.ptr(b, t, hv);
          }
          // Columns in tiles of 2 registers, then 1, then scalar.
          int64_t c0 = 0;
          while (c0 < V) {
            int nv;
            int64_t w;
            if (c0 + 2 * L <= V) {
              nv = 2;
              w = 2 * L;
            } else if (c0 + L <= V) {
              nv = 1;
              w = L;
            } else {
              nv = 0;
              w = V - c0;
            }
            auto snap = [&](int64_t i) {
              const int64_t done = t0 + i + 1 - t_begin;
              if (p.snapshot_every <= 0 || done % p.snapshot_every != 0) return;
              const int64_t j = done / p.snapshot_every - 1;
              for (int64_t r = 0; r < K; ++r)
                std::copy(S + r * ld + c0, S + r * ld + c0 + w, p.snapshots.ptr(n, j, hv, r) + c0);
            };
            run_tile<T, G>(S, ld, K, toks, cnt, c0, w, nv, snap);
            c0 += w;
          }
        }
      },
      // Decode-sized work (a few tokens: tens of microseconds) stays on the calling thread. On
      // 2 threads a decode step of 16 heads at K = V = 128 took 17-20 us in some processes and
      // 39-50 us in others (most of them in some quarter hours; binding threads to cores did not
      // help), against 24-33 us on 1 thread every time: a fork / join every ~20 us is at the
      // mercy of the other vCPU being scheduled. (Session 4: 26 us -> 18 / 42 us, bimodal.)
      pr.B * pr.T * pr.HV * K * V < (int64_t(1) << 22) ? 1 : p.num_threads);
}

}  // namespace delta_rule_detail

// Recurrent form; same arguments and results as delta_rule_naive. final_state is updated in
// place when it is the same tensor as initial_state.
template <class T>
void delta_rule_recurrent(TensorView<const T> q, TensorView<const T> k, TensorView<const T> v,
                          TensorView<const T> beta, TensorView<const T> g, TensorView<T> o,
                          TensorView<const T> initial_state = {}, TensorView<T> final_state = {},
                          const DeltaRuleParams<T>& p = {}) {
  using namespace delta_rule_detail;
  const Problem pr =
      validate("delta_rule_recurrent", q, k, v, beta, g, o, initial_state, final_state, p);
  switch (pr.gate) {
    case DeltaRuleGate::kNone:
      recurrent_impl<T, DeltaRuleGate::kNone>(q, k, v, beta, g, o, initial_state, final_state, p,
                                              pr);
      break;
    case DeltaRuleGate::kScalar:
      recurrent_impl<T, DeltaRuleGate::kScalar>(q, k, v, beta, g, o, initial_state, final_state, p,
                                                pr);
      break;
    case DeltaRuleGate::kChannel:
      recurrent_impl<T, DeltaRuleGate::kChannel>(q, k, v, beta, g, o, initial_state, final_state, p,
                                                 pr);
      break;
  }
}

}  // namespace effattn
