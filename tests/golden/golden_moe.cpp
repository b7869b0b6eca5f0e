// Golden handlers for ops "moe_gate" and "moe_layer": run in float.
//
// The reported outputs come from the fast path (moe_gate + combine_weights + router_stats;
// moe_layer). The handlers also run the other forms and check them against the same expected
// outputs (indices exactly): the naive reference, the gemm-only and the streaming-only (decode,
// one token per call) expert paths. A form that misses makes the case FAIL, naming the form.
#include <cstdint>
#include <string>

#include "effattn/ops/moe/moe.hpp"
#include "golden/golden.hpp"

using namespace effattn;
using namespace effattn::golden;

namespace {

double rtol_of(const GoldenCase& c) {
  return c.meta.value("recommended_tolerance_float32", json::object()).value("rtol", 1e-4);
}
double atol_of(const GoldenCase& c) {
  return c.meta.value("recommended_tolerance_float32", json::object()).value("atol", 1e-5);
}

// Expected output `name` of case c, as double.
Tensor<double> expected(const GoldenCase& c, const std::string& name) {
  return io::load_npy<double>(c.dir + "/" + name + ".npy");
}

void check_against(const GoldenCase& c, const char* form, const char* name,
                   const Tensor<double>& got, bool integer) {
  const CompareResult r = compare_output(got, expected(c, name), integer, rtol_of(c), atol_of(c));
  check(r.ok, form, " form: ", name, ": ", r.message);
}

// The case's routing as GateParams.
moe::GateParams gate_params(const GoldenCase& c, const std::string& kind) {
  const int64_t k = c.param_int("top_k", 0);
  if (kind == "mixtral") return moe::GateParams::mixtral(k);
  if (kind == "softmax_topk") return moe::GateParams::softmax_topk(k, false);
  if (kind == "softmax_topk_renorm") return moe::GateParams::softmax_topk(k, true);
  if (kind == "deepseek_v3") {
    return moe::GateParams::deepseek_v3(k, c.param_int("n_group", 1), c.param_int("topk_group", 1),
                                        c.param_double("routed_scaling_factor", 1.0));
  }
  throw Error("moe: unknown routing kind '" + kind + "'");
}

template <class T>
TensorView<const T> opt_in(const GoldenCase& c, const std::string& name, Tensor<T>& holder) {
  if (!c.has(name)) return {};
  holder = c.in(name);
  return holder.view();
}

Tensor<double> scalar(double v) {
  Tensor<double> t{Shape{}};
  t.data()[0] = v;
  return t;
}

}  // namespace

EFFATTN_GOLDEN_HANDLER(moe_gate) {
  const Tensor<float> logits = c.in("logits");
  Tensor<float> bias_t;
  const TensorView<const float> bias = opt_in(c, "bias", bias_t);
  const moe::GateParams p = gate_params(c, c.param_str("kind", ""));
  const int64_t N = logits.size(0), E = logits.size(1), k = p.top_k;

  Tensor<int32_t> idx({N, k});
  Tensor<float> w({N, k}), probs({N, E}), combine({N, E});
  moe::moe_gate<float>(logits, bias, idx, w, p, probs);
  moe::combine_weights<float>(idx, w, combine);

  {  // naive reference, same checks
    Tensor<int32_t> idx_n({N, k});
    Tensor<float> w_n({N, k}), probs_n({N, E});
    moe::naive::gate<float>(logits, bias, idx_n, w_n, p, probs_n);
    check_against(c, "naive", "topk_idx", to_double(idx_n), true);
    check_against(c, "naive", "topk_weight", to_double(w_n), false);
    check_against(c, "naive", "probs", to_double(probs_n), false);
  }

  GoldenOutputs out{{"topk_idx", to_double(idx)},
                    {"topk_weight", to_double(w)},
                    {"combine_weights", to_double(combine)},
                    {"probs", to_double(probs)}};
  if (c.expects("aux_loss") || c.expects("aux_loss_hf")) {
    const moe::RouterStats<float> st = moe::router_stats<float>(logits, idx, p);
    const moe::RouterStats<float> st_n = moe::naive::router_stats<float>(logits, idx, p);
    check_against(c, "naive", "aux_loss", scalar(st_n.aux_loss), false);
    check_against(c, "naive", "aux_loss_hf", scalar(st_n.aux_loss_hf), false);
    out["aux_loss"] = scalar(st.aux_loss);
    out["aux_loss_hf"] = scalar(st.aux_loss_hf);
  }
  return out;
}

EFFATTN_GOLDEN_HANDLER(moe_layer) {
  const Tensor<float> x = c.in("x"), w_router = c.in("W_router");
  const Tensor<float> wg = c.in("W_gate"), wu = c.in("W_up"), wd = c.in("W_down");
  Tensor<float> bias_t, sg_t, su_t, sd_t;
  const TensorView<const float> bias = opt_in(c, "bias", bias_t);
  const moe::ExpertWeights<float> ex{wg, wu, wd};
  const moe::SharedExpertWeights<float> sh{opt_in(c, "Ws_gate", sg_t), opt_in(c, "Ws_up", su_t),
                                           opt_in(c, "Ws_down", sd_t)};
  moe::MoeLayerParams p;
  p.gate = gate_params(c, c.param_str("routing", ""));
  const int64_t N = x.size(0), d = x.size(1), k = p.gate.top_k;

  Tensor<float> y({N, d}), w({N, k});
  Tensor<int32_t> idx({N, k});
  moe::moe_layer<float, float>(x, w_router, bias, ex, sh, y, p, idx, w);

  {  // naive: logits by the same gemm, naive gate and per-token expert loop
    Tensor<float> logits({N, w_router.size(1)}), y_n({N, d}), w_n({N, k});
    Tensor<int32_t> idx_n({N, k});
    gemm<float>(x, Trans::kNo, w_router, Trans::kNo, logits);
    moe::naive::gate<float>(logits, bias, idx_n, w_n, p.gate);
    moe::naive::moe_ffn<float, float>(x, idx_n, w_n, ex, sh, y_n);
    check_against(c, "naive", "topk_idx", to_double(idx_n), true);
    check_against(c, "naive", "topk_weight", to_double(w_n), false);
    check_against(c, "naive", "y", to_double(y_n), false);
  }
  {  // every expert through gemm
    moe::MoeLayerParams pg = p;
    pg.ffn.skinny_max_rows = 0;
    Tensor<float> y_g({N, d});
    moe::moe_layer<float, float>(x, w_router, bias, ex, sh, y_g, pg);
    check_against(c, "gemm-only", "y", to_double(y_g), false);
  }
  {  // decode: one token per call, every expert through the streaming kernel
    Tensor<float> y_s({N, d});
    moe::MoeWorkspace<float> ws;
    for (int64_t n = 0; n < N; ++n) {
      moe::moe_layer<float, float>(x.view().slice(0, n, n + 1), w_router, bias, ex, sh,
                                   y_s.view().slice(0, n, n + 1), p, {}, {}, nullptr, &ws);
    }
    check_against(c, "decode", "y", to_double(y_s), false);
  }
  return {{"y", to_double(y)}, {"topk_idx", to_double(idx)}, {"topk_weight", to_double(w)}};
}
