// NumPy .npy reader and writer (format versions 1.0 and 2.0, C order, little-endian).
//
// File layout: magic "\x93NUMPY", major/minor version bytes, header length (uint16 LE for 1.0,
// uint32 LE for 2.0), an ASCII Python-dict header such as
//   {'descr': '<f4', 'fortran_order': False, 'shape': (100, 8), }
// padded with spaces and '\n', then numel * itemsize bytes of row-major data. 0-d arrays have
// shape () and one element. Only what the golden vectors and tests need is supported: dtypes
// <f4 <f8 <i4 <i8 |b1 |u1, no Fortran order, no big-endian data, no object arrays.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "effattn/core/error.hpp"
#include "effattn/core/tensor.hpp"

namespace effattn::io {

// The decoded contents of one .npy file: dtype, shape and the raw little-endian C-order bytes.
struct NpyArray {
  std::string descr;                // as written in the header, e.g. "<f4", "|b1"
  char kind = 0;                    // 'f' float, 'i' signed int, 'u' unsigned int, 'b' bool
  int itemsize = 0;                 // bytes per element
  Shape shape;                      // () for a 0-d array
  std::vector<unsigned char> data;  // numel() * itemsize bytes

  int64_t numel() const { return shape.numel(); }
  bool is_integer() const { return kind == 'i' || kind == 'u' || kind == 'b'; }
};

namespace npy_detail {

inline bool host_is_little_endian() {
  const uint16_t one = 1;
  unsigned char b;
  std::memcpy(&b, &one, 1);
  return b == 1;
}

// Parses descr into (kind, itemsize); throws for big-endian or unsupported dtypes.
inline void parse_descr(const std::string& path, const std::string& descr, char* kind,
                        int* itemsize) {
  check(descr.size() == 3 && (descr[2] == '1' || descr[2] == '4' || descr[2] == '8'), path,
        ": unsupported npy dtype '", descr, "'");
  const char order = descr[0];
  const char k = descr[1];
  const int size = descr[2] - '0';
  check(!(order == '>' && size > 1), path, ": big-endian npy dtype '", descr,
        "' is not supported (save it little-endian)");
  check(order == '<' || order == '|' || (order == '>' && size == 1), path,
        ": unsupported byte order in npy dtype '", descr, "'");
  const bool ok = (k == 'f' && (size == 4 || size == 8)) ||
                  (k == 'i' && (size == 4 || size == 8)) || (k == 'u' && size == 1) ||
                  (k == 'b' && size == 1);
  check(ok, path, ": unsupported npy dtype '", descr, "' (supported: <f4 <f8 <i4 <i8 |b1 |u1)");
  *kind = k;
  *itemsize = size;
}

// Recursive-descent parser for the header dict. The grammar is the subset numpy writes:
// a dict of string keys to a string, True/False, or a tuple of non-negative ints.
class NpyHeaderParser {
 public:
  NpyHeaderParser(std::string path, std::string text)
      : path_(std::move(path)), s_(std::move(text)) {}

  void parse(std::string* descr, bool* fortran_order, std::vector<int64_t>* shape) {
    bool seen_descr = false, seen_fortran = false, seen_shape = false;
    expect('{');
    while (true) {
      skip_ws();
      if (peek() == '}') break;
      const std::string key = parse_string();
      expect(':');
      if (key == "descr") {
        *descr = parse_string();
        seen_descr = true;
      } else if (key == "fortran_order") {
        *fortran_order = parse_bool();
        seen_fortran = true;
      } else if (key == "shape") {
        *shape = parse_tuple();
        seen_shape = true;
      } else {
        fail("unexpected key '" + key + "'");
      }
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() == '}') break;
      fail("expected ',' or '}'");
    }
    ++pos_;
    skip_ws();
    if (pos_ != s_.size()) fail("trailing characters after the dict");
    if (!seen_descr || !seen_fortran || !seen_shape) {
      fail("the dict must have 'descr', 'fortran_order' and 'shape'");
    }
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw Error(effattn::detail::concat(path_, ": malformed npy header (", why, " at offset ", pos_,
                                        "): ", s_));
  }
  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  void skip_ws() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) {
      ++pos_;
    }
  }
  void expect(char c) {
    skip_ws();
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }
  std::string parse_string() {
    skip_ws();
    const char q = peek();
    if (q != '\'' && q != '"') fail("expected a quoted string");
    const std::size_t end = s_.find(q, pos_ + 1);
    if (end == std::string::npos) fail("unterminated string");
    std::string out = s_.substr(pos_ + 1, end - pos_ - 1);
    pos_ = end + 1;
    return out;
  }
  bool parse_bool() {
    skip_ws();
    if (s_.compare(pos_, 4, "True") == 0) {
      pos_ += 4;
      return true;
    }
    if (s_.compare(pos_, 5, "False") == 0) {
      pos_ += 5;
      return false;
    }
    fail("expected True or False");
  }
  // "()", "(5,)", "(2, 3)"; a trailing comma is allowed, Python 2's "5L" too.
  std::vector<int64_t> parse_tuple() {
    std::vector<int64_t> dims;
    expect('(');
    while (true) {
      skip_ws();
      if (peek() == ')') break;
      if (peek() < '0' || peek() > '9') fail("expected a non-negative integer in the shape");
      int64_t v = 0;
      while (peek() >= '0' && peek() <= '9') {
        const int digit = peek() - '0';
        if (v > (std::numeric_limits<int64_t>::max() - digit) / 10) fail("shape dim overflows");
        v = v * 10 + digit;
        ++pos_;
      }
      if (peek() == 'L') ++pos_;
      dims.push_back(v);
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() != ')') fail("expected ',' or ')' in the shape");
      // Python needs "(5,)" for a 1-tuple; "(5)" is an int, not a shape.
      if (dims.size() == 1) fail("a 1-d shape needs a trailing comma");
    }
    ++pos_;
    return dims;
  }
  std::string path_;
  std::string s_;
  std::size_t pos_ = 0;
};

inline uint32_t read_le(const unsigned char* p, int bytes) {
  uint32_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Element i of the array as Src (memcpy: the byte buffer has no alignment guarantee).
template <class Src>
Src load_elem(const unsigned char* bytes, int64_t i) {
  Src v;
  std::memcpy(&v, bytes + i * static_cast<int64_t>(sizeof(Src)), sizeof(Src));
  return v;
}

// Converts Src -> T. Float -> integer must be exact and in range (a silent truncation of an
// index tensor would hide a corrupted file); integer narrowing must be in range.
template <class T, class Src>
T convert_elem(Src v, const std::string& path, int64_t i) {
  if constexpr (std::is_floating_point_v<T>) {
    return static_cast<T>(v);
  } else if constexpr (std::is_floating_point_v<Src>) {
    const double d = static_cast<double>(v);
    check(std::isfinite(d) && std::trunc(d) == d &&
              d >= static_cast<double>(std::numeric_limits<T>::lowest()) &&
              d <= static_cast<double>(std::numeric_limits<T>::max()),
          path, ": element ", i, " = ", d, " is not representable as an integer of ", sizeof(T),
          " bytes");
    return static_cast<T>(d);
  } else {
    const int64_t w = static_cast<int64_t>(v);
    check(w >= static_cast<int64_t>(std::numeric_limits<T>::lowest()) &&
              w <= static_cast<int64_t>(std::numeric_limits<T>::max()),
          path, ": element ", i, " = ", w, " is out of range for an integer of ", sizeof(T),
          " bytes");
    return static_cast<T>(w);
  }
}

template <class T, class Src>
void convert_all(const NpyArray& a, const std::string& path, T* out) {
  const int64_t n = a.numel();
  for (int64_t i = 0; i < n; ++i)
    out[i] = convert_elem<T>(load_elem<Src>(a.data.data(), i), path, i);
}

template <class T>
constexpr const char* npy_descr() {
  if constexpr (std::is_same_v<T, float>) return "<f4";
  if constexpr (std::is_same_v<T, double>) return "<f8";
  if constexpr (std::is_same_v<T, int32_t>) return "<i4";
  if constexpr (std::is_same_v<T, int64_t>) return "<i8";
}

inline std::string shape_tuple(const Shape& s) {
  std::string out = "(";
  for (int i = 0; i < s.ndim(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  if (s.ndim() == 1) out += ",";
  return out + ")";
}

template <class T>
void save_npy_impl(const std::string& path, const TensorView<const T>& v) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double> ||
                    std::is_same_v<T, int32_t> || std::is_same_v<T, int64_t>,
                "save_npy supports float, double, int32_t and int64_t");
  check(host_is_little_endian(), path, ": save_npy needs a little-endian host");
  check(!v.empty(), path, ": save_npy got an empty view");
  std::string header = std::string("{'descr': '") + npy_descr<T>() +
                       "', 'fortran_order': False, 'shape': " + shape_tuple(v.shape()) + ", }";
  // Pad with spaces so that preamble + header (ending in '\n') is a multiple of 64, as numpy
  // does; switch to version 2.0 only when the header no longer fits a uint16 length.
  std::size_t preamble = 10;
  auto padded = [&](std::size_t pre) { return (header.size() + 1 + pre + 63) / 64 * 64 - pre; };
  std::size_t hlen = padded(preamble);
  if (hlen > 0xffff) {
    preamble = 12;
    hlen = padded(preamble);
  }
  header.append(hlen - header.size() - 1, ' ');
  header.push_back('\n');

  std::vector<unsigned char> out;
  out.reserve(preamble + hlen + sizeof(T) * static_cast<std::size_t>(v.numel()));
  const unsigned char magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  out.insert(out.end(), magic, magic + 6);
  out.push_back(preamble == 10 ? 1 : 2);
  out.push_back(0);
  for (std::size_t i = 0; i < preamble - 8; ++i) {
    out.push_back(static_cast<unsigned char>((hlen >> (8 * i)) & 0xff));
  }
  out.insert(out.end(), header.begin(), header.end());
  // Strided views are written in their logical C order.
  Tensor<T>::for_each_index(v.shape(), [&](const int64_t* ix) {
    int64_t off = 0;
    for (int d = 0; d < v.ndim(); ++d) off += ix[d] * v.stride(d);
    unsigned char b[sizeof(T)];
    std::memcpy(b, v.data() + off, sizeof(T));
    out.insert(out.end(), b, b + sizeof(T));
  });

  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  check(static_cast<bool>(f), path, ": cannot open for writing");
  f.write(reinterpret_cast<const char*>(out.data()), static_cast<std::streamsize>(out.size()));
  f.close();
  check(!f.fail(), path, ": write failed");
}

}  // namespace npy_detail

// Reads and validates a .npy file. Throws effattn::Error naming the file on any problem:
// bad magic or version, a header longer than the file, a malformed header dict, Fortran order,
// big-endian or unsupported dtype, more than kMaxDims dims, or data size != numel * itemsize.
inline NpyArray read_npy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  check(static_cast<bool>(f), path, ": cannot open npy file");
  const std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(f)),
                                         std::istreambuf_iterator<char>());
  check(!f.bad(), path, ": read error");
  check(npy_detail::host_is_little_endian(), path, ": read_npy needs a little-endian host");

  static const unsigned char kMagic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  check(bytes.size() >= 10 && std::memcmp(bytes.data(), kMagic, 6) == 0, path,
        ": not a .npy file (bad magic)");
  const int major = bytes[6], minor = bytes[7];
  check((major == 1 || major == 2) && minor == 0, path, ": unsupported npy version ", major, ".",
        minor, " (supported: 1.0, 2.0)");
  const std::size_t preamble = major == 1 ? 10 : 12;
  check(bytes.size() >= preamble, path, ": truncated npy preamble");
  const std::size_t hlen = npy_detail::read_le(bytes.data() + 8, major == 1 ? 2 : 4);
  check(hlen <= bytes.size() - preamble, path, ": npy header length ", hlen,
        " runs past the end of the file (", bytes.size(), " bytes)");
  const std::string header(reinterpret_cast<const char*>(bytes.data()) + preamble, hlen);

  NpyArray a;
  bool fortran_order = false;
  std::vector<int64_t> dims;
  npy_detail::NpyHeaderParser(path, header).parse(&a.descr, &fortran_order, &dims);
  npy_detail::parse_descr(path, a.descr, &a.kind, &a.itemsize);
  check(!fortran_order, path, ": fortran_order=True is not supported (save C-contiguous)");
  check(static_cast<int>(dims.size()) <= kMaxDims, path, ": ", dims.size(),
        "-d npy array, at most ", kMaxDims, " dims supported");
  a.shape = Shape(dims);

  // Compare counts, not byte products, so that absurd header dims cannot overflow.
  const std::size_t data_bytes = bytes.size() - preamble - hlen;
  const std::size_t avail = data_bytes / static_cast<std::size_t>(a.itemsize);
  std::size_t numel = 1;
  bool too_big = false;
  for (int64_t d : dims) {
    if (d == 0) {
      numel = 0;
      too_big = false;
      break;
    }
    if (numel > avail / static_cast<std::size_t>(d)) too_big = true;
    if (!too_big) numel *= static_cast<std::size_t>(d);
  }
  check(!too_big && data_bytes % a.itemsize == 0 && avail == numel, path, ": npy data is ",
        data_bytes, " bytes, expected ", a.shape.str(), " x ", a.itemsize, " bytes");
  a.data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(preamble + hlen), bytes.end());
  return a;
}

// Converts a decoded array to an owning Tensor<T> (T = float, double, int32_t or int64_t).
// `path` only names the source in error messages.
template <class T>
Tensor<T> to_tensor(const NpyArray& a, const std::string& path) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double> ||
                    std::is_same_v<T, int32_t> || std::is_same_v<T, int64_t>,
                "to_tensor supports float, double, int32_t and int64_t");
  Tensor<T> t(a.shape);
  T* out = t.data();
  if (a.kind == 'f' && a.itemsize == 4) {
    npy_detail::convert_all<T, float>(a, path, out);
  } else if (a.kind == 'f' && a.itemsize == 8) {
    npy_detail::convert_all<T, double>(a, path, out);
  } else if (a.kind == 'i' && a.itemsize == 4) {
    npy_detail::convert_all<T, int32_t>(a, path, out);
  } else if (a.kind == 'i' && a.itemsize == 8) {
    npy_detail::convert_all<T, int64_t>(a, path, out);
  } else if (a.kind == 'u' && a.itemsize == 1) {
    npy_detail::convert_all<T, uint8_t>(a, path, out);
  } else if (a.kind == 'b' && a.itemsize == 1) {
    // numpy bools are bytes 0/1; treat any non-zero byte as true.
    for (int64_t i = 0; i < a.numel(); ++i) out[i] = static_cast<T>(a.data[i] != 0);
  } else {
    throw Error(effattn::detail::concat(path, ": cannot convert npy dtype '", a.descr, "'"));
  }
  return t;
}

// read_npy + to_tensor: e.g. load_npy<float>("q.npy") -> Tensor<float> of shape [B, T, H, K].
template <class T>
Tensor<T> load_npy(const std::string& path) {
  return to_tensor<T>(read_npy(path), path);
}

// Writes a view (any strides) as a C-order, little-endian .npy file, format 1.0 when the header
// fits, else 2.0. 0-d views are written with shape ().
inline void save_npy(const std::string& path, const TensorView<const float>& v) {
  npy_detail::save_npy_impl<float>(path, v);
}
inline void save_npy(const std::string& path, const TensorView<const double>& v) {
  npy_detail::save_npy_impl<double>(path, v);
}
inline void save_npy(const std::string& path, const TensorView<const int32_t>& v) {
  npy_detail::save_npy_impl<int32_t>(path, v);
}
inline void save_npy(const std::string& path, const TensorView<const int64_t>& v) {
  npy_detail::save_npy_impl<int64_t>(path, v);
}

}  // namespace effattn::io
