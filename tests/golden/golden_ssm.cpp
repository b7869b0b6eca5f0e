// Golden handlers for ops "mamba_selective_scan", "causal_conv1d" and "causal_conv1d_update":
// run in float.
//
// The reported outputs come from the prefill forms (selective_scan_chunk, also for T = 1, and
// causal_conv1d), or from causal_conv1d_update for the decode case. The handler also runs the
// other forms (naive, recurrent, the dispatching front end, the in-place updates) and checks
// them against the same expected outputs and tolerance: a form that misses makes the case FAIL
// with a message naming the form.
#include <functional>
#include <string>

#include "effattn/ops/ssm/ssm.hpp"
#include "golden/golden.hpp"

using namespace effattn;
using namespace effattn::golden;

namespace {

template <class T>
TensorView<const T> opt_view(const Tensor<T>& t) {
  return t.empty() ? TensorView<const T>{} : t.view();
}

struct Expected {
  double rtol = 1e-4, atol = 1e-5;
  Tensor<double> y, state;
};

Expected load_expected(const GoldenCase& c, const char* state_name) {
  Expected e;
  const json tol = c.meta.value("recommended_tolerance_float32", json::object());
  e.rtol = tol.value("rtol", e.rtol);
  e.atol = tol.value("atol", e.atol);
  e.y = io::load_npy<double>(c.dir + "/y.npy");
  e.state = io::load_npy<double>(c.dir + "/" + state_name + ".npy");
  return e;
}

void check_form(const Expected& e, const char* form, const Tensor<float>& y,
                const Tensor<float>& state) {
  const CompareResult ry = compare_output(to_double(y), e.y, false, e.rtol, e.atol);
  const CompareResult rs = compare_output(to_double(state), e.state, false, e.rtol, e.atol);
  check(ry.ok && rs.ok, form, " form: ", ry.ok ? "" : "y: " + ry.message,
        rs.ok ? "" : " state: " + rs.message);
}

}  // namespace

EFFATTN_GOLDEN_HANDLER(mamba_selective_scan) {
  const Tensor<float> u = c.in("u"), delta = c.in("delta"), A = c.in("A"), B = c.in("B"),
                      C = c.in("C");
  Tensor<float> D, z, bias;
  if (c.has("D")) D = c.in("D");
  if (c.has("z")) z = c.in("z");
  if (c.has("delta_bias")) bias = c.in("delta_bias");
  SelectiveScanParams p;
  p.delta_softplus = c.param_bool("delta_softplus", false);
  const int64_t Bsz = u.size(0), T = u.size(1), Dm = u.size(2), N = A.size(1);
  const Expected e = load_expected(c, "last_state");

  using Fn = void (*)(TensorView<const float>, TensorView<const float>, TensorView<const float>,
                      TensorView<const float>, TensorView<const float>, TensorView<const float>,
                      TensorView<const float>, TensorView<const float>, TensorView<const float>,
                      TensorView<float>, TensorView<float>, const SelectiveScanParams&);
  const Fn forms[] = {&selective_scan_naive<float>, &selective_scan_recurrent<float>,
                      &selective_scan<float>, &selective_scan_chunk<float>};
  const char* names[] = {"naive", "recurrent", "selective_scan", "chunk"};
  GoldenOutputs result;
  for (int f = 0; f < 4; ++f) {
    Tensor<float> y({Bsz, T, Dm}), state({Bsz, Dm, N});
    forms[f](u, delta, A, B, C, opt_view(D), opt_view(z), opt_view(bias), {}, y, state, p);
    check_form(e, names[f], y, state);
    if (f == 3) result = {{"y", to_double(y)}, {"last_state", to_double(state)}};
  }
  // Decode: token by token through selective_scan_step from a zero state.
  Tensor<float> y({Bsz, T, Dm}), state({Bsz, Dm, N});
  for (int64_t t = 0; t < T; ++t) {
    auto tok = [&](const Tensor<float>& x) {
      return x.empty() ? TensorView<const float>{}
                       : TensorView<const float>(x.view()).slice(1, t, t + 1);
    };
    selective_scan_step<float>(tok(u), tok(delta), A, tok(B), tok(C), opt_view(D), tok(z),
                               opt_view(bias), state, y.view().slice(1, t, t + 1), p);
  }
  check_form(e, "step", y, state);
  return result;
}

namespace {

GoldenOutputs run_conv_case(const GoldenCase& c, bool update_case) {
  const Tensor<float> x = c.in("x"), w = c.in("weight");
  Tensor<float> bias, s0;
  if (c.has("bias")) bias = c.in("bias");
  if (c.has("initial_state")) s0 = c.in("initial_state");
  CausalConv1dParams p;
  const std::string act = c.param_str("activation", "none");
  check(act == "none" || act == "silu", c.name, ": unknown activation ", act);
  p.activation = act == "silu" ? ConvActivation::kSilu : ConvActivation::kNone;
  const int64_t Bsz = x.size(0), T = x.size(1), D = x.size(2), W = w.size(1);
  const Expected e = load_expected(c, "final_state");

  Tensor<float> y_naive({Bsz, T, D}), s_naive({Bsz, W - 1, D});
  causal_conv1d_naive<float>(x, w, opt_view(bias), opt_view(s0), y_naive, s_naive, p);
  check_form(e, "naive", y_naive, s_naive);

  Tensor<float> y({Bsz, T, D}), s1({Bsz, W - 1, D});
  causal_conv1d<float>(x, w, opt_view(bias), opt_view(s0), y, s1, p);
  check_form(e, "causal_conv1d", y, s1);

  // causal_conv1d_update: the state in place (zeros when the case has none).
  Tensor<float> y_up({Bsz, T, D}), s_up = s0.empty() ? Tensor<float>({Bsz, W - 1, D}) : s0;
  causal_conv1d_update<float>(x, w, opt_view(bias), s_up, y_up, p);
  check_form(e, "causal_conv1d_update", y_up, s_up);

  if (update_case) return {{"y", to_double(y_up)}, {"final_state", to_double(s_up)}};
  return {{"y", to_double(y)}, {"final_state", to_double(s1)}};
}

}  // namespace

EFFATTN_GOLDEN_HANDLER(causal_conv1d) { return run_conv_case(c, false); }
EFFATTN_GOLDEN_HANDLER(causal_conv1d_update) { return run_conv_case(c, true); }
