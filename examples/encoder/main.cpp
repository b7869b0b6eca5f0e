// encoder: encodes a seeded sequence of tokens with a bidirectional encoder (non-causal softmax,
// windowed and Based linear attention blocks), then classifies a shorter query sequence with a
// cross-attention head over the encoding. Prints encode tokens/s and the shapes. See encoder.hpp.
#include "encoder/encoder.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common/run.hpp"

static const char* kUsage =
    "usage: encoder [--weights FILE] [--save FILE] [--prompt N] [--queries N] [--threads N]\n"
    "               [--seed N]\n"
    "  --prompt N    tokens encoded per sequence (default 1024)\n"
    "  --queries N   query tokens of the cross-attention head (default prompt / 8)\n"
    "  --weights, --save, --threads, --seed as every example (examples/common/run.hpp);\n"
    "  --generate is ignored: an encoder reads its whole input at once.\n";

int main(int argc, char** argv) {
  using namespace effattn;
  using namespace effattn::examples;
  const Args a = parse_args(argc, argv, kUsage);
  bool prompt_given = false;
  for (int i = 1; i < argc; ++i) prompt_given |= std::strcmp(argv[i], "--prompt") == 0;
  const int64_t T = prompt_given ? a.prompt : 1024;
  int64_t Tq = std::max<int64_t>(1, T / 8);
  for (std::size_t i = 0; i + 1 < a.extra.size(); ++i)
    if (a.extra[i] == "--queries") Tq = std::atoll(a.extra[i + 1].c_str());
  if (Tq < 1) {
    std::fprintf(stderr, "encoder: --queries must be >= 1\n%s", kUsage);
    return 2;
  }

  EncoderConfig c;  // d 512, 8 heads of 64, blocks "ALWL", window 128, learned positions
  c.max_positions = std::max<int64_t>(c.max_positions, T);
  Encoder<float> model(c);
  model.init_random(a.seed);
  load_or_save(model, a);

  Tensor<int32_t> ids({1, T}), qids({1, Tq});
  const std::vector<int32_t> p = random_prompt(T, c.vocab, a.seed);
  const std::vector<int32_t> q = random_prompt(Tq, c.vocab, a.seed + 1);
  std::copy(p.begin(), p.end(), ids.data());
  std::copy(q.begin(), q.end(), qids.data());

  std::printf(
      "encoder: %s of weights, d %lld, %lld heads, blocks %s (A full, W window %lld, "
      "L Based linear), %d threads, SIMD %s\n",
      human_bytes(double(model.weight_bytes())).c_str(), (long long)c.hidden,
      (long long)c.num_heads, c.blocks.c_str(), (long long)c.window, get_num_threads(),
      simd::isa_name());
  Tensor<float> enc({1, T, c.hidden}), logits({1, Tq, c.num_labels});
  model.encode(ids, enc);  // warm-up (first touch of the buffers)
  const int reps = 3;
  auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; ++r) model.encode(ids, enc);
  const double enc_s = seconds_since(t0) / reps;
  t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; ++r) model.classify(qids, enc, logits);
  const double head_s = seconds_since(t0) / reps;

  std::printf("encode:  ids [1, %lld] -> enc [1, %lld, %lld] in %.1f ms (%.0f tokens/s)\n",
              (long long)T, (long long)T, (long long)c.hidden, enc_s * 1e3, double(T) / enc_s);
  std::printf(
      "head:    query ids [1, %lld] over enc [1, %lld, %lld] -> logits [1, %lld, %lld] "
      "in %.2f ms\n",
      (long long)Tq, (long long)T, (long long)c.hidden, (long long)Tq, (long long)c.num_labels,
      head_s * 1e3);
  std::printf("logits[0, 0, :]:");
  for (int64_t i = 0; i < c.num_labels; ++i) std::printf(" % .4f", logits(0, 0, i));
  std::printf("\n");
  return 0;
}
