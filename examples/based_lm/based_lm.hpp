// based_lm: Based (Arora et al. 2024, "Simple linear attention language models balance the
// recall-throughput tradeoff"; HazyResearch/based), read top to bottom like llama2.c's run.c.
// A pre-norm decoder whose layers mix three kinds of sequence mixer, each followed by a SwiGLU
// feed-forward:
//
//   h      = word_embeddings[ids]                               [B, T, d]
//   for each layer i:
//     h   += mixer_i(rmsnorm1_i(h))    mixer_i by config.pattern[i]:
//              'c'  BaseConv: gated short convolution (most layers)
//                     u1, u2 = in_proj(x) split in halves [B, T, E] each (E = expand_proj * d / 2)
//                     y = out_proj(silu(conv(u1)) * u2)    conv: depthwise causal, kernel 3
//              'l'  Taylor linear attention (layers::LinearAttention: feature_dim 16 per head,
//                     phi(q).phi(k) = 1 + s + s^2/2, normalised; a fixed-size state)
//              'w'  sliding-window softmax attention (layers::Attention, RoPE, ring KV cache)
//     h   += mlp_i(rmsnorm2_i(h))      SwiGLU: fc2(up * silu(gate))
//   logits = lm_head(rmsnorm_f(h))                              [B, T, vocab]
//
// BasedLMConfig::based_360m() is the released hazyresearch/based-360m: d 1024, 27 layers, 16 heads,
// linear attention at layers 1, 6, 11, 16, 21 (the reference's alt_mixer_layers), window
// attention at 2, 7, 12, 17, 22 (alt_mixer_2_layers), BaseConv elsewhere (expand_proj 4,
// kernel 3, biases on in_proj / out_proj, none on the conv), SwiGLU of 2d, RMSNorm eps 1e-5,
// rotary on the whole head (GPT-NeoX half-split, base 10000), no biases in attention, vocab
// 50277 padded to 50280, head tied to the embeddings.
//
// The window: the reference's SlidingAttention(window_size = w) calls flash-attn with
// window_size (w / 2, 0): a query sees itself and the w / 2 tokens before it, so our Attention
// runs with sliding_window = w / 2 + 1 keys (129 for based-360m's w = 256). Its cache is a ring
// of those slots, so the whole model's state is a fixed size, however long the sequence.
//
// Tensor names: the reference's GPTLMHeadModel (flash-attn's GPT layout), which save() writes
// and load() reads (E = expand_proj * d / 2, H heads of D = d / H, K = feature_dim, F = the
// MLP's n_inner; p = transformer.layers.{i}):
//   transformer.embeddings.word_embeddings.weight  [vocab, d]
//   p.norm1.weight, p.norm2.weight                 [d]
//   'c' p.mixer.in_proj.weight [2E, d], .bias [2E]  (u1 | u2)
//       p.mixer.conv.conv.weight [E, 1, kernel]     (base_conv.py's BaseConv: conv1.conv, read too)
//       p.mixer.out_proj.weight [d, E], .bias [d]
//   'l' p.mixer.proj_q.weight, proj_k.weight [H*K, d], proj_v.weight [H*D, d],
//       p.mixer.out_proj.weight [d, H*D]            (fla's q_proj .. o_proj: read too)
//   'w' p.mixer.Wqkv.weight [3*H*D, d]              (q | k | v, each head-major)
//       p.mixer.out_proj.weight [d, H*D]            (.bias of both with qkv_proj_bias /
//                                                    out_proj_bias; q_proj, k_proj, v_proj,
//                                                    o_proj as layers::Attention names them: read)
//   p.mlp.fc1.weight [2F, d]                        (rows [0, F) up, [F, 2F) gate: flash-attn's
//                                                    GatedMlp does y, gate = fc1(x).chunk(2))
//   p.mlp.fc2.weight [d, F]                         (gate_proj, up_proj, down_proj: read too)
//   transformer.ln_f.weight                         [d]
//   lm_head.weight                                  [vocab, d]   absent when tied
// The fused tensors (Wqkv, fc1) are split into our layers' separate projections on load and
// stacked again on save, so a file written here has the reference's names and shapes. The hub's
// checkpoints prefix every name with "model." (the reference strips it in from_pretrained_hf);
// load() strips it too (a pytorch_model.bin must be converted to safetensors first).
//
// State, per sequence: 'c' ShortConv's conv [B, kernel-1, E]; 'l' s [B, H, 1+K+K^2, D] and
// z [B, H, 1+K+K^2]; 'w' the ring KV cache [B, H, window, D] x 2. A fixed size, however long the
// sequence: 10.7 MiB per sequence for based-360m in float (0.3 conv + 5.4 linear attention + 5.0
// window), what an all-attention model of the same width and depth (27 x 2 x 1024 floats =
// 216 KiB per token) holds after 51 tokens.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <effattn/effattn.hpp>
#include <effattn/layers/layers.hpp>

namespace effattn::examples {

struct BasedLMConfig {
  int64_t d_model = 0;
  int64_t vocab_size = 0;  // as given; vocab() pads it
  int64_t pad_vocab_size_multiple = 8;
  // One letter per layer: 'c' BaseConv, 'l' Taylor linear attention, 'w' sliding window.
  std::string pattern;
  int64_t num_heads = 16;     // n_head: both attention kinds
  int64_t feature_dim = 16;   // K of the linear attention
  int64_t window_size = 128;  // the reference's window_size w: w / 2 + 1 keys per query
  double rope_theta = 10000.0;
  bool qkv_proj_bias = false, out_proj_bias = false;  // window attention
  int64_t expand_proj = 4;                            // BaseConv: in_proj [expand_proj * d, d]
  int64_t kernel_size = 3;                            // BaseConv's short conv
  bool conv_use_bias = true;  // BaseConv in_proj / out_proj biases (the reference's use_bias)
  bool conv_bias = false;     // a bias on the short conv itself
  int64_t n_inner = 0;        // F of the SwiGLU; 0 = 2 * d_model
  double norm_eps = 1e-5;
  bool tie_embeddings = true;  // the random init's head; load() follows the file

  int64_t n_layer() const { return static_cast<int64_t>(pattern.size()); }
  int64_t vocab() const {
    const int64_t m = pad_vocab_size_multiple > 0 ? pad_vocab_size_multiple : 1;
    return (vocab_size + m - 1) / m * m;
  }
  int64_t sliding_window() const { return window_size / 2 + 1; }
  int64_t mlp_hidden() const { return n_inner > 0 ? n_inner : 2 * d_model; }

  // hazyresearch/based-360m (train/configs/experiment/reference/based-360m.yaml).
  static BasedLMConfig based_360m() {
    BasedLMConfig c;
    c.d_model = 1024;
    c.vocab_size = 50277;
    c.pattern = std::string(27, 'c');
    for (int i : {1, 6, 11, 16, 21}) c.pattern[size_t(i)] = 'l';
    for (int i : {2, 7, 12, 17, 22}) c.pattern[size_t(i)] = 'w';
    c.window_size = 256;
    return c;
  }
  // The default of the example: seeded random weights that run in a few seconds; the window
  // (65 keys) is shorter than the default prompt + generation, so the ring wraps. Its head is
  // separate: a random model with a tied head mostly predicts the token it was given.
  static BasedLMConfig small() {
    BasedLMConfig c;
    c.d_model = 256;
    c.vocab_size = 1024;
    c.pattern = "clwcc";
    c.num_heads = 4;
    c.window_size = 128;
    c.tie_embeddings = false;
    return c;
  }
};

namespace based_detail {

// Loads `parts` from the one tensor `name` in which they are stacked along dim 0 (each part's
// trailing dims equal); a missing or misshaped tensor raises naming it.
template <class S>
void load_stacked(const io::SafeTensors& st, const std::string& name,
                  const std::vector<layers::Param<S>*>& parts) {
  int64_t rows = 0;
  for (const auto* p : parts) rows += p->shape()[0];
  Shape want = parts[0]->shape();
  want[0] = rows;
  check(st.contains(name), "BasedLM: tensor '", name, "' not found in ", st.source(),
        " (expected shape ", want.str(), ")");
  const std::vector<int64_t>& dims = st.info(name).dims;
  check(Shape(dims) == want, "BasedLM: tensor '", name, "' in ", st.source(), " has shape ",
        Shape(dims).str(), ", expected ", want.str());
  const Tensor<S> all = st.get<S>(name);
  int64_t r0 = 0;
  for (auto* p : parts) {
    const int64_t r1 = r0 + p->shape()[0];
    p->set(TensorView<const S>(all.view()).slice(0, r0, r1));
    r0 = r1;
  }
}

// Writes `parts` stacked along dim 0 as the one tensor `name`.
template <class S>
void save_stacked(io::SafeTensorsWriter& w, const std::string& name,
                  const std::vector<const layers::Param<S>*>& parts) {
  Shape s = parts[0]->shape();
  s[0] = 0;
  for (const auto* p : parts) s[0] += p->shape()[0];
  Tensor<S> all(s);
  S* out = all.data();
  for (const auto* p : parts) out = std::copy(p->data(), p->data() + p->numel(), out);
  w.add(name, all);
}

}  // namespace based_detail

// Based's gated short convolution (the reference's BaseConv), composed from Linear + ShortConv.
template <class T, class S = T>
struct BaseConv {
  layers::Linear<T, S> in_proj;   // [2E, d] (+ bias [2E]): u1 | u2
  layers::ShortConv<T> conv;      // [E, 1, kernel], silu
  layers::Linear<T, S> out_proj;  // [d, E] (+ bias [d])

  BaseConv() = default;
  BaseConv(int64_t d, int64_t expand_proj, int64_t kernel, bool use_bias, bool conv_bias) {
    check(expand_proj * d % 2 == 0, "BaseConv: expand_proj * d (", expand_proj * d,
          ") must be even");
    const int64_t E = expand_proj * d / 2;
    in_proj = layers::Linear<T, S>(d, 2 * E, use_bias);
    conv = layers::ShortConv<T>(E, kernel, conv_bias, ConvActivation::kSilu);
    out_proj = layers::Linear<T, S>(E, d, use_bias);
  }
  int64_t inner() const { return conv.channels(); }

  // x [B, T, d] -> y [B, T, d], continuing the conv from `state`.
  void forward(TensorView<const T> x, typename layers::ShortConv<T>::State& state,
               TensorView<T> y) const {
    const int64_t B = x.size(0), Tn = x.size(1), E = inner();
    Tensor<T> u({B, Tn, 2 * E});  // u1 | u2
    in_proj.forward(x, u);
    Tensor<T> v({B, Tn, E});  // silu(conv(u1)), then * u2
    conv.forward(u.view().slice(2, 0, E), state, v);
    for (int64_t r = 0; r < B * Tn; ++r)  // v = silu(conv(u1)) * u2
      simd::mul(v.data() + r * E, u.data() + r * 2 * E + E, v.data() + r * E, E);
    out_proj.forward(v, y);
  }

  void load(const io::SafeTensors& st, const std::string& p) {
    in_proj.load(st, layers::join(p, "in_proj"));
    const bool conv1 = !st.contains(layers::join(p, "conv.conv.weight")) &&
                       st.contains(layers::join(p, "conv1.conv.weight"));
    conv.load(st, layers::join(p, conv1 ? "conv1.conv" : "conv.conv"));
    out_proj.load(st, layers::join(p, "out_proj"));
  }
  void save(io::SafeTensorsWriter& w, const std::string& p) const {
    in_proj.save(w, layers::join(p, "in_proj"));
    conv.save(w, layers::join(p, "conv.conv"));
    out_proj.save(w, layers::join(p, "out_proj"));
  }
  void init_random(uint64_t seed) {
    in_proj.init_random(layers::derive_seed(seed, "in_proj"));
    conv.init_random(layers::derive_seed(seed, "conv"));
    out_proj.init_random(layers::derive_seed(seed, "out_proj"));
  }
  int64_t weight_bytes() const {
    return in_proj.weight_bytes() + conv.weight_bytes() + out_proj.weight_bytes();
  }
};

template <class T = float, class S = T>
class BasedLM {
 public:
  using Conv = BaseConv<T, S>;
  using Linear = layers::LinearAttention<T, S>;
  using Window = layers::Attention<T, S>;

  // Per layer kind, one state per layer of that kind (Block::slot indexes them).
  struct State {
    std::vector<typename layers::ShortConv<T>::State> conv;  // [B, kernel-1, E]
    std::vector<typename Linear::State> linear;              // s [B, H, Kf, D], z [B, H, Kf]
    std::vector<typename Window::State> window;              // ring k, v [B, H, window, D]
    int64_t bytes() const {
      int64_t n = 0;
      for (const auto& s : conv) n += s.bytes();
      for (const auto& s : linear) n += s.bytes();
      for (const auto& s : window) n += s.bytes();
      return n;
    }
  };

  struct Block {
    char kind = 'c';                  // 'c', 'l' or 'w'
    size_t slot = 0;                  // index into the mixers (and states) of its kind
    layers::RMSNorm<T> norm1, norm2;  // [d]
    layers::Mlp<T, S> mlp;            // gate / up [F, d], down [d, F]
  };

  BasedLMConfig config;
  layers::Embedding<T, S> word_embeddings;  // [vocab, d]
  std::vector<Block> blocks;
  std::vector<Conv> convs;
  std::vector<Linear> linears;
  std::vector<Window> windows;
  layers::RMSNorm<T> ln_f;       // [d]
  layers::Linear<T, S> lm_head;  // [vocab, d] when untied, else empty

  explicit BasedLM(const BasedLMConfig& c) : config(c) {
    const int64_t d = c.d_model;
    check(d > 0 && c.n_layer() > 0 && c.vocab_size > 0, "BasedLM: d_model (", d,
          "), the layer pattern ('", c.pattern, "') and vocab_size (", c.vocab_size,
          ") must be non-empty");
    check(c.window_size >= 0, "BasedLM: window_size must be >= 0, got ", c.window_size);
    word_embeddings = layers::Embedding<T, S>(c.vocab(), d);
    layers::LinearAttentionConfig lc;
    lc.hidden = d;
    lc.num_heads = c.num_heads;
    lc.feature_dim = c.feature_dim;
    layers::AttentionConfig ac;
    ac.hidden = d;
    ac.num_heads = c.num_heads;
    ac.qkv_bias = c.qkv_proj_bias;
    ac.o_bias = c.out_proj_bias;
    ac.rope_theta = c.rope_theta;
    ac.sliding_window = c.sliding_window();
    for (char k : c.pattern) {
      Block b;
      b.kind = k;
      if (k == 'c') {
        b.slot = convs.size();
        convs.emplace_back(d, c.expand_proj, c.kernel_size, c.conv_use_bias, c.conv_bias);
      } else if (k == 'l') {
        b.slot = linears.size();
        linears.emplace_back(lc);
      } else if (k == 'w') {
        b.slot = windows.size();
        windows.emplace_back(ac);
      } else {
        check(false, "BasedLM: layer pattern '", c.pattern, "' has '", k,
              "': use c (BaseConv), l (linear attention), w (window)");
      }
      b.norm1 = layers::RMSNorm<T>(d, c.norm_eps);
      b.norm2 = layers::RMSNorm<T>(d, c.norm_eps);
      b.mlp = layers::Mlp<T, S>(d, c.mlp_hidden());
      blocks.push_back(std::move(b));
    }
    ln_f = layers::RMSNorm<T>(d, c.norm_eps);
    if (!c.tie_embeddings) lm_head = layers::Linear<T, S>(d, c.vocab());
  }

  int64_t vocab() const { return word_embeddings.vocab(); }
  int64_t hidden() const { return config.d_model; }
  bool tied() const { return lm_head.weight.numel() == 0; }

  // capacity is not used: every layer's state has a fixed size (the window attention's ring).
  State make_state(int64_t batch, int64_t capacity = 0) const {
    State s;
    for (const Conv& m : convs) s.conv.push_back(m.conv.make_state(batch));
    for (const Linear& m : linears) s.linear.push_back(m.make_state(batch));
    for (const Window& m : windows) s.window.push_back(m.make_state(batch, capacity));
    return s;
  }

  // ids [B, T] -> logits [B, T, vocab], continuing from `state` (left after the last token).
  void forward(TensorView<const int32_t> ids, State& state, TensorView<T> logits) const {
    const char* L = "BasedLM";
    check(!ids.empty() && ids.ndim() == 2, L, ": ids must be [B, T]");
    const int64_t B = ids.size(0), Tn = ids.size(1), d = hidden();
    check_shape(L, "logits", TensorView<const T>(logits), {B, Tn, vocab()}, "[B, T, vocab]");
    check(state.conv.size() == convs.size() && state.linear.size() == linears.size() &&
              state.window.size() == windows.size(),
          L, ": the state does not fit this model (make it with make_state)");
    if (Tn == 0) return;
    Tensor<T> h({B, Tn, d});  // residual stream
    Tensor<T> x({B, Tn, d});  // normalised input of a mixer / mlp
    Tensor<T> y({B, Tn, d});  // their output
    word_embeddings.forward(ids, h);
    for (const Block& b : blocks) {
      b.norm1.forward(h, x);
      if (b.kind == 'c') {
        convs[b.slot].forward(x, state.conv[b.slot], y);
      } else if (b.kind == 'l') {
        linears[b.slot].forward(x, state.linear[b.slot], y);
      } else {
        windows[b.slot].forward(x, state.window[b.slot], y);
      }
      simd::axpy(T(1), y.data(), h.data(), h.numel());  // h += mixer(norm1(h))
      b.norm2.forward(h, x);
      b.mlp.forward(x, y);
      simd::axpy(T(1), y.data(), h.data(), h.numel());  // h += mlp(norm2(h))
    }
    ln_f.forward(h, x);
    if (tied()) {
      word_embeddings.attend(x, logits);
    } else {
      lm_head.forward(x, logits);
    }
  }

  static std::string layer_name(size_t i) { return "transformer.layers." + std::to_string(i); }

  void load(const io::SafeTensors& st) {
    // The hub's files: "model.transformer...".
    const std::string root =
        st.contains("model.transformer.embeddings.word_embeddings.weight") ? "model." : "";
    word_embeddings.load(st, root + "transformer.embeddings.word_embeddings");
    for (size_t i = 0; i < blocks.size(); ++i) {
      Block& b = blocks[i];
      const std::string p = root + layer_name(i), m = p + ".mixer";
      b.norm1.load(st, p + ".norm1");
      b.norm2.load(st, p + ".norm2");
      if (b.kind == 'c') {
        convs[b.slot].load(st, m);
      } else if (b.kind == 'l') {
        load_linear(linears[b.slot], st, m);
      } else {
        load_window(windows[b.slot], st, m);
      }
      load_mlp(b.mlp, st, p + ".mlp");
    }
    ln_f.load(st, root + "transformer.ln_f");
    lm_head = layers::Linear<T, S>();
    if (st.contains(root + "lm_head.weight")) {
      lm_head = layers::Linear<T, S>(hidden(), vocab());
      lm_head.load(st, root + "lm_head");
    }
  }
  void save(io::SafeTensorsWriter& w) const {
    using based_detail::save_stacked;
    word_embeddings.save(w, "transformer.embeddings.word_embeddings");
    for (size_t i = 0; i < blocks.size(); ++i) {
      const Block& b = blocks[i];
      const std::string p = layer_name(i), m = p + ".mixer.";
      b.norm1.save(w, p + ".norm1");
      b.norm2.save(w, p + ".norm2");
      if (b.kind == 'c') {
        convs[b.slot].save(w, m);
      } else if (b.kind == 'l') {
        const Linear& la = linears[b.slot];
        la.q_proj.save(w, m + "proj_q");
        la.k_proj.save(w, m + "proj_k");
        la.v_proj.save(w, m + "proj_v");
        la.o_proj.save(w, m + "out_proj");
      } else {
        const Window& a = windows[b.slot];
        save_stacked<S>(w, m + "Wqkv.weight",
                        {&a.q_proj.weight, &a.k_proj.weight, &a.v_proj.weight});
        if (a.q_proj.has_bias())
          save_stacked<T>(w, m + "Wqkv.bias", {&a.q_proj.bias, &a.k_proj.bias, &a.v_proj.bias});
        a.o_proj.save(w, m + "out_proj");
      }
      save_stacked<S>(w, p + ".mlp.fc1.weight", {&b.mlp.up_proj.weight, &b.mlp.gate_proj.weight});
      b.mlp.down_proj.save(w, p + ".mlp.fc2");
    }
    ln_f.save(w, "transformer.ln_f");
    if (!tied()) lm_head.save(w, "lm_head");
  }
  // Each layer from its own stream derive_seed(seed, its prefix); norms at one.
  void init_random(uint64_t seed) {
    using layers::derive_seed;
    word_embeddings.init_random(derive_seed(seed, "transformer.embeddings.word_embeddings"));
    for (size_t i = 0; i < blocks.size(); ++i) {
      Block& b = blocks[i];
      const std::string p = layer_name(i);
      const uint64_t ms = derive_seed(seed, p + ".mixer");
      if (b.kind == 'c') {
        convs[b.slot].init_random(ms);
      } else if (b.kind == 'l') {
        linears[b.slot].init_random(ms);
      } else {
        windows[b.slot].init_random(ms);
      }
      b.norm1.init_random(0);
      b.norm2.init_random(0);
      b.mlp.init_random(derive_seed(seed, p + ".mlp"));
    }
    ln_f.init_random(0);
    if (!tied()) lm_head.init_random(derive_seed(seed, "lm_head"));
  }
  int64_t weight_bytes() const {
    int64_t n = word_embeddings.weight_bytes() + ln_f.weight.bytes();
    for (const Block& b : blocks)
      n += b.norm1.weight.bytes() + b.norm2.weight.bytes() + b.mlp.weight_bytes();
    for (const Conv& m : convs) n += m.weight_bytes();
    for (const Linear& m : linears) n += m.weight_bytes();
    for (const Window& m : windows) n += m.weight_bytes();
    if (!tied()) n += lm_head.weight_bytes();
    return n;
  }

 private:
  // The reference's proj_q, proj_k, proj_v, out_proj, or fla's q_proj, k_proj, v_proj, o_proj
  // (a missing tensor is named in the reference's spelling unless the file has fla's).
  static void load_linear(Linear& la, const io::SafeTensors& st, const std::string& m) {
    if (st.contains(layers::join(m, "q_proj.weight"))) {
      la.load(st, m);
      return;
    }
    la.q_proj.load(st, layers::join(m, "proj_q"));
    la.k_proj.load(st, layers::join(m, "proj_k"));
    la.v_proj.load(st, layers::join(m, "proj_v"));
    la.o_proj.load(st, layers::join(m, "out_proj"));
  }
  // The reference's fused Wqkv (+ bias) and out_proj, or layers::Attention's own names.
  static void load_window(Window& a, const io::SafeTensors& st, const std::string& m) {
    if (!st.contains(layers::join(m, "Wqkv.weight")) &&
        st.contains(layers::join(m, "q_proj.weight"))) {
      a.load(st, m);
      return;
    }
    based_detail::load_stacked<S>(st, layers::join(m, "Wqkv.weight"),
                                  {&a.q_proj.weight, &a.k_proj.weight, &a.v_proj.weight});
    const std::string bias = layers::join(m, "Wqkv.bias");
    if (a.q_proj.has_bias()) {
      based_detail::load_stacked<T>(st, bias, {&a.q_proj.bias, &a.k_proj.bias, &a.v_proj.bias});
    } else {
      check(!st.contains(bias), "BasedLM: tensor '", bias, "' is in ", st.source(),
            " but the config has qkv_proj_bias = false");
    }
    a.o_proj.load(st, layers::join(m, "out_proj"));
  }
  // The reference's fc1 (up | gate) and fc2, or Mlp's gate_proj / up_proj / down_proj.
  static void load_mlp(layers::Mlp<T, S>& mlp, const io::SafeTensors& st, const std::string& p) {
    if (!st.contains(layers::join(p, "fc1.weight")) &&
        st.contains(layers::join(p, "gate_proj.weight"))) {
      mlp.load(st, p);
      return;
    }
    based_detail::load_stacked<S>(st, layers::join(p, "fc1.weight"),
                                  {&mlp.up_proj.weight, &mlp.gate_proj.weight});
    mlp.down_proj.load(st, layers::join(p, "fc2"));
  }
};

}  // namespace effattn::examples
