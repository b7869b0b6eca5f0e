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

// Row sums of kLanes<T> registers at once: lane i of the result = the sum of the lanes of
// rows[i], i < kLanes<T> (one transposing reduction instead of kLanes<T> horizontal sums).
// With AVX / AVX-512 a tree of log2(L) steps, each folding one bit of the lane index: a blend
// plus a lane-crossing shuffle for the 256- and 128-bit halves, unpack lo / hi within 128 bits;
// L - 1 adds in all and the sums come out in natural order (xsimd 8.1's haddp permutes them).
template <class T>
inline Vec<T> hsum_rows(const Vec<T>* rows) {
  constexpr std::size_t L = Vec<T>::size;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float> && L == 16) {
    __m512 y[8], z[4], w[2];
    for (int i = 0; i < 8; ++i) {  // fold bit 3: y[i] = (rows[i] halves, rows[i + 8] halves)
      const __m512 a = rows[i].data, b = rows[i + 8].data;
      y[i] = _mm512_add_ps(_mm512_mask_blend_ps(0xFF00, a, b),
                           _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 3, 2)));
    }
    for (int i = 0; i < 4; ++i) {  // fold bit 2: 128-bit quarters (i, i + 4, i + 8, i + 12)
      const __m512 a = y[i], b = y[i + 4];
      const __m512 c = _mm512_mask_blend_ps(0xF0F0, b, a);
      z[i] = _mm512_add_ps(_mm512_mask_blend_ps(0xF0F0, a, b),
                           _mm512_shuffle_f32x4(c, c, _MM_SHUFFLE(2, 3, 0, 1)));
    }
    for (int i = 0; i < 2; ++i)  // fold bit 0 (in-lane pairs of rows 2i, 2i + 1)
      w[i] = _mm512_add_ps(_mm512_unpacklo_ps(z[2 * i], z[2 * i + 1]),
                           _mm512_unpackhi_ps(z[2 * i], z[2 * i + 1]));
    const __m512d a = _mm512_castps_pd(w[0]), b = _mm512_castps_pd(w[1]);  // fold bit 1
    return Vec<T>(_mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                                _mm512_castpd_ps(_mm512_unpackhi_pd(a, b))));
  }
  if constexpr (std::is_same_v<T, double> && L == 8) {
    __m512d y[4], z[2];
    for (int i = 0; i < 4; ++i) {  // fold bit 2
      const __m512d a = rows[i].data, b = rows[i + 4].data;
      y[i] = _mm512_add_pd(_mm512_mask_blend_pd(0xF0, a, b),
                           _mm512_shuffle_f64x2(a, b, _MM_SHUFFLE(1, 0, 3, 2)));
    }
    for (int i = 0; i < 2; ++i) {  // fold bit 1
      const __m512d a = y[i], b = y[i + 2];
      const __m512d c = _mm512_mask_blend_pd(0xCC, b, a);
      z[i] = _mm512_add_pd(_mm512_mask_blend_pd(0xCC, a, b),
                           _mm512_shuffle_f64x2(c, c, _MM_SHUFFLE(2, 3, 0, 1)));
    }
    return Vec<T>(  // fold bit 0
        _mm512_add_pd(_mm512_unpacklo_pd(z[0], z[1]), _mm512_unpackhi_pd(z[0], z[1])));
  }
#endif
#if defined(__AVX__)
  if constexpr (std::is_same_v<T, float> && L == 8) {
    __m256 y[4], w[2];
    for (int i = 0; i < 4; ++i) {  // fold bit 2
      const __m256 a = rows[i].data, b = rows[i + 4].data;
      y[i] = _mm256_add_ps(_mm256_blend_ps(a, b, 0xF0), _mm256_permute2f128_ps(a, b, 0x21));
    }
    for (int i = 0; i < 2; ++i)  // fold bit 0
      w[i] = _mm256_add_ps(_mm256_unpacklo_ps(y[2 * i], y[2 * i + 1]),
                           _mm256_unpackhi_ps(y[2 * i], y[2 * i + 1]));
    const __m256d a = _mm256_castps_pd(w[0]), b = _mm256_castps_pd(w[1]);  // fold bit 1
    return Vec<T>(_mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(a, b)),
                                _mm256_castpd_ps(_mm256_unpackhi_pd(a, b))));
  }
  if constexpr (std::is_same_v<T, double> && L == 4) {
    __m256d y[2];
    for (int i = 0; i < 2; ++i) {  // fold bit 1
      const __m256d a = rows[i].data, b = rows[i + 2].data;
      y[i] = _mm256_add_pd(_mm256_blend_pd(a, b, 0xC), _mm256_permute2f128_pd(a, b, 0x21));
    }
    return Vec<T>(  // fold bit 0
        _mm256_add_pd(_mm256_unpacklo_pd(y[0], y[1]), _mm256_unpackhi_pd(y[0], y[1])));
  }
#endif
  alignas(64) T buf[L];  // any other width: one horizontal sum per row
  for (std::size_t i = 0; i < L; ++i) buf[i] = xsimd::hadd(rows[i]);
  return Vec<T>::load_aligned(buf);
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
