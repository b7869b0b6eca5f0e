// Dispatch and combine: group the (token, slot) assignments of a gate by expert, so that every
// expert runs on one contiguous block of rows, and sum the weighted expert outputs back.
//
//   plan     stable counting sort of the assignments by expert, slot-major (all first choices
//            in token order, then all second choices, ...), with the capacity rule of
//            params.hpp: an expert keeps its first C rows in that order, the rest are dropped
//            and reported (slot_row = -1, per-expert `dropped`).
//   dispatch xs[r] = x[row_token[r]]                                    xs [R, d]
//   combine  y[n] = beta y[n] + sum_{kept s, in slot order} w[n, s] out[slot_row(n, s)]
//            (a gather per token rather than a scatter: no two threads write one row, and the
//            sum order is fixed, so results do not depend on the thread count)
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "effattn/core/parallel.hpp"
#include "effattn/core/tensor.hpp"
#include "effattn/ops/moe/params.hpp"
#include "effattn/simd/simd.hpp"

namespace effattn::moe {

struct DispatchPlan {
  int64_t num_tokens = 0, top_k = 0, num_experts = 0;
  int64_t capacity = -1;           // rows per expert at most; -1 = unlimited
  std::vector<int64_t> offsets;    // [E + 1] rows of expert e: [offsets[e], offsets[e + 1])
  std::vector<int32_t> row_token;  // [R] token of each kept row
  std::vector<int32_t> row_slot;   // [R] slot of each kept row
  std::vector<int64_t> slot_row;   // [N * k] row of assignment (n, s), -1 if dropped
  std::vector<int64_t> counts;     // [E] assignments routed to e, before dropping
  std::vector<int64_t> dropped;    // [E] assignments e dropped (counts - kept rows)
  int64_t num_dropped = 0;

  int64_t rows() const { return offsets.empty() ? 0 : offsets.back(); }
  int64_t expert_rows(int64_t e) const { return offsets[e + 1] - offsets[e]; }
  bool kept(int64_t n, int64_t s) const { return slot_row[n * top_k + s] >= 0; }
};

// topk_idx [N, k] (values in [0, E)), capacity (-1 = unlimited; see expert_capacity) -> plan.
inline DispatchPlan make_dispatch_plan(TensorView<const int32_t> topk_idx, int64_t E,
                                       int64_t capacity = -1) {
  check_shape("make_dispatch_plan", "topk_idx", topk_idx, {-1, -1}, "[N, k]");
  check(E >= 1, "make_dispatch_plan: E = ", E, " must be >= 1");
  const int64_t N = topk_idx.size(0), k = topk_idx.size(1);
  DispatchPlan p;
  p.num_tokens = N;
  p.top_k = k;
  p.num_experts = E;
  p.capacity = capacity < 0 ? -1 : capacity;
  p.counts.assign(E, 0);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t s = 0; s < k; ++s) {
      const int32_t e = topk_idx(n, s);
      check(e >= 0 && e < E, "make_dispatch_plan: topk_idx[", n, ", ", s, "] = ", e,
            " out of range [0, E = ", E, ")");
      ++p.counts[e];
    }
  }
  p.offsets.assign(E + 1, 0);
  p.dropped.assign(E, 0);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t rows = p.capacity < 0 ? p.counts[e] : std::min(p.counts[e], p.capacity);
    p.dropped[e] = p.counts[e] - rows;
    p.num_dropped += p.dropped[e];
    p.offsets[e + 1] = p.offsets[e] + rows;
  }
  const int64_t R = p.offsets[E];
  p.row_token.resize(R);
  p.row_slot.resize(R);
  p.slot_row.assign(N * k, -1);
  std::vector<int64_t> next(p.offsets.begin(), p.offsets.end() - 1);  // next free row per expert
  for (int64_t s = 0; s < k; ++s) {  // slot-major: the capacity priority order
    for (int64_t n = 0; n < N; ++n) {
      const int32_t e = topk_idx(n, s);
      if (next[e] == p.offsets[e + 1]) continue;  // expert full: dropped
      const int64_t r = next[e]++;
      p.row_token[r] = static_cast<int32_t>(n);
      p.row_slot[r] = static_cast<int32_t>(s);
      p.slot_row[n * k + s] = r;
    }
  }
  return p;
}

// xs [R, d] = the rows of x [N, d] in plan order.
template <class T>
void dispatch_rows(TensorView<const T> x, const DispatchPlan& plan, TensorView<T> xs,
                   int num_threads = 0) {
  check_shape("dispatch_rows", "x", x, {plan.num_tokens, -1}, "[N, d]");
  const int64_t d = x.size(1), R = plan.rows();
  check_shape("dispatch_rows", "xs", xs, {R, d}, "[R, d]");
  check_inner_contiguous("dispatch_rows", "x", x);
  check_inner_contiguous("dispatch_rows", "xs", xs);
  parallel_for(
      0, R,
      [&](int64_t r) {
        const T* src = x.ptr(plan.row_token[r]);
        std::copy(src, src + d, xs.ptr(r));
      },
      num_threads, std::max<int64_t>(1, 16384 / std::max<int64_t>(d, 1)));
}

// y [N, d] = beta * y + sum over kept slots of topk_weight[n, s] * out[slot_row(n, s)],
// out [R, d]. beta is 0 (y is overwritten, never read) or 1 (added to, e.g. a shared expert).
template <class T>
void combine_rows(TensorView<const T> out, TensorView<const T> topk_weight,
                  const DispatchPlan& plan, TensorView<T> y, T beta, int num_threads = 0) {
  const int64_t N = plan.num_tokens, k = plan.top_k, R = plan.rows();
  check_shape("combine_rows", "out", out, {R, -1}, "[R, d]");
  const int64_t d = out.size(1);
  check_shape("combine_rows", "topk_weight", topk_weight, {N, k}, "[N, k]");
  check_shape("combine_rows", "y", y, {N, d}, "[N, d]");
  check_inner_contiguous("combine_rows", "out", out);
  check_inner_contiguous("combine_rows", "y", y);
  check(beta == T(0) || beta == T(1), "combine_rows: beta = ", beta, " must be 0 or 1");
  parallel_for(
      0, N,
      [&](int64_t n) {
        T* yr = y.ptr(n);
        if (beta == T(0)) std::fill(yr, yr + d, T(0));
        for (int64_t s = 0; s < k; ++s) {
          const int64_t r = plan.slot_row[n * k + s];
          if (r >= 0) simd::axpy(topk_weight(n, s), out.ptr(r), yr, d);  // y += w out_r
        }
      },
      num_threads, std::max<int64_t>(1, 16384 / std::max<int64_t>(d * k, 1)));
}

}  // namespace effattn::moe
