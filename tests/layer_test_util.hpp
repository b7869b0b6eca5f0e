// Helpers shared by the layer tests (tests/test_layers*.cpp): weights as double references,
// safetensors round trips, and the "a missing / misshaped tensor raises an Error naming it" sweep.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

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

// A mixer over a right-padded batch: fwd(x, y, lengths) on x [B, T, d] (sequence b = rows
// [0, lengths[b])) gives in those rows what fwd(x_b, y_b, {}) gives for the sequence alone, and
// padding rows equal `pad_row` (the layer's output for a zero mixer result, e.g. o_proj's bias).
template <class Fwd>
void expect_ragged_equals_alone(Fwd&& fwd, const Tensor<double>& x,
                                const std::vector<int64_t>& lengths, const Tensor<double>& pad_row,
                                double tol = 1e-12) {
  const int64_t B = x.size(0), Tn = x.size(1), d = x.size(2);
  Tensor<double> y({B, Tn, d});
  fwd(x.view(), y.view(), lengths);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = lengths[static_cast<std::size_t>(b)];
    if (n > 0) {
      const Tensor<double> xb = Tensor<double>::from(x.view().slice(0, b, b + 1).slice(1, 0, n));
      Tensor<double> yb({1, n, d});
      fwd(xb.view(), yb.view(), std::vector<int64_t>());
      const Tensor<double> got = Tensor<double>::from(y.view().slice(0, b, b + 1).slice(1, 0, n));
      EXPECT_LT(max_abs_diff(got, yb), tol) << "sequence " << b << " of length " << n;
    }
    for (int64_t t = n; t < Tn; ++t)
      for (int64_t i = 0; i < d; ++i)
        ASSERT_EQ(y(b, t, i), pad_row.data()[i]) << "padding row " << t << " of sequence " << b;
  }
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

// Every tensor of st: without it load(file) raises an Error naming it (unless it is listed in
// may_be_missing, e.g. an untied lm_head), and with one more row too.
template <class Load>
void expect_load_errors_name_tensors(const io::SafeTensors& st, Load&& load,
                                     const std::vector<std::string>& may_be_missing = {}) {
  ASSERT_GT(st.names().size(), 0u);
  for (const std::string& n : st.names()) {
    for (int mode = 0; mode < 2; ++mode) {
      if (mode == 0 &&
          std::find(may_be_missing.begin(), may_be_missing.end(), n) != may_be_missing.end())
        continue;
      Shape s(st.info(n).dims);
      s[0] += 1;
      const io::SafeTensors bad = edited(st, n, mode ? &s : nullptr);
      try {
        load(bad);
        ADD_FAILURE() << "no error for " << (mode ? "misshaped " : "missing ") << n;
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
      }
    }
  }
}

// The same for every tensor of a layer saved under "blk".
template <class Layer>
void expect_errors_name_tensors(const Layer& L) {
  expect_load_errors_name_tensors(saved(L), [&](const io::SafeTensors& bad) {
    Layer M(L.config);
    M.load(bad, "blk");
  });
}

}  // namespace effattn::testing
