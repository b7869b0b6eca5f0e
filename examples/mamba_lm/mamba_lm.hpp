// mamba_lm: the Hugging Face MambaForCausalLM (state-spaces/mamba-130m-hf and its larger
// siblings), read top to bottom like llama2.c's run.c: Config, the weights, State, forward.
//
//   h      = embeddings[ids]                                   [B, T, d]
//   for each layer i:   h += mixer_i(rmsnorm_i(h))             (pre-norm, residual in T)
//   logits = lm_head(rmsnorm_f(h))                             [B, T, vocab]
//   mixer  = layers::Mamba (Mamba-1 block: in_proj -> x, z; conv1d + silu; x_proj -> dt, B, C;
//            dt_proj; selective scan with A = -exp(A_log), D, gate silu(z); out_proj)
//
// Tensor names (transformers' MambaForCausalLM; shapes with E = expand * d, N = d_state,
// R = dt_rank, W = d_conv):
//   backbone.embeddings.weight                 [vocab, d]   (mamba_ssm: backbone.embedding.weight,
//                                                            also read)
//   backbone.layers.{i}.norm.weight            [d]
//   backbone.layers.{i}.mixer.in_proj.weight   [2E, d]      (.bias [2E] with use_bias)
//   backbone.layers.{i}.mixer.conv1d.weight    [E, 1, W]    (.bias [E] with use_conv_bias)
//   backbone.layers.{i}.mixer.x_proj.weight    [R + 2N, E]
//   backbone.layers.{i}.mixer.dt_proj.weight   [E, R],  .bias [E]
//   backbone.layers.{i}.mixer.A_log            [E, N]
//   backbone.layers.{i}.mixer.D                [E]
//   backbone.layers.{i}.mixer.out_proj.weight  [d, E]       (.bias [d] with use_bias)
//   backbone.norm_f.weight                     [d]
//   lm_head.weight                             [vocab, d]   absent when tied to the embeddings
//                                                           (what save_pretrained writes)
// load() ties the head when the file has no lm_head.weight and reads it when it has one; save()
// writes it only when untied.
//
// Config (mamba_ssm / transformers names): d_model (hidden_size), n_layer (num_hidden_layers),
// vocab_size padded up to a multiple of pad_vocab_size_multiple (50277 -> 50280 for the
// GPT-NeoX tokenizer; the -hf config.json already holds 50280), d_state (state_size) 16, d_conv
// (conv_kernel) 4, expand 2, dt_rank (time_step_rank) = ceil(d_model / 16), RMSNorm eps
// (layer_norm_epsilon) 1e-5, use_bias false and use_conv_bias true as the released checkpoints.
// residual_in_fp32: the residual stream is kept in T (float or double), never narrower.
// MambaLMConfig::mamba_130m() is state-spaces/mamba-130m-hf (d 768, 24 layers, vocab 50280);
// MambaLMConfig::from_checkpoint(st) reads every size off the tensors (any of the released sizes).
//
// State: one layers::Mamba::State per layer, conv [B, W-1, E] and ssm [B, E, N]: a fixed size,
// however long the sequence (24 * 1536 * (3 + 16) * 4 B = 2.7 MiB per sequence for 130m in
// float). forward() continues from it: a prompt runs the chunked scan, a token the recurrent step.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <effattn/effattn.hpp>
#include <effattn/layers/layers.hpp>

namespace effattn::examples {

struct MambaLMConfig {
  int64_t d_model = 0;
  int64_t n_layer = 0;
  int64_t vocab_size = 0;  // as given; vocab() pads it
  int64_t pad_vocab_size_multiple = 8;
  int64_t d_state = 16;
  int64_t d_conv = 4;
  int64_t expand = 2;
  int64_t d_inner = 0;  // 0 = expand * d_model
  int64_t dt_rank = 0;  // 0 = ceil(d_model / 16)
  bool use_bias = false;
  bool use_conv_bias = true;
  double norm_eps = 1e-5;
  bool tie_embeddings = true;  // the random init's head; load() follows the file

  // vocab_size rounded up to the multiple (the rows of the embedding).
  int64_t vocab() const {
    const int64_t m = pad_vocab_size_multiple > 0 ? pad_vocab_size_multiple : 1;
    return (vocab_size + m - 1) / m * m;
  }

  // state-spaces/mamba-130m-hf.
  static MambaLMConfig mamba_130m() {
    MambaLMConfig c;
    c.d_model = 768;
    c.n_layer = 24;
    c.vocab_size = 50280;
    return c;
  }
  // The default of the example: seeded random weights that run in a few seconds. Its head is
  // separate: a random model with a tied head mostly predicts the token it was given.
  static MambaLMConfig small() {
    MambaLMConfig c;
    c.d_model = 256;
    c.n_layer = 4;
    c.vocab_size = 1024;
    c.tie_embeddings = false;
    return c;
  }
  // Every size read off a checkpoint's tensors (names as above); the norm eps is not in the
  // file and stays norm_eps.
  static MambaLMConfig from_checkpoint(const io::SafeTensors& st, double norm_eps = 1e-5) {
    auto dims = [&](const std::string& name) {
      check(st.contains(name), "MambaLM: tensor '", name, "' not found in ", st.source(),
            " (is this a Mamba checkpoint?)");
      return st.info(name).dims;
    };
    MambaLMConfig c;
    const std::string emb = st.contains("backbone.embedding.weight") ? "backbone.embedding.weight"
                                                                     : "backbone.embeddings.weight";
    const auto e = dims(emb);
    check(e.size() == 2, "MambaLM: '", emb, "' must be [vocab, d]");
    c.vocab_size = e[0];
    c.d_model = e[1];
    c.pad_vocab_size_multiple = 1;  // the file's rows are already padded
    while (st.contains(layer_name(c.n_layer) + ".mixer.A_log")) ++c.n_layer;
    check(c.n_layer > 0, "MambaLM: no 'backbone.layers.{i}.mixer.A_log' in ", st.source());
    const std::string m = layer_name(0) + ".mixer.";
    const auto a = dims(m + "A_log"), w = dims(m + "conv1d.weight"),
               dt = dims(m + "dt_proj.weight");
    check(a.size() == 2 && w.size() == 3 && dt.size() == 2, "MambaLM: ", st.source(),
          " has A_log, conv1d.weight or dt_proj.weight of an unexpected rank");
    c.d_inner = a[0];
    c.d_state = a[1];
    c.d_conv = w[2];
    c.dt_rank = dt[1];
    c.use_bias = st.contains(m + "in_proj.bias");
    c.use_conv_bias = st.contains(m + "conv1d.bias");
    c.norm_eps = norm_eps;
    return c;
  }
  static std::string layer_name(int64_t i) { return "backbone.layers." + std::to_string(i); }
};

template <class T = float, class S = T>
class MambaLM {
 public:
  using Mixer = layers::Mamba<T, S>;

  struct State {
    std::vector<typename Mixer::State> layers;  // per layer: conv [B, W-1, E], ssm [B, E, N]
    int64_t bytes() const {
      int64_t n = 0;
      for (const auto& s : layers) n += s.bytes();
      return n;
    }
    void reset() {
      for (auto& s : layers) s.reset();
    }
  };

  MambaLMConfig config;
  layers::Embedding<T, S> embeddings;    // [vocab, d]
  std::vector<layers::RMSNorm<T>> norm;  // per layer [d]
  std::vector<Mixer> mixer;              // per layer
  layers::RMSNorm<T> norm_f;             // [d]
  layers::Linear<T, S> lm_head;          // [vocab, d] when untied, else empty

  explicit MambaLM(const MambaLMConfig& c) : config(c) {
    check(c.d_model > 0 && c.n_layer > 0 && c.vocab_size > 0, "MambaLM: d_model (", c.d_model,
          "), n_layer (", c.n_layer, ") and vocab_size (", c.vocab_size, ") must be positive");
    const int64_t d = c.d_model;
    embeddings = layers::Embedding<T, S>(c.vocab(), d);
    layers::MambaConfig mc;
    mc.hidden = d;
    mc.intermediate = c.d_inner;
    mc.expand = c.expand;
    mc.state_size = c.d_state;
    mc.conv_kernel = c.d_conv;
    mc.time_step_rank = c.dt_rank;
    mc.use_bias = c.use_bias;
    mc.use_conv_bias = c.use_conv_bias;
    for (int64_t i = 0; i < c.n_layer; ++i) {
      norm.emplace_back(d, c.norm_eps);
      mixer.emplace_back(mc);
    }
    norm_f = layers::RMSNorm<T>(d, c.norm_eps);
    if (!c.tie_embeddings) lm_head = layers::Linear<T, S>(d, c.vocab());
  }

  // Logits through the embeddings (no lm_head.weight).
  bool tied() const { return lm_head.weight.numel() == 0; }

  int64_t vocab() const { return embeddings.vocab(); }
  int64_t hidden() const { return config.d_model; }

  // capacity is not used: Mamba's state does not grow with the sequence.
  State make_state(int64_t batch, int64_t /*capacity*/ = 0) const {
    State s;
    for (const Mixer& m : mixer) s.layers.push_back(m.make_state(batch));
    return s;
  }

  // ids [B, T] -> logits [B, T, vocab], continuing from `state` (left after the last token).
  void forward(TensorView<const int32_t> ids, State& state, TensorView<T> logits) const {
    const char* L = "MambaLM";
    check(!ids.empty() && ids.ndim() == 2, L, ": ids must be [B, T]");
    const int64_t B = ids.size(0), Tn = ids.size(1), d = hidden();
    check_shape(L, "logits", TensorView<const T>(logits), {B, Tn, vocab()}, "[B, T, vocab]");
    check(state.layers.size() == mixer.size(), L, ": state has ", state.layers.size(),
          " layers, the model ", mixer.size(), " (make it with make_state)");
    if (Tn == 0) return;
    Tensor<T> h({B, Tn, d});  // residual stream
    Tensor<T> x({B, Tn, d});  // normalised input of a mixer
    Tensor<T> y({B, Tn, d});  // a mixer's output
    embeddings.forward(ids, h);
    for (size_t i = 0; i < mixer.size(); ++i) {
      norm[i].forward(h, x);
      mixer[i].forward(x, state.layers[i], y);
      simd::axpy(T(1), y.data(), h.data(), h.numel());  // h += mixer(norm(h))
    }
    norm_f.forward(h, x);
    if (tied()) {
      embeddings.attend(x, logits);
    } else {
      lm_head.forward(x, logits);
    }
  }

  void load(const io::SafeTensors& st) {
    embeddings.load(st, st.contains("backbone.embedding.weight") ? "backbone.embedding"
                                                                 : "backbone.embeddings");
    for (size_t i = 0; i < mixer.size(); ++i) {
      const std::string p = MambaLMConfig::layer_name(int64_t(i));
      norm[i].load(st, p + ".norm");
      mixer[i].load(st, p + ".mixer");
    }
    norm_f.load(st, "backbone.norm_f");
    lm_head = layers::Linear<T, S>();
    if (st.contains("lm_head.weight")) {
      lm_head = layers::Linear<T, S>(hidden(), vocab());
      lm_head.load(st, "lm_head");
    }
  }
  void save(io::SafeTensorsWriter& w) const {
    embeddings.save(w, "backbone.embeddings");
    for (size_t i = 0; i < mixer.size(); ++i) {
      const std::string p = MambaLMConfig::layer_name(int64_t(i));
      norm[i].save(w, p + ".norm");
      mixer[i].save(w, p + ".mixer");
    }
    norm_f.save(w, "backbone.norm_f");
    if (!tied()) lm_head.save(w, "lm_head");
  }
  // Each layer from its own stream derive_seed(seed, its prefix); norms at one.
  void init_random(uint64_t seed) {
    embeddings.init_random(layers::derive_seed(seed, "backbone.embeddings"));
    for (size_t i = 0; i < mixer.size(); ++i) {
      const std::string p = MambaLMConfig::layer_name(int64_t(i));
      norm[i].init_random(layers::derive_seed(seed, p + ".norm"));
      mixer[i].init_random(layers::derive_seed(seed, p + ".mixer"));
    }
    norm_f.init_random(layers::derive_seed(seed, "backbone.norm_f"));
    if (!tied()) lm_head.init_random(layers::derive_seed(seed, "lm_head"));
  }
  int64_t weight_bytes() const {
    int64_t n = embeddings.weight_bytes() + norm_f.weight.bytes();
    for (size_t i = 0; i < mixer.size(); ++i) n += norm[i].weight.bytes() + mixer[i].weight_bytes();
    if (!tied()) n += lm_head.weight_bytes();
    return n;
  }
};

}  // namespace effattn::examples
