// hybrid_lm: a Kimi-Linear-style hybrid (3 KDA : 1 MLA, MoE feed-forward with a shared expert)
// prefills a prompt and generates, then prints its decode time per token and state bytes at
// contexts 1K .. 128K beside an all-attention (GQA) model of the same width, depth and MoE.
// The model is examples/hybrid_lm/hybrid_lm.hpp.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/run.hpp"
#include "hybrid_lm/hybrid_lm.hpp"

using namespace effattn;
using namespace effattn::examples;

static const char* kUsage =
    "usage: hybrid_lm [--weights FILE] [--save FILE] [--prompt N] [--generate N] [--threads N]\n"
    "                 [--seed N] [--gdn] [--all-attention] [--no-compare] [--max-context N]\n"
    "  --gdn            Gated DeltaNet instead of Kimi Delta Attention in the linear layers\n"
    "  --all-attention  run the all-attention (GQA) model instead of the hybrid\n"
    "  --no-compare     skip the decode table at contexts 1K .. 128K\n"
    "  --max-context N  largest context of the table (default 131072)\n";

// The example's model: d = 512, 4 blocks (3 linear + 1 MLA), 8 heads of 64, MLA r = 128,
// R = 16 (Kimi's r / d and R / r), GQA baseline with 2 kv heads, 8 experts of 256 (top 2) + 1
// shared, the first block dense.
static HybridConfig default_config() {
  HybridConfig c;
  c.vocab_size = 1024;
  c.hidden_size = 512;
  c.num_hidden_layers = 4;
  c.num_heads = 8;
  c.head_dim = 64;
  c.kv_lora_rank = 128;
  c.qk_rope_head_dim = 16;
  c.intermediate_size = 1024;
  c.num_experts = 8;
  c.num_experts_per_token = 2;
  c.moe_intermediate_size = 256;
  return c;
}

// Median time of one decode step (ms) from a state filled to `ctx` tokens; *bytes = its bytes.
template <class Model>
static double decode_ms(const Model& m, int64_t ctx, int steps, int64_t* bytes) {
  auto st = m.make_state(1, ctx + steps + 1);
  m.fill_synthetic(st, ctx, 7);
  *bytes = st.bytes();
  Tensor<int32_t> id({1, 1});
  Tensor<float> logits({1, 1, m.vocab()});
  id.data()[0] = 1;
  m.forward(id, st, logits);  // warm-up (first touch of the scratch buffers)
  std::vector<double> t;
  for (int i = 0; i < steps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    m.forward(id, st, logits);
    t.push_back(seconds_since(t0) * 1e3);
    id.data()[0] = argmax(logits.data(), m.vocab());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

int main(int argc, char** argv) {
  const Args a = parse_args(argc, argv, kUsage);
  HybridConfig c = default_config();
  if (has_flag(a, "--gdn")) c.linear = LinearMixer::kGatedDeltaNet;
  int64_t max_context = 131072;
  for (std::size_t i = 0; i < a.extra.size(); ++i) {
    const std::string& f = a.extra[i];
    if (f == "--max-context" && i + 1 < a.extra.size()) {
      max_context = std::atoll(a.extra[++i].c_str());
    } else if (f != "--gdn" && f != "--all-attention" && f != "--no-compare") {
      std::fprintf(stderr, "hybrid_lm: unknown argument %s\n%s", f.c_str(), kUsage);
      return 2;
    }
  }

  const bool all_attention = has_flag(a, "--all-attention");
  HybridLM<float> model(all_attention ? c.all_attention() : c);
  model.init_random(a.seed);
  load_or_save(model, a);
  const char* name = all_attention                   ? "all-attention (GQA)"
                     : c.linear == LinearMixer::kKda ? "hybrid_lm (3 KDA : 1 MLA)"
                                                     : "hybrid_lm (3 GDN : 1 MLA)";
  run_model(model, a, name);
  if (has_flag(a, "--no-compare")) return 0;

  // Side by side: the hybrid and the all-attention model from states filled to each context with
  // synthetic caches (HybridLM::fill_synthetic: decode costs the same whatever the values).
  HybridLM<float> hybrid = all_attention ? HybridLM<float>(c) : model;
  HybridLM<float> full = all_attention ? model : HybridLM<float>(c.all_attention());
  if (all_attention) hybrid.init_random(a.seed);
  if (!all_attention) full.init_random(a.seed);
  std::printf(
      "\ndecode one token at context n (median of 5), hybrid vs all-attention (%lld GQA kv heads "
      "of %lld per layer):\n",
      (long long)c.kv_heads(), (long long)c.head_dim);
  std::printf("%8s  %12s %12s %8s  %12s %12s %8s\n", "context", "hybrid ms", "all-attn ms",
              "speedup", "hybrid state", "all-attn st", "ratio");
  for (int64_t n = 1024; n <= max_context; n *= 2) {
    if (n != 1024 && n != 4096 && n < 16384) continue;  // 1K, 4K, 16K, 32K, 64K, 128K
    int64_t hb = 0, fb = 0;
    const double th = decode_ms(hybrid, n, 5, &hb), tf = decode_ms(full, n, 5, &fb);
    std::printf("%7lldK  %12.2f %12.2f %7.2fx  %12s %12s %7.1f%%\n", (long long)(n / 1024), th, tf,
                tf / th, human_bytes(double(hb)).c_str(), human_bytes(double(fb)).c_str(),
                100.0 * double(hb) / double(fb));
  }
  return 0;
}
