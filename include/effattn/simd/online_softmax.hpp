// The online-softmax state {m, d, o} as a value type (FlashAttention's running max and sum).
//
// For scores s_j and values v_j seen so far:  m = max_j s_j,  d = sum_j exp(s_j - m),
// o = sum_j exp(s_j - m) v_j  (unnormalised). Two states over disjoint key sets merge exactly:
// m = max(m_a, m_b), d = d_a e^(m_a - m) + d_b e^(m_b - m), o likewise. The same type merges
// key blocks inside a kernel, split-K decode partials and sliding windows. An empty state has
// m = -inf, d = 0 and merges as the identity; normalising it gives o = 0 and lse = -inf.
//
// The state owns m and d; o is a caller-owned row of V elements (so the kernel decides where it
// lives: registers, a tile, an output row).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "effattn/simd/kernels.hpp"

namespace effattn::simd {

template <class T>
struct SoftmaxState {
  T m = -std::numeric_limits<T>::infinity();
  T d = T(0);

  bool empty() const { return m == -std::numeric_limits<T>::infinity(); }

  // Rescales for a new running max m_new >= m; returns the factor applied to o (0 if empty).
  T rescale_to(T m_new) {
    if (m_new == m) return T(1);
    const T f = empty() ? T(0) : exp_scalar(m - m_new);
    d *= f;
    m = m_new;
    return f;
  }

  // Adds keys with scores s[0..n) (overwritten by their weights exp(s - m)) and value rows
  // v + j * v_stride (V each) to o[0..V). -inf scores are masked keys.
  void add(T* s, int64_t n, const T* v, int64_t v_stride, T* o, int64_t V) {
    const T bm = reduce_max(s, n);
    if (bm == -std::numeric_limits<T>::infinity()) return;
    const T m_new = bm > m ? bm : m;
    const T f = rescale_to(m_new);
    if (f != T(1)) scale(f, o, V);
    d += exp_sub_sum(s, m, s, n);
    for (int64_t j = 0; j < n; ++j)
      if (s[j] != T(0)) axpy(s[j], v + j * v_stride, o, V);
  }

  // Merges another state (with its row o_other) into this one (with row o).
  void merge(const SoftmaxState& other, const T* o_other, T* o, int64_t V) {
    if (other.empty()) return;
    if (empty()) {
      m = other.m;
      d = other.d;
      for (int64_t i = 0; i < V; ++i) o[i] = o_other[i];
      return;
    }
    const T m_new = other.m > m ? other.m : m;
    const T fa = exp_scalar(m - m_new), fb = exp_scalar(other.m - m_new);
    d = d * fa + other.d * fb;
    m = m_new;
    axpby(fb, o_other, fa, o, V);
  }

  // log(sum_j exp(s_j)); -inf when empty.
  T lse() const { return empty() ? m : m + std::log(d); }

  // o /= d, turning the accumulator into the softmax-weighted average; zeros when empty.
  void normalize(T* o, int64_t V) const {
    if (empty() || d == T(0)) {
      for (int64_t i = 0; i < V; ++i) o[i] = T(0);
      return;
    }
    scale(T(1) / d, o, V);
  }
};

}  // namespace effattn::simd
