// Helpers shared by the layer tests (tests/test_layers*.cpp): weights as double references,
// safetensors round trips, and the "a missing / misshaped tensor raises an Error naming it" sweep.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <type_traits>

#include "effattn/core/error.hpp"
#include "effattn/core/tensor.hpp"
#include "effattn/io/safetensors.hpp"
#include "effattn/layers/linear.hpp"
#include "effattn/layers/weights.hpp"
#include "test_util.hpp"

namespace effattn::testing {

// A parameter's values (float, double or bf16 storage) as a double tensor.
template <class S>
Tensor<double> as_double(const layers::Param<S>& p) {
  Tensor<double> d(p.shape());
  for (int64_t i = 0; i < d.numel(); ++i) {
    if constexpr (std::is_same_v<S, bf16>) {
      d.data()[i] = double(float(p.data()[i]));
    } else {
      d.data()[i] = double(p.data()[i]);
    }
  }
  return d;
}

// y [..., out] = x [..., in] W^T + b in double loops: W [out, in], b [out] or empty, x contiguous.
inline Tensor<double> ref_linear(const Tensor<double>& x, const Tensor<double>& W,
                                 const Tensor<double>& b = Tensor<double>()) {
  const int64_t in = W.size(1), out = W.size(0), M = x.numel() / in;
  EXPECT_EQ(x.size(x.ndim() - 1), in);
  Shape s = x.shape();
  s[s.ndim() - 1] = out;
  Tensor<double> y(s);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t o = 0; o < out; ++o) {
      double acc = b.empty() ? 0.0 : b.data()[o];
      for (int64_t i = 0; i < in; ++i) acc += x.data()[m * in + i] * W(o, i);
      y.data()[m * out + o] = acc;
    }
  return y;
}
template <class T, class S>
Tensor<double> ref_linear(const Tensor<double>& x, const layers::Linear<T, S>& l) {
  return ref_linear(x, as_double(l.weight), l.has_bias() ? as_double(l.bias) : Tensor<double>());
}

template <class T>
Tensor<double> dbl(const Tensor<T>& t) {
  return to_double(TensorView<const T>(t.view()));
}

template <class T>
bool bitwise_equal(const Tensor<T>& a, const Tensor<T>& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), sizeof(T) * a.numel()) == 0;
}

// The message of the effattn::Error f() raises (a test failure when it raises none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no effattn::Error raised";
  return "";
}

inline io::SafeTensors reload(const io::SafeTensorsWriter& w,
                              const std::string& name = "layers.safetensors") {
  return io::SafeTensors::from_buffer(w.serialize(), name);
}

// A layer saved under `prefix`, read back.
template <class Layer>
io::SafeTensors saved(const Layer& L, const std::string& prefix = "blk") {
  io::SafeTensorsWriter w;
  L.save(w, prefix);
  return reload(w, "mem");
}

// A copy of st without `drop`, or with it replaced by zeros of shape `reshape` if given.
inline io::SafeTensors edited(const io::SafeTensors& st, const std::string& drop,
                              const Shape* reshape) {
  io::SafeTensorsWriter w;
  for (const std::string& n : st.names()) {
    if (n != drop) {
      w.add(n, st.get<double>(n));
    } else if (reshape) {
      w.add(n, Tensor<double>(*reshape));
    }
  }
  return reload(w, "edited");
}

// Every tensor of the layer saved under "blk": missing -> Error naming it; one more row ->
// Error naming it.
template <class Layer>
void expect_errors_name_tensors(const Layer& L) {
  const io::SafeTensors st = saved(L);
  ASSERT_GT(st.names().size(), 0u);
  for (const std::string& n : st.names()) {
    for (int mode = 0; mode < 2; ++mode) {
      Shape s(st.info(n).dims);
      s[0] += 1;
      const io::SafeTensors bad = edited(st, n, mode ? &s : nullptr);
      Layer M(L.config);
      try {
        M.load(bad, "blk");
        ADD_FAILURE() << "no error for " << (mode ? "misshaped " : "missing ") << n;
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
      }
    }
  }
}

}  // namespace effattn::testing
