// Owning Tensor<T> (64-byte aligned, row-major) and strided TensorView<T>, up to 5 dims.
//
// A view is a pointer plus sizes and strides in elements, like a torch tensor without storage
// ownership. Slicing a head out of [B, T, H, D] is `x.select(2, h)` -> [B, T, D] with
// strides (T*H*D, H*D, 1): no copy. Ops take views; Tensor converts to a view implicitly.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "effattn/core/error.hpp"

namespace effattn {

inline constexpr int kMaxDims = 5;
inline constexpr std::size_t kAlignment = 64;

// Sizes of a tensor, at most kMaxDims of them.
class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims) { assign(dims.begin(), dims.end()); }
  explicit Shape(const std::vector<int64_t>& dims) { assign(dims.begin(), dims.end()); }

  int ndim() const { return ndim_; }
  int64_t operator[](int i) const { return dims_[i]; }
  int64_t& operator[](int i) { return dims_[i]; }
  const int64_t* begin() const { return dims_.data(); }
  const int64_t* end() const { return dims_.data() + ndim_; }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim_; ++i) n *= dims_[i];
    return n;
  }
  bool operator==(const Shape& o) const {
    return ndim_ == o.ndim_ && std::equal(begin(), end(), o.begin());
  }
  bool operator!=(const Shape& o) const { return !(*this == o); }
  std::string str() const {
    std::string s = "[";
    for (int i = 0; i < ndim_; ++i) s += (i ? ", " : "") + std::to_string(dims_[i]);
    return s + "]";
  }

 private:
  template <class It>
  void assign(It first, It last) {
    const auto n = std::distance(first, last);
    check(n <= kMaxDims, "Shape: ", n, " dims given, at most ", kMaxDims, " supported");
    ndim_ = static_cast<int>(n);
    int i = 0;
    for (It it = first; it != last; ++it, ++i) {
      check(*it >= 0, "Shape: dim ", i, " is negative (", *it, ")");
      dims_[i] = *it;
    }
  }
  int ndim_ = 0;
  std::array<int64_t, kMaxDims> dims_{};
};

// Row-major (C-order) strides for a shape, in elements.
inline std::array<int64_t, kMaxDims> contiguous_strides(const Shape& s) {
  std::array<int64_t, kMaxDims> st{};
  int64_t acc = 1;
  for (int i = s.ndim() - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= s[i];
  }
  return st;
}

// A strided, non-owning view. T may be const. Copying a view is cheap and never copies data.
template <class T>
class TensorView {
 public:
  using value_type = std::remove_const_t<T>;

  TensorView() = default;
  TensorView(T* data, const Shape& shape) : data_(data), shape_(shape) {
    strides_ = contiguous_strides(shape);
  }
  TensorView(T* data, const Shape& shape, const std::array<int64_t, kMaxDims>& strides)
      : data_(data), shape_(shape), strides_(strides) {}
  TensorView(T* data, const Shape& shape, std::initializer_list<int64_t> strides)
      : data_(data), shape_(shape) {
    check(static_cast<int>(strides.size()) == shape.ndim(), "TensorView: ", strides.size(),
          " strides given for shape ", shape.str());
    std::copy(strides.begin(), strides.end(), strides_.begin());
  }
  // A view of T converts to a view of const T.
  template <class U, class = std::enable_if_t<std::is_same_v<const U, T> && !std::is_same_v<U, T>>>
  TensorView(const TensorView<U>& o) : data_(o.data()), shape_(o.shape()), strides_(o.strides()) {}

  T* data() const { return data_; }
  const Shape& shape() const { return shape_; }
  const std::array<int64_t, kMaxDims>& strides() const { return strides_; }
  int ndim() const { return shape_.ndim(); }
  int64_t size(int d) const { return shape_[d]; }
  int64_t stride(int d) const { return strides_[d]; }
  int64_t numel() const { return shape_.numel(); }
  bool empty() const { return data_ == nullptr; }
  explicit operator bool() const { return data_ != nullptr; }

  bool is_contiguous() const {
    int64_t acc = 1;
    for (int i = ndim() - 1; i >= 0; --i) {
      if (shape_[i] != 1 && strides_[i] != acc) return false;
      acc *= shape_[i];
    }
    return true;
  }

  // Element at the given indices; missing trailing indices are 0.
  template <class... I>
  T& operator()(I... idx) const {
    static_assert(sizeof...(I) <= kMaxDims, "too many indices");
    const std::array<int64_t, sizeof...(I)> ix{static_cast<int64_t>(idx)...};
    int64_t off = 0;
    for (std::size_t d = 0; d < sizeof...(I); ++d) off += ix[d] * strides_[d];
    return data_[off];
  }
  // Pointer to the element at the given leading indices (trailing ones are 0).
  template <class... I>
  T* ptr(I... idx) const {
    return &(*this)(idx...);
  }

  // Drops dimension `dim`, fixing it at `index`: x.select(2, h) on [B,T,H,D] gives [B,T,D].
  TensorView select(int dim, int64_t index) const {
    check_dim(dim, "select");
    check(index >= 0 && index < shape_[dim], "select: index ", index, " out of range for dim ", dim,
          " of shape ", shape_.str());
    std::vector<int64_t> dims;
    std::array<int64_t, kMaxDims> st{};
    int j = 0;
    for (int i = 0; i < ndim(); ++i) {
      if (i == dim) continue;
      dims.push_back(shape_[i]);
      st[j++] = strides_[i];
    }
    return TensorView(data_ + index * strides_[dim], Shape(dims), st);
  }
  // Keeps [begin, end) of dimension `dim`.
  TensorView slice(int dim, int64_t begin, int64_t end) const {
    check_dim(dim, "slice");
    check(0 <= begin && begin <= end && end <= shape_[dim], "slice: range [", begin, ", ", end,
          ") out of range for dim ", dim, " of shape ", shape_.str());
    TensorView v = *this;
    v.shape_[dim] = end - begin;
    v.data_ = data_ + begin * strides_[dim];
    return v;
  }
  // Reinterprets a contiguous view with another shape of the same numel.
  TensorView reshape(const Shape& s) const {
    check(is_contiguous(), "reshape: view of shape ", shape_.str(), " is not contiguous");
    check(s.numel() == numel(), "reshape: cannot view ", shape_.str(), " as ", s.str());
    return TensorView(data_, s);
  }
  // Swaps two dimensions (no copy).
  TensorView transpose(int a, int b) const {
    check_dim(a, "transpose");
    check_dim(b, "transpose");
    TensorView v = *this;
    std::swap(v.shape_[a], v.shape_[b]);
    std::swap(v.strides_[a], v.strides_[b]);
    return v;
  }

 private:
  void check_dim(int dim, const char* what) const {
    check(dim >= 0 && dim < ndim(), what, ": dim ", dim, " out of range for shape ", shape_.str());
  }
  T* data_ = nullptr;
  Shape shape_;
  std::array<int64_t, kMaxDims> strides_{};
};

namespace detail {

// Tensor storage recycles large blocks. A layer allocates the same scratch on every call, and a
// fresh mapping from the system costs a page fault per 4 KiB page: with the cache a Gated
// DeltaNet / KDA / GQA attention layer's prefill at d = 2048, T = 2048 on 2 threads runs 14% /
// 17% / 10% faster (bench/bench_layers.cpp, page faults per run 494K -> 142K). A freed block of
// >= 1 MiB is kept (up to tensor_cache_limit() bytes in all, default 256 MiB) and handed to the
// next request that it fits with at most 1/4 to spare. Off under AddressSanitizer (it would hide
// a use after free) and with EFFATTN_NO_TENSOR_CACHE.
class BlockCache {
 public:
  static constexpr std::size_t kMinBytes = std::size_t(1) << 20;

  // Never destroyed: a static Tensor may be freed after static destruction.
  static BlockCache& instance() {
    static BlockCache* cache = new BlockCache;
    return *cache;
  }

  static constexpr bool enabled() {
#if defined(__SANITIZE_ADDRESS__) || defined(EFFATTN_NO_TENSOR_CACHE)
    return false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
    return false;
#else
    return true;
#endif
#else
    return true;
#endif
  }

  // A kept block of bytes .. bytes * 5/4 (the smallest), its size in *bytes; or nullptr.
  void* take(std::size_t* bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::size_t best = blocks_.size();
    for (std::size_t i = 0; i < blocks_.size(); ++i) {
      const std::size_t b = blocks_[i].second;
      if (b >= *bytes && b <= *bytes + *bytes / 4 &&
          (best == blocks_.size() || b < blocks_[best].second))
        best = i;
    }
    if (best == blocks_.size()) return nullptr;
    void* p = blocks_[best].first;
    *bytes = blocks_[best].second;
    kept_ -= *bytes;
    blocks_.erase(blocks_.begin() + static_cast<std::ptrdiff_t>(best));
    return p;
  }
  // Keeps p (true) unless the limit would be passed.
  bool keep(void* p, std::size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (kept_ + bytes > limit_) return false;
    blocks_.emplace_back(p, bytes);
    kept_ += bytes;
    return true;
  }
  void set_limit(std::size_t bytes) {
    std::vector<std::pair<void*, std::size_t>> out;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      limit_ = bytes;
      while (kept_ > limit_) {
        out.push_back(blocks_.front());
        kept_ -= blocks_.front().second;
        blocks_.erase(blocks_.begin());
      }
    }
    for (const auto& b : out) ::operator delete[](b.first, std::align_val_t(kAlignment));
  }
  std::size_t limit() {
    std::lock_guard<std::mutex> lock(mutex_);
    return limit_;
  }
  std::size_t kept() {
    std::lock_guard<std::mutex> lock(mutex_);
    return kept_;
  }

 private:
  std::mutex mutex_;
  std::vector<std::pair<void*, std::size_t>> blocks_;  // oldest first
  std::size_t kept_ = 0, limit_ = std::size_t(256) << 20;
};

// A 64-byte aligned block of at least *bytes (its size back in *bytes).
inline void* allocate_block(std::size_t* bytes) {
  if (BlockCache::enabled() && *bytes >= BlockCache::kMinBytes)
    if (void* p = BlockCache::instance().take(bytes)) return p;
  return ::operator new[](*bytes, std::align_val_t(kAlignment));
}

struct BlockFree {
  std::size_t bytes = 0;
  void operator()(void* p) const {
    if (BlockCache::enabled() && bytes >= BlockCache::kMinBytes &&
        BlockCache::instance().keep(p, bytes))
      return;
    ::operator delete[](p, std::align_val_t(kAlignment));
  }
};

}  // namespace detail

// The most bytes of freed tensor storage kept for reuse (see detail::BlockCache); 0 returns all of
// it to the system and keeps none from then on. Thread-safe.
inline void set_tensor_cache_limit(std::size_t bytes) {
  detail::BlockCache::instance().set_limit(bytes);
}
inline std::size_t tensor_cache_limit() { return detail::BlockCache::instance().limit(); }
// Bytes of freed tensor storage held for reuse now.
inline std::size_t tensor_cache_bytes() { return detail::BlockCache::instance().kept(); }

// Owning, contiguous, row-major, 64-byte aligned. Zero-initialised.
template <class T>
class Tensor {
  static_assert(std::is_trivially_copyable_v<T>, "Tensor holds trivially copyable scalars");

 public:
  Tensor() = default;
  explicit Tensor(const Shape& shape) : shape_(shape) { allocate(); }
  Tensor(std::initializer_list<int64_t> dims) : Tensor(Shape(dims)) {}
  Tensor(const Tensor& o) : shape_(o.shape_) {
    if (o.empty()) return;  // a default-constructed tensor copies as empty
    allocate();
    if (numel()) std::memcpy(data(), o.data(), sizeof(T) * numel());
  }
  Tensor(Tensor&&) noexcept = default;
  Tensor& operator=(const Tensor& o) {
    if (this != &o) *this = Tensor(o);
    return *this;
  }
  Tensor& operator=(Tensor&&) noexcept = default;

  // A contiguous copy of any view.
  template <class U>
  static Tensor from(const TensorView<U>& v) {
    Tensor t(v.shape());
    t.copy_from(v);
    return t;
  }

  T* data() { return static_cast<T*>(buf_.get()); }
  const T* data() const { return static_cast<const T*>(buf_.get()); }
  const Shape& shape() const { return shape_; }
  int ndim() const { return shape_.ndim(); }
  int64_t size(int d) const { return shape_[d]; }
  int64_t numel() const { return shape_.numel(); }
  bool empty() const { return buf_ == nullptr; }

  TensorView<T> view() { return TensorView<T>(data(), shape_); }
  TensorView<const T> view() const { return TensorView<const T>(data(), shape_); }
  operator TensorView<T>() { return view(); }
  operator TensorView<const T>() const { return view(); }

  template <class... I>
  T& operator()(I... idx) {
    return view()(idx...);
  }
  template <class... I>
  const T& operator()(I... idx) const {
    return view()(idx...);
  }

  void fill(T value) { std::fill(data(), data() + numel(), value); }
  // Element-wise copy (with conversion) from a view of the same shape.
  template <class U>
  void copy_from(const TensorView<U>& v) {
    check(v.shape() == shape_, "copy_from: source shape ", v.shape().str(), " != ", shape_.str());
    T* out = data();
    for_each_index(v.shape(), [&](const int64_t* ix) {
      int64_t off = 0;
      for (int d = 0; d < v.ndim(); ++d) off += ix[d] * v.stride(d);
      *out++ = static_cast<T>(v.data()[off]);
    });
  }

  template <class F>
  static void for_each_index(const Shape& s, F&& f) {
    const int64_t n = s.numel();
    if (n == 0) return;
    int64_t ix[kMaxDims] = {0, 0, 0, 0, 0};
    for (int64_t i = 0; i < n; ++i) {
      f(static_cast<const int64_t*>(ix));
      for (int d = s.ndim() - 1; d >= 0; --d) {
        if (++ix[d] < s[d]) break;
        ix[d] = 0;
      }
    }
  }

 private:
  void allocate() {
    const std::size_t n = static_cast<std::size_t>(shape_.numel());
    // An empty tensor still holds a valid, aligned pointer so that views of it are non-null.
    std::size_t bytes =
        n == 0 ? kAlignment : (sizeof(T) * n + kAlignment - 1) / kAlignment * kAlignment;
    const std::size_t used = bytes;
    void* p = detail::allocate_block(&bytes);  // (a recycled block may be larger)
    buf_ = std::unique_ptr<void, detail::BlockFree>(p, detail::BlockFree{bytes});
    std::memset(p, 0, used);
  }
  Shape shape_;
  std::unique_ptr<void, detail::BlockFree> buf_;
};

// Shape checks used by every op. `expect` lists the expected sizes, -1 = any;
// `names` spells the dims, e.g. "[B, T, H, K]".
template <class T>
void check_shape(const char* op, const char* arg, const TensorView<T>& v,
                 std::initializer_list<int64_t> expect, const char* names) {
  bool ok = !v.empty() && v.ndim() == static_cast<int>(expect.size());
  if (ok) {
    int i = 0;
    for (int64_t e : expect) {
      ok = ok && (e < 0 || v.size(i) == e);
      ++i;
    }
  }
  if (ok) return;
  std::string want = "[";
  int i = 0;
  for (int64_t e : expect)
    want += (i++ ? ", " : "") + (e < 0 ? std::string("*") : std::to_string(e));
  want += "]";
  throw Error(detail::concat(op, ": ", arg, " has shape ",
                             v.empty() ? std::string("<none>") : v.shape().str(), ", expected ",
                             names, " = ", want));
}

// The last dimension must be unit-stride (SIMD kernels read rows contiguously).
template <class T>
void check_inner_contiguous(const char* op, const char* arg, const TensorView<T>& v) {
  check(v.ndim() == 0 || v.stride(v.ndim() - 1) == 1 || v.size(v.ndim() - 1) <= 1, op, ": ", arg,
        " of shape ", v.shape().str(), " must have a unit stride in its last dim (has ",
        v.ndim() ? v.stride(v.ndim() - 1) : 0, ")");
}

}  // namespace effattn
