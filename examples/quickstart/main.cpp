// quickstart: include the header, make tensors, call kernels, print what came out.
// Softmax attention for one head, written with the building blocks every op uses:
// the gemm helper for S = scale Q K^T and O = P V, the SIMD row softmax in between.
#include <effattn/effattn.hpp>

#include <cmath>
#include <cstdio>
#include <random>

int main() {
  using namespace effattn;
  const int64_t T = 7, K = 16, V = 16;
  Tensor<float> q({T, K}), k({T, K}), v({T, V}), s({T, T}), o({T, V});
  std::mt19937 rng(0);
  std::normal_distribution<float> dist;
  for (auto* t : {&q, &k, &v})
    for (int64_t i = 0; i < t->numel(); ++i) t->data()[i] = dist(rng);

  const float scale = 1.0f / std::sqrt(float(K));
  gemm<float>(q.view(), Trans::kNo, k.view(), Trans::kYes, s.view(), scale);  // S = scale Q K^T
  for (int64_t i = 0; i < T; ++i) {
    for (int64_t j = i + 1; j < T; ++j) s(i, j) = -INFINITY;  // causal mask
    simd::softmax(&s(i, 0), T);
  }
  gemm<float>(s.view(), Trans::kNo, v.view(), Trans::kNo, o.view());  // O = P V

  std::printf("effattn quickstart (SIMD: %s, threads: %d)\n", simd::isa_name(), get_num_threads());
  for (int64_t t = 0; t < T; ++t)
    std::printf("o[%lld, 0:4] = % .4f % .4f % .4f % .4f\n", static_cast<long long>(t), o(t, 0),
                o(t, 1), o(t, 2), o(t, 3));
  return 0;
}
