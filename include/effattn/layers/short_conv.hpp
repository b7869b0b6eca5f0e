// ShortConv: the depthwise causal conv1d (+ silu) that Mamba, Gated DeltaNet, KDA and Based put
// in front of their mixers, with its conv state in a separate State object.
//
//   y_t[c] = act(bias[c] + sum_{i<W} weight[c, 0, i] x_{t-W+1+i}[c])
//
// Weights as torch's nn.Conv1d(C, C, W, groups=C) stores them: "weight" [C, 1, W], "bias" [C]
// (optional; fla's ShortConvolution has none, Mamba's conv1d has one). Kept in T (C * W values).
//
// State: the last W-1 inputs of each sequence, conv [B, W-1, C], oldest first (the op's layout,
// time-major so a token's channels are contiguous). The reference caches keep [B, C, W] instead
// (HF MambaCache conv_states, fla's conv_state): conv[b, i, c] holds their [b, c, i + 1] after
// the update of the last token. A fresh State is zeros (what the references start from).
//
// forward() runs prompts through causal_conv1d and decode steps (T <= kDecodeTokens) through
// causal_conv1d_update; either way the state continues from where it was, so feeding a sequence
// token by token gives what one call over the whole sequence gives.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "effattn/core/error.hpp"
#include "effattn/core/tensor.hpp"
#include "effattn/io/safetensors.hpp"
#include "effattn/layers/weights.hpp"
#include "effattn/ops/ssm/causal_conv1d.hpp"

namespace effattn::layers {

template <class T>
class ShortConv {
 public:
  static constexpr int64_t kDecodeTokens = 4;  // T up to this goes through the update path

  // Per-sequence state of one ShortConv: make one per batch with make_state(B).
  struct State {
    Tensor<T> conv;  // [B, W-1, C], the last W-1 inputs, oldest first
    int64_t batch() const { return conv.empty() ? 0 : conv.size(0); }
    int64_t bytes() const { return conv.numel() * static_cast<int64_t>(sizeof(T)); }
    void reset() { conv.fill(T(0)); }
  };

  Param<T> weight;  // [C, 1, W]
  Param<T> bias;    // [C], or disabled
  ConvActivation activation = ConvActivation::kSilu;

  ShortConv() = default;
  ShortConv(int64_t channels, int64_t width, bool has_bias = false,
            ConvActivation act = ConvActivation::kSilu)
      : weight("weight", {channels, 1, width}),
        bias(has_bias ? Param<T>("bias", {channels}) : Param<T>::disabled("bias")),
        activation(act) {
    check(channels >= 1 && width >= 1, "ShortConv: channels (", channels, ") and width (", width,
          ") must be >= 1");
  }

  int64_t channels() const { return weight.shape()[0]; }
  int64_t width() const { return weight.shape()[2]; }
  bool has_bias() const { return bias.enabled(); }

  State make_state(int64_t batch) const {
    check(batch >= 1, "ShortConv::make_state: batch ", batch, " must be >= 1");
    State s;
    s.conv = Tensor<T>({batch, width() - 1, channels()});
    return s;
  }

  // x [B, T, C] -> y [B, T, C], continuing from `state` (updated to end after the last token).
  // y must not overlap x.
  void forward(TensorView<const T> x, State& state, TensorView<T> y) const {
    check_shape("ShortConv", "x", x, {-1, -1, channels()}, "[B, T, C]");
    const int64_t B = x.size(0), Tn = x.size(1);
    check(!state.conv.empty() && state.conv.shape() == Shape({B, width() - 1, channels()}),
          "ShortConv: state.conv has shape ",
          state.conv.empty() ? std::string("<none>") : state.conv.shape().str(), ", expected ",
          Shape({B, width() - 1, channels()}).str(), " = [B, W-1, C] (make it with make_state(B))");
    check_shape("ShortConv", "y", TensorView<const T>(y), {B, Tn, channels()}, "[B, T, C]");
    if (Tn == 0) return;
    const TensorView<const T> w = weight.view().reshape({channels(), width()});  // [C, W]
    CausalConv1dParams p;
    p.activation = activation;
    TensorView<T> s = state.conv.view();
    if (Tn <= kDecodeTokens) {
      causal_conv1d_update<T>(x, w, bias.view(), s, y, p);
    } else {
      causal_conv1d<T>(x, w, bias.view(), TensorView<const T>(s), y, s, p);
    }
  }
  Tensor<T> operator()(TensorView<const T> x, State& state) const {
    check(!x.empty() && x.ndim() == 3, "ShortConv: x must be [B, T, C]");
    Tensor<T> y(x.shape());
    forward(x, state, y);
    return y;
  }

  void load(const io::SafeTensors& st, const std::string& prefix) {
    weight.load(st, prefix, "ShortConv");
    bias.load(st, prefix, "ShortConv");
  }
  void save(io::SafeTensorsWriter& w, const std::string& prefix) const {
    weight.save(w, prefix);
    bias.save(w, prefix);
  }
  // torch's Conv1d init: uniform in +-1/sqrt(fan_in), fan_in = W for a depthwise conv.
  void init_random(uint64_t seed) {
    const double bound = 1.0 / std::sqrt(double(width()));
    weight.init_uniform(seed, bound);
    bias.init_uniform(seed, bound);
  }
  int64_t weight_bytes() const { return weight.bytes() + bias.bytes(); }
};

}  // namespace effattn::layers
