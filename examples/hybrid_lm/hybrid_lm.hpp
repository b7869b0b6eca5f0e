// hybrid_lm: a Kimi-Linear-style decoder (llama2.c run.c shape: Config / weights / State /
// forward), and an all-attention model of the same width, depth and feed-forward beside it.
//
// Architecture::kHybrid (Kimi Linear, arXiv 2510.26692):
//   x = embed_tokens(ids)                                          [B, T, d]
//   per block i:  x += mixer_i(input_layernorm(x))                 pre-norm residual blocks
//                 x += ffn_i(post_attention_layernorm(x))
//   logits = lm_head(norm(x))                                      [B, T, vocab]
//   mixer_i  = MultiHeadLatentAttention when (i + 1) % full_attn_every == 0, else a linear layer:
//              KimiDeltaAttention (linear = kKda) or GatedDeltaNet (kGatedDeltaNet). With
//              full_attn_every = 4 that is Kimi's 3:1 pattern (0-based layers 3, 7, ... are MLA).
//              MLA is Kimi's NoPE form by default (mla_rope = false): no position encoding in
//              the model but the linear layers' recurrences and short convs.
//   ffn_i    = a dense SwiGLU Mlp for the first `first_k_dense` blocks (Kimi / DeepSeek's
//              first_k_dense_replace = 1: the first block's router would see raw embeddings),
//              then MoE: sigmoid scores + e_score_correction_bias, top num_experts_per_token,
//              renormalised, times routed_scaling_factor, plus num_shared_experts always-on
//              experts (Kimi Linear's KimiSparseMoeBlock: DeepSeek-V3 routing with one group).
// Architecture::kAllAttention: the same model with every mixer a GQA `Attention` layer
//   (Llama-3 style: num_kv_heads = num_heads / 4 by default, half-split RoPE, head_dim D): the
//   baseline the hybrid's state and decode speed are compared with. Embedding, norms and
//   feed-forwards are identical, with identical random weights (same names, same seeds).
//
// Names (Kimi Linear's Hugging Face checkpoint, modeling_kimi.py), under the model:
//   model.embed_tokens.weight                    [vocab, d]
//   model.layers.{i}.input_layernorm.weight      [d]
//   model.layers.{i}.self_attn.*                 the mixer, every kind (layers/ names):
//       KDA  q/k/v_proj, q/k/v_conv1d, f_a_proj, f_b_proj, b_proj, A_log [H], dt_bias [H*K],
//            g_a_proj, g_b_proj (no bias), o_norm, o_proj          (KdaNames::kKimi)
//       GDN  fla's GatedDeltaNet names (q/k/v_proj, a_proj, b_proj, A_log, dt_bias, *_conv1d,
//            g_proj, o_norm, o_proj)
//       MLA  q_proj, kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj (q_lora_rank = 0)
//       GQA  q_proj, k_proj, v_proj, o_proj
//   model.layers.{i}.post_attention_layernorm.weight [d]
//   model.layers.{i}.mlp.{gate,up,down}_proj     dense blocks (i < first_k_dense)
//   model.layers.{i}.block_sparse_moe.*          MoE blocks: gate.weight [E, d],
//       gate.e_score_correction_bias [E], experts.{j}.w1 / w3 / w2 (gate / up / down; written so,
//       gate_proj / up_proj / down_proj also read), shared_experts.{gate,up,down}_proj
//   model.norm.weight                            [d]
//   lm_head.weight                               [vocab, d]; absent with tie_word_embeddings
//                                                (then the embedding is the head; a file that
//                                                has lm_head.weight is refused)
// A real Kimi checkpoint stores KDA's A_log as [1, 1, H, 1]; the layer reads [H] (reshape it
// when converting). No other conversion is needed.
//
// State: one entry per block, the layer's own State (KDA / GDN: conv states + S [B, HV, K, V],
// fixed size; MLA: latent cache [B, capacity, r + R]; GQA: KVCache [B, capacity, Hkv, D] x 2),
// and the position. forward(ids, state, logits) continues from it, so a prompt in one call,
// in pieces, or token by token gives the same logits (up to the kernels' round-off).
//
// fill_synthetic(state, P, seed) moves a state to position P with synthetic contents (random
// keys / latents in the caches, a random recurrent state) without running P tokens: decode
// costs the same whatever the cached values are, so the long-context comparison fills a 128K
// cache in a fraction of a second instead of prefilling it.
//
// Template: T computes (float; double for tests), S stores the weight matrices (T, or bf16 with
// T = float). Caches are kept in T.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include <effattn/effattn.hpp>
#include <effattn/layers/layers.hpp>

namespace effattn::examples {

enum class Architecture { kHybrid, kAllAttention };
enum class LinearMixer { kKda, kGatedDeltaNet };

struct HybridConfig {
  Architecture arch = Architecture::kHybrid;
  LinearMixer linear = LinearMixer::kKda;
  int64_t vocab_size = 512;
  int64_t hidden_size = 256;        // d
  int64_t num_hidden_layers = 4;    // blocks
  int64_t full_attn_every = 4;      // hybrid: block i is MLA when (i + 1) % this == 0 (1: all
                                    // MLA, Kimi Linear's baseline; 0: no MLA)
  int64_t num_heads = 4;            // H: heads of every mixer
  int64_t head_dim = 64;            // D: linear layers' K = V, MLA's nope / v dims, GQA's D
  int64_t conv_size = 4;            // linear layers' short convs
  int64_t kv_lora_rank = 128;       // MLA r
  int64_t qk_rope_head_dim = 32;    // MLA R
  bool mla_rope = false;            // Kimi's MLA is NoPE; true: DeepSeek's interleaved RoPE
  int64_t num_kv_heads = 0;         // all-attention Hkv; 0 = max(1, H / 4)
  double rope_theta = 10000.0;      // all-attention RoPE (and MLA's with mla_rope)
  int64_t first_k_dense = 1;        // blocks with a dense Mlp instead of MoE
  int64_t intermediate_size = 512;  // dense Mlp width
  int64_t num_experts = 8;          // E
  int64_t num_experts_per_token = 2;
  int64_t moe_intermediate_size = 128;   // f per expert
  int64_t num_shared_experts = 1;        // shared expert width = this * f
  double routed_scaling_factor = 2.446;  // Kimi Linear's
  bool tie_word_embeddings = false;
  double rms_norm_eps = 1e-6;

  bool is_full_attention(int64_t i) const {
    return arch == Architecture::kAllAttention ||
           (full_attn_every > 0 && (i + 1) % full_attn_every == 0);
  }
  int64_t kv_heads() const {
    return num_kv_heads > 0 ? num_kv_heads : std::max<int64_t>(1, num_heads / 4);
  }
  // The same model with every mixer a GQA Attention layer.
  HybridConfig all_attention() const {
    HybridConfig c = *this;
    c.arch = Architecture::kAllAttention;
    return c;
  }
};

template <class T = float, class S = T>
class HybridLM {
 public:
  using Kda = layers::KimiDeltaAttention<T, S>;
  using Gdn = layers::GatedDeltaNet<T, S>;
  using Mla = layers::MultiHeadLatentAttention<T, S>;
  using Attn = layers::Attention<T, S>;
  enum class Mixer { kKda, kGatedDeltaNet, kMla, kAttention };

  struct Block {
    Mixer mixer = Mixer::kKda;
    layers::RMSNorm<T> input_layernorm, post_attention_layernorm;  // [d]
    Kda kda;  // exactly one of the four mixers is configured (the others are empty)
    Gdn gdn;
    Mla mla;
    Attn attn;
    bool dense = false;
    layers::Mlp<T, S> mlp;  // dense blocks
    layers::MoE<T, S> moe;  // the others
  };

  // Per-sequence state: each block's layer state (B sequences in step) and the position.
  struct State {
    using Layer =
        std::variant<layers::DeltaLayerState<T>, typename Mla::State, typename Attn::State>;
    std::vector<Layer> layers;  // [num_hidden_layers]
    int64_t batch = 0, capacity = 0, position = 0;
    int64_t bytes() const {
      int64_t n = 0;
      for (const Layer& l : layers) std::visit([&](const auto& s) { n += s.bytes(); }, l);
      return n;
    }
  };

  HybridConfig config;
  layers::Embedding<T, S> embed_tokens;  // [vocab, d]
  std::vector<Block> blocks;             // [num_hidden_layers]
  layers::RMSNorm<T> norm;               // [d]
  layers::Linear<T, S> lm_head;          // [vocab, d], unless tied

  explicit HybridLM(const HybridConfig& c) : config(c) {
    const char* L = "HybridLM";
    check(c.vocab_size > 0 && c.hidden_size > 0 && c.num_hidden_layers > 0 && c.num_heads > 0 &&
              c.head_dim > 0,
          L,
          ": vocab_size, hidden_size, num_hidden_layers, num_heads and head_dim must be positive");
    check(c.first_k_dense >= 0 && c.full_attn_every >= 0, L,
          ": first_k_dense and full_attn_every must be >= 0");
    const int64_t d = c.hidden_size;
    embed_tokens = layers::Embedding<T, S>(c.vocab_size, d);
    blocks.resize(static_cast<std::size_t>(c.num_hidden_layers));
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      Block& b = blocks[i];
      b.input_layernorm = layers::RMSNorm<T>(d, c.rms_norm_eps);
      b.post_attention_layernorm = layers::RMSNorm<T>(d, c.rms_norm_eps);
      if (c.arch == Architecture::kAllAttention) {
        layers::AttentionConfig a;
        a.hidden = d;
        a.num_heads = c.num_heads;
        a.num_kv_heads = c.kv_heads();
        a.head_dim = c.head_dim;
        a.rope_theta = c.rope_theta;
        b.mixer = Mixer::kAttention;
        b.attn = Attn(a);
      } else if (c.is_full_attention(i)) {
        layers::MlaConfig m;
        m.hidden = d;
        m.num_heads = c.num_heads;
        m.kv_lora_rank = c.kv_lora_rank;
        m.qk_nope_head_dim = c.head_dim;
        m.qk_rope_head_dim = c.qk_rope_head_dim;
        m.v_head_dim = c.head_dim;
        m.rms_eps = c.rms_norm_eps;
        m.rope = c.mla_rope;
        m.rope_theta = c.rope_theta;
        b.mixer = Mixer::kMla;
        b.mla = Mla(m);
      } else if (c.linear == LinearMixer::kKda) {
        layers::KdaConfig k;
        set_delta(c, &k);
        k.names = layers::KdaNames::kKimi;
        k.g_bias = false;
        b.mixer = Mixer::kKda;
        b.kda = Kda(k);
      } else {
        layers::GatedDeltaNetConfig g;
        set_delta(c, &g);
        b.mixer = Mixer::kGatedDeltaNet;
        b.gdn = Gdn(g);
      }
      b.dense = i < c.first_k_dense;
      if (b.dense) {
        b.mlp = layers::Mlp<T, S>(d, c.intermediate_size);
      } else {
        layers::MoEConfig m;
        m.hidden = d;
        m.num_experts = c.num_experts;
        m.expert_hidden = c.moe_intermediate_size;
        m.shared_hidden = c.num_shared_experts * c.moe_intermediate_size;
        m.gate =
            moe::GateParams::deepseek_v3(c.num_experts_per_token, 1, 1, c.routed_scaling_factor);
        m.score_correction_bias = true;
        m.mixtral_names = true;  // Kimi's experts.{j}.w1 / w2 / w3
        b.moe = layers::MoE<T, S>(m);
      }
    }
    norm = layers::RMSNorm<T>(d, c.rms_norm_eps);
    if (!c.tie_word_embeddings) lm_head = layers::Linear<T, S>(d, c.vocab_size);
  }

  int64_t vocab() const { return config.vocab_size; }
  int64_t hidden() const { return config.hidden_size; }

  // A state for B sequences of up to `capacity` tokens (the attention caches' size; the linear
  // layers' state does not grow).
  State make_state(int64_t batch, int64_t capacity) const {
    check(batch >= 1 && capacity >= 1, "HybridLM::make_state: batch (", batch, ") and capacity (",
          capacity, ") must be >= 1");
    State s;
    s.batch = batch;
    s.capacity = capacity;
    for (const Block& b : blocks) {
      switch (b.mixer) {
        case Mixer::kKda:
          s.layers.emplace_back(b.kda.make_state(batch));
          break;
        case Mixer::kGatedDeltaNet:
          s.layers.emplace_back(b.gdn.make_state(batch));
          break;
        case Mixer::kMla:
          s.layers.emplace_back(b.mla.make_state(batch, capacity));
          break;
        case Mixer::kAttention:
          s.layers.emplace_back(b.attn.make_state(batch, capacity));
          break;
      }
    }
    return s;
  }

  // ids [B, T] (int32) -> logits [B, T, vocab], continuing from `state` (left after the T
  // tokens). T = 0 is a no-op.
  void forward(TensorView<const int32_t> ids, State& state, TensorView<T> logits) const {
    const char* L = "HybridLM";
    check_shape(L, "ids", ids, {-1, -1}, "[B, T]");
    const int64_t B = ids.size(0), Tn = ids.size(1), d = hidden();
    check_shape(L, "logits", TensorView<const T>(logits), {B, Tn, vocab()}, "[B, T, vocab]");
    check(state.layers.size() == blocks.size() && state.batch == B, L, ": state (batch ",
          state.batch, ", ", state.layers.size(), " layers) does not fit ids ", ids.shape().str(),
          " and this model (", blocks.size(), " layers): make it with make_state(B, capacity)");
    check(state.position + Tn <= state.capacity, L, ": ", Tn, " tokens after ", state.position,
          " exceed the state's capacity ", state.capacity);
    if (Tn == 0) return;
    Tensor<T> x({B, Tn, d}), h({B, Tn, d}), a({B, Tn, d});  // residual stream, normed, branch
    embed_tokens.forward(ids, x);
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      const Block& b = blocks[i];
      b.input_layernorm.forward(x, h);
      mix(b, h, state.layers[i], a);
      add_to(x, a);
      b.post_attention_layernorm.forward(x, h);
      if (b.dense) {
        b.mlp.forward(h, a);
      } else {
        b.moe.forward(h, a);
      }
      add_to(x, a);
    }
    norm.forward(x, x);
    if (config.tie_word_embeddings) {
      embed_tokens.attend(x, logits);
    } else {
      lm_head.forward(x, logits);
    }
    state.position += Tn;
  }

  // Moves `state` to position P (<= capacity) as if P tokens had been run, with synthetic
  // contents: caches rows [0, P) hold random values in [-1, 1) (one block of 1024 rows repeated),
  // recurrent states random values in [-0.1, 0.1). For timing long contexts, not for generation.
  void fill_synthetic(State& state, int64_t P, uint64_t seed) const {
    const char* L = "HybridLM::fill_synthetic";
    check(P >= 0 && P <= state.capacity && state.layers.size() == blocks.size(), L, ": position ",
          P, " must be in [0, capacity = ", state.capacity, "] of a state of this model");
    const int64_t B = state.batch, kRows = 1024;
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      const uint64_t key = layers::derive_seed(seed, "synthetic." + std::to_string(i));
      auto random = [&](T* p, int64_t n, double scale) {
        for (int64_t j = 0; j < n; ++j) p[j] = T(scale * layers::uniform_pm1(key, uint64_t(j)));
      };
      std::visit(
          [&](auto& s) {
            using St = std::decay_t<decltype(s)>;
            if constexpr (std::is_same_v<St, layers::DeltaLayerState<T>>) {
              random(s.recurrent.data(), s.recurrent.numel(), 0.1);
              for (auto* c : {&s.q_conv.conv, &s.k_conv.conv, &s.v_conv.conv})
                random(c->data(), c->numel(), 1.0);
            } else if constexpr (std::is_same_v<St, typename Mla::State>) {
              const int64_t C = s.cache.size(2);
              Tensor<T> blk({kRows, C});
              random(blk.data(), blk.numel(), 1.0);
              for (int64_t b = 0; b < B; ++b)
                for (int64_t t = 0; t < P; ++t) {
                  const T* src = blk.data() + (t % kRows) * C;
                  std::copy(src, src + C, s.cache.view().ptr(b, t));
                }
              s.len = P;
            } else {
              const int64_t Hkv = s.cache.heads(), D = s.cache.k_dim();
              Tensor<T> k({B, kRows, Hkv, D}), v({B, kRows, Hkv, s.cache.v_dim()});
              random(k.data(), k.numel(), 1.0);
              random(v.data(), v.numel(), 1.0);
              s.cache.reset();
              for (int64_t t = 0; t < P; t += kRows) {
                const int64_t n = std::min(kRows, P - t);
                s.cache.template append<T>(TensorView<const T>(k.view()).slice(1, 0, n),
                                           TensorView<const T>(v.view()).slice(1, 0, n));
              }
            }
          },
          state.layers[i]);
    }
    state.position = P;
  }

  static std::string block_prefix(int64_t i) { return "model.layers." + std::to_string(i); }
  static std::string ffn_name(const Block& b) { return b.dense ? "mlp" : "block_sparse_moe"; }

  void load(const io::SafeTensors& st) {
    embed_tokens.load(st, "model.embed_tokens");
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      Block& b = blocks[i];
      const std::string p = block_prefix(int64_t(i)), attn = layers::join(p, "self_attn");
      b.input_layernorm.load(st, layers::join(p, "input_layernorm"));
      switch (b.mixer) {
        case Mixer::kKda:
          b.kda.load(st, attn);
          break;
        case Mixer::kGatedDeltaNet:
          b.gdn.load(st, attn);
          break;
        case Mixer::kMla:
          b.mla.load(st, attn);
          break;
        case Mixer::kAttention:
          b.attn.load(st, attn);
          break;
      }
      b.post_attention_layernorm.load(st, layers::join(p, "post_attention_layernorm"));
      const std::string other =
          layers::join(p, b.dense ? "block_sparse_moe.gate.weight" : "mlp.gate_proj.weight");
      check(!st.contains(other), "HybridLM: tensor '", other, "' is in ", st.source(),
            " but block ", i, " is configured ", b.dense ? "dense" : "MoE",
            " (first_k_dense = ", config.first_k_dense, ")");
      if (b.dense) {
        b.mlp.load(st, layers::join(p, "mlp"));
      } else {
        b.moe.load(st, layers::join(p, "block_sparse_moe"));
      }
    }
    norm.load(st, "model.norm");
    if (config.tie_word_embeddings) {
      check(!st.contains("lm_head.weight"), "HybridLM: tensor 'lm_head.weight' is in ", st.source(),
            " but the model is configured with tie_word_embeddings");
    } else {
      lm_head.load(st, "lm_head");
    }
  }

  void save(io::SafeTensorsWriter& w) const {
    embed_tokens.save(w, "model.embed_tokens");
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      const Block& b = blocks[i];
      const std::string p = block_prefix(int64_t(i)), attn = layers::join(p, "self_attn");
      b.input_layernorm.save(w, layers::join(p, "input_layernorm"));
      switch (b.mixer) {
        case Mixer::kKda:
          b.kda.save(w, attn);
          break;
        case Mixer::kGatedDeltaNet:
          b.gdn.save(w, attn);
          break;
        case Mixer::kMla:
          b.mla.save(w, attn);
          break;
        case Mixer::kAttention:
          b.attn.save(w, attn);
          break;
      }
      b.post_attention_layernorm.save(w, layers::join(p, "post_attention_layernorm"));
      if (b.dense) {
        b.mlp.save(w, layers::join(p, "mlp"));
      } else {
        b.moe.save(w, layers::join(p, "block_sparse_moe"));
      }
    }
    norm.save(w, "model.norm");
    if (!config.tie_word_embeddings) lm_head.save(w, "lm_head");
  }

  // Every layer from its own stream: derive_seed(seed, <its name>), so a layer's weights do not
  // depend on the others (the hybrid and the all-attention model share embedding, norms, FFNs).
  void init_random(uint64_t seed) {
    using layers::derive_seed;
    embed_tokens.init_random(derive_seed(seed, "model.embed_tokens"));
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      Block& b = blocks[i];
      const std::string p = block_prefix(int64_t(i));
      const uint64_t s = derive_seed(seed, layers::join(p, "self_attn"));
      b.input_layernorm.init_random(0);
      b.post_attention_layernorm.init_random(0);
      switch (b.mixer) {
        case Mixer::kKda:
          b.kda.init_random(s);
          break;
        case Mixer::kGatedDeltaNet:
          b.gdn.init_random(s);
          break;
        case Mixer::kMla:
          b.mla.init_random(s);
          break;
        case Mixer::kAttention:
          b.attn.init_random(s);
          break;
      }
      const uint64_t f = derive_seed(seed, layers::join(p, ffn_name(b)));
      if (b.dense) {
        b.mlp.init_random(f);
      } else {
        b.moe.init_random(f);
      }
    }
    norm.init_random(0);
    if (!config.tie_word_embeddings) lm_head.init_random(derive_seed(seed, "lm_head"));
  }

  int64_t weight_bytes() const {
    int64_t n = embed_tokens.weight_bytes() + norm.weight.bytes();
    if (!config.tie_word_embeddings) n += lm_head.weight_bytes();
    for (const Block& b : blocks) {
      n += b.input_layernorm.weight.bytes() + b.post_attention_layernorm.weight.bytes();
      switch (b.mixer) {
        case Mixer::kKda:
          n += b.kda.weight_bytes();
          break;
        case Mixer::kGatedDeltaNet:
          n += b.gdn.weight_bytes();
          break;
        case Mixer::kMla:
          n += b.mla.weight_bytes();
          break;
        case Mixer::kAttention:
          n += b.attn.weight_bytes();
          break;
      }
      n += b.dense ? b.mlp.weight_bytes() : b.moe.weight_bytes();
    }
    return n;
  }

 private:
  static void set_delta(const HybridConfig& c, layers::DeltaLayerConfig* k) {
    k->hidden = c.hidden_size;
    k->num_heads = c.num_heads;
    k->head_dim = c.head_dim;
    k->expand_v = 1.0;  // V = K for both linear mixers (Kimi Linear's KDA; GDN set alike)
    k->conv_size = c.conv_size;
  }

  // a [B, T, d] = the block's mixer on h, advancing its state.
  static void mix(const Block& b, const Tensor<T>& h, typename State::Layer& s, Tensor<T>& a) {
    switch (b.mixer) {
      case Mixer::kKda:
        b.kda.forward(h, std::get<0>(s), a);
        break;
      case Mixer::kGatedDeltaNet:
        b.gdn.forward(h, std::get<0>(s), a);
        break;
      case Mixer::kMla:
        b.mla.forward(h, std::get<1>(s), a);
        break;
      case Mixer::kAttention:
        b.attn.forward(h, std::get<2>(s), a);
        break;
    }
  }

  // x += a (both [B, T, d], contiguous)
  static void add_to(Tensor<T>& x, const Tensor<T>& a) {
    T* xp = x.data();
    const T* ap = a.data();
    for (int64_t i = 0; i < x.numel(); ++i) xp[i] += ap[i];
  }
};

}  // namespace effattn::examples
