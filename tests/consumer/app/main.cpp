// Builds against effattn as an installed or vendored package and runs one kernel.
#include <effattn/effattn.hpp>

#include <cmath>
#include <cstdio>

int main() {
  effattn::Tensor<float> x({1, 5});
  for (int i = 0; i < 5; ++i) x(0, i) = static_cast<float>(i);
  const float lse = effattn::simd::softmax(x.data(), 5);
  float sum = 0;
  for (int i = 0; i < 5; ++i) sum += x(0, i);
  std::printf("softmax sum %.6f lse %.6f\n", sum, lse);
  return std::abs(sum - 1.0f) < 1e-5f && std::abs(lse - 4.4519143f) < 1e-5f ? 0 : 1;
}
