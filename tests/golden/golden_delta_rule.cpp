// Golden handlers for ops "delta_rule", "gated_delta_rule" and "kda": run in float.
//
// The reported outputs come from the chunked form with chunk_size 16 (so T = 37 and 100 cross
// chunk boundaries; T = 1 is a single partial chunk). The handler also runs the naive and the
// recurrent forms and checks them against the same expected outputs and tolerance: a form
// that misses makes the case FAIL with a message naming the form.
#include <string>

#include "effattn/ops/delta_rule/delta_rule.hpp"
#include "golden/golden.hpp"

using namespace effattn;
using namespace effattn::golden;

namespace {

GoldenOutputs run_delta_case(const GoldenCase& c) {
  const Tensor<float> q = c.in("q"), k = c.in("k"), v = c.in("v"), beta = c.in("beta");
  Tensor<float> g, S0;
  if (c.has("g")) g = c.in("g");
  if (c.has("S0")) S0 = c.in("S0");
  DeltaRuleParams<float> p;
  p.scale = static_cast<float>(c.param_double("scale", 0.0));
  p.use_qk_l2norm = c.param_bool("use_qk_l2norm", false);
  p.chunk_size = 16;
  const int64_t B = q.size(0), T = q.size(1), HV = v.size(2), K = q.size(3), V = v.size(3);
  const TensorView<const float> gv = g.empty() ? TensorView<const float>{} : g.view();
  const TensorView<const float> s0v = S0.empty() ? TensorView<const float>{} : S0.view();

  double rtol = 1e-4, atol = 1e-5;
  const json tol = c.meta.value("recommended_tolerance_float32", json::object());
  rtol = tol.value("rtol", rtol);
  atol = tol.value("atol", atol);
  const Tensor<double> want_o = io::load_npy<double>(c.dir + "/o.npy");
  const Tensor<double> want_s = io::load_npy<double>(c.dir + "/S_final.npy");

  GoldenOutputs result;
  const DeltaRuleAlgo forms[] = {DeltaRuleAlgo::kNaive, DeltaRuleAlgo::kRecurrent,
                                 DeltaRuleAlgo::kChunk};
  const char* names[] = {"naive", "recurrent", "chunk"};
  for (int f = 0; f < 3; ++f) {
    Tensor<float> o({B, T, HV, V}), S1({B, HV, K, V});
    p.algo = forms[f];
    delta_rule_forward<float>(q, k, v, beta, gv, o, s0v, S1, p);
    const CompareResult ro = compare_output(to_double(o), want_o, false, rtol, atol);
    const CompareResult rs = compare_output(to_double(S1), want_s, false, rtol, atol);
    check(ro.ok && rs.ok, names[f], " form: ", ro.ok ? "" : "o: " + ro.message,
          rs.ok ? "" : " S_final: " + rs.message);
    if (forms[f] == DeltaRuleAlgo::kChunk)
      result = {{"o", to_double(o)}, {"S_final", to_double(S1)}};
  }
  return result;
}

}  // namespace

EFFATTN_GOLDEN_HANDLER(delta_rule) { return run_delta_case(c); }
EFFATTN_GOLDEN_HANDLER(gated_delta_rule) { return run_delta_case(c); }
EFFATTN_GOLDEN_HANDLER(kda) { return run_delta_case(c); }
