// based_lm: a Based language model (Taylor linear attention + sliding-window attention + gated
// short convolutions) prefilling a seeded prompt and generating greedily. The model is in
// based_lm.hpp.
//   based_lm                                  small seeded random model (d 256, layers "clwcc")
//   based_lm --based-360m                     hazyresearch/based-360m's shapes, random weights
//   based_lm --based-360m --weights FILE      its checkpoint converted to safetensors (names as
//                                             based_lm.hpp lists them)
#include "based_lm/based_lm.hpp"

#include "common/run.hpp"

int main(int argc, char** argv) {
  using namespace effattn::examples;
  const char* usage =
      "usage: based_lm [--weights FILE] [--save FILE] [--based-360m] [--prompt N] [--generate N]\n"
      "                [--threads N] [--seed N]\n"
      "  --based-360m   based-360m's shapes (d 1024, 27 layers, vocab 50280) with random weights\n"
      "  (--weights loads into the chosen config; see the common flags in run.hpp)\n";
  const Args a = parse_args(argc, argv, usage);
  const BasedLMConfig c =
      has_flag(a, "--based-360m") ? BasedLMConfig::based_360m() : BasedLMConfig::small();
  BasedLM<float> model(c);
  model.init_random(a.seed);
  load_or_save(model, a);
  std::printf("based_lm: d_model %lld, layers '%s', %lld heads, window %lld keys, %s head\n",
              (long long)c.d_model, c.pattern.c_str(), (long long)c.num_heads,
              (long long)c.sliding_window(), model.tied() ? "tied" : "separate");
  return run_model(model, a, "based_lm");
}
