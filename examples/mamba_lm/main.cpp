// mamba_lm: a Mamba-1 language model (Hugging Face MambaForCausalLM) prefilling a seeded prompt
// and generating greedily. The model is in mamba_lm.hpp.
//   mamba_lm                                   small seeded random model (d 256, 4 layers)
//   mamba_lm --mamba-130m                      mamba-130m's shapes, seeded random weights
//   mamba_lm --weights model.safetensors       a real checkpoint (e.g. state-spaces/mamba-130m-hf;
//                                              every size is read off the file)
#include "mamba_lm/mamba_lm.hpp"

#include "common/run.hpp"

int main(int argc, char** argv) {
  using namespace effattn::examples;
  const char* usage =
      "usage: mamba_lm [--weights FILE] [--save FILE] [--mamba-130m] [--prompt N] [--generate N]\n"
      "                [--threads N] [--seed N]\n"
      "  --mamba-130m   mamba-130m's shapes (d 768, 24 layers, vocab 50280) with random weights\n"
      "  (--weights reads the sizes off the checkpoint; see the common flags in run.hpp)\n";
  const Args a = parse_args(argc, argv, usage);
  MambaLMConfig c =
      has_flag(a, "--mamba-130m") ? MambaLMConfig::mamba_130m() : MambaLMConfig::small();
  if (!a.weights.empty())
    c = MambaLMConfig::from_checkpoint(effattn::io::SafeTensors::open(a.weights));
  MambaLM<float> model(c);
  model.init_random(a.seed);
  load_or_save(model, a);
  std::printf("mamba_lm: d_model %lld, %lld layers, d_inner %lld, d_state %lld, %s head\n",
              (long long)c.d_model, (long long)c.n_layer, (long long)model.mixer[0].intermediate(),
              (long long)c.d_state, model.tied() ? "tied" : "separate");
  return run_model(model, a, "mamba_lm");
}
