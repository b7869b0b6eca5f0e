// quickstart: include the header, make [B, T, H, D] tensors, call an op, print what came out.
// Causal grouped-query attention (8 query heads sharing 2 key/value heads), then the same with a
// sliding window of 16 keys, each checked against the library's naive reference.
#include <effattn/effattn.hpp>

#include <cmath>
#include <cstdio>
#include <random>

int main() {
  using namespace effattn;
  const int64_t B = 1, T = 100, Hq = 8, Hkv = 2, K = 64, V = 64;
  Tensor<float> q({B, T, Hq, K}), k({B, T, Hkv, K}), v({B, T, Hkv, V});
  std::mt19937 rng(0);
  std::normal_distribution<float> normal;
  for (auto* t : {&q, &k, &v})
    for (int64_t i = 0; i < t->numel(); ++i) t->data()[i] = normal(rng);

  std::printf("effattn quickstart (SIMD: %s, threads: %d)\n", simd::isa_name(), get_num_threads());
  for (int64_t window : {int64_t(-1), int64_t(16)}) {
    AttentionParams p;
    p.causal = true;
    p.window_left = window;  // -1: full causal; 16: each query sees itself and 16 keys before
    Tensor<float> o({B, T, Hq, V}), lse({B, T, Hq}), o_ref({B, T, Hq, V});
    attention<float>(q, k, v, o, p, lse);       // tiled flash-attention kernel
    attention_naive<float>(q, k, v, o_ref, p);  // full score matrix, for comparison
    double err = 0;
    for (int64_t i = 0; i < o.numel(); ++i)
      err = std::max(err, double(std::abs(o.data()[i] - o_ref.data()[i])));
    std::printf("\n%s: o [%lld, %lld, %lld, %lld], max |fast - naive| = %.2e\n",
                window < 0 ? "causal GQA" : "sliding window 16", (long long)B, (long long)T,
                (long long)Hq, (long long)V, err);
    for (int64_t t : {int64_t(0), int64_t(1), T - 1})
      std::printf("  t=%-3lld head 0: o[0:4] = % .4f % .4f % .4f % .4f  lse = %.4f\n", (long long)t,
                  o(0, t, 0, 0), o(0, t, 0, 1), o(0, t, 0, 2), o(0, t, 0, 3), lse(0, t, 0));
  }
  return 0;
}
