// Mamba-1 selective scan and causal conv1d: parameters, argument checks and the obviously-correct
// token loops that every fast form is tested against.
//
// selective_scan (mamba's selective_scan_ref), per channel d and state n, channel d reading the
// B/C group g(d) = d / (D / G):
//   dt_t[d]   = softplus(delta_t[d] + delta_bias[d])     (or delta + delta_bias without softplus)
//   h_t[d,n]  = exp(dt_t[d] A[d,n]) h_{t-1}[d,n] + dt_t[d] B_t[g(d),n] u_t[d]
//   y_t[d]    = sum_n h_t[d,n] C_t[g(d),n] + D[d] u_t[d],  then y_t[d] *= silu(z_t[d])
//   shapes: u, delta, z, y [B,T,D]; A [D,N]; B, C [B,T,N] or [B,T,G,N]; D, delta_bias [D];
//           states h [B,D,N] (varlen: [S,D,N], S = cu_seqlens.size() - 1).
//
// causal_conv1d (causal-conv1d's causal_conv1d_ref), depthwise along time:
//   xx = concat(initial_state (or zeros) [W-1,D], x [T,D]) along time
//   y_t[d] = act(bias[d] + sum_{i<W} weight[d,i] xx[t+i,d]),  final_state = xx[T:T+W-1]
//   shapes: x, y [B,T,D]; weight [D,W]; bias [D]; states [B,W-1,D] (time-major, oldest first;
//           upstream keeps [B,D,W-1]).
//
// Varlen (both ops): B = 1, the T axis packs S sequences, sequence s covering
// [cu_seqlens[s], cu_seqlens[s+1]); states are then [S, ...].
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "effattn/core/error.hpp"
#include "effattn/core/parallel.hpp"
#include "effattn/core/tensor.hpp"

namespace effattn {

struct SelectiveScanParams {
  // dt = softplus(delta + delta_bias) when true, delta + delta_bias otherwise. Mamba layers
  // always pass true (mamba's selective_scan_fn defaults to false: set it when porting a call).
  bool delta_softplus = true;
  int num_threads = 0;              // 0 = the global default (set_num_threads)
  std::vector<int64_t> cu_seqlens;  // empty = not varlen; else S+1 offsets into T, B must be 1
};

enum class ConvActivation { kNone, kSilu };

struct CausalConv1dParams {
  ConvActivation activation = ConvActivation::kNone;
  int num_threads = 0;
  std::vector<int64_t> cu_seqlens;  // as SelectiveScanParams::cu_seqlens
};

namespace detail::ssm {

// One independent sequence: batch row b, time range [t0, t0 + len), state row s.
struct Seq {
  int64_t b, t0, len, s;
};

// The sequences of a [B, T, ...] input: B rows of length T, or the varlen segments of row 0.
// Computed on demand, so decode calls allocate nothing. Holds a pointer to cu_seqlens.
class Sequences {
 public:
  Sequences() = default;
  Sequences(int64_t batch, int64_t T, const std::vector<int64_t>* cu)
      : batch_(batch), T_(T), cu_(cu && !cu->empty() ? cu : nullptr) {}
  int64_t size() const { return cu_ ? static_cast<int64_t>(cu_->size()) - 1 : batch_; }
  Seq operator[](int64_t i) const {
    if (!cu_) return {i, 0, T_, i};
    const int64_t t0 = (*cu_)[static_cast<std::size_t>(i)];
    return {0, t0, (*cu_)[static_cast<std::size_t>(i) + 1] - t0, i};
  }
  struct Iter {
    const Sequences* s;
    int64_t i;
    Seq operator*() const { return (*s)[i]; }
    Iter& operator++() {
      ++i;
      return *this;
    }
    bool operator!=(const Iter& o) const { return i != o.i; }
  };
  Iter begin() const { return {this, 0}; }
  Iter end() const { return {this, size()}; }

 private:
  int64_t batch_ = 0, T_ = 0;
  const std::vector<int64_t>* cu_ = nullptr;
};

// Checks cu_seqlens against a [batch, T, ...] input and returns its sequences.
inline Sequences make_sequences(const char* op, int64_t batch, int64_t T,
                                const std::vector<int64_t>& cu) {
  if (cu.empty()) return Sequences(batch, T, nullptr);
  check(batch == 1, op, ": cu_seqlens given (varlen) but batch is ", batch, ", expected 1");
  check(cu.size() >= 2, op, ": cu_seqlens has ", cu.size(), " entries, expected >= 2");
  check(cu.front() == 0, op, ": cu_seqlens[0] is ", cu.front(), ", expected 0");
  check(cu.back() == T, op, ": cu_seqlens ends at ", cu.back(), ", expected T = ", T);
  for (std::size_t i = 0; i + 1 < cu.size(); ++i) {
    check(cu[i] <= cu[i + 1], op, ": cu_seqlens is not non-decreasing at ", i, " (", cu[i], " > ",
          cu[i + 1], ")");
  }
  return Sequences(batch, T, &cu);
}

// Validated sizes of a selective-scan call. B/C are handed on as [B,T,G,N] views (a [B,T,N]
// input becomes G = 1 with a zero group stride).
template <class Scalar>
struct ScanArgs {
  int64_t batch = 0, T = 0, D = 0, N = 0, G = 1, S = 0;
  TensorView<const Scalar> B4, C4;
  Sequences seqs;
};

template <class T>
TensorView<const T> as_grouped(const TensorView<const T>& v) {
  if (v.ndim() == 4) return v;
  return TensorView<const T>(v.data(), Shape{v.size(0), v.size(1), 1, v.size(2)},
                             {v.stride(0), v.stride(1), 0, v.stride(2)});
}

// Checks every argument of a selective-scan call (naive, recurrent and chunk forms alike).
// `state_in` / `state_out` are the optional initial / final states; `y` the output.
template <class T>
ScanArgs<T> check_selective_scan(const char* op, const TensorView<const T>& u,
                                 const TensorView<const T>& delta, const TensorView<const T>& A,
                                 const TensorView<const T>& B, const TensorView<const T>& C,
                                 const TensorView<const T>& Dskip, const TensorView<const T>& z,
                                 const TensorView<const T>& delta_bias,
                                 const TensorView<const T>& state_in, const TensorView<T>& y,
                                 const TensorView<T>& state_out, const SelectiveScanParams& p) {
  ScanArgs<T> a;
  check_shape(op, "u", u, {-1, -1, -1}, "[B, T, D]");
  a.batch = u.size(0);
  a.T = u.size(1);
  a.D = u.size(2);
  check_shape(op, "A", A, {a.D, -1}, "[D, N]");
  a.N = A.size(1);
  check(a.N >= 1, op, ": A has shape ", A.shape().str(), ", expected N >= 1 states");
  check(a.D >= 1, op, ": u has shape ", u.shape().str(), ", expected D >= 1 channels");
  check_shape(op, "delta", delta, {a.batch, a.T, a.D}, "[B, T, D]");
  check_shape(op, "y", TensorView<const T>(y), {a.batch, a.T, a.D}, "[B, T, D]");
  if (!z.empty()) check_shape(op, "z", z, {a.batch, a.T, a.D}, "[B, T, D]");
  if (!Dskip.empty()) check_shape(op, "D", Dskip, {a.D}, "[D]");
  if (!delta_bias.empty()) check_shape(op, "delta_bias", delta_bias, {a.D}, "[D]");
  check(!B.empty() && (B.ndim() == 3 || B.ndim() == 4), op, ": B has shape ",
        B.empty() ? std::string("<none>") : B.shape().str(),
        ", expected [B, T, N] or [B, T, G, N]");
  if (B.ndim() == 3) {
    check_shape(op, "B", B, {a.batch, a.T, a.N}, "[B, T, N]");
    check_shape(op, "C", C, {a.batch, a.T, a.N}, "[B, T, N]");
  } else {
    check_shape(op, "B", B, {a.batch, a.T, -1, a.N}, "[B, T, G, N]");
    a.G = B.size(2);
    check(a.G >= 1 && a.D % a.G == 0, op, ": B has shape ", B.shape().str(), ": G = ", a.G,
          " groups must divide D = ", a.D);
    check_shape(op, "C", C, {a.batch, a.T, a.G, a.N}, "[B, T, G, N]");
  }
  const char* names[] = {"u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"};
  const TensorView<const T>* views[] = {&u, &delta, &A, &B, &C, &Dskip, &z, &delta_bias, &state_in};
  for (int i = 0; i < 9; ++i) check_inner_contiguous(op, names[i], *views[i]);
  check_inner_contiguous(op, "y", y);
  check_inner_contiguous(op, "final_state", state_out);

  a.seqs = make_sequences(op, a.batch, a.T, p.cu_seqlens);
  a.S = a.seqs.size();
  const char* sdims = p.cu_seqlens.empty() ? "[B, D, N]" : "[S, D, N] (S = len(cu_seqlens) - 1)";
  if (!state_in.empty()) check_shape(op, "initial_state", state_in, {a.S, a.D, a.N}, sdims);
  if (!state_out.empty())
    check_shape(op, "final_state", TensorView<const T>(state_out), {a.S, a.D, a.N}, sdims);
  a.B4 = as_grouped(B);
  a.C4 = as_grouped(C);
  return a;
}

// Validated sizes of a causal-conv1d call.
struct ConvArgs {
  int64_t batch = 0, T = 0, D = 0, W = 0, S = 0;
  Sequences seqs;
};

template <class T>
ConvArgs check_causal_conv1d(const char* op, const TensorView<const T>& x,
                             const TensorView<const T>& weight, const TensorView<const T>& bias,
                             const TensorView<const T>& state_in, const TensorView<T>& y,
                             const TensorView<T>& state_out, const CausalConv1dParams& p) {
  ConvArgs a;
  check_shape(op, "x", x, {-1, -1, -1}, "[B, T, D]");
  a.batch = x.size(0);
  a.T = x.size(1);
  a.D = x.size(2);
  check_shape(op, "weight", weight, {a.D, -1}, "[D, W]");
  a.W = weight.size(1);
  check(a.W >= 1, op, ": weight has shape ", weight.shape().str(), ", expected width W >= 1");
  if (!bias.empty()) check_shape(op, "bias", bias, {a.D}, "[D]");
  check_shape(op, "y", TensorView<const T>(y), {a.batch, a.T, a.D}, "[B, T, D]");
  check_inner_contiguous(op, "x", x);
  check_inner_contiguous(op, "weight", weight);
  check_inner_contiguous(op, "bias", bias);
  check_inner_contiguous(op, "initial_state", state_in);
  check_inner_contiguous(op, "y", y);
  check_inner_contiguous(op, "final_state", state_out);
  a.seqs = make_sequences(op, a.batch, a.T, p.cu_seqlens);
  a.S = a.seqs.size();
  const char* sdims =
      p.cu_seqlens.empty() ? "[B, W-1, D]" : "[S, W-1, D] (S = len(cu_seqlens) - 1)";
  if (!state_in.empty()) check_shape(op, "initial_state", state_in, {a.S, a.W - 1, a.D}, sdims);
  if (!state_out.empty())
    check_shape(op, "final_state", TensorView<const T>(state_out), {a.S, a.W - 1, a.D}, sdims);
  return a;
}

// The final conv state of one sequence: rows [len, len + W-1) of xx = concat(state_in, x).
// Safe in place (state_out == state_in): row j reads xx row len + j >= j, so ascending j never
// reads a row it already overwrote.
template <class T>
void conv_final_state(const ConvArgs& a, const Seq& q, const TensorView<const T>& x,
                      const TensorView<const T>& state_in, const TensorView<T>& state_out) {
  const int64_t W1 = a.W - 1;
  for (int64_t j = 0; j < W1; ++j) {
    const int64_t k = q.len + j;  // row of xx
    T* dst = state_out.ptr(q.s, j);
    if (k >= W1) {
      const T* src = x.ptr(q.b, q.t0 + k - W1);
      std::copy(src, src + a.D, dst);
    } else if (!state_in.empty()) {
      const T* src = state_in.ptr(q.s, k);
      if (src != dst) std::copy(src, src + a.D, dst);
    } else {
      std::fill(dst, dst + a.D, T(0));
    }
  }
}

template <class T>
T softplus_ref(T x) {  // log(1 + e^x), without overflow
  return std::max(x, T(0)) + std::log1p(std::exp(-std::abs(x)));
}
template <class T>
T silu_ref(T x) {
  return x / (T(1) + std::exp(-x));
}

}  // namespace detail::ssm

// Reference selective scan: a plain loop over (sequence, channel, token, state).
// Optional inputs (D, z, delta_bias, initial_state) and output (final_state) may be empty views.
template <class T>
void selective_scan_naive(TensorView<const T> u, TensorView<const T> delta, TensorView<const T> A,
                          TensorView<const T> B, TensorView<const T> C, TensorView<const T> D,
                          TensorView<const T> z, TensorView<const T> delta_bias,
                          TensorView<const T> initial_state, TensorView<T> y,
                          TensorView<T> final_state = {}, const SelectiveScanParams& p = {}) {
  using namespace detail::ssm;
  const ScanArgs<T> a = check_selective_scan("selective_scan_naive", u, delta, A, B, C, D, z,
                                             delta_bias, initial_state, y, final_state, p);
  std::vector<T> h(static_cast<std::size_t>(a.N));
  const int64_t dpg = a.D / a.G;  // channels per B/C group
  for (const Seq& q : a.seqs) {
    for (int64_t d = 0; d < a.D; ++d) {
      const int64_t g = d / dpg;
      for (int64_t n = 0; n < a.N; ++n)
        h[n] = initial_state.empty() ? T(0) : initial_state(q.s, d, n);
      for (int64_t t = q.t0; t < q.t0 + q.len; ++t) {
        T dt = delta(q.b, t, d) + (delta_bias.empty() ? T(0) : delta_bias(d));
        if (p.delta_softplus) dt = softplus_ref(dt);
        const T ut = u(q.b, t, d);
        T acc = 0;
        for (int64_t n = 0; n < a.N; ++n) {
          h[n] = std::exp(dt * A(d, n)) * h[n] + dt * a.B4(q.b, t, g, n) * ut;
          acc += h[n] * a.C4(q.b, t, g, n);
        }
        if (!D.empty()) acc += D(d) * ut;
        if (!z.empty()) acc *= silu_ref(z(q.b, t, d));
        y(q.b, t, d) = acc;
      }
      if (!final_state.empty())
        for (int64_t n = 0; n < a.N; ++n) final_state(q.s, d, n) = h[n];
    }
  }
}

// Reference causal conv1d: y_t[d] = act(bias[d] + sum_i weight[d,i] xx[t+i,d]).
// final_state may be the same view as initial_state (updated in place).
template <class T>
void causal_conv1d_naive(TensorView<const T> x, TensorView<const T> weight,
                         TensorView<const T> bias, TensorView<const T> initial_state,
                         TensorView<T> y, TensorView<T> final_state = {},
                         const CausalConv1dParams& p = {}) {
  using namespace detail::ssm;
  const ConvArgs a =
      check_causal_conv1d("causal_conv1d_naive", x, weight, bias, initial_state, y, final_state, p);
  const int64_t W1 = a.W - 1;
  for (const Seq& q : a.seqs) {
    for (int64_t t = 0; t < q.len; ++t) {
      for (int64_t d = 0; d < a.D; ++d) {
        T acc = bias.empty() ? T(0) : bias(d);
        for (int64_t i = 0; i < a.W; ++i) {
          const int64_t k = t + i;  // row of xx
          T xv = 0;
          if (k >= W1) {
            xv = x(q.b, q.t0 + k - W1, d);
          } else if (!initial_state.empty()) {
            xv = initial_state(q.s, k, d);
          }
          acc += weight(d, i) * xv;
        }
        y(q.b, q.t0 + t, d) = p.activation == ConvActivation::kSilu ? silu_ref(acc) : acc;
      }
    }
  }
  if (!final_state.empty())
    for (const Seq& q : a.seqs) conv_final_state(a, q, x, initial_state, final_state);
}

}  // namespace effattn
