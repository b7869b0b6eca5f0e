// Golden handlers for ops "linear_attn", "simple_gla", "gla" and "ssd": run in float.
//
// The reported outputs come from the chunk form with chunk_size 16 (T = 37 and 100 cross chunk
// boundaries, T = 1 is one partial chunk). The handler also runs the naive and the recurrent
// forms and checks them against the same expected outputs and tolerance: a form that misses
// makes the case FAIL with a message naming the form.
#include <functional>
#include <string>

#include "effattn/ops/linear_attention/linear_attention.hpp"
#include "effattn/ops/ssm/ssd.hpp"
#include "golden/golden.hpp"

using namespace effattn;
using namespace effattn::golden;

namespace {

template <class V>
TensorView<const float> opt(const V& t) {
  return t.empty() ? TensorView<const float>{} : TensorView<const float>(t.view());
}

// Runs `run(form, outputs)` for naive, recurrent and chunk; checks every form against the
// expected outputs; returns the chunk form's.
GoldenOutputs run_forms(const GoldenCase& c,
                        const std::function<GoldenOutputs(LinearAttentionForm)>& run) {
  const json tol = c.meta.value("recommended_tolerance_float32", json::object());
  const double rtol = tol.value("rtol", 1e-4), atol = tol.value("atol", 1e-5);
  const LinearAttentionForm forms[] = {LinearAttentionForm::kNaive, LinearAttentionForm::kRecurrent,
                                       LinearAttentionForm::kChunk};
  const char* names[] = {"naive", "recurrent", "chunk"};
  GoldenOutputs result;
  for (int f = 0; f < 3; ++f) {
    GoldenOutputs got = run(forms[f]);
    for (const auto& kv : c.meta.at("expected_outputs").items()) {
      const std::string& name = kv.key();
      check(got.count(name) == 1, names[f], " form: no output '", name, "'");
      const Tensor<double> want =
          io::load_npy<double>(c.dir + "/" + kv.value().at("file").get<std::string>());
      const CompareResult r = compare_output(got.at(name), want, false, rtol, atol);
      check(r.ok, names[f], " form: ", name, ": ", r.message);
    }
    if (forms[f] == LinearAttentionForm::kChunk) result = std::move(got);
  }
  return result;
}

FeatureMap parse_feature_map(const std::string& s) {
  if (s == "identity") return FeatureMap::kIdentity;
  if (s == "elu_plus_1") return FeatureMap::kEluPlus1;
  if (s == "relu") return FeatureMap::kRelu;
  if (s == "based_taylor") return FeatureMap::kBasedTaylor;
  throw Error("linear_attn: unknown feature_map '" + s + "'");
}

// linear_attn / simple_gla / gla share the engine; `decay` picks the front end.
GoldenOutputs run_engine_case(const GoldenCase& c, DecayKind decay) {
  const Tensor<float> q = c.in("q"), k = c.in("k"), v = c.in("v");
  Tensor<float> g, S0, z0;
  if (c.has("g")) g = c.in("g");
  if (c.has("S0")) S0 = c.in("S0");
  if (c.has("z0")) z0 = c.in("z0");
  LinearAttentionParams<float> p;
  p.feature_map = parse_feature_map(c.param_str("feature_map", "identity"));
  p.scale = static_cast<float>(c.param_double("scale", 0.0));
  p.causal = c.param_bool("causal", true);
  p.normalize = c.param_bool("normalize", false);
  p.eps = static_cast<float>(c.param_double("eps", 1e-10));
  p.chunk_size = 16;
  const int64_t B = q.size(0), T = q.size(1), H = v.size(2), V = v.size(3);
  const int64_t Kf = feature_dim(p.feature_map, q.size(3));
  const bool want_s = c.expects("S_final"), want_z = c.expects("z_final");
  return run_forms(c, [&](LinearAttentionForm form) {
    p.form = form;
    Tensor<float> o({B, T, H, V}), S1, z1;
    if (want_s) S1 = Tensor<float>({B, H, Kf, V});
    if (want_z) z1 = Tensor<float>({B, H, Kf});
    const TensorView<float> s1v = want_s ? S1.view() : TensorView<float>{};
    const TensorView<float> z1v = want_z ? z1.view() : TensorView<float>{};
    if (decay == DecayKind::kNone)
      linear_attention<float>(q, k, v, o, p, opt(S0), s1v, opt(z0), z1v);
    else if (decay == DecayKind::kScalar)
      simple_gla<float>(q, k, v, g, o, p, opt(S0), s1v);
    else
      gla<float>(q, k, v, g, o, p, opt(S0), s1v);
    GoldenOutputs out{{"o", to_double(o)}};
    if (want_s) out["S_final"] = to_double(S1);
    if (want_z) out["z_final"] = to_double(z1);
    return out;
  });
}

}  // namespace

EFFATTN_GOLDEN_HANDLER(linear_attn) { return run_engine_case(c, DecayKind::kNone); }
EFFATTN_GOLDEN_HANDLER(simple_gla) { return run_engine_case(c, DecayKind::kScalar); }
EFFATTN_GOLDEN_HANDLER(gla) { return run_engine_case(c, DecayKind::kChannel); }

EFFATTN_GOLDEN_HANDLER(ssd) {
  const Tensor<float> x = c.in("x"), dt = c.in("dt"), A = c.in("A"), Bm = c.in("B"), Cm = c.in("C");
  Tensor<float> dt_bias, D, z, h0;
  if (c.has("dt_bias")) dt_bias = c.in("dt_bias");
  if (c.has("D")) D = c.in("D");
  if (c.has("z")) z = c.in("z");
  if (c.has("initial_state")) h0 = c.in("initial_state");
  SsdParams<float> p;
  p.dt_softplus = c.param_bool("dt_softplus", false);
  p.chunk_size = 16;
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), P = x.size(3), N = Bm.size(3);
  return run_forms(c, [&](LinearAttentionForm form) {
    p.form = form;
    Tensor<float> y({B, T, H, P}), h1({B, H, P, N});
    if (form == LinearAttentionForm::kNaive)
      ssd_naive<float>(x, dt, A, Bm, Cm, opt(D), opt(dt_bias), opt(z), y, p, opt(h0), h1);
    else
      ssd<float>(x, dt, A, Bm, Cm, opt(D), opt(dt_bias), opt(z), y, p, opt(h0), h1);
    return GoldenOutputs{{"y", to_double(y)}, {"final_state", to_double(h1)}};
  });
}
