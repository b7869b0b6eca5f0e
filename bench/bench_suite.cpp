// The benchmark suite behind bench/report.py: every mixer of the library at one width, so that
// their costs can be compared at a glance (prefill time vs T, decode time vs context, state
// bytes, efficiency length, rates against the same-run roofline).
//
// Mixers (H = 16 heads of size 128 everywhere, B = 1, float, all threads):
//   flash        attention(), causal, Hkv = H                  (ops/attention prefill / decode)
//   swa          attention(), causal, window_left = W - 1, W = 1024; decode reads the W-row ring
//   linear_attn  linear_attention(), identity feature map, no normaliser
//   simple_gla   simple_gla(), scalar decay g [B, T, H]
//   gla          gla(), per-channel decay g [B, T, H, K]
//   gdn          gated_delta_rule(), q/k L2-normalised in the op, beta in (0, 1)
//   kda          kda(), per-channel decay
//   ssd          ssd() (Mamba-2), P = 128, N = 128, one group
//   mamba1       selective_scan() (Mamba-1) at the same width: d_inner = H * 128 = 2048, N = 16
// Cases: prefill/<mixer>/T:<T> (one forward over T tokens, no state in) and decode/<mixer>/ctx:<c>
// (one token; for attention from a cache of c tokens, for the recurrent mixers from the state a
// prefill of c tokens left behind, so "flat in c" is measured, not assumed). Each case reports
// its FLOPs and bytes (counters GFLOP, GB as rates; flops, bytes, state_bytes, T, ctx raw).
//
// FLOP conventions (documented in the report; independent of how an op computes): attention
// 4 * pairs * D per head; the linear-time mixers the FLOPs of their recurrent form per token and
// head (4 K V for the gated linear family, 7 K V for the delta rule, 9 d N per token for the
// Mamba-1 scan), so a chunked form's "effective" rate compares across mixers and with sgemm.
// Decode bytes: the cache or state read (and written back).
//
// Flags (before Google Benchmark's own): --suite=tiny|default|full picks the grids: default
// T = 256..65536 and ctx = 1K..64K (a few minutes on 2 cores), full T to 128K and ctx to 256K.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "effattn/effattn.hpp"

using namespace effattn;

namespace {

constexpr int64_t kH = 16, kD = 128, kWindow = 1024, kScanD = kH * kD, kScanN = 16;

// Fast deterministic fill (splitmix64): the large cases allocate ~2 GiB of inputs and the
// Mersenne twister in bench_common would take seconds per case.
Tensor<float> fill(const Shape& shape, uint64_t seed, float lo = -1.f, float hi = 1.f) {
  Tensor<float> t(shape);
  float* p = t.data();
  const int64_t n = t.numel();
  parallel_for_range(0, n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      uint64_t z = seed * 0x9E3779B97F4A7C15ull + uint64_t(i) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      z ^= z >> 31;
      p[i] = lo + (hi - lo) * float(z >> 40) * (1.f / 16777216.f);
    }
  });
  return t;
}

void counters(benchmark::State& st, double flops, double bytes, double state_bytes, int64_t T,
              int64_t ctx) {
  bench::set_rates(st, flops, bytes);
  st.counters["flops"] = flops;
  st.counters["bytes"] = bytes;
  st.counters["state_bytes"] = state_bytes;
  st.counters["T"] = double(T);
  st.counters["ctx"] = double(ctx);
  st.counters["threads"] = double(get_num_threads(0));
}

// Effective FLOPs of a linear-time mixer over T tokens, all heads (see the header comment).
double linear_flops(const std::string& mixer, int64_t T) {
  if (mixer == "mamba1") return 9.0 * double(T) * kScanD * kScanN;
  const double per_token = (mixer == "gdn" || mixer == "kda") ? 7.0 : 4.0;
  return per_token * double(T) * kH * kD * kD;
}

// ---------------------------------------------------------------------------------------------
// One mixer: inputs for T tokens and a call that runs it with an optional state in / out.
struct Mixer {
  const char* name;
  bool linear;  // linear-time (has an efficiency length)
};
const Mixer kMixers[] = {{"flash", false},     {"swa", false}, {"linear_attn", true},
                         {"simple_gla", true}, {"gla", true},  {"gdn", true},
                         {"kda", true},        {"ssd", true},  {"mamba1", true}};

// Inputs of a recurrent mixer for T tokens, and its state.
struct Recurrent {
  std::string mixer;
  Tensor<float> q, k, v, g, beta, A, D, bias, S;
  Recurrent(const std::string& m, int64_t T, uint64_t seed) : mixer(m) {
    if (m == "mamba1") {
      q = fill({1, T, kScanD}, seed + 1);               // u
      k = fill({1, T, kScanD}, seed + 2, -0.5f, 0.5f);  // delta (before softplus + bias)
      v = fill({1, T, kScanD}, seed + 3);               // z
      g = fill({1, T, kScanN}, seed + 4);               // B
      beta = fill({1, T, kScanN}, seed + 5);            // C
      A = Tensor<float>({kScanD, kScanN});              // S4D-real init: A = -(1..N)
      for (int64_t d = 0; d < kScanD; ++d)
        for (int64_t n = 0; n < kScanN; ++n) A(d, n) = -float(n + 1);
      D = fill({kScanD}, seed + 6);
      bias = fill({kScanD}, seed + 7, -6.9f, -2.25f);
      S = Tensor<float>({1, kScanD, kScanN});
      return;
    }
    const bool ssd_ = m == "ssd";
    q = fill({1, T, ssd_ ? 1 : kH, kD}, seed + 1);  // q (ssd: C)
    k = fill({1, T, ssd_ ? 1 : kH, kD}, seed + 2);  // k (ssd: B)
    v = fill({1, T, kH, kD}, seed + 3);             // v (ssd: x)
    if (m == "simple_gla" || m == "gdn") g = fill({1, T, kH}, seed + 4, -0.1f, 0.f);
    if (m == "gla" || m == "kda") g = fill({1, T, kH, kD}, seed + 4, -0.1f, 0.f);
    if (ssd_) {
      g = fill({1, T, kH}, seed + 4, -3.f, 0.f);  // dt (softplus in the op)
      A = fill({kH}, seed + 5, -2.f, -0.5f);
    }
    if (m == "gdn" || m == "kda") beta = fill({1, T, kH}, seed + 6, 0.f, 1.f);
    S = Tensor<float>({1, kH, kD, kD});
  }
  int64_t state_bytes() const { return S.numel() * int64_t(sizeof(float)); }
  // Runs over all tokens; `carry` uses S as initial state too (decode), else starts from zero.
  void run(Tensor<float>& out, bool carry) {
    TensorView<const float> s0 =
        carry ? TensorView<const float>(S.view()) : TensorView<const float>{};
    if (mixer == "linear_attn") {
      LinearAttentionParams<float> p;
      linear_attention<float>(q, k, v, out, p, s0, S);
    } else if (mixer == "simple_gla") {
      simple_gla<float>(q, k, v, g, out, {}, s0, S);
    } else if (mixer == "gla") {
      gla<float>(q, k, v, g, out, {}, s0, S);
    } else if (mixer == "gdn" || mixer == "kda") {
      DeltaRuleParams<float> p;
      p.use_qk_l2norm = true;
      if (mixer == "gdn")
        gated_delta_rule<float>(q, k, v, beta, g, out, s0, S, p);
      else
        kda<float>(q, k, v, beta, g, out, s0, S, p);
    } else if (mixer == "ssd") {
      SsdParams<float> p;
      p.dt_softplus = true;
      ssd<float>(v, g, A, k, q, {}, {}, {}, out, p, s0, S);
    } else if (mixer == "mamba1") {
      SelectiveScanParams p;
      if (q.size(1) == 1 && carry)
        selective_scan_step<float>(q, k, A, g, beta, D, v, bias, S, out, p);
      else
        selective_scan<float>(q, k, A, g, beta, D, v, bias, s0, out, S, p);
    }
  }
  Tensor<float> make_output(int64_t T) const {
    return mixer == "mamba1" ? Tensor<float>({1, T, kScanD}) : Tensor<float>({1, T, kH, kD});
  }
};

// One untimed call before the timed ones: the first touch of fresh memory (the ops' O(T)
// scratch, e.g. attention's packed K / V) is several times slower on this VM than later calls
// (measured: sliding window at T = 65536 5.1 s first, 2.6 s after). Causal attention at long T
// is compute-bound (minutes), so it skips the warm-up there.
bool warm_up(const std::string& mixer, int64_t T) { return mixer != "flash" || T <= 8192; }

void prefill_case(benchmark::State& st, std::string mixer, int64_t T) {
  const double heads = kH;
  if (mixer == "flash" || mixer == "swa") {
    const Tensor<float> q = fill({1, T, kH, kD}, 1), k = fill({1, T, kH, kD}, 2),
                        v = fill({1, T, kH, kD}, 3);
    Tensor<float> o({1, T, kH, kD});
    AttentionParams p;
    p.causal = true;
    if (mixer == "swa") p.window_left = kWindow - 1;
    if (warm_up(mixer, T)) attention<float>(q, k, v, o, p);
    for (auto _ : st) {
      attention<float>(q, k, v, o, p);
      benchmark::DoNotOptimize(o.data());
    }
    double pairs = 0;
    for (int64_t i = 0; i < T; ++i)
      pairs += double(mixer == "swa" ? std::min<int64_t>(i + 1, kWindow) : i + 1);
    const double kv_rows = mixer == "swa" ? double(std::min<int64_t>(T, kWindow)) : double(T);
    counters(st, 4.0 * pairs * kD * heads, 4.0 * T * kH * kD * sizeof(float),
             2.0 * kv_rows * kH * kD * sizeof(float), T, 0);
    return;
  }
  Recurrent r(mixer, T, 10);
  Tensor<float> out = r.make_output(T);
  if (warm_up(mixer, T)) r.run(out, false);
  for (auto _ : st) {
    r.run(out, false);
    benchmark::DoNotOptimize(out.data());
  }
  auto nbytes = [](const Tensor<float>& t) { return t.data() ? double(t.numel()) * 4 : 0.0; };
  const double in_bytes =
      nbytes(r.q) + nbytes(r.k) + nbytes(r.v) + nbytes(r.g) + nbytes(r.beta) + nbytes(out);
  const double flops = linear_flops(mixer, T);
  counters(st, flops, in_bytes, double(r.state_bytes()), T, 0);
}

void decode_case(benchmark::State& st, std::string mixer, int64_t ctx) {
  if (mixer == "flash" || mixer == "swa") {
    const int64_t rows = mixer == "swa" ? std::min(ctx, kWindow) : ctx;  // what the cache holds
    const Tensor<float> q = fill({1, 1, kH, kD}, 1), k = fill({1, rows, kH, kD}, 2),
                        v = fill({1, rows, kH, kD}, 3);
    Tensor<float> o({1, 1, kH, kD});
    AttentionParams p;
    p.causal = true;
    if (mixer == "swa") p.window_left = kWindow - 1;
    for (auto _ : st) {
      attention<float>(q, k, v, o, p);
      benchmark::DoNotOptimize(o.data());
    }
    const double cache = 2.0 * rows * kH * kD * sizeof(float);
    counters(st, 4.0 * rows * kD * kH, cache, cache, 1, ctx);
    return;
  }
  {  // the state a prefill of ctx tokens leaves behind (inputs freed before timing)
    Recurrent pre(mixer, ctx, 20);
    Tensor<float> out = pre.make_output(ctx);
    pre.run(out, false);
    Recurrent r(mixer, 1, 30);
    std::memcpy(r.S.data(), pre.S.data(), size_t(r.S.numel()) * sizeof(float));
    Tensor<float> o = r.make_output(1);
    for (auto _ : st) {
      r.run(o, true);
      benchmark::DoNotOptimize(o.data());
    }
    const double sb = double(r.state_bytes());
    const double flops = linear_flops(mixer, 1);
    counters(st, flops, 2.0 * sb, sb, 1, ctx);
  }
}

void register_suite(const std::string& mode) {
  std::vector<int64_t> Ts, ctxs;
  if (mode == "tiny") {
    Ts = {256, 1024};
    ctxs = {256, 2048};
  } else if (mode == "full") {
    for (int64_t t = 256; t <= 131072; t *= 2) Ts.push_back(t);
    for (int64_t c = 1024; c <= 262144; c *= 2) ctxs.push_back(c);
  } else {
    for (int64_t t = 256; t <= 65536; t *= 2) Ts.push_back(t);
    for (int64_t c = 1024; c <= 65536; c *= 4) ctxs.push_back(c);
  }
  benchmark::RegisterBenchmark("roofline/sgemm", bench::roofline_sgemm)
      ->Args({1024, int64_t(get_num_threads(0))})
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  benchmark::RegisterBenchmark("roofline/triad", bench::roofline_triad)
      ->Args({mode == "tiny" ? 64 : 256, int64_t(get_num_threads(0))})
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  for (const Mixer& m : kMixers)
    for (int64_t T : Ts)
      benchmark::RegisterBenchmark(
          ("prefill/" + std::string(m.name) + "/T:" + std::to_string(T)).c_str(), prefill_case,
          std::string(m.name), T)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
  for (const Mixer& m : kMixers)
    for (int64_t c : ctxs)
      benchmark::RegisterBenchmark(
          ("decode/" + std::string(m.name) + "/ctx:" + std::to_string(c)).c_str(), decode_case,
          std::string(m.name), c)
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
}

}  // namespace

int main(int argc, char** argv) {
  std::string mode = "default";
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::strncmp(argv[i], "--suite=", 8) == 0)
      mode = argv[i] + 8;
    else
      args.push_back(argv[i]);
  }
  if (mode != "tiny" && mode != "default" && mode != "full") {
    std::fprintf(stderr, "suite: --suite=%s, expected tiny, default or full\n", mode.c_str());
    return 2;
  }
  int n = int(args.size());
  register_suite(mode);
  benchmark::AddCustomContext("effattn_isa", simd::isa_name());
  benchmark::AddCustomContext("effattn_threads", std::to_string(get_num_threads(0)));
#if defined(__clang__)
  benchmark::AddCustomContext("compiler", std::string("clang ") + __clang_version__);
#elif defined(__GNUC__)
  benchmark::AddCustomContext("compiler", std::string("g++ ") + __VERSION__);
#endif
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
