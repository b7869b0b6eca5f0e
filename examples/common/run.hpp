// What every example model shares: the command line, a seeded prompt, greedy sampling, and the
// prefill-then-generate loop that prints tokens/s and the bytes of state the model holds.
//
// A model (llama2.c's run.c shape: Config / weights / State / forward) plugs in with
//   Model::State  make_state(int64_t batch, int64_t capacity) const;
//   void          forward(TensorView<const int32_t> ids [B, T], State&, TensorView<float> logits
//                         [B, T, vocab]) const;   // continues from the state, leaves it after T
//   int64_t       vocab() const;  int64_t weight_bytes() const;  State::bytes()
// and run_model(model, args) does the rest. Command line of every example:
//   --weights FILE     load a safetensors checkpoint (names as the model's header says) instead
//                      of the seeded random initialisation
//   --save FILE        write the model's weights (what --weights reads back)
//   --prompt N         prompt tokens (prefill, one forward call)          default 64
//   --generate N       tokens generated one by one after the prompt        default 32
//   --threads N        threads (0: OpenMP's default)                       default 0
//   --seed N           seed of the random weights and the prompt          default 1
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <effattn/effattn.hpp>
#include <effattn/layers/layers.hpp>

namespace effattn::examples {

struct Args {
  std::string weights, save;
  int64_t prompt = 64, generate = 32;
  int threads = 0;
  uint64_t seed = 1;
  std::vector<std::string> extra;  // flags the example handles itself (e.g. --compare)
};

// Parses the common flags; anything else goes to Args::extra. Exits with the usage on --help.
inline Args parse_args(int argc, char** argv, const char* usage) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s: %s needs a value\n%s", argv[0], f.c_str(), usage);
        std::exit(2);
      }
      return argv[++i];
    };
    if (f == "--help" || f == "-h") {
      std::printf("%s", usage);
      std::exit(0);
    } else if (f == "--weights") {
      a.weights = value();
    } else if (f == "--save") {
      a.save = value();
    } else if (f == "--prompt") {
      a.prompt = std::atoll(value().c_str());
    } else if (f == "--generate") {
      a.generate = std::atoll(value().c_str());
    } else if (f == "--threads") {
      a.threads = std::atoi(value().c_str());
    } else if (f == "--seed") {
      a.seed = std::strtoull(value().c_str(), nullptr, 10);
    } else {
      a.extra.push_back(f);
    }
  }
  if (a.prompt < 1 || a.generate < 0) {
    std::fprintf(stderr, "%s: --prompt must be >= 1 and --generate >= 0\n%s", argv[0], usage);
    std::exit(2);
  }
  set_num_threads(a.threads);
  return a;
}

inline bool has_flag(const Args& a, const char* flag) {
  return std::find(a.extra.begin(), a.extra.end(), flag) != a.extra.end();
}

// A reproducible prompt of n token ids in [0, vocab) (splitmix64 of seed and position).
inline std::vector<int32_t> random_prompt(int64_t n, int64_t vocab, uint64_t seed) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    uint64_t z = seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(i) + 1;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    ids[static_cast<size_t>(i)] = static_cast<int32_t>((z ^ (z >> 31)) % uint64_t(vocab));
  }
  return ids;
}

// Greedy sampling: the index of the largest logit (the first one on ties).
inline int32_t argmax(const float* logits, int64_t n) {
  return static_cast<int32_t>(std::max_element(logits, logits + n) - logits);
}

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

inline std::string human_bytes(double b) {
  const char* unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", b, unit[u]);
  return buf;
}

// Prefills a seeded prompt in one forward call, then generates greedily token by token;
// prints the generated ids, prefill and decode tokens/s, and the state's bytes. Returns 0.
template <class Model>
int run_model(const Model& model, const Args& a, const char* name) {
  const int64_t V = model.vocab(), P = a.prompt, G = a.generate;
  auto state = model.make_state(1, P + G);
  const std::vector<int32_t> prompt = random_prompt(P, V, a.seed);
  std::printf("%s: %s of weights, vocab %lld, %d threads, SIMD %s\n", name,
              human_bytes(double(model.weight_bytes())).c_str(), (long long)V, get_num_threads(),
              simd::isa_name());

  Tensor<int32_t> ids({1, P});
  std::copy(prompt.begin(), prompt.end(), ids.data());
  Tensor<float> logits({1, P, V});
  {  // untimed warm-up on a throwaway state: the first call pays one-time costs (page faults)
    auto warm = model.make_state(1, P + G);
    model.forward(ids, warm, logits);
  }
  auto t0 = std::chrono::steady_clock::now();
  model.forward(ids, state, logits);
  const double prefill_s = seconds_since(t0);

  Tensor<int32_t> next({1, 1});
  Tensor<float> step({1, 1, V});
  next.data()[0] = argmax(logits.data() + (P - 1) * V, V);
  std::printf("generated:");
  t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < G; ++i) {
    std::printf(" %d", next.data()[0]);
    model.forward(next, state, step);
    next.data()[0] = argmax(step.data(), V);
  }
  const double decode_s = seconds_since(t0);
  std::printf("\nprefill: %lld tokens in %.1f ms (%.0f tokens/s)\n", (long long)P, prefill_s * 1e3,
              double(P) / prefill_s);
  if (G > 0)
    std::printf("decode:  %lld tokens in %.1f ms (%.1f tokens/s, %.2f ms/token)\n", (long long)G,
                decode_s * 1e3, double(G) / decode_s, decode_s * 1e3 / double(G));
  std::printf("state:   %s after %lld tokens\n", human_bytes(double(state.bytes())).c_str(),
              (long long)(P + G));
  return 0;
}

// --weights / --save handling shared by the examples: load replaces the random init.
template <class Model>
void load_or_save(Model& model, const Args& a) {
  if (!a.weights.empty()) {
    model.load(io::SafeTensors::open(a.weights));
    std::printf("loaded weights from %s\n", a.weights.c_str());
  }
  if (!a.save.empty()) {
    io::SafeTensorsWriter w;
    model.save(w);
    w.save(a.save);
    std::printf("saved weights to %s\n", a.save.c_str());
  }
}

}  // namespace effattn::examples
