// Dense layers: Linear, Embedding, SwiGLU Mlp.
//
// T is the compute scalar (float or double), S the storage of the weight matrices: T itself, or
// bf16 with T = float (half the bytes a decode step streams). Biases are kept in T.
//
//   Linear     weight [out, in] (torch's nn.Linear), optional bias [out]:  y = x W^T + b
//   Embedding  weight [vocab, d]:  y[n] = weight[ids[n]];  attend(x) = x W^T (tied LM head)
//   Mlp        gate_proj, up_proj [hidden, d], down_proj [d, hidden] (Llama / Qwen / Mistral):
//              y = down_proj(silu(gate_proj(x)) * up_proj(x))
//
// Inputs are rows: any view [..., in] whose leading dims collapse to one row stride (contiguous
// tensors, or a column slice of a wider buffer) and a unit stride along `in`.
//
// The product picks its kernel by the number of rows N:
//   N <= kSkinnyRows (decode)  streams W once, row after row in memory order, each weight
//                              register feeding all N rows (memory-bound: GB/s is the figure).
//   N >  kSkinnyRows (prefill) one gemm (Eigen's kernel) per block of kColBlock output columns;
//                              bf16 weights are widened to float kWidenK inputs at a time.
// Work is split over output blocks whose bounds depend on the sizes only, so results are
// bitwise the same for any thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "effattn/core/bf16.hpp"
#include "effattn/core/error.hpp"
#include "effattn/core/parallel.hpp"
#include "effattn/core/tensor.hpp"
#include "effattn/io/safetensors.hpp"
#include "effattn/layers/weights.hpp"
#include "effattn/ops/common/gemm.hpp"
#include "effattn/simd/simd.hpp"

#if EFFATTN_HAS_SIMD && (defined(__AVX512F__) || defined(__AVX2__))
#include <immintrin.h>
#endif

namespace effattn::layers {

namespace detail {

inline constexpr int64_t kSkinnyRows = 8;                    // rows that take the streaming kernel
inline constexpr int64_t kColBlock = 256;                    // output columns per gemm task
inline constexpr int64_t kWidenK = 512;                      // bf16: inputs widened per gemm call
inline constexpr int64_t kStreamTaskBytes = 256 << 10;       // weight bytes per streaming task
inline constexpr int64_t kStreamMinParallel = 1 << 20;       // weight bytes before threads pay off
inline constexpr double kGemmMinParallel = double(1 << 22);  // N * in * out

template <class T, class S>
inline constexpr bool kStorageOk = std::is_same_v<S, T> ||
                                   (std::is_same_v<S, bf16> && std::is_same_v<T, float>);

// A weight element as T.
template <class T, class S>
inline T widen(S w) {
  if constexpr (std::is_same_v<S, bf16>) {
    return bf16::to_float(w.bits);
  } else {
    return w;
  }
}

// A batch of rows: row r at p + r * ld, `width` contiguous elements each.
template <class T>
struct Rows {
  T* p = nullptr;
  int64_t n = 0, ld = 0;
};

// Views `v` [..., width] as rows, or raises naming `layer`, `arg` and the expected last dim.
template <class T>
Rows<T> as_rows(const char* layer, const char* arg, const TensorView<T>& v, int64_t width,
                const char* width_name) {
  check(!v.empty() && v.ndim() >= 1 && v.size(v.ndim() - 1) == width, layer, ": ", arg,
        " has shape ", v.empty() ? std::string("<none>") : v.shape().str(), ", expected [..., ",
        width_name, "] with ", width_name, " = ", width);
  check_inner_contiguous(layer, arg, v);
  Rows<T> r{v.data(), 1, width};
  int64_t outer = -1;  // index of the last leading dim of size > 1 seen (walking outwards)
  for (int i = v.ndim() - 2; i >= 0; --i) {
    r.n *= v.size(i);
    if (v.size(i) <= 1) continue;
    if (outer < 0) {
      r.ld = v.stride(i);
    } else {
      check(v.stride(i) == v.stride(static_cast<int>(outer)) * v.size(static_cast<int>(outer)),
            layer, ": ", arg, " of shape ", v.shape().str(),
            " has leading dims that do not collapse into one row stride (make it contiguous)");
    }
    outer = i;
  }
  check(r.n <= 1 || r.ld >= width, layer, ": ", arg, " of shape ", v.shape().str(),
        " has overlapping rows (row stride ", r.ld, " < ", width, ")");
  return r;
}

// y must be x's leading dims followed by `width`.
template <class T, class U>
void check_out_shape(const char* layer, const char* arg, const TensorView<T>& y,
                     const TensorView<U>& x, int64_t width) {
  Shape want = x.shape();
  want[want.ndim() - 1] = width;
  check(!y.empty() && y.shape() == want, layer, ": ", arg, " has shape ",
        y.empty() ? std::string("<none>") : y.shape().str(), ", expected ", want.str(),
        " (the input's leading dims, then ", width, ")");
}

// y[m, o] = b[o] + sum_c x[m, c] W[o, c] for M rows of x and outputs [o0, o1), R rows of W per
// pass: R * M independent accumulator chains, each weight register feeding all M rows of x.
template <int M, int R, class T, class S>
void stream_rows_m(int64_t o0, int64_t o1, int64_t in, const T* x, int64_t ldx, const S* W,
                   const T* bias, T* y, int64_t ldy) {
  for (int64_t o = o0; o < o1; o += R) {
    const int nr = static_cast<int>(std::min<int64_t>(R, o1 - o));  // rows left (< R at the end)
    const S* w[R];
    for (int r = 0; r < R; ++r) w[r] = W + (o + std::min(r, nr - 1)) * in;  // repeats the last
    T s[R][M];
    int64_t c = 0;
#if EFFATTN_HAS_SIMD
    constexpr int64_t L = simd::kLanes<T>;
    using V = simd::Vec<T>;
    V a[R][M];
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < M; ++m) a[r][m] = V(T(0));
    for (; c + L <= in; c += L) {
      V wv[R];
      for (int r = 0; r < R; ++r) {
        // The next pass's rows, same column: each row is a new page (4 KB for bf16 at in = 2048),
        // where the hardware prefetcher would have to start over.
        __builtin_prefetch(w[r] + R * in + c, 0, 2);
        wv[r] = simd::load_as<T>(w[r] + c);
      }
      for (int m = 0; m < M; ++m) {  // a[r][m] += W[o + r, c] x[m, c]
        const V xv = simd::load(x + m * ldx + c);
        for (int r = 0; r < R; ++r) a[r][m] = xsimd::fma(wv[r], xv, a[r][m]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < M; ++m) s[r][m] = simd::hsum(a[r][m]);
#else
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < M; ++m) s[r][m] = T(0);
#endif
    for (; c < in; ++c)
      for (int r = 0; r < R; ++r) {
        const T u = widen<T>(w[r][c]);
        for (int m = 0; m < M; ++m) s[r][m] += u * x[m * ldx + c];
      }
    for (int r = 0; r < nr; ++r)
      for (int m = 0; m < M; ++m) y[m * ldy + o + r] = s[r][m] + (bias ? bias[o + r] : T(0));
  }
}

template <class T, class S>
void stream_rows(int64_t M, int64_t o0, int64_t o1, int64_t in, const T* x, int64_t ldx, const S* W,
                 const T* bias, T* y, int64_t ldy) {
  switch (M) {
    case 1:
      return stream_rows_m<1, 4>(o0, o1, in, x, ldx, W, bias, y, ldy);
    case 2:
      return stream_rows_m<2, 4>(o0, o1, in, x, ldx, W, bias, y, ldy);
    case 3:
      return stream_rows_m<3, 2>(o0, o1, in, x, ldx, W, bias, y, ldy);
    case 4:
      return stream_rows_m<4, 2>(o0, o1, in, x, ldx, W, bias, y, ldy);
    case 5:
      return stream_rows_m<5, 2>(o0, o1, in, x, ldx, W, bias, y, ldy);
    case 6:
      return stream_rows_m<6, 2>(o0, o1, in, x, ldx, W, bias, y, ldy);
    case 7:
      return stream_rows_m<7, 2>(o0, o1, in, x, ldx, W, bias, y, ldy);
    default:
      return stream_rows_m<8, 2>(o0, o1, in, x, ldx, W, bias, y, ldy);
  }
}

// dst [rows, cols] = float(src rows [rows, cols] with leading dim lds).
inline void widen_tile(const bf16* src, int64_t lds, int64_t rows, int64_t cols, float* dst) {
  for (int64_t i = 0; i < rows; ++i) simd::convert(src + i * lds, dst + i * cols, cols);
}

// yb [N, nb] (leading dim ldy) = x [N, in] W[o0 : o0 + nb, :]^T by gemm; bf16 weights are
// widened into `wide` ([nb, kWidenK] floats, grown on first use) kWidenK inputs at a time.
template <class T, class S>
void block_product(Rows<const T> x, const S* W, int64_t in, int64_t o0, int64_t nb, T* yb,
                   int64_t ldy, std::vector<T>& wide) {
  const int64_t N = x.n;
  if constexpr (std::is_same_v<S, T>) {
    gemm<T>(N, nb, in, x.p, x.ld, Trans::kNo, W + o0 * in, in, Trans::kYes, yb, ldy);
  } else {
    wide.resize(static_cast<std::size_t>(kColBlock * std::max<int64_t>(1, std::min(in, kWidenK))));
    if (in == 0) gemm<T>(N, nb, 0, x.p, x.ld, Trans::kNo, wide.data(), 1, Trans::kYes, yb, ldy);
    for (int64_t k0 = 0; k0 < in; k0 += kWidenK) {
      const int64_t kc = std::min(kWidenK, in - k0);
      widen_tile(W + o0 * in + k0, in, nb, kc, wide.data());  // [nb, kc]
      gemm<T>(N, nb, kc, x.p + k0, x.ld, Trans::kNo, wide.data(), kc, Trans::kYes, yb, ldy, T(1),
              k0 == 0 ? T(0) : T(1));
    }
  }
}

// y [N, out] = x [N, in] W^T + bias, W [out, in] row-major (contiguous) in storage S.
template <class T, class S>
void linear_rows(Rows<const T> x, const S* W, int64_t in, int64_t out, const T* bias, Rows<T> y) {
  static_assert(kStorageOk<T, S>, "weights must be stored as T, or as bf16 with T = float");
  const int64_t N = x.n;
  if (N == 0 || out == 0) return;
  if (N <= kSkinnyRows) {
    // Decode: tasks of consecutive W rows (a multiple of 4, about kStreamTaskBytes each).
    const int64_t row_bytes = std::max<int64_t>(1, in * int64_t(sizeof(S)));
    const int64_t rows = std::max<int64_t>(4, kStreamTaskBytes / row_bytes / 4 * 4);
    const int64_t tasks = (out + rows - 1) / rows;
    const int threads = out * row_bytes >= kStreamMinParallel ? 0 : 1;
    parallel_for(
        0, tasks,
        [&](int64_t t) {
          const int64_t o0 = t * rows, o1 = std::min(out, o0 + rows);
          stream_rows(N, o0, o1, in, x.p, x.ld, W, bias, y.p, y.ld);
        },
        threads);
    return;
  }
  // Prefill: one gemm per block of output columns.
  const int64_t blocks = (out + kColBlock - 1) / kColBlock;
  const int threads = double(N) * double(in) * double(out) >= kGemmMinParallel ? 0 : 1;
  parallel_for_range(
      0, blocks,
      [&](int64_t lo, int64_t hi) {
        std::vector<T> wide;  // bf16 only: [kColBlock, kWidenK] float tile of W
        for (int64_t blk = lo; blk < hi; ++blk) {
          const int64_t o0 = blk * kColBlock, nb = std::min(kColBlock, out - o0);
          block_product(x, W, in, o0, nb, y.p + o0, y.ld, wide);
          if (bias)  // y[:, o0 : o0 + nb] += b[o0 : o0 + nb]
            for (int64_t n = 0; n < N; ++n) simd::axpy(T(1), bias + o0, y.p + o0 + n * y.ld, nb);
        }
      },
      threads);
}

// Views whose leading dims collapse into one row stride are what Linear takes; a time slice of a
// [B, T, C] buffer (a piece of a longer sequence, B > 1) does not. Layers pass such views through
// a contiguous copy with rows_in / rows_out.
template <class T>
bool collapses(const TensorView<T>& v) {
  return v.ndim() == 3 && (v.size(2) <= 1 || v.stride(2) == 1) &&
         (v.size(0) <= 1 || v.size(1) <= 1 || v.stride(0) == v.stride(1) * v.size(1));
}

// x itself, or a contiguous copy of it held in *buf.
template <class T>
TensorView<const T> rows_in(TensorView<const T> x, Tensor<T>* buf) {
  if (collapses(x)) return x;
  *buf = Tensor<T>(x.shape());
  buf->copy_from(x);
  return buf->view();
}

// Calls f(out) with y itself, or with a contiguous buffer copied into y afterwards.
template <class T, class F>
void rows_out(TensorView<T> y, F&& f) {
  if (collapses(y)) return f(y);
  Tensor<T> buf(y.shape());
  f(buf.view());
  for (int64_t b = 0; b < y.size(0); ++b)
    for (int64_t t = 0; t < y.size(1); ++t) {
      const T* src = buf.data() + (b * y.size(1) + t) * y.size(2);
      std::copy(src, src + y.size(2), y.ptr(b, t));
    }
}

// Right-padded batches (an encoder's sentences of different lengths): sequence b is rows
// [0, lengths[b]) of a [B, T, ...] tensor, the rows after it are padding. The mixers run such a
// batch as one packed varlen sequence (cu_seqlens), so padding is neither seen nor computed.
// Empty lengths = every sequence is T long.
inline void check_lengths(const char* layer, const char* name, const std::vector<int64_t>& lengths,
                          int64_t B, int64_t T) {
  check(lengths.empty() || static_cast<int64_t>(lengths.size()) == B, layer, ": ", name, " has ",
        lengths.size(), " entries, expected one per sequence (B = ", B, ") or none");
  for (std::size_t b = 0; b < lengths.size(); ++b)
    check(lengths[b] >= 0 && lengths[b] <= T, layer, ": ", name, "[", b, "] = ", lengths[b],
          " is not in [0, T = ", T, "]");
}

// Offsets of the packed sequences: {0, l0, l0 + l1, ...}; every length T when `lengths` is empty.
inline std::vector<int64_t> cu_seqlens_of(const std::vector<int64_t>& lengths, int64_t B,
                                          int64_t T) {
  std::vector<int64_t> cu(1, 0);
  for (int64_t b = 0; b < B; ++b) cu.push_back(cu.back() + (lengths.empty() ? T : lengths[b]));
  return cu;
}

// x [B, T, ...] (contiguous) -> [1, N, ...]: rows [0, lengths[b]) of each sequence back to back.
template <class T>
Tensor<T> pack_rows(const Tensor<T>& x, const std::vector<int64_t>& cu) {
  const int64_t B = x.size(0), Tn = x.size(1), row = x.numel() / std::max<int64_t>(1, B * Tn);
  Shape s = x.shape();
  s[0] = 1;
  s[1] = cu.back();
  Tensor<T> out(s);
  for (int64_t b = 0; b < B; ++b)
    std::copy(x.data() + b * Tn * row, x.data() + (b * Tn + cu[b + 1] - cu[b]) * row,
              out.data() + cu[b] * row);
  return out;
}

// packed [1, N, ...] -> y [B, T, ...] (contiguous): each sequence's rows back in place, padding
// rows zero.
template <class T>
void unpack_rows(const Tensor<T>& packed, const std::vector<int64_t>& cu, Tensor<T>& y) {
  const int64_t B = y.size(0), Tn = y.size(1), row = y.numel() / std::max<int64_t>(1, B * Tn);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = cu[b + 1] - cu[b];
    std::copy(packed.data() + cu[b] * row, packed.data() + cu[b + 1] * row,
              y.data() + b * Tn * row);
    std::fill(y.data() + (b * Tn + n) * row, y.data() + (b + 1) * Tn * row, T(0));
  }
}

}  // namespace detail

// y = x W^T + b. weight [out, in] stored as S, bias [out] (optional) kept in T.
template <class T, class S = T>
class Linear {
  static_assert(detail::kStorageOk<T, S>, "Linear<T, S>: S must be T, or bf16 with T = float");

 public:
  Param<S> weight;  // [out, in]
  Param<T> bias;    // [out], or disabled

  Linear() = default;
  Linear(int64_t in_features, int64_t out_features, bool has_bias = false)
      : weight("weight", {out_features, in_features}),
        bias(has_bias ? Param<T>("bias", {out_features}) : Param<T>::disabled("bias")) {}

  int64_t in_features() const { return weight.shape()[1]; }
  int64_t out_features() const { return weight.shape()[0]; }
  bool has_bias() const { return bias.enabled(); }

  // x [..., in] -> y [..., out]; y must not overlap x.
  void forward(TensorView<const T> x, TensorView<T> y) const {
    const auto xr = detail::as_rows("Linear", "x", x, in_features(), "in");
    detail::check_out_shape("Linear", "y", y, x, out_features());
    const auto yr = detail::as_rows("Linear", "y", y, out_features(), "out");
    detail::linear_rows<T, S>(xr, weight.data(), in_features(), out_features(),
                              has_bias() ? bias.data() : nullptr, yr);
  }
  Tensor<T> operator()(TensorView<const T> x) const {
    check(!x.empty() && x.ndim() >= 1, "Linear: x is empty, expected [..., in]");
    Shape s = x.shape();
    s[s.ndim() - 1] = out_features();
    Tensor<T> y(s);
    forward(x, y);
    return y;
  }

  // Reads join(prefix, "weight") and, with a bias, join(prefix, "bias").
  void load(const io::SafeTensors& st, const std::string& prefix) {
    weight.load(st, prefix, "Linear");
    bias.load(st, prefix, "Linear");
  }
  void save(io::SafeTensorsWriter& w, const std::string& prefix) const {
    weight.save(w, prefix);
    bias.save(w, prefix);
  }
  // torch's default: weight and bias uniform in +-1/sqrt(in).
  void init_random(uint64_t seed) {
    const double bound = 1.0 / std::sqrt(double(std::max<int64_t>(1, in_features())));
    weight.init_uniform(seed, bound);
    bias.init_uniform(seed, bound);
  }
  int64_t weight_bytes() const { return weight.bytes() + bias.bytes(); }
};

// Token embedding, weight [vocab, d] stored as S (HF: embed_tokens.weight, Mamba:
// backbone.embeddings.weight). attend() is the tied LM head: logits = x W^T.
template <class T, class S = T>
class Embedding {
  static_assert(detail::kStorageOk<T, S>, "Embedding<T, S>: S must be T, or bf16 with T = float");

 public:
  Param<S> weight;  // [vocab, d]

  Embedding() = default;
  Embedding(int64_t vocab, int64_t dim) : weight("weight", {vocab, dim}) {}

  int64_t vocab() const { return weight.shape()[0]; }
  int64_t dim() const { return weight.shape()[1]; }

  // ids [...] -> y [..., d]; an id outside [0, vocab) raises.
  void forward(TensorView<const int32_t> ids, TensorView<T> y) const {
    check(!ids.empty(), "Embedding: ids is empty");
    std::vector<int64_t> dims(ids.shape().begin(), ids.shape().end());
    dims.push_back(dim());
    check(dims.size() <= static_cast<std::size_t>(kMaxDims), "Embedding: ids has shape ",
          ids.shape().str(), ": at most ", kMaxDims - 1, " dims");
    check(!y.empty() && y.shape() == Shape(dims), "Embedding: y has shape ",
          y.empty() ? std::string("<none>") : y.shape().str(), ", expected ", Shape(dims).str(),
          " (ids' shape, then d)");
    const auto yr = detail::as_rows("Embedding", "y", y, dim(), "d");
    const int64_t V = vocab(), d = dim();
    int64_t row = 0;
    Tensor<int32_t>::for_each_index(ids.shape(), [&](const int64_t* ix) {
      int64_t off = 0;
      for (int i = 0; i < ids.ndim(); ++i) off += ix[i] * ids.stride(i);
      const int64_t id = ids.data()[off];
      check(id >= 0 && id < V, "Embedding: token id ", id, " at position ", row,
            " is outside the vocabulary [0, ", V, ")");
      const S* src = weight.data() + id * d;
      T* dst = yr.p + row * yr.ld;
      if constexpr (std::is_same_v<S, T>) {
        std::copy(src, src + d, dst);
      } else {
        detail::widen_tile(src, d, 1, d, dst);
      }
      ++row;
    });
  }
  Tensor<T> operator()(const std::vector<int32_t>& ids) const {
    Tensor<T> y({static_cast<int64_t>(ids.size()), dim()});
    if (ids.empty()) return y;
    forward(TensorView<const int32_t>(ids.data(), {static_cast<int64_t>(ids.size())}), y);
    return y;
  }

  // logits [..., vocab] = x [..., d] W^T (output embedding tied to the input one).
  void attend(TensorView<const T> x, TensorView<T> logits) const {
    const auto xr = detail::as_rows("Embedding::attend", "x", x, dim(), "d");
    detail::check_out_shape("Embedding::attend", "logits", logits, x, vocab());
    const auto yr = detail::as_rows("Embedding::attend", "logits", logits, vocab(), "vocab");
    detail::linear_rows<T, S>(xr, weight.data(), dim(), vocab(), nullptr, yr);
  }

  void load(const io::SafeTensors& st, const std::string& prefix) {
    weight.load(st, prefix, "Embedding");
  }
  void save(io::SafeTensorsWriter& w, const std::string& prefix) const { weight.save(w, prefix); }
  // Unit variance (torch draws N(0, 1); a uniform of the same variance keeps this exact).
  void init_random(uint64_t seed) { weight.init_uniform(seed, std::sqrt(3.0)); }
  int64_t weight_bytes() const { return weight.bytes(); }
};

// SwiGLU feed-forward: y = down_proj(silu(gate_proj(x)) * up_proj(x)), no biases (Llama, Qwen,
// Mistral; HF names gate_proj / up_proj / down_proj under e.g. "model.layers.{i}.mlp").
template <class T, class S = T>
class Mlp {
 public:
  Linear<T, S> gate_proj;  // [hidden, d]
  Linear<T, S> up_proj;    // [hidden, d]
  Linear<T, S> down_proj;  // [d, hidden]

  Mlp() = default;
  Mlp(int64_t dim, int64_t hidden)
      : gate_proj(dim, hidden), up_proj(dim, hidden), down_proj(hidden, dim) {}

  int64_t dim() const { return gate_proj.in_features(); }
  int64_t hidden() const { return gate_proj.out_features(); }

  // x [..., d] -> y [..., d]; y must not overlap x.
  void forward(TensorView<const T> x, TensorView<T> y) const {
    const auto xr = detail::as_rows("Mlp", "x", x, dim(), "d");
    detail::check_out_shape("Mlp", "y", y, x, dim());
    const auto yr = detail::as_rows("Mlp", "y", y, dim(), "d");
    const int64_t N = xr.n, F = hidden();
    if (N == 0) return;
    Tensor<T> h({N, F});  // silu(x Wg^T) * (x Wu^T)
    if (N <= detail::kSkinnyRows) {
      // Decode: stream both weights, then combine the two short rows.
      Tensor<T> u({N, F});
      detail::linear_rows<T, S>(xr, gate_proj.weight.data(), dim(), F, nullptr, {h.data(), N, F});
      detail::linear_rows<T, S>(xr, up_proj.weight.data(), dim(), F, nullptr, {u.data(), N, F});
      simd::silu(h.data(), h.data(), N * F);
      simd::mul(h.data(), u.data(), h.data(), N * F);
    } else {
      // Prefill: per block of hidden columns, the gate product into a scratch tile and the up
      // product into h, combined while both are in cache (no [N, F] gate buffer, no extra pass).
      const int64_t blocks = (F + detail::kColBlock - 1) / detail::kColBlock;
      const int threads = double(N) * double(dim()) * double(F) >= detail::kGemmMinParallel ? 0 : 1;
      parallel_for_range(
          0, blocks,
          [&](int64_t lo, int64_t hi) {
            std::vector<T> wide, gate(static_cast<std::size_t>(N * detail::kColBlock));
            for (int64_t blk = lo; blk < hi; ++blk) {
              const int64_t f0 = blk * detail::kColBlock, nb = std::min(detail::kColBlock, F - f0);
              T* hb = h.data() + f0;  // h[:, f0 : f0 + nb]
              detail::block_product(xr, gate_proj.weight.data(), dim(), f0, nb, gate.data(), nb,
                                    wide);
              detail::block_product(xr, up_proj.weight.data(), dim(), f0, nb, hb, F, wide);
              for (int64_t n = 0; n < N; ++n) {  // h = silu(g) * u
                T* g = gate.data() + n * nb;
                simd::silu(g, g, nb);
                simd::mul(g, hb + n * F, hb + n * F, nb);
              }
            }
          },
          threads);
    }
    detail::linear_rows<T, S>({h.data(), N, F}, down_proj.weight.data(), F, dim(), nullptr, yr);
  }
  Tensor<T> operator()(TensorView<const T> x) const {
    check(!x.empty(), "Mlp: x is empty, expected [..., d]");
    Tensor<T> y(x.shape());
    forward(x, y);
    return y;
  }

  void load(const io::SafeTensors& st, const std::string& prefix) {
    gate_proj.load(st, join(prefix, "gate_proj"));
    up_proj.load(st, join(prefix, "up_proj"));
    down_proj.load(st, join(prefix, "down_proj"));
  }
  void save(io::SafeTensorsWriter& w, const std::string& prefix) const {
    gate_proj.save(w, join(prefix, "gate_proj"));
    up_proj.save(w, join(prefix, "up_proj"));
    down_proj.save(w, join(prefix, "down_proj"));
  }
  void init_random(uint64_t seed) {
    gate_proj.init_random(derive_seed(seed, "gate_proj"));
    up_proj.init_random(derive_seed(seed, "up_proj"));
    down_proj.init_random(derive_seed(seed, "down_proj"));
  }
  int64_t weight_bytes() const {
    return gate_proj.weight_bytes() + up_proj.weight_bytes() + down_proj.weight_bytes();
  }
};

}  // namespace effattn::layers
