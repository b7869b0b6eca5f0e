// Recurrent form (decode): token by token from a state, one fused SIMD pass over the state per
// token (decay, rank-1 update and readout together), no allocation per token.
//
// The state lives in the caller's final_state buffer when one is given (initial_state is copied
// there first unless both are the same buffer, so decode can update a cache in place), else in
// per-head scratch. Both state orientations run without a transpose: [Kf, V] rows (the engine's
// layout: row k is scaled by exp(g_k), the readout sums rows) and [V, Kf] rows (SSD's
// [B, H, P, N]: each row is updated and dotted with q).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "effattn/core/parallel.hpp"
#include "effattn/ops/linear_attention/common.hpp"
#include "effattn/ops/linear_attention/feature_maps.hpp"
#include "effattn/simd/simd.hpp"

namespace effattn {
namespace linattn_detail {

// s[i] = a s[i] + kk v[i];  o[i] += qq s[i]     (one row of S [Kf, V])
template <class T>
inline void rec_row_kv(T* s, T a, T kk, const T* v, T qq, T* o, int64_t n) {
  int64_t i = 0;
#if EFFATTN_HAS_SIMD
  constexpr int64_t L = simd::kLanes<T>;
  const simd::Vec<T> va(a), vk(kk), vq(qq);
  for (; i + L <= n; i += L) {
    const simd::Vec<T> sn = xsimd::fma(va, simd::load(s + i), vk * simd::load(v + i));
    simd::store(s + i, sn);
    simd::store(o + i, xsimd::fma(vq, sn, simd::load(o + i)));
  }
#endif
  for (; i < n; ++i) {
    s[i] = a * s[i] + kk * v[i];
    o[i] += qq * s[i];
  }
}

// r[i] = a_i r[i] + vj kf[i] (a_i = a, or a_vec[i] when given);  returns sum_i r[i] qf[i]
// (one row of S^T [V, Kf])
template <class T>
inline T rec_row_vk(T* r, T a, const T* a_vec, T vj, const T* kf, const T* qf, int64_t n) {
  int64_t i = 0;
  T acc = T(0);
#if EFFATTN_HAS_SIMD
  constexpr int64_t L = simd::kLanes<T>;
  const simd::Vec<T> va(a), vv(vj);
  simd::Vec<T> sum(T(0));
  for (; i + L <= n; i += L) {
    const simd::Vec<T> ai = a_vec ? simd::load(a_vec + i) : va;
    const simd::Vec<T> rn = xsimd::fma(ai, simd::load(r + i), vv * simd::load(kf + i));
    simd::store(r + i, rn);
    sum = xsimd::fma(rn, simd::load(qf + i), sum);
  }
  acc = simd::hsum(sum);
#endif
  for (; i < n; ++i) {
    r[i] = (a_vec ? a_vec[i] : a) * r[i] + vj * kf[i];
    acc += r[i] * qf[i];
  }
  return acc;
}

// Runs one (sequence, head) token by token. Causal only.
template <class T>
void recurrent_head(const Problem<T>& p, const HeadIO<T>& io) {
  const int64_t Kf = p.Kf, V = p.V, K = p.K;
  const bool vk = p.state_vk;
  const int64_t rows = vk ? V : Kf, cols = vk ? Kf : V;
  // Working state [rows, cols] (row stride ld): in final_state, or scratch.
  std::vector<T> scratch;
  T* S;
  int64_t ld;
  if (io.sT) {
    S = io.sT;
    ld = vk ? io.sT_v : io.sT_k;
  } else {
    scratch.assign(static_cast<size_t>(rows * cols), T(0));
    S = scratch.data();
    ld = cols;
  }
  const int64_t in_ld = vk ? io.s0_v : io.s0_k;
  if (io.s0 == nullptr) {
    for (int64_t r = 0; r < rows; ++r) std::fill(S + r * ld, S + r * ld + cols, T(0));
  } else if (io.s0 != S) {
    for (int64_t r = 0; r < rows; ++r)
      std::copy(io.s0 + r * in_ld, io.s0 + r * in_ld + cols, S + r * ld);
  }
  // z [Kf]: in z_final, or scratch.
  std::vector<T> zbuf;
  T* z = nullptr;
  int64_t zst = 1;
  if (p.normalize) {
    if (io.zT) {
      z = io.zT;
      zst = io.zT_st;
    } else {
      zbuf.assign(static_cast<size_t>(Kf), T(0));
      z = zbuf.data();
    }
    for (int64_t i = 0; i < Kf; ++i) {
      const T z0 = io.z0 ? io.z0[i * io.z0_st] : T(0);
      z[i * zst] = z0;
    }
  }
  // Per-token scratch, allocated once: qf [Kf], kf [Kf], vv [V], a [Kf].
  std::vector<T> buf(static_cast<size_t>(3 * Kf + V));
  T* qf = buf.data();
  T* kf = qf + Kf;
  T* a = kf + Kf;
  T* vv = a + Kf;
  const bool identity = p.fm == FeatureMap::kIdentity;
  for (int64_t t = 0; t < io.len; ++t) {
    const T* qt = io.q + t * io.q_st;
    const T* kt = io.k + t * io.k_st;
    apply_feature_map(p.fm, qt, K, p.scale, qf);
    const T* kfp = kt;
    if (!identity) {
      apply_feature_map(p.fm, kt, K, T(1), kf);
      kfp = kf;
    }
    const T* vt = io.v + t * io.v_st;
    if (io.vs) {
      const T c = io.vs[t * io.vs_st];
      for (int64_t j = 0; j < V; ++j) vv[j] = c * vt[j];
      vt = vv;
    }
    T as = T(1);
    const T* av = nullptr;
    if (p.decay == DecayKind::kScalar) {
      as = std::exp(io.g ? io.gmul * io.g[t * io.g_st] : io.gamma);
    } else if (p.decay == DecayKind::kChannel) {
      simd::exp(io.g + t * io.g_st, a, Kf);  // a_k = exp(g_t[k])
      av = a;
    }
    T* ot = io.o + t * io.o_st;
    if (!vk) {
      std::fill(ot, ot + V, T(0));
      for (int64_t i = 0; i < Kf; ++i)  // S[i,:] = a_i S[i,:] + kf_i v;  o += qf_i S[i,:]
        rec_row_kv(S + i * ld, av ? av[i] : as, kfp[i], vt, qf[i], ot, V);
    } else {
      for (int64_t j = 0; j < V; ++j)  // S^T[j,:] = a S^T[j,:] + v_j kf;  o_j = S^T[j,:] . qf
        ot[j] = rec_row_vk(S + j * ld, as, av, vt[j], kfp, qf, Kf);
    }
    if (p.normalize) {
      T den = T(0);
      for (int64_t i = 0; i < Kf; ++i) {  // z = a z + kf;  den = qf . z
        T& zi = z[i * zst];
        zi = (av ? av[i] : as) * zi + kfp[i];
        den += qf[i] * zi;
      }
      simd::scale(T(1) / (den + p.eps), ot, V);
    }
  }
}

template <class T>
void run_recurrent(const Problem<T>& p) {
  parallel_for(
      0, p.N * p.H, [&](int64_t i) { recurrent_head(p, head_io(p, i / p.H, i % p.H)); }, p.threads);
}

}  // namespace linattn_detail
}  // namespace effattn
