// roofline: the machine's same-run ceilings that every other figure is read against.
//   fma    — the float FMA peak from registers (no memory), 1 and 2 threads
//   sgemm  — Eigen's dense product (OpenBLAS's with -DEFFATTN_USE_BLAS=ON), 1024^3 and 2048^3
//   triad  — a[i] = b[i] + s c[i] over 3 x 256 MiB, GB/s (memory bandwidth)
// each on 1 and 2 threads.
#include "bench_common.hpp"

BENCHMARK(effattn::bench::roofline_fma)
    ->ArgNames({"threads"})
    ->Arg(1)
    ->Arg(2)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(effattn::bench::roofline_sgemm)
    ->ArgNames({"n", "threads"})
    ->ArgsProduct({{1024, 2048}, {1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(effattn::bench::roofline_triad)
    ->ArgNames({"MiB", "threads"})
    ->ArgsProduct({{256}, {1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

BENCHMARK_MAIN();
