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
#else
template <class T>
inline constexpr int64_t kLanes = 1;
#endif

// Name of the ISA the kernels were compiled for (for benchmark reports).
inline const char* isa_name() {
#if EFFATTN_HAS_SIMD
  return xsimd::default_arch::name();
#else
  return "scalar";
#endif
}

}  // namespace effattn::simd
