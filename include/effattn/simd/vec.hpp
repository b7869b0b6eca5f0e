// The SIMD register type and its few primitives, on xsimd 8.1.
//
// Vec<T> is xsimd's widest batch for T on the compiled-for ISA (AVX-512 with -march=native on
// Zen 4: 16 floats). Kernels process whole registers, then a scalar tail, so they work for any
// length and any alignment. With EFFATTN_SCALAR defined, or when xsimd finds no SIMD ISA,
// EFFATTN_HAS_SIMD is 0 and only the scalar loops remain: slower, same results up to round-off.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "effattn/core/bf16.hpp"

#if !defined(EFFATTN_SCALAR)
#include <xsimd/xsimd.hpp>
#if defined(XSIMD_NO_SUPPORTED_ARCHITECTURE)
#define EFFATTN_HAS_SIMD 0
#else
#define EFFATTN_HAS_SIMD 1
#endif
#else
#define EFFATTN_HAS_SIMD 0
#endif

namespace effattn::simd {

#if EFFATTN_HAS_SIMD
template <class T>
using Vec = xsimd::batch<T>;
template <class T>
inline constexpr int64_t kLanes = static_cast<int64_t>(Vec<T>::size);

template <class T>
inline Vec<T> load(const T* p) {
  return xsimd::load_unaligned(p);
}
template <class T>
inline void store(T* p, const Vec<T>& v) {
  v.store_unaligned(p);
}
template <class T>
inline T hsum(const Vec<T>& v) {
  return xsimd::hadd(v);
}
template <class T>
inline T hmax(const Vec<T>& v) {
  alignas(64) T buf[Vec<T>::size];
  v.store_aligned(buf);
  T m = buf[0];
  for (std::size_t i = 1; i < Vec<T>::size; ++i) m = std::max(m, buf[i]);
  return m;
}

// Row sums of kLanes<T> registers at once: out[i] = sum of the lanes of rows[i], i < kLanes<T>
// (one transposing reduction, xsimd::haddp, instead of kLanes<T> horizontal sums). `lanes` is
// haddp_lanes<T>(), fetched once outside the caller's loops: xsimd 8.1's AVX-512 float haddp
// returns the sums of registers 2-5 and 10-13 swapped in pairs, so the lane of each sum is
// measured once instead of assumed.
template <class T>
inline const int* haddp_lanes() {
  static const auto lanes = [] {
    struct Table {
      int lane[kLanes<T>];
    } m{};
    Vec<T> rows[kLanes<T>];
    alignas(64) T buf[kLanes<T>];
    for (int64_t i = 0; i < kLanes<T>; ++i) {
      for (int64_t l = 0; l < kLanes<T>; ++l) buf[l] = l == 0 ? T(i + 1) : T(0);
      rows[i] = Vec<T>::load_aligned(buf);
    }
    xsimd::haddp(rows).store_aligned(buf);
    for (int64_t lane = 0; lane < kLanes<T>; ++lane) {
      const int64_t i = static_cast<int64_t>(buf[lane]) - 1;
      m.lane[i >= 0 && i < kLanes<T> ? i : lane] = static_cast<int>(lane);
    }
    return m;
  }();
  return lanes.lane;
}
template <class T>
inline void hsum_rows(const Vec<T>* rows, const int* lanes, T* out) {
  alignas(64) T buf[kLanes<T>];
  xsimd::haddp(rows).store_aligned(buf);
  for (int64_t i = 0; i < kLanes<T>; ++i) out[i] = buf[lanes[i]];
}

// kLanes<T> elements stored as S, as a register of T: S = T is a plain load; S = bf16 (T = float)
// widens in registers (a bf16 is the high half of a float: zero-extend to 32 bits, shift left 16);
// any other pair converts through a buffer.
template <class T, class S>
inline Vec<T> load_as(const S* p) {
  if constexpr (std::is_same_v<S, T>) {
    return load(p);
  } else {
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<S, bf16> && std::is_same_v<T, float> && Vec<T>::size == 16) {
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      return Vec<float>(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
    }
#endif
#if defined(__AVX2__)
    if constexpr (std::is_same_v<S, bf16> && std::is_same_v<T, float> && Vec<T>::size == 8) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
      return Vec<float>(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
    }
#endif
    alignas(64) T buf[Vec<T>::size];
    for (std::size_t i = 0; i < Vec<T>::size; ++i) {
      if constexpr (std::is_same_v<S, bf16>)
        buf[i] = static_cast<T>(to_float(p[i]));
      else
        buf[i] = static_cast<T>(p[i]);
    }
    return load(static_cast<const T*>(buf));
  }
}
#else
template <class T>
inline constexpr int64_t kLanes = 1;
#endif

// dst[i] = T(src[i]), i < n: a storage row (float, double or bf16) in the compute type.
template <class T, class S>
inline void convert(const S* src, T* dst, int64_t n) {
  int64_t i = 0;
#if EFFATTN_HAS_SIMD
  if constexpr (!std::is_same_v<S, T>) {
    for (; i + kLanes<T> <= n; i += kLanes<T>) store(dst + i, load_as<T>(src + i));
  }
#endif
  for (; i < n; ++i) {
    if constexpr (std::is_same_v<S, bf16>)
      dst[i] = static_cast<T>(to_float(src[i]));
    else
      dst[i] = static_cast<T>(src[i]);
  }
}

// Name of the ISA the kernels were compiled for (for benchmark reports).
inline const char* isa_name() {
#if EFFATTN_HAS_SIMD
  return xsimd::default_arch::name();
#else
  return "scalar";
#endif
}

}  // namespace effattn::simd
