// Rotary position embedding (RoPE), in place on x [B, T, H, D].
//
// For position t (= offset + token index) and pair index i < R/2 (R = rotary_dim <= D, even):
//   angle = t * theta^(-2i / R),   (a, b) <- (a cos - b sin, a sin + b cos)
// where the pair (a, b) is
//   kHalfSplit   (Llama, GPT-NeoX):  (x[i], x[i + R/2])
//   kInterleaved (GPT-J, DeepSeek MLA's rope dims):  (x[2i], x[2i + 1])
// Dims R..D-1 pass through (partial rotary, e.g. GPT-NeoX rotary_pct). Angles are computed in
// double, so positions in the hundreds of thousands keep full float precision.
// Decode: pass the number of tokens already in the cache as the offset (per sequence with
// `offsets`); varlen: cu_seqlens, positions restart at each sequence's offset.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "effattn/core/error.hpp"
#include "effattn/core/parallel.hpp"
#include "effattn/core/tensor.hpp"

namespace effattn {

enum class RopeStyle { kHalfSplit, kInterleaved };

struct RopeParams {
  RopeStyle style = RopeStyle::kHalfSplit;
  int64_t rotary_dim = 0;  // 0 = the whole head dim D
  double theta = 10000.0;
  int64_t offset = 0;               // position of the first token
  std::vector<int64_t> offsets;     // per sequence (size B, or N with cu_seqlens); overrides offset
  std::vector<int64_t> cu_seqlens;  // varlen: B = 1, N + 1 offsets
  int num_threads = 0;
};

namespace rope_detail {

// theta^(-2i / R) for i < R/2
inline std::vector<double> inv_freq(int64_t R, double theta) {
  std::vector<double> f(static_cast<std::size_t>(R / 2));
  for (int64_t i = 0; i < R / 2; ++i) f[i] = std::pow(theta, -2.0 * double(i) / double(R));
  return f;
}

// cos / sin of position t for the R/2 frequencies, in the tensor's type.
template <class T>
void angles(int64_t t, const std::vector<double>& inv, T* c, T* s) {
  for (std::size_t i = 0; i < inv.size(); ++i) {
    const double a = double(t) * inv[i];
    c[i] = static_cast<T>(std::cos(a));
    s[i] = static_cast<T>(std::sin(a));
  }
}

template <class T>
void rotate_row(T* x, int64_t R, RopeStyle style, const T* c, const T* s) {
  const int64_t half = R / 2;
  if (style == RopeStyle::kHalfSplit) {
    for (int64_t i = 0; i < half; ++i) {
      const T a = x[i], b = x[i + half];
      x[i] = a * c[i] - b * s[i];
      x[i + half] = a * s[i] + b * c[i];
    }
  } else {
    for (int64_t i = 0; i < half; ++i) {
      const T a = x[2 * i], b = x[2 * i + 1];
      x[2 * i] = a * c[i] - b * s[i];
      x[2 * i + 1] = a * s[i] + b * c[i];
    }
  }
}

}  // namespace rope_detail

// Rotates x [B, T, H, D] in place (x may be a strided view, e.g. the q or k slice of a fused
// projection; its last dim must be unit-stride).
template <class T>
void apply_rope(TensorView<T> x, const RopeParams& p = {}) {
  const char* op = "apply_rope";
  check_shape(op, "x", x, {-1, -1, -1, -1}, "[B, T, H, D]");
  check_inner_contiguous(op, "x", x);
  const int64_t B = x.size(0), T_ = x.size(1), H = x.size(2), D = x.size(3);
  const int64_t R = p.rotary_dim == 0 ? D : p.rotary_dim;
  check(R > 0 && R <= D && R % 2 == 0, op, ": rotary_dim must be even and in (0, D = ", D,
        "], got ", p.rotary_dim, " (x has shape ", x.shape().str(), ")");
  check(p.theta > 0 && std::isfinite(p.theta), op, ": theta must be positive, got ", p.theta);
  std::vector<int64_t> starts, lens;  // per sequence: first row, length
  if (!p.cu_seqlens.empty()) {
    check(B == 1, op, ": varlen (cu_seqlens) needs B = 1, x has shape ", x.shape().str());
    check(p.cu_seqlens.size() >= 2 && p.cu_seqlens.front() == 0 && p.cu_seqlens.back() == T_, op,
          ": cu_seqlens must start at 0 and end at T = ", T_);
    for (std::size_t n = 0; n + 1 < p.cu_seqlens.size(); ++n) {
      check(p.cu_seqlens[n + 1] >= p.cu_seqlens[n], op, ": cu_seqlens must be non-decreasing");
      starts.push_back(p.cu_seqlens[n]);
      lens.push_back(p.cu_seqlens[n + 1] - p.cu_seqlens[n]);
    }
  } else {
    for (int64_t b = 0; b < B; ++b) {
      starts.push_back(0);
      lens.push_back(T_);
    }
  }
  const int64_t N = static_cast<int64_t>(starts.size());
  check(p.offsets.empty() || static_cast<int64_t>(p.offsets.size()) == N, op, ": offsets has ",
        p.offsets.size(), " entries, expected one per sequence (", N, ")");
  for (int64_t off : p.offsets) check(off >= 0, op, ": offsets must be >= 0, got ", off);
  check(p.offset >= 0, op, ": offset must be >= 0, got ", p.offset);

  // One work item per (sequence, token): the angles are shared by the H heads of the token.
  const std::vector<double> inv = rope_detail::inv_freq(R, p.theta);
  std::vector<int64_t> first(static_cast<std::size_t>(N + 1), 0);
  for (int64_t n = 0; n < N; ++n) first[n + 1] = first[n] + lens[n];
  parallel_for(
      0, first[N],
      [&](int64_t w) {
        const int64_t n = std::upper_bound(first.begin(), first.end(), w) - first.begin() - 1;
        const int64_t t = w - first[n];
        const int64_t pos = (p.offsets.empty() ? p.offset : p.offsets[n]) + t;
        const int64_t b = p.cu_seqlens.empty() ? n : 0, row = starts[n] + t;
        std::vector<T> c(static_cast<std::size_t>(R / 2)), s(c.size());
        rope_detail::angles(pos, inv, c.data(), s.data());
        for (int64_t h = 0; h < H; ++h)
          rope_detail::rotate_row(x.ptr(b, row, h), R, p.style, c.data(), s.data());
      },
      p.num_threads, 16);
}

}  // namespace effattn
