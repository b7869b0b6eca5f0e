// Softmax attention benchmarks, beside the same-run roofline (sgemm GFLOP/s, triad GB/s).
//
// Code paths:
//   prefill_causal   attention() -> tiled prefill kernel (attention_prefill_run), causal,
//                    B=1, Hq=8, Hkv in {2, 8}, K=V=128. GFLOP/s counts 4*Tq*Tk*K per head,
//                    halved for causal.
//   prefill_full     the same kernel, non-causal (every tile unmasked).
//   sliding_window   the prefill kernel with window_left = W-1, causal: hidden tiles are skipped,
//                    so the time per token is flat in T. GFLOP/s counts the visible pairs.
//   prefill_long     the prefill kernel at T = 65536 (Hq = Hkv = 1, K = 64): no T^2 buffer.
//   decode           attention() with Tq = 1 -> split-K decode path (attention_decode_run),
//                    Hq=32, Hkv=8, K=V=128, float or bf16 keys/values. GB/s counts the K and V
//                    bytes read once.
//   decode_cache     cached_attention() on a KVCache holding Tk tokens (the cache's own storage,
//                    one new token appended per call, then truncated back): the decode path as
//                    a model runs it; Hq=32, Hkv=8, K=V=128, float or bf16 cache. GB/s counts
//                    the K and V bytes of the Tk + 1 cached tokens. Tk = 1024 (8 MB float)
//                    stays in L3: the kernel's compute rate. decode_cache_mha: Hq = Hkv = 8.
//   decode_read      no attention: the sum of every float of decode's K and V caches, the read
//                    ceiling of decode on this machine (GB/s counts bytes read, like decode).
#include <sys/resource.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "bench_common.hpp"
#include "effattn/ops/attention/attention.hpp"
#include "effattn/ops/attention/kv_cache.hpp"

using namespace effattn;

namespace {

// Args: {T, Hkv, threads, causal}
void prefill(benchmark::State& state) {
  const int64_t T = state.range(0), Hkv = state.range(1), Hq = 8, D = 128;
  const bool causal = state.range(3) != 0;
  bench::use_threads(static_cast<int>(state.range(2)));
  const Tensor<float> q = bench::random_tensor<float>({1, T, Hq, D}, 1);
  const Tensor<float> k = bench::random_tensor<float>({1, T, Hkv, D}, 2);
  const Tensor<float> v = bench::random_tensor<float>({1, T, Hkv, D}, 3);
  Tensor<float> o({1, T, Hq, D});
  AttentionParams p;
  p.causal = causal;
  for (auto _ : state) {
    attention<float>(q, k, v, o, p);
    benchmark::DoNotOptimize(o.data());
  }
  const double pairs = causal ? 0.5 * double(T) * double(T) : double(T) * double(T);
  bench::set_rates(state, 4.0 * pairs * D * Hq);
}

// Args: {T, threads}. One long causal prefill, Hq = Hkv = 1, K = V = 64: the kernel holds one
// score tile per thread and O(T K) packed keys / values, never a [T, T] matrix (a float T^2
// at T = 65536 would be 16 GiB); the peak resident set size is reported as "maxrss_MiB".
void prefill_long(benchmark::State& state) {
  const int64_t T = state.range(0), D = 64;
  bench::use_threads(static_cast<int>(state.range(1)));
  const Tensor<float> q = bench::random_tensor<float>({1, T, 1, D}, 1);
  const Tensor<float> k = bench::random_tensor<float>({1, T, 1, D}, 2);
  const Tensor<float> v = bench::random_tensor<float>({1, T, 1, D}, 3);
  Tensor<float> o({1, T, 1, D});
  AttentionParams p;
  p.causal = true;
  for (auto _ : state) {
    attention<float>(q, k, v, o, p);
    benchmark::DoNotOptimize(o.data());
  }
  bench::set_rates(state, 4.0 * 0.5 * double(T) * double(T) * D);
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  state.counters["maxrss_MiB"] = double(ru.ru_maxrss) / 1024.0;
}

// Args: {T, W, threads}
void sliding_window(benchmark::State& state) {
  const int64_t T = state.range(0), W = state.range(1), Hq = 8, Hkv = 2, D = 128;
  bench::use_threads(static_cast<int>(state.range(2)));
  const Tensor<float> q = bench::random_tensor<float>({1, T, Hq, D}, 1);
  const Tensor<float> k = bench::random_tensor<float>({1, T, Hkv, D}, 2);
  const Tensor<float> v = bench::random_tensor<float>({1, T, Hkv, D}, 3);
  Tensor<float> o({1, T, Hq, D});
  AttentionParams p;
  p.causal = true;
  p.window_left = W - 1;
  for (auto _ : state) {
    attention<float>(q, k, v, o, p);
    benchmark::DoNotOptimize(o.data());
  }
  double pairs = 0;  // visible (query, key) pairs
  for (int64_t i = 0; i < T; ++i) pairs += double(std::min<int64_t>(i + 1, W));
  bench::set_rates(state, 4.0 * pairs * D * Hq);
  state.counters["sec/token"] = benchmark::Counter(
      double(T), benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}

// Args: {Tk, threads}
template <class KV>
void decode(benchmark::State& state) {
  const int64_t Tk = state.range(0), Hq = 32, Hkv = 8, D = 128;
  bench::use_threads(static_cast<int>(state.range(1)));
  const Tensor<float> q = bench::random_tensor<float>({1, 1, Hq, D}, 1);
  const Tensor<float> kf = bench::random_tensor<float>({1, Tk, Hkv, D}, 2);
  const Tensor<float> vf = bench::random_tensor<float>({1, Tk, Hkv, D}, 3);
  Tensor<KV> k({1, Tk, Hkv, D}), v({1, Tk, Hkv, D});
  for (int64_t i = 0; i < k.numel(); ++i) {
    k.data()[i] = KV(kf.data()[i]);
    v.data()[i] = KV(vf.data()[i]);
  }
  Tensor<float> o({1, 1, Hq, D});
  AttentionParams p;
  p.causal = true;
  for (auto _ : state) {
    attention<float, KV>(q, k, v, o, p);
    benchmark::DoNotOptimize(o.data());
  }
  bench::set_rates(state, 4.0 * double(Tk) * D * Hq, 2.0 * double(Tk) * Hkv * D * sizeof(KV));
}

// Args: {Tk, threads}. One decode step through a KVCache<KV> that holds Tk tokens; Hkv = 8,
// Hq = 8 G (G = 4: GQA as in Llama-3-8B; G = 1: multi-head attention).
template <class KV, int G = 4>
void decode_cache(benchmark::State& state) {
  const int64_t Tk = state.range(0), Hq = 8 * G, Hkv = 8, D = 128;
  bench::use_threads(static_cast<int>(state.range(1)));
  const Tensor<float> q = bench::random_tensor<float>({1, 1, Hq, D}, 1);
  const Tensor<float> kn = bench::random_tensor<float>({1, 1, Hkv, D}, 4);
  const Tensor<float> vn = bench::random_tensor<float>({1, 1, Hkv, D}, 5);
  KVCache<KV> cache(1, Hkv, D, D, Tk + 1);
  cache.template append<float>(bench::random_tensor<float>({1, Tk, Hkv, D}, 2),
                               bench::random_tensor<float>({1, Tk, Hkv, D}, 3));
  Tensor<float> o({1, 1, Hq, D});
  for (auto _ : state) {
    cache.truncate(Tk);
    cached_attention<float, KV>(q, kn, vn, cache, o);
    benchmark::DoNotOptimize(o.data());
  }
  bench::set_rates(state, 4.0 * double(Tk + 1) * D * Hq,
                   2.0 * double(Tk + 1) * Hkv * D * sizeof(KV));
}

// Args: {Tk, threads}. The read ceiling of decode: the sum of every float of the decode case's
// K and V caches ([1, Tk, 8, 128] each), keys split in contiguous halves across threads. GB/s
// counts the bytes read, as decode does (the triad counts 2 reads + 1 write, and the write
// also costs a read for ownership, so a pure read usually streams faster than the triad).
void decode_read(benchmark::State& state) {
  const int64_t Tk = state.range(0), Hkv = 8, D = 128, n = Tk * Hkv * D;
  const int threads = static_cast<int>(state.range(1));
  bench::use_threads(threads);
  const Tensor<float> k = bench::random_tensor<float>({1, Tk, Hkv, D}, 2);
  const Tensor<float> v = bench::random_tensor<float>({1, Tk, Hkv, D}, 3);
  std::vector<float> part(static_cast<std::size_t>(threads) * 16);
  for (auto _ : state) {
    parallel_for(
        0, threads,
        [&](int64_t t) {
          const int64_t lo = n * t / threads, hi = n * (t + 1) / threads;
          const float *pk = k.data(), *pv = v.data();
          int64_t i = lo;
          float s = 0;
#if EFFATTN_HAS_SIMD
          simd::Vec<float> a(0.f), b(0.f), c(0.f), d(0.f);
          constexpr int64_t L = simd::kLanes<float>;
          for (; i + 2 * L <= hi; i += 2 * L) {  // s += k[i] + v[i]
            a += simd::load(pk + i);
            b += simd::load(pv + i);
            c += simd::load(pk + i + L);
            d += simd::load(pv + i + L);
          }
          s = simd::hsum(a + b + c + d);
#endif
          for (; i < hi; ++i) s += pk[i] + pv[i];
          part[static_cast<std::size_t>(t) * 16] = s;
        },
        threads);
    benchmark::DoNotOptimize(part.data());
  }
  bench::set_rates(state, 0, 2.0 * double(n) * sizeof(float));
}

}  // namespace

EFFATTN_BENCH_ROOFLINE();

BENCHMARK(prefill)
    ->ArgNames({"T", "Hkv", "threads", "causal"})
    ->ArgsProduct({{512, 2048, 4096, 8192}, {2, 8}, {1, 2}, {1}})
    ->Args({4096, 8, 2, 0})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(sliding_window)
    ->ArgNames({"T", "W", "threads"})
    ->ArgsProduct({{4096, 32768}, {1024}, {1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(prefill_long)
    ->ArgNames({"T", "threads"})
    ->Args({65536, 2})
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(decode<float>)
    ->Name("decode_f32")
    ->ArgNames({"Tk", "threads"})
    ->ArgsProduct({{8192, 32768}, {1, 2}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK(decode_read)
    ->ArgNames({"Tk", "threads"})
    ->ArgsProduct({{8192, 32768}, {1, 2}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK(decode<bf16>)
    ->Name("decode_bf16")
    ->ArgNames({"Tk", "threads"})
    ->ArgsProduct({{8192, 32768}, {1, 2}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK(decode_cache<float>)
    ->Name("decode_cache_f32")
    ->ArgNames({"Tk", "threads"})
    ->ArgsProduct({{1024, 8192, 32768}, {1, 2}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK(decode_cache<float, 1>)
    ->Name("decode_cache_mha_f32")
    ->ArgNames({"Tk", "threads"})
    ->ArgsProduct({{1024, 32768}, {1, 2}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK(decode_cache<bf16>)
    ->Name("decode_cache_bf16")
    ->ArgNames({"Tk", "threads"})
    ->ArgsProduct({{1024, 8192, 32768}, {1, 2}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK_MAIN();
