// parallel_for over index ranges: OpenMP when the build has it, serial otherwise.
//
// Thread count: a process-wide default (set_num_threads, 0 = OpenMP's default) and a per-call
// override. Work items must be independent so results never depend on the thread count.
// Nested calls (a parallel_for inside a worker) run serially.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace effattn {

namespace detail {
inline std::atomic<int>& global_threads() {
  static std::atomic<int> n{0};
  return n;
}
}  // namespace detail

// Process-wide default thread count for effattn ops; 0 means "what OpenMP would use".
inline void set_num_threads(int n) { detail::global_threads().store(std::max(0, n)); }

// Threads an op with per-call knob `requested` (0 = the global default) will use.
inline int get_num_threads(int requested = 0) {
  int n = requested > 0 ? requested : detail::global_threads().load();
#if defined(_OPENMP)
  if (n <= 0) n = omp_get_max_threads();
  if (omp_in_parallel()) n = 1;
#else
  n = 1;
#endif
  return std::max(1, n);
}

// Calls f(i) for every i in [begin, end). Dynamic schedule in blocks of `grain` indices.
// An exception thrown by f is rethrown on the calling thread (the first one wins).
template <class F>
void parallel_for(int64_t begin, int64_t end, F&& f, int num_threads = 0, int64_t grain = 1) {
  if (end <= begin) return;
  const int64_t n = end - begin;
  grain = std::max<int64_t>(1, grain);
  const int64_t nblocks = (n + grain - 1) / grain;
  const int threads = static_cast<int>(std::min<int64_t>(get_num_threads(num_threads), nblocks));
  if (threads <= 1) {
    for (int64_t i = begin; i < end; ++i) f(i);
    return;
  }
#if defined(_OPENMP)
  std::exception_ptr err;
  std::mutex mu;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int64_t blk = 0; blk < nblocks; ++blk) {
    const int64_t lo = begin + blk * grain, hi = std::min(end, lo + grain);
    try {
      for (int64_t i = lo; i < hi; ++i) f(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!err) err = std::current_exception();
    }
  }
  if (err) std::rethrow_exception(err);
#endif
}

// Calls f(lo, hi) on contiguous sub-ranges that cover [begin, end), at most one per thread
// (static split). Use when a worker wants per-range scratch.
template <class F>
void parallel_for_range(int64_t begin, int64_t end, F&& f, int num_threads = 0) {
  if (end <= begin) return;
  const int64_t n = end - begin;
  const int threads = static_cast<int>(std::min<int64_t>(get_num_threads(num_threads), n));
  if (threads <= 1) {
    f(begin, end);
    return;
  }
  parallel_for(
      0, threads,
      [&](int64_t t) {
        const int64_t lo = begin + n * t / threads, hi = begin + n * (t + 1) / threads;
        if (lo < hi) f(lo, hi);
      },
      threads);
}

}  // namespace effattn
