// Mamba-1 scans: the selective scan and the causal conv1d that precedes it (front header).
//
//   selective_scan(u, delta, A, B, C, D, z, delta_bias, initial_state, y, final_state, params)
//     u, delta, z, y [B,T,D]; A [D,N]; B, C [B,T,N] or [B,T,G,N]; D, delta_bias [D];
//     states [B,D,N]. Optional inputs / outputs are empty views. Picks the form:
//       selective_scan_chunk      prefill: SIMD across channels, state in registers (chunk.hpp)
//       selective_scan_recurrent  a few tokens: SIMD across states (recurrent.hpp)
//     selective_scan_step(..., state, y, params) is the in-place decode step; selective_scan_naive
//     the reference (naive.hpp).
//   causal_conv1d(x, weight, bias, initial_state, y, final_state, params)
//   causal_conv1d_update(x, weight, bias, conv_state, y, params)          (causal_conv1d.hpp)
//     x, y [B,T,D]; weight [D,W]; bias [D]; conv states [B,W-1,D], time-major, oldest first.
//
// Mamba-2 SSD lives in ops/ssm/ssd.hpp (the gated-linear engine), not here.
#pragma once

#include <algorithm>
#include <cstdint>

#include "effattn/ops/ssm/causal_conv1d.hpp"
#include "effattn/ops/ssm/chunk.hpp"
#include "effattn/ops/ssm/naive.hpp"
#include "effattn/ops/ssm/recurrent.hpp"

namespace effattn {

// Sequences no longer than this run the recurrent form: the chunk form's per-block setup
// (transposing A and the state) is not worth it for a handful of tokens.
inline constexpr int64_t kSelectiveScanRecurrentMaxLen = 4;

// Selective scan (Mamba-1), any T; see selective_scan_naive for the exact meaning.
// final_state may be the same view as initial_state; y must not overlap any input.
template <class T>
void selective_scan(TensorView<const T> u, TensorView<const T> delta, TensorView<const T> A,
                    TensorView<const T> B, TensorView<const T> C, TensorView<const T> D,
                    TensorView<const T> z, TensorView<const T> delta_bias,
                    TensorView<const T> initial_state, TensorView<T> y,
                    TensorView<T> final_state = {}, const SelectiveScanParams& p = {}) {
  int64_t max_len = u.ndim() == 3 ? u.size(1) : 0;
  if (!p.cu_seqlens.empty()) {
    max_len = 0;
    for (std::size_t i = 0; i + 1 < p.cu_seqlens.size(); ++i)
      max_len = std::max(max_len, p.cu_seqlens[i + 1] - p.cu_seqlens[i]);
  }
  if (max_len <= kSelectiveScanRecurrentMaxLen) {
    selective_scan_recurrent<T>(u, delta, A, B, C, D, z, delta_bias, initial_state, y, final_state,
                                p);
  } else {
    selective_scan_chunk<T>(u, delta, A, B, C, D, z, delta_bias, initial_state, y, final_state, p);
  }
}

}  // namespace effattn
