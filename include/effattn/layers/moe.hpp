// MoE: the sparse mixture-of-experts feed-forward of Mixtral / Qwen-MoE / DeepSeek-V3, on the
// MoE ops (ops/moe: gating, dispatch, combine). Stateless: every token is routed on its own.
//
//   logits = gate(x) [N, E]                   (router weight [E, d], kept in T, no bias)
//   idx, w = moe_gate(logits, bias)            top-k of softmax or sigmoid scores; DeepSeek-V3's
//                                              e_score_correction_bias and group-limited routing;
//                                              renormalised and scaled per config.gate
//   y[n]   = shared_experts(x[n]) + sum_s w[n, s] experts[idx[n, s]](x[n])
//   expert = SwiGLU Mlp: down_proj(silu(gate_proj(x)) * up_proj(x))
//
// Hugging Face names under the layer's prefix (e.g. "model.layers.3.mlp"):
//   gate.weight [E, d]                          router (Mixtral: "block_sparse_moe.gate")
//   gate.e_score_correction_bias [E]            DeepSeek-V3, with score_correction_bias
//   experts.{i}.gate_proj / up_proj [f, d], experts.{i}.down_proj [d, f]
//                                               (load also accepts Mixtral's w1 / w3 / w2;
//                                               save writes them with mixtral_names)
//   shared_experts.gate_proj / up_proj [fs, d], shared_experts.down_proj [d, fs]
//                                               DeepSeek's always-on shared expert(s), fs =
//                                               n_shared_experts * moe_intermediate_size.
// Qwen2-MoE's shared_expert + sigmoid shared_expert_gate is not supported (load says so).
//
// The router stays in T even when the experts are bf16: it is small (E x d), and the top-k
// choice is sensitive to its rounding (DeepSeek-V3 and Qwen compute it in float32 too).
//
// Experts are the layers' Mlp, run one after the other on their block of dispatched rows, so
// each picks its own kernel: a decode step (<= 8 rows per expert) streams the expert's weights
// once, a prompt runs gemm (see linear.hpp). A token's result is therefore independent of the
// batch it is in up to rounding (different kernels sum in different orders).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "effattn/core/error.hpp"
#include "effattn/core/tensor.hpp"
#include "effattn/io/safetensors.hpp"
#include "effattn/layers/linear.hpp"
#include "effattn/layers/weights.hpp"
#include "effattn/ops/moe/dispatch.hpp"
#include "effattn/ops/moe/gating.hpp"
#include "effattn/ops/moe/params.hpp"

namespace effattn::layers {

struct MoEConfig {
  int64_t hidden = 0;         // d
  int64_t num_experts = 0;    // E (n_routed_experts, num_local_experts)
  int64_t expert_hidden = 0;  // f (moe_intermediate_size)
  int64_t shared_hidden = 0;  // fs (n_shared_experts * moe_intermediate_size); 0 = none
  // top_k (num_experts_per_tok), score_func, renormalize (norm_topk_prob), n_group, topk_group,
  // routed_scaling_factor: see ops/moe/params.hpp and its presets (mixtral(), deepseek_v3()).
  moe::GateParams gate = moe::GateParams::mixtral(2);
  bool score_correction_bias = false;  // DeepSeek-V3: gate.e_score_correction_bias [E]
  bool mixtral_names = false;          // save experts as w1 (gate) / w3 (up) / w2 (down)
};

template <class T, class S = T>
class MoE {
  static_assert(detail::kStorageOk<T, S>, "MoE<T, S>: S must be T, or bf16 with T = float");

 public:
  MoEConfig config;
  Linear<T, T> gate;                 // router, weight [E, d]
  Param<T> e_score_correction_bias;  // [E], under "gate.", or disabled
  std::vector<Mlp<T, S>> experts;    // E SwiGLU experts of width f
  Mlp<T, S> shared_experts;          // width fs, when shared_hidden > 0

  MoE() = default;
  explicit MoE(const MoEConfig& c) : config(c) {
    const char* L = "MoE";
    check(c.hidden > 0 && c.num_experts > 0 && c.expert_hidden > 0, L, ": hidden (", c.hidden,
          "), num_experts (", c.num_experts, ") and expert_hidden (", c.expert_hidden,
          ") must be positive");
    check(c.shared_hidden >= 0, L, ": shared_hidden must be >= 0, got ", c.shared_hidden);
    check(c.gate.top_k >= 1 && c.gate.top_k <= c.num_experts, L, ": top_k = ", c.gate.top_k,
          " must be in [1, num_experts = ", c.num_experts, "]");
    check(!c.score_correction_bias || c.gate.score_func == moe::ScoreFunc::kSigmoid, L,
          ": score_correction_bias needs sigmoid scoring (DeepSeek-V3)");
    gate = Linear<T, T>(c.hidden, c.num_experts);
    e_score_correction_bias = c.score_correction_bias
                                  ? Param<T>("e_score_correction_bias", {c.num_experts})
                                  : Param<T>::disabled("e_score_correction_bias");
    experts.assign(static_cast<std::size_t>(c.num_experts), Mlp<T, S>(c.hidden, c.expert_hidden));
    if (c.shared_hidden > 0) shared_experts = Mlp<T, S>(c.hidden, c.shared_hidden);
  }

  int64_t hidden() const { return config.hidden; }
  int64_t num_experts() const { return config.num_experts; }
  int64_t top_k() const { return config.gate.top_k; }
  bool has_shared() const { return config.shared_hidden > 0; }

  // The router's choice for x [..., d]: topk_idx [N, k] (int32), topk_weight [N, k] (N = rows
  // of x), ordered by the selection criterion; logits [N, E] too when given.
  void route(TensorView<const T> x, TensorView<int32_t> topk_idx, TensorView<T> topk_weight,
             TensorView<T> logits = {}) const {
    const auto xr = detail::as_rows("MoE", "x", x, hidden(), "d");
    Tensor<T> local;
    if (logits.empty()) {
      local = Tensor<T>({xr.n, num_experts()});
      logits = local.view();
    }
    check_shape("MoE::route", "logits", TensorView<const T>(logits), {xr.n, num_experts()},
                "[N, E]");
    gate.forward(rows_view(xr), logits);
    moe::moe_gate<T>(logits, e_score_correction_bias.view(), topk_idx, topk_weight, config.gate);
  }

  // x [..., d] -> y [..., d]; y must not overlap x.
  void forward(TensorView<const T> x, TensorView<T> y) const {
    const auto xr = detail::as_rows("MoE", "x", x, hidden(), "d");
    detail::check_out_shape("MoE", "y", y, x, hidden());
    const auto yr = detail::as_rows("MoE", "y", y, hidden(), "d");
    const int64_t N = xr.n, d = hidden(), k = top_k();
    if (N == 0) return;
    const TensorView<const T> xv = rows_view(xr);
    const TensorView<T> yv(yr.p, {N, d}, {yr.ld, 1});
    Tensor<int32_t> idx({N, k});
    Tensor<T> w({N, k});
    route(xv, idx, w);
    // Rows grouped by expert (slot-major, no capacity limit at inference), each expert's block
    // through its Mlp, then y = shared(x) + sum_s w out in slot order.
    const moe::DispatchPlan plan = moe::make_dispatch_plan(idx, num_experts());
    const int64_t R = plan.rows();  // = N k
    Tensor<T> xs({R, d}), out({R, d});
    moe::dispatch_rows<T>(xv, plan, xs);
    for (int64_t e = 0; e < num_experts(); ++e) {
      const int64_t r0 = plan.offsets[e], r1 = plan.offsets[e + 1];
      if (r1 == r0) continue;
      experts[e].forward(TensorView<const T>(xs.view()).slice(0, r0, r1),
                         out.view().slice(0, r0, r1));
    }
    if (has_shared()) shared_experts.forward(xv, yv);
    moe::combine_rows<T>(out, w, plan, yv, has_shared() ? T(1) : T(0));
  }
  Tensor<T> operator()(TensorView<const T> x) const {
    check(!x.empty(), "MoE: x is empty, expected [..., d]");
    Tensor<T> y(x.shape());
    forward(x, y);
    return y;
  }

  void load(const io::SafeTensors& st, const std::string& prefix) {
    gate.load(st, join(prefix, "gate"));
    e_score_correction_bias.load(st, join(prefix, "gate"), "MoE");
    for (int64_t e = 0; e < num_experts(); ++e) {
      const std::string p = join(prefix, "experts." + std::to_string(e));
      Mlp<T, S>& m = experts[e];
      if (!detail::has_any(st, p, {"gate_proj", "up_proj", "down_proj"}) &&
          detail::has_any(st, p, {"w1", "w2", "w3"})) {
        m.gate_proj.load(st, join(p, "w1"));  // Mixtral: w1 gate, w3 up, w2 down
        m.up_proj.load(st, join(p, "w3"));
        m.down_proj.load(st, join(p, "w2"));
      } else {
        m.load(st, p);
      }
    }
    for (const char* n : {"shared_expert.gate_proj.weight", "shared_expert_gate.weight"}) {
      const std::string full = join(prefix, n);
      check(!st.contains(full), "MoE: tensor '", full, "' is in ", st.source(),
            ": Qwen2-MoE's gated shared expert is not supported (DeepSeek's shared_experts is)");
    }
    if (has_shared()) {
      shared_experts.load(st, join(prefix, "shared_experts"));
    } else {
      const std::string full = join(prefix, "shared_experts.gate_proj.weight");
      check(!st.contains(full), "MoE: tensor '", full, "' is in ", st.source(),
            " but the layer was configured without shared experts (shared_hidden = 0)");
    }
  }
  void save(io::SafeTensorsWriter& w, const std::string& prefix) const {
    gate.save(w, join(prefix, "gate"));
    e_score_correction_bias.save(w, join(prefix, "gate"));
    for (int64_t e = 0; e < num_experts(); ++e) {
      const std::string p = join(prefix, "experts." + std::to_string(e));
      const Mlp<T, S>& m = experts[e];
      if (config.mixtral_names) {
        m.gate_proj.save(w, join(p, "w1"));
        m.up_proj.save(w, join(p, "w3"));
        m.down_proj.save(w, join(p, "w2"));
      } else {
        m.save(w, p);
      }
    }
    if (has_shared()) shared_experts.save(w, join(prefix, "shared_experts"));
  }
  // Linear's torch default for the router and the experts; the correction bias starts at zero
  // (DeepSeek-V3 learns it by load balancing, not by gradient).
  void init_random(uint64_t seed) {
    gate.init_random(derive_seed(seed, "gate"));
    e_score_correction_bias.fill(0.0);
    for (int64_t e = 0; e < num_experts(); ++e)
      experts[e].init_random(derive_seed(seed, "experts." + std::to_string(e)));
    if (has_shared()) shared_experts.init_random(derive_seed(seed, "shared_experts"));
  }
  int64_t weight_bytes() const {
    int64_t n = gate.weight_bytes() + e_score_correction_bias.bytes();
    for (const auto& m : experts) n += m.weight_bytes();
    if (has_shared()) n += shared_experts.weight_bytes();
    return n;
  }

 private:
  TensorView<const T> rows_view(const detail::Rows<const T>& r) const {
    return TensorView<const T>(r.p, {r.n, hidden()}, {r.n > 1 ? r.ld : hidden(), 1});
  }
};

}  // namespace effattn::layers
