// bf16: a storage type (weights, KV cache, inputs). Arithmetic happens in float.
#pragma once

#include <cstdint>
#include <cstring>

namespace effattn {

struct bf16 {
  uint16_t bits = 0;

  bf16() = default;
  // Round to nearest, ties to even; NaN stays NaN (quiet), +-inf stays inf, overflow rounds to inf.
  explicit bf16(float f) : bits(from_float(f)) {}
  explicit operator float() const { return to_float(bits); }

  static uint16_t from_float(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
    const uint32_t lsb = (u >> 16) & 1u;
    u += 0x7fffu + lsb;
    return static_cast<uint16_t>(u >> 16);
  }
  static float to_float(uint16_t b) {
    const uint32_t u = static_cast<uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
  }
  static bf16 from_bits(uint16_t b) {
    bf16 r;
    r.bits = b;
    return r;
  }
  friend bool operator==(bf16 a, bf16 b) { return a.bits == b.bits; }
  friend bool operator!=(bf16 a, bf16 b) { return a.bits != b.bits; }
};

// Load any storage scalar as float / store float into it.
inline float to_float(float x) { return x; }
inline float to_float(bf16 x) { return static_cast<float>(x); }
inline double to_double(double x) { return x; }

}  // namespace effattn
