// Golden handler for op "sdpa" (softmax attention): runs effattn::attention in float with the
// case's scale / causal / window params (bottom-right alignment, the README's convention).
#include "effattn/ops/attention/attention.hpp"
#include "golden/golden.hpp"

using namespace effattn;
using namespace effattn::golden;

EFFATTN_GOLDEN_HANDLER(sdpa) {
  const Tensor<float> q = c.in("q"), k = c.in("k"), v = c.in("v");
  AttentionParams p;
  p.scale = c.param_double("scale", 0.0);
  p.causal = c.param_bool("causal", false);
  p.window_left = c.param_int("window_left", -1);
  p.window_right = c.param_int("window_right", -1);
  Tensor<float> o({q.size(0), q.size(1), q.size(2), v.size(3)});
  Tensor<float> lse({q.size(0), q.size(1), q.size(2)});
  attention<float>(q, k, v, o, p, lse);
  return {{"o", to_double(o)}, {"lse", to_double(lse)}};
}
