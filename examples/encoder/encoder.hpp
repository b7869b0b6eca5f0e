// encoder: a bidirectional (BERT-like) encoder whose blocks mix non-causal softmax attention and
// non-causal linear attention, followed by a cross-attention head: queries from a second, shorter
// sequence attend over the encoder's output. It shows the non-causal patterns of the library:
//
//   'A' block   non-causal softmax attention: every token sees every token   (Attention,
//                                                                             causal = false)
//   'W' block   the same with a two-sided window: token i sees j with |i - j| < window
//   'L' block   non-causal Based linear attention: S = sum_j phi(k_j) v_j^T over the whole
//               sequence, read by every query (LinearAttention, causal = false): O(T) time
//   head        cross attention: queries [B, Tq] over the encoder output [B, Tk, d], Tq != Tk,
//               no mask, no positions (Attention::forward_cross)
//
// The model (llama2.c's run.c shape: Config / weights / forward; d = hidden, H = num_heads,
// D = d / H, f = mlp_hidden, Kb = Based feature_dim):
//
//   x      = embed_tokens(ids) [B, T, d]  (+ embed_positions[t] with learned positions)
//   x      = embed_norm(x)                                   (post-norm only, as BERT)
//   per block i, mixer = 'A' | 'W' softmax attention or 'L' Based linear attention:
//     pre-norm:   x = x + mixer(norm1(x));   x = x + mlp(norm2(x))
//     post-norm:  x = norm1(x + mixer(x));   x = norm2(x + mlp(x))       (BERT)
//   enc    = norm(x) (pre-norm) or x (post-norm)             [B, T, d]
//   head:  q = embed_tokens(query_ids)                       [B, Tq, d]  (shared embedding)
//          h = q + cross_attn(norm_q(q), enc)                keys and values from enc
//          h = h + mlp(norm_mlp(h))
//          logits = classifier(norm(h))                      [B, Tq, num_labels]
// Norms are LayerNorm (weight, bias) or RMSNorm (weight); the Mlp is SwiGLU (no biases);
// positions are learned (BERT), RoPE in the softmax-attention blocks, or none (then the encoder
// is permutation-equivariant without 'W' blocks, and the head's output does not depend on the
// order of the encoded tokens).
//
// Weight names (safetensors; load / save take an optional prefix):
//   embed_tokens.weight                              [vocab, d]
//   embed_positions.weight                           [max_positions, d]   (learned positions)
//   embed_norm.weight, embed_norm.bias               [d]                  (post-norm)
//   layers.{i}.norm1.weight / .bias, norm2 likewise  [d]                  (bias: LayerNorm)
//   layers.{i}.mixer.q_proj.weight, k_proj           [d, d] ('A', 'W'), [H*Kb, d] ('L')
//   layers.{i}.mixer.v_proj.weight, o_proj           [d, d]
//   layers.{i}.mlp.gate_proj.weight, up_proj         [f, d]
//   layers.{i}.mlp.down_proj.weight                  [d, f]
//   norm.weight, norm.bias                           [d]                  (pre-norm)
//   head.norm_q, head.norm_mlp, head.norm            [d] each (.weight, .bias)
//   head.cross_attn.q_proj / k_proj / v_proj / o_proj.weight              [d, d]
//   head.mlp.gate_proj / up_proj [f, d], head.mlp.down_proj [d, f]
//   head.classifier.weight [num_labels, d], head.classifier.bias [num_labels]
// A missing or misshaped tensor raises effattn::Error naming it. init_random(seed) gives each
// layer derive_seed(seed, its name) (torch's default inits).
//
// Ragged batches: encode(ids, lengths) takes a right-padded batch (sequence b is ids[b, 0 ..
// lengths[b])); the mixers run it packed (varlen), so no token sees padding and each sequence's
// output is what it gets alone. Padding rows of the output are not meaningful. classify(...,
// enc_lengths) hides the padding of enc from the head's keys likewise. There is no cache: an
// encoder reads its whole input at once.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <effattn/effattn.hpp>
#include <effattn/layers/layers.hpp>

namespace effattn::examples {

enum class NormKind { kLayerNorm, kRMSNorm };
enum class Positions { kNone, kLearned, kRope };

struct EncoderConfig {
  int64_t vocab = 8192;
  int64_t hidden = 512;         // d
  int64_t num_heads = 8;        // H, softmax and linear attention; head size D = d / H
  int64_t mlp_hidden = 1408;    // f (SwiGLU)
  std::string blocks = "ALWL";  // one char per block: 'A' full, 'W' windowed, 'L' Based linear
  int64_t window = 128;         // 'W': query i sees keys j with |i - j| < window
  int64_t feature_dim = 16;     // Kb: Based's q / k width per head (Taylor map: 1 + Kb + Kb^2)
  NormKind norm = NormKind::kLayerNorm;
  bool pre_norm = true;  // false: post-norm (BERT)
  double norm_eps = 1e-5;
  Positions positions = Positions::kLearned;
  int64_t max_positions = 4096;  // learned positions: the longest input
  double rope_theta = 10000.0;   // RoPE positions
  int64_t num_labels = 4;        // the head's classifier outputs per query
};

// LayerNorm or RMSNorm by the config: one name, one interface.
template <class T>
struct EncoderNorm {
  NormKind kind = NormKind::kLayerNorm;
  layers::LayerNorm<T> ln;
  layers::RMSNorm<T> rms;

  EncoderNorm() = default;
  EncoderNorm(NormKind k, int64_t d, double eps) : kind(k) {
    if (k == NormKind::kLayerNorm) {
      ln = layers::LayerNorm<T>(d, eps);
    } else {
      rms = layers::RMSNorm<T>(d, eps);
    }
  }
  bool layer_norm() const { return kind == NormKind::kLayerNorm; }
  // x [..., d] -> y [..., d]; y may be x.
  void forward(TensorView<const T> x, TensorView<T> y) const {
    layer_norm() ? ln.forward(x, y) : rms.forward(x, y);
  }
  void load(const io::SafeTensors& st, const std::string& p) {
    layer_norm() ? ln.load(st, p) : rms.load(st, p);
  }
  void save(io::SafeTensorsWriter& w, const std::string& p) const {
    layer_norm() ? ln.save(w, p) : rms.save(w, p);
  }
  void init_random(uint64_t seed) { layer_norm() ? ln.init_random(seed) : rms.init_random(seed); }
  int64_t weight_bytes() const {
    return layer_norm() ? ln.weight.bytes() + ln.bias.bytes() : rms.weight.bytes();
  }
};

namespace encoder_detail {

// y[i] += x[i] over two tensors of the same shape (the residual connections).
template <class T>
void add_into(const Tensor<T>& x, Tensor<T>& y) {
  simd::axpy(T(1), x.data(), y.data(), y.numel());
}

}  // namespace encoder_detail

// One encoder block: a non-causal mixer ('A', 'W' softmax attention or 'L' Based linear
// attention) and a SwiGLU Mlp, with pre- or post-norm residuals.
template <class T>
struct EncoderBlock {
  char kind = 'A';
  bool pre_norm = true;
  EncoderNorm<T> norm1, norm2;        // [d]
  layers::Attention<T> attn;          // 'A', 'W'
  layers::LinearAttention<T> linear;  // 'L'
  layers::Mlp<T> mlp;                 // [f, d], [d, f]

  EncoderBlock() = default;
  EncoderBlock(const EncoderConfig& c, char k) : kind(k), pre_norm(c.pre_norm) {
    check(k == 'A' || k == 'W' || k == 'L', "Encoder: block kind '", std::string(1, k),
          "' is not one of A (attention), W (windowed attention), L (linear attention)");
    norm1 = EncoderNorm<T>(c.norm, c.hidden, c.norm_eps);
    norm2 = EncoderNorm<T>(c.norm, c.hidden, c.norm_eps);
    if (k == 'L') {
      layers::LinearAttentionConfig lc;
      lc.hidden = c.hidden;
      lc.num_heads = c.num_heads;
      lc.feature_dim = c.feature_dim;
      lc.causal = false;
      linear = layers::LinearAttention<T>(lc);
    } else {
      layers::AttentionConfig ac;
      ac.hidden = c.hidden;
      ac.num_heads = c.num_heads;
      ac.causal = false;
      ac.rope = c.positions == Positions::kRope;
      ac.rope_theta = c.rope_theta;
      ac.sliding_window = k == 'W' ? c.window : 0;
      attn = layers::Attention<T>(ac);
    }
    mlp = layers::Mlp<T>(c.hidden, c.mlp_hidden);
  }

  // The mixer alone: x [B, T, d] -> y [B, T, d], every token attending the whole sequence (its
  // first lengths[b] rows with lengths).
  void mix(TensorView<const T> x, TensorView<T> y, const std::vector<int64_t>& lengths = {}) const {
    kind == 'L' ? linear.forward(x, y, lengths) : attn.forward(x, y, lengths);
  }

  // x [B, T, d] -> y [B, T, d] (contiguous, y not x).
  void forward(const Tensor<T>& x, Tensor<T>& y, const std::vector<int64_t>& lengths = {}) const {
    Tensor<T> a(x.shape()), b(x.shape());
    if (pre_norm) {
      norm1.forward(x, a);  // y = x + mix(norm1(x))
      mix(a, y, lengths);
      encoder_detail::add_into(x, y);
      norm2.forward(y, a);  // y += mlp(norm2(y))
      mlp.forward(a, b);
      encoder_detail::add_into(b, y);
    } else {
      mix(x, a, lengths);  // a = norm1(x + mix(x))
      encoder_detail::add_into(x, a);
      norm1.forward(a, a);
      mlp.forward(a, b);  // y = norm2(a + mlp(a))
      encoder_detail::add_into(a, b);
      norm2.forward(b, y);
    }
  }
  Tensor<T> operator()(const Tensor<T>& x) const {
    Tensor<T> y(x.shape());
    forward(x, y);
    return y;
  }

  void load(const io::SafeTensors& st, const std::string& p) {
    norm1.load(st, layers::join(p, "norm1"));
    norm2.load(st, layers::join(p, "norm2"));
    kind == 'L' ? linear.load(st, layers::join(p, "mixer"))
                : attn.load(st, layers::join(p, "mixer"));
    mlp.load(st, layers::join(p, "mlp"));
  }
  void save(io::SafeTensorsWriter& w, const std::string& p) const {
    norm1.save(w, layers::join(p, "norm1"));
    norm2.save(w, layers::join(p, "norm2"));
    kind == 'L' ? linear.save(w, layers::join(p, "mixer")) : attn.save(w, layers::join(p, "mixer"));
    mlp.save(w, layers::join(p, "mlp"));
  }
  // `name` is the block's full name ("layers.3"): each sub-layer's seed derives from it.
  void init_random(uint64_t seed, const std::string& name) {
    norm1.init_random(layers::derive_seed(seed, layers::join(name, "norm1")));
    norm2.init_random(layers::derive_seed(seed, layers::join(name, "norm2")));
    const uint64_t ms = layers::derive_seed(seed, layers::join(name, "mixer"));
    kind == 'L' ? linear.init_random(ms) : attn.init_random(ms);
    mlp.init_random(layers::derive_seed(seed, layers::join(name, "mlp")));
  }
  int64_t weight_bytes() const {
    return norm1.weight_bytes() + norm2.weight_bytes() + mlp.weight_bytes() +
           (kind == 'L' ? linear.weight_bytes() : attn.weight_bytes());
  }
};

// The cross-attention head: queries from a second sequence over the encoder's output.
template <class T>
struct CrossHead {
  EncoderNorm<T> norm_q, norm_mlp, norm;  // [d]
  layers::Attention<T> cross_attn;        // q from the queries, k / v from the encoder output
  layers::Mlp<T> mlp;
  layers::Linear<T> classifier;  // [num_labels, d] + bias

  CrossHead() = default;
  explicit CrossHead(const EncoderConfig& c) {
    norm_q = EncoderNorm<T>(c.norm, c.hidden, c.norm_eps);
    norm_mlp = EncoderNorm<T>(c.norm, c.hidden, c.norm_eps);
    norm = EncoderNorm<T>(c.norm, c.hidden, c.norm_eps);
    layers::AttentionConfig ac;
    ac.hidden = c.hidden;
    ac.num_heads = c.num_heads;
    ac.causal = false;
    ac.rope = false;  // the two sequences' positions are unrelated
    cross_attn = layers::Attention<T>(ac);
    mlp = layers::Mlp<T>(c.hidden, c.mlp_hidden);
    classifier = layers::Linear<T>(c.hidden, c.num_labels, /*bias*/ true);
  }

  // q [B, Tq, d] (embedded queries), enc [B, Tk, d] (its first enc_lengths[b] rows, with
  // enc_lengths) -> logits [B, Tq, num_labels].
  void forward(const Tensor<T>& q, TensorView<const T> enc, TensorView<T> logits,
               const std::vector<int64_t>& enc_lengths = {}) const {
    Tensor<T> a(q.shape()), h(q.shape()), b(q.shape());
    norm_q.forward(q, a);  // h = q + cross_attn(norm_q(q), enc)
    cross_attn.forward_cross(a, enc, h, enc_lengths);
    encoder_detail::add_into(q, h);
    norm_mlp.forward(h, a);  // h += mlp(norm_mlp(h))
    mlp.forward(a, b);
    encoder_detail::add_into(b, h);
    norm.forward(h, a);
    classifier.forward(a, logits);
  }

  void load(const io::SafeTensors& st, const std::string& p) {
    norm_q.load(st, layers::join(p, "norm_q"));
    cross_attn.load(st, layers::join(p, "cross_attn"));
    norm_mlp.load(st, layers::join(p, "norm_mlp"));
    mlp.load(st, layers::join(p, "mlp"));
    norm.load(st, layers::join(p, "norm"));
    classifier.load(st, layers::join(p, "classifier"));
  }
  void save(io::SafeTensorsWriter& w, const std::string& p) const {
    norm_q.save(w, layers::join(p, "norm_q"));
    cross_attn.save(w, layers::join(p, "cross_attn"));
    norm_mlp.save(w, layers::join(p, "norm_mlp"));
    mlp.save(w, layers::join(p, "mlp"));
    norm.save(w, layers::join(p, "norm"));
    classifier.save(w, layers::join(p, "classifier"));
  }
  void init_random(uint64_t seed, const std::string& name) {
    norm_q.init_random(layers::derive_seed(seed, layers::join(name, "norm_q")));
    cross_attn.init_random(layers::derive_seed(seed, layers::join(name, "cross_attn")));
    norm_mlp.init_random(layers::derive_seed(seed, layers::join(name, "norm_mlp")));
    mlp.init_random(layers::derive_seed(seed, layers::join(name, "mlp")));
    norm.init_random(layers::derive_seed(seed, layers::join(name, "norm")));
    classifier.init_random(layers::derive_seed(seed, layers::join(name, "classifier")));
  }
  int64_t weight_bytes() const {
    return norm_q.weight_bytes() + cross_attn.weight_bytes() + norm_mlp.weight_bytes() +
           mlp.weight_bytes() + norm.weight_bytes() + classifier.weight_bytes();
  }
};

template <class T = float>
class Encoder {
 public:
  EncoderConfig config;
  layers::Embedding<T> embed_tokens;     // [vocab, d]
  layers::Embedding<T> embed_positions;  // [max_positions, d], learned positions only
  EncoderNorm<T> embed_norm;             // post-norm only
  std::vector<EncoderBlock<T>> layers;
  EncoderNorm<T> norm;  // pre-norm only
  CrossHead<T> head;

  Encoder() = default;
  explicit Encoder(const EncoderConfig& c) : config(c) {
    check(c.vocab > 0 && c.hidden > 0 && c.num_heads > 0 && c.mlp_hidden > 0 && c.num_labels > 0,
          "Encoder: vocab (", c.vocab, "), hidden (", c.hidden, "), num_heads (", c.num_heads,
          "), mlp_hidden (", c.mlp_hidden, ") and num_labels (", c.num_labels,
          ") must be positive");
    check(c.blocks.find('W') == std::string::npos || c.window > 0, "Encoder: window (", c.window,
          ") must be positive with 'W' blocks");
    check(c.positions != Positions::kLearned || c.max_positions > 0,
          "Encoder: max_positions must be positive with learned positions");
    embed_tokens = layers::Embedding<T>(c.vocab, c.hidden);
    if (c.positions == Positions::kLearned)
      embed_positions = layers::Embedding<T>(c.max_positions, c.hidden);
    if (!c.pre_norm) embed_norm = EncoderNorm<T>(c.norm, c.hidden, c.norm_eps);
    for (char k : c.blocks) layers.emplace_back(c, k);
    if (c.pre_norm) norm = EncoderNorm<T>(c.norm, c.hidden, c.norm_eps);
    head = CrossHead<T>(c);
  }

  int64_t hidden() const { return config.hidden; }
  int64_t num_labels() const { return config.num_labels; }

  // ids [B, T] -> enc [B, T, d]: every token's representation, from the whole sequence. lengths
  // (B entries, or none): sequence b is ids[b, 0 .. lengths[b]), the rest padding.
  void encode(TensorView<const int32_t> ids, TensorView<T> enc,
              const std::vector<int64_t>& lengths = {}) const {
    check(!ids.empty() && ids.ndim() == 2 && ids.size(1) >= 1, "Encoder::encode: ids has shape ",
          ids.empty() ? std::string("<none>") : ids.shape().str(), ", expected [B, T], T >= 1");
    const int64_t B = ids.size(0), Tn = ids.size(1), d = hidden();
    check_shape("Encoder::encode", "enc", TensorView<const T>(enc), {B, Tn, d}, "[B, T, d]");
    layers::detail::check_lengths("Encoder::encode", "lengths", lengths, B, Tn);
    check(config.positions != Positions::kLearned || Tn <= config.max_positions,
          "Encoder::encode: ", Tn, " tokens, more than max_positions (", config.max_positions,
          ") learned positions");
    Tensor<T> x({B, Tn, d}), y({B, Tn, d});
    embed_tokens.forward(ids, x);
    if (config.positions == Positions::kLearned)
      for (int64_t b = 0; b < B; ++b)  // x[b, t] += embed_positions[t]
        simd::axpy(T(1), embed_positions.weight.data(), x.data() + b * Tn * d, Tn * d);
    if (!config.pre_norm) embed_norm.forward(x, x);
    for (const auto& blk : layers) {
      blk.forward(x, y, lengths);
      std::swap(x, y);
    }
    if (config.pre_norm) {
      norm.forward(x, enc);
    } else {
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < Tn; ++t)
          for (int64_t i = 0; i < d; ++i) enc(b, t, i) = x(b, t, i);
    }
  }
  Tensor<T> encode(TensorView<const int32_t> ids, const std::vector<int64_t>& lengths = {}) const {
    check(!ids.empty() && ids.ndim() == 2, "Encoder::encode: ids must be [B, T]");
    Tensor<T> enc({ids.size(0), ids.size(1), hidden()});
    encode(ids, enc, lengths);
    return enc;
  }

  // The head: query_ids [B, Tq] attend over enc [B, Tk, d] (any Tk >= 1; with enc_lengths over
  // its first enc_lengths[b] rows) -> logits [B, Tq, num_labels].
  void classify(TensorView<const int32_t> query_ids, TensorView<const T> enc, TensorView<T> logits,
                const std::vector<int64_t>& enc_lengths = {}) const {
    check(!query_ids.empty() && query_ids.ndim() == 2 && query_ids.size(1) >= 1,
          "Encoder::classify: query_ids has shape ",
          query_ids.empty() ? std::string("<none>") : query_ids.shape().str(),
          ", expected [B, Tq], Tq >= 1");
    const int64_t B = query_ids.size(0), Tq = query_ids.size(1);
    check_shape("Encoder::classify", "enc", enc, {B, -1, hidden()}, "[B, Tk, d]");
    check(enc.size(1) >= 1, "Encoder::classify: enc is empty (Tk = 0)");
    check_shape("Encoder::classify", "logits", TensorView<const T>(logits), {B, Tq, num_labels()},
                "[B, Tq, num_labels]");
    Tensor<T> q({B, Tq, hidden()});
    embed_tokens.forward(query_ids, q);
    head.forward(q, enc, logits, enc_lengths);
  }
  Tensor<T> classify(TensorView<const int32_t> query_ids, TensorView<const T> enc,
                     const std::vector<int64_t>& enc_lengths = {}) const {
    check(!query_ids.empty() && query_ids.ndim() == 2,
          "Encoder::classify: query_ids must be [B, Tq]");
    Tensor<T> logits({query_ids.size(0), query_ids.size(1), num_labels()});
    classify(query_ids, enc, logits, enc_lengths);
    return logits;
  }

  void load(const io::SafeTensors& st, const std::string& prefix = "") {
    using layers::join;
    embed_tokens.load(st, join(prefix, "embed_tokens"));
    if (config.positions == Positions::kLearned)
      embed_positions.load(st, join(prefix, "embed_positions"));
    if (!config.pre_norm) embed_norm.load(st, join(prefix, "embed_norm"));
    for (std::size_t i = 0; i < layers.size(); ++i)
      layers[i].load(st, join(prefix, "layers." + std::to_string(i)));
    if (config.pre_norm) norm.load(st, join(prefix, "norm"));
    head.load(st, join(prefix, "head"));
  }
  void save(io::SafeTensorsWriter& w, const std::string& prefix = "") const {
    using layers::join;
    embed_tokens.save(w, join(prefix, "embed_tokens"));
    if (config.positions == Positions::kLearned)
      embed_positions.save(w, join(prefix, "embed_positions"));
    if (!config.pre_norm) embed_norm.save(w, join(prefix, "embed_norm"));
    for (std::size_t i = 0; i < layers.size(); ++i)
      layers[i].save(w, join(prefix, "layers." + std::to_string(i)));
    if (config.pre_norm) norm.save(w, join(prefix, "norm"));
    head.save(w, join(prefix, "head"));
  }
  void init_random(uint64_t seed) {
    using layers::derive_seed;
    embed_tokens.init_random(derive_seed(seed, "embed_tokens"));
    if (config.positions == Positions::kLearned)
      embed_positions.init_random(derive_seed(seed, "embed_positions"));
    if (!config.pre_norm) embed_norm.init_random(derive_seed(seed, "embed_norm"));
    for (std::size_t i = 0; i < layers.size(); ++i)
      layers[i].init_random(seed, "layers." + std::to_string(i));
    if (config.pre_norm) norm.init_random(derive_seed(seed, "norm"));
    head.init_random(seed, "head");
  }
  int64_t weight_bytes() const {
    int64_t n = embed_tokens.weight_bytes() + head.weight_bytes();
    if (config.positions == Positions::kLearned) n += embed_positions.weight_bytes();
    n += config.pre_norm ? norm.weight_bytes() : embed_norm.weight_bytes();
    for (const auto& blk : layers) n += blk.weight_bytes();
    return n;
  }
};

}  // namespace effattn::examples
