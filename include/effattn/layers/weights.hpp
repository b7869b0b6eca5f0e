// How a layer owns its weights: Param<S>, one named tensor stored as S (float, double or bf16),
// loaded from / saved to safetensors under the reference implementations' names, or filled with
// a seeded, platform-independent random initialisation.
//
// Names: a layer is loaded under a prefix, and each Param has a name relative to the layer, so
// that `Linear` at prefix "model.layers.0.mlp.up_proj" reads "model.layers.0.mlp.up_proj.weight"
// (join() inserts the dot; a prefix that already ends in '.' or is empty is used as is).
//
// Loading converts from the file's dtype into S with SafeTensors::get<S>:
//   into float:  F32, BF16, F16 exact; F64 rounds to nearest
//   into double: all exact
//   into bf16:   BF16 bit copy; F32, F16 round to nearest even; F64 rounds through float
// Any other dtype (ints, bools, F8), a missing tensor or another shape raises effattn::Error with
// the full tensor name, the file, what the file holds and what the layer expects.
// Saving writes S's own dtype (F32, F64, BF16), so save -> load reproduces the weights bit for bit.
//
// Random init: a counter-based generator (splitmix64 of seed, name and index), so a value depends
// only on (seed, parameter name, element index): not on the platform, the library's <random>
// implementation, the thread count or the order in which parameters are initialised.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "effattn/core/bf16.hpp"
#include "effattn/core/error.hpp"
#include "effattn/core/tensor.hpp"
#include "effattn/io/safetensors.hpp"

namespace effattn::layers {

// prefix + "." + name, without doubling a '.' and without a leading one.
inline std::string join(const std::string& prefix, const std::string& name) {
  if (prefix.empty() || prefix.back() == '.') return prefix + name;
  return prefix + "." + name;
}

// A random stream independent of any other (seed, name) pair, for one parameter or layer:
// models derive each layer's seed as derive_seed(seed, "model.layers.3.mlp").
inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
inline uint64_t derive_seed(uint64_t seed, const std::string& name) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a of the name
  for (unsigned char c : name) h = (h ^ c) * 0x100000001b3ull;
  return splitmix64(seed ^ splitmix64(h));
}
// Element i of the stream `key`: uniform in [-1, 1) on a grid of 2^-23 (exact in float).
inline double uniform_pm1(uint64_t key, uint64_t i) {
  const uint64_t u = splitmix64(key + i * 0xd1b54a32d192ed03ull) >> 40;  // 24 random bits
  return static_cast<double>(static_cast<int64_t>(u) - (int64_t(1) << 23)) * 0x1p-23;
}

namespace detail {

template <class S>
inline S from_double(double x) {
  if constexpr (std::is_same_v<S, bf16>) {
    return bf16(static_cast<float>(x));
  } else {
    return static_cast<S>(x);
  }
}

template <class S>
inline const char* storage_name() {
  if constexpr (std::is_same_v<S, float>) {
    return "float";
  } else if constexpr (std::is_same_v<S, double>) {
    return "double";
  } else {
    return "bf16";
  }
}

inline bool float_dtype(io::Dtype d) {
  return d == io::Dtype::kF32 || d == io::Dtype::kBF16 || d == io::Dtype::kF16 ||
         d == io::Dtype::kF64;
}

inline std::string dims_str(const std::vector<int64_t>& dims) {
  std::string s = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

// Up to 8 names in the file that start with `prefix`: the likely intended tensors when a name is
// not found (a different naming convention, a missing "model." level).
inline std::string names_under(const io::SafeTensors& st, const std::string& prefix) {
  std::string s;
  int n = 0;
  for (const std::string& name : st.names()) {
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    if (n == 8) return s + ", ...";
    s += (n++ ? ", '" : "'") + name + "'";
  }
  return n ? s : "none";
}

// Whether any of `names` (each + ".weight") is in the file under `prefix`: picks a naming
// convention by all of its tensors, so a file with one tensor missing is read in its own naming
// and the error names the tensor that is missing.
inline bool has_any(const io::SafeTensors& st, const std::string& prefix,
                    std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (st.contains(join(prefix, std::string(n) + ".weight"))) return true;
  return false;
}

}  // namespace detail

// One weight tensor of a layer. S is the storage scalar: float, double or bf16 (layers compute in
// float or double and widen bf16 as they read it). A Param is either enabled (it has a shape and
// a tensor) or disabled (an optional tensor the layer was configured without, e.g. a bias).
template <class S>
class Param {
  static_assert(std::is_same_v<S, float> || std::is_same_v<S, double> || std::is_same_v<S, bf16>,
                "Param<S>: S must be float, double or bf16");

 public:
  Param() = default;
  // An enabled parameter of the given shape, zero-filled. `name` is relative to the layer.
  Param(std::string name, const Shape& shape) : name_(std::move(name)), value_(shape) {}
  // A disabled optional parameter: it reads and writes nothing, but load() refuses a file that
  // has it (the layer's configuration and the checkpoint disagree).
  static Param disabled(std::string name) {
    Param p;
    p.name_ = std::move(name);
    return p;
  }

  const std::string& name() const { return name_; }
  bool enabled() const { return !value_.empty(); }
  const Shape& shape() const { return value_.shape(); }
  int64_t numel() const { return enabled() ? value_.numel() : 0; }
  int64_t bytes() const { return numel() * static_cast<int64_t>(sizeof(S)); }

  Tensor<S>& value() { return value_; }
  const Tensor<S>& value() const { return value_; }
  const S* data() const { return value_.data(); }
  // An empty view when disabled: ops take that as "no tensor".
  TensorView<const S> view() const {
    return enabled() ? TensorView<const S>(value_.view()) : TensorView<const S>();
  }

  // Copies `v` (same shape, any scalar) into the parameter, rounding to S.
  template <class U>
  void set(TensorView<const U> v) {
    check(enabled(), "Param '", name_, "': cannot set a disabled parameter");
    check(v.shape() == shape(), "Param '", name_, "': value has shape ", v.shape().str(),
          ", expected ", shape().str());
    S* out = value_.data();
    Tensor<U>::for_each_index(v.shape(), [&](const int64_t* ix) {
      int64_t off = 0;
      for (int d = 0; d < v.ndim(); ++d) off += ix[d] * v.stride(d);
      *out++ = detail::from_double<S>(static_cast<double>(to_double_any(v.data()[off])));
    });
  }
  template <class U>
  void set(const Tensor<U>& t) {
    set(TensorView<const U>(t.view()));
  }

  void fill(double v) {
    if (enabled()) value_.fill(detail::from_double<S>(v));
  }
  // Uniform in [-bound, bound) from (seed, name, index); see the header comment.
  void init_uniform(uint64_t seed, double bound) {
    const uint64_t key = derive_seed(seed, name_);
    S* p = value_.data();
    for (int64_t i = 0; i < numel(); ++i)
      p[i] = detail::from_double<S>(bound * uniform_pm1(key, static_cast<uint64_t>(i)));
  }

  // Reads join(prefix, name()) from `st`. `layer` names the caller in messages ("Linear").
  void load(const io::SafeTensors& st, const std::string& prefix, const char* layer) {
    const std::string full = join(prefix, name_);
    if (!enabled()) {
      check(!st.contains(full), layer, ": tensor '", full, "' is in ", st.source(),
            " but the layer was configured without it (check the config, e.g. bias / use_bias)");
      return;
    }
    check(st.contains(full), layer, ": tensor '", full, "' not found in ", st.source(),
          " (expected shape ", shape().str(), "); tensors under '", prefix,
          "': ", detail::names_under(st, prefix));
    const io::TensorInfo& ti = st.info(full);
    const bool same_shape = ti.dims.size() == static_cast<std::size_t>(shape().ndim()) &&
                            std::equal(ti.dims.begin(), ti.dims.end(), shape().begin());
    // Up to size-1 dims (Kimi Linear keeps A_log as [1, 1, H, 1] where fla has [H]): the same
    // numbers in the same order, so they load as the expected shape.
    const auto squeezed = [](auto b, auto e) {
      std::vector<int64_t> v;
      for (; b != e; ++b)
        if (*b != 1) v.push_back(static_cast<int64_t>(*b));
      return v;
    };
    const bool unit_dims = !same_shape && squeezed(ti.dims.begin(), ti.dims.end()) ==
                                              squeezed(shape().begin(), shape().end());
    check((same_shape || unit_dims) && detail::float_dtype(ti.dtype), layer, ": tensor '", full,
          "' in ", st.source(), " is ", io::dtype_name(ti.dtype), " ", detail::dims_str(ti.dims),
          ", expected ", shape().str(), " of F32, BF16, F16 or F64 (stored as ",
          detail::storage_name<S>(), ")");
    if (same_shape) {
      value_ = st.get<S>(full);
    } else {
      const Tensor<S> t = st.get<S>(full);
      std::copy(t.data(), t.data() + t.numel(), value_.data());
    }
  }

  // Writes the parameter as join(prefix, name()) in S's dtype (nothing when disabled).
  void save(io::SafeTensorsWriter& w, const std::string& prefix) const {
    if (enabled()) w.add(join(prefix, name_), value_);
  }

 private:
  template <class U>
  static double to_double_any(U x) {
    if constexpr (std::is_same_v<U, bf16>) {
      return static_cast<double>(static_cast<float>(x));
    } else {
      return static_cast<double>(x);
    }
  }

  std::string name_;
  Tensor<S> value_;
};

// A layer spells its tensors once, in a static members(layer, f) that calls f(name, member) for
// each sub-layer (Linear, ShortConv, a norm, ...: loaded under join(prefix, name), initialised
// with derive_seed(seed, name)) and each Param (which carries its own name). The functions below
// derive load / save / init / byte counts from that list, for const and non-const layers alike.
namespace detail {
template <class M>
struct is_param : std::false_type {};
template <class S>
struct is_param<Param<S>> : std::true_type {};
template <class M>
inline constexpr bool is_param_v = is_param<std::decay_t<M>>::value;
}  // namespace detail

// Reads every member of `layer` under `prefix`; `L` names the layer in messages.
template <class Layer>
void load_members(Layer& layer, const io::SafeTensors& st, const std::string& prefix,
                  const char* L) {
  Layer::members(layer, [&](const std::string& name, auto& m) {
    if constexpr (detail::is_param_v<decltype(m)>) {
      m.load(st, prefix, L);
    } else {
      m.load(st, join(prefix, name));
    }
  });
}
template <class Layer>
void save_members(const Layer& layer, io::SafeTensorsWriter& w, const std::string& prefix) {
  Layer::members(layer, [&](const std::string& name, const auto& m) {
    if constexpr (detail::is_param_v<decltype(m)>) {
      m.save(w, prefix);
    } else {
      m.save(w, join(prefix, name));
    }
  });
}
// Initialises the sub-layers with their defaults; Params are left to the layer (their inits are
// specific: A_log, dt_bias, D, ...).
template <class Layer>
void init_members(Layer& layer, uint64_t seed) {
  Layer::members(layer, [&](const std::string& name, auto& m) {
    if constexpr (!detail::is_param_v<decltype(m)>) m.init_random(derive_seed(seed, name));
  });
}
template <class Layer>
int64_t member_bytes(const Layer& layer) {
  int64_t n = 0;
  Layer::members(layer, [&](const std::string&, const auto& m) {
    if constexpr (detail::is_param_v<decltype(m)>) {
      n += m.bytes();
    } else {
      n += m.weight_bytes();
    }
  });
  return n;
}

}  // namespace effattn::layers
