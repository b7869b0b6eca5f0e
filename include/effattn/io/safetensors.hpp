// safetensors reader and writer (the Hugging Face weight format).
//
// File layout:
//   [8 bytes]  N, uint64 little-endian: length of the header
//   [N bytes]  UTF-8 JSON object:
//                {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
//                 "__metadata__": {"key": "value", ...}}        (metadata optional, str -> str)
//   [rest]     data buffer; [begin, end) are byte offsets into it, row-major, little-endian.
//
// The reader validates everything before it hands out a byte: header length against the file,
// JSON types, dtype, dims, end - begin == numel * element size (overflow-checked), ranges inside
// the buffer and not overlapping. Holes between ranges are tolerated (the spec forbids them, but
// they are harmless to a reader). Every failure raises effattn::Error naming the file and tensor.
//
// Conversions: get<float>/get<double> read F32, F64, BF16 and F16; get<bf16> reads BF16 (bit
// copy) and F32/F16/F64 (rounded to nearest even; F64 goes through float). Other dtypes (ints,
// bools, F8) pass validation and are reachable as raw bytes, but get() refuses them.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "effattn/core/bf16.hpp"
#include "effattn/core/error.hpp"
#include "effattn/core/tensor.hpp"

#if defined(__unix__) || defined(__APPLE__)
#if __has_include(<sys/mman.h>) && __has_include(<sys/stat.h>) && __has_include(<fcntl.h>) && \
    __has_include(<unistd.h>)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define EFFATTN_SAFETENSORS_HAVE_MMAP 1
#endif
#endif

namespace effattn::io {

// The dtypes of the safetensors spec that have a whole number of bytes per element.
enum class Dtype {
  kBool,
  kU8,
  kI8,
  kF8E5M2,
  kF8E4M3,
  kF8E8M0,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kF64,
  kI64,
  kU64,
  kC64,
};

namespace safetensors_detail {

struct DtypeEntry {
  Dtype dtype;
  const char* name;  // the header's spelling
  int size;          // bytes per element
};

inline constexpr DtypeEntry kDtypes[] = {
    {Dtype::kBool, "BOOL", 1},      {Dtype::kU8, "U8", 1},          {Dtype::kI8, "I8", 1},
    {Dtype::kF8E5M2, "F8_E5M2", 1}, {Dtype::kF8E4M3, "F8_E4M3", 1}, {Dtype::kF8E8M0, "F8_E8M0", 1},
    {Dtype::kI16, "I16", 2},        {Dtype::kU16, "U16", 2},        {Dtype::kF16, "F16", 2},
    {Dtype::kBF16, "BF16", 2},      {Dtype::kI32, "I32", 4},        {Dtype::kU32, "U32", 4},
    {Dtype::kF32, "F32", 4},        {Dtype::kF64, "F64", 8},        {Dtype::kI64, "I64", 8},
    {Dtype::kU64, "U64", 8},        {Dtype::kC64, "C64", 8},
};

inline const DtypeEntry& dtype_entry(Dtype d) {
  for (const DtypeEntry& e : kDtypes) {
    if (e.dtype == d) return e;
  }
  throw Error("safetensors: invalid Dtype value");
}

}  // namespace safetensors_detail

// The header's spelling of a dtype, e.g. "BF16".
inline const char* dtype_name(Dtype d) { return safetensors_detail::dtype_entry(d).name; }

// Bytes per element.
inline int dtype_size(Dtype d) { return safetensors_detail::dtype_entry(d).size; }

// Where one tensor lives. `dims` is the full shape; `shape` holds it when it has at most
// kMaxDims dims (more are legal in the file but cannot become a Tensor).
struct TensorInfo {
  Dtype dtype = Dtype::kF32;
  std::vector<int64_t> dims;
  Shape shape;
  uint64_t begin = 0;  // byte offsets into the data buffer, [begin, end)
  uint64_t end = 0;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : dims) n *= d;
    return n;
  }
  uint64_t nbytes() const { return end - begin; }
};

// IEEE binary16 -> float, exact for every input (subnormals, +-inf, NaN payloads).
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24 is exact in float.
    const float mag = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -mag : mag;
  }
  uint32_t u;
  if (exp == 31) {
    u = sign | 0x7f800000u | (mant << 13);
  } else {
    u = sign | ((exp + 112u) << 23) | (mant << 13);  // rebias 15 -> 127
  }
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// float -> IEEE binary16, round to nearest even; overflow gives inf, NaN stays NaN (quiet).
inline uint16_t float_to_half(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return sign | 0x7e00u;
  // 65520 is the midpoint between the largest half (65504, odd mantissa) and 2^16: ties go up.
  if (u >= 0x477ff000u) return sign | 0x7c00u;
  if (u < 0x38800000u) {
    // Below 2^-14 the result is a multiple of 2^-24; scaling by 2^24 is exact, and nearbyint
    // rounds ties to even in the default mode. 1024 lands on the smallest normal's bits.
    float a;
    std::memcpy(&a, &u, sizeof a);
    return sign | static_cast<uint16_t>(std::nearbyint(a * 16777216.0f));
  }
  u += 0xfffu + ((u >> 13) & 1u);
  return sign | static_cast<uint16_t>((u - 0x38000000u) >> 13);
}

namespace safetensors_detail {

inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // as the reference implementation
inline constexpr const char* kMetadataKey = "__metadata__";

inline bool host_little_endian() {
  const uint16_t one = 1;
  unsigned char b;
  std::memcpy(&b, &one, 1);
  return b == 1;
}

// Reads a little-endian U from unaligned memory.
template <class U>
inline U load_le(const uint8_t* p) {
  static_assert(std::is_trivially_copyable_v<U>, "");
  U v;
  if (host_little_endian()) {
    std::memcpy(&v, p, sizeof v);
  } else {
    unsigned char b[sizeof(U)];
    for (std::size_t i = 0; i < sizeof(U); ++i) b[i] = p[sizeof(U) - 1 - i];
    std::memcpy(&v, b, sizeof v);
  }
  return v;
}

// Appends U to out in little-endian byte order.
template <class U>
inline void store_le(U v, std::vector<uint8_t>* out) {
  unsigned char b[sizeof(U)];
  std::memcpy(b, &v, sizeof v);
  if (!host_little_endian()) std::reverse(b, b + sizeof(U));
  out->insert(out->end(), b, b + sizeof(U));
}

inline bool parse_dtype(const std::string& s, Dtype* d) {
  for (const DtypeEntry& e : kDtypes) {
    if (s == e.name) {
      *d = e.dtype;
      return true;
    }
  }
  return false;
}

// a * b, or false when it does not fit in uint64.
inline bool mul_u64(uint64_t a, uint64_t b, uint64_t* r) {
  if (a != 0 && b > std::numeric_limits<uint64_t>::max() / a) return false;
  *r = a * b;
  return true;
}

// The bytes of a file (memory-mapped or read) or of a caller's buffer; shared by the reader and
// every copy of it, so views from view<T>() live as long as any SafeTensors that owns them.
class Storage {
 public:
  Storage() = default;
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage() {
#ifdef EFFATTN_SAFETENSORS_HAVE_MMAP
    if (map_ != nullptr) ::munmap(map_, size_);
#endif
  }

  static std::shared_ptr<Storage> from_vector(std::vector<uint8_t> bytes) {
    auto s = std::make_shared<Storage>();
    s->bytes_ = std::move(bytes);
    s->data_ = s->bytes_.data();
    s->size_ = s->bytes_.size();
    return s;
  }

  // Reads the whole file. Regular files are read in one go; anything else (a pipe) in chunks.
  static std::shared_ptr<Storage> read_file(const std::string& path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    const fs::file_status status = fs::status(path, ec);
    check(!ec && fs::exists(status), "safetensors: cannot open ", path, " (no such file)");
    check(!fs::is_directory(status), "safetensors: ", path, " is a directory, not a file");
    std::ifstream f(path, std::ios::binary);
    check(f.is_open(), "safetensors: cannot open ", path);
    std::vector<uint8_t> bytes;
    if (fs::is_regular_file(status)) {
      const uintmax_t size = fs::file_size(path, ec);
      check(!ec, "safetensors: cannot determine the size of ", path);
      bytes.resize(static_cast<std::size_t>(size));
      if (size) f.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(size));
      check(!f.bad() && static_cast<uintmax_t>(f.gcount()) == size, "safetensors: failed to read ",
            size, " bytes of ", path);
    } else {
      constexpr std::size_t kChunk = std::size_t{1} << 20;
      while (f) {
        const std::size_t old = bytes.size();
        bytes.resize(old + kChunk);
        f.read(reinterpret_cast<char*>(bytes.data() + old), kChunk);
        bytes.resize(old + static_cast<std::size_t>(f.gcount()));
      }
      check(!f.bad(), "safetensors: failed reading ", path);
    }
    return from_vector(std::move(bytes));
  }

#ifdef EFFATTN_SAFETENSORS_HAVE_MMAP
  // Maps the file read-only. Falls back to read_file() for files mmap cannot serve (empty files,
  // pipes). Truncating the file while it is mapped raises SIGBUS, as with any mapping.
  static std::shared_ptr<Storage> map_file(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) {
      const int err = errno;
      throw Error(effattn::detail::concat("safetensors: cannot open ", path, " (",
                                          std::strerror(err), ")"));
    }
    struct stat st;
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size <= 0) {
      ::close(fd);
      return read_file(path);
    }
    const std::size_t size = static_cast<std::size_t>(st.st_size);
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) return read_file(path);
    auto s = std::make_shared<Storage>();
    s->map_ = p;
    s->data_ = static_cast<const uint8_t*>(p);
    s->size_ = size;
    return s;
  }
#endif

  const uint8_t* data() const { return data_; }
  std::size_t size() const { return size_; }
  bool mapped() const { return map_ != nullptr; }

 private:
  std::vector<uint8_t> bytes_;
  void* map_ = nullptr;
  const uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

// A decoded element as T; to bf16 rounds to nearest even (from double, through float).
template <class T>
inline T convert_from_float(float x) {
  if constexpr (std::is_same_v<T, bf16>) {
    return bf16(x);
  } else {
    return static_cast<T>(x);
  }
}
template <class T>
inline T convert_from_double(double x) {
  if constexpr (std::is_same_v<T, bf16>) {
    return bf16(static_cast<float>(x));
  } else {
    return static_cast<T>(x);
  }
}

template <class T>
inline constexpr bool kReadable =
    std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, bf16>;

template <class T>
inline constexpr Dtype native_dtype() {
  if constexpr (std::is_same_v<T, float>) {
    return Dtype::kF32;
  } else if constexpr (std::is_same_v<T, double>) {
    return Dtype::kF64;
  } else {
    return Dtype::kBF16;
  }
}

}  // namespace safetensors_detail

// Read access to one safetensors file or buffer. Cheap to copy (the bytes are shared).
class SafeTensors {
 public:
  // Opens and validates `path`. With use_mmap (and a POSIX system) the file is memory-mapped and
  // tensors are read on demand; otherwise it is read into memory.
  static SafeTensors open(const std::string& path, bool use_mmap = true) {
    std::shared_ptr<safetensors_detail::Storage> storage;
#ifdef EFFATTN_SAFETENSORS_HAVE_MMAP
    storage = use_mmap ? safetensors_detail::Storage::map_file(path)
                       : safetensors_detail::Storage::read_file(path);
#else
    (void)use_mmap;
    storage = safetensors_detail::Storage::read_file(path);
#endif
    return SafeTensors(std::move(storage), path);
  }

  // Parses a whole file already in memory; `source` names it in error messages.
  static SafeTensors from_buffer(std::vector<uint8_t> bytes,
                                 const std::string& source = "<buffer>") {
    return SafeTensors(safetensors_detail::Storage::from_vector(std::move(bytes)), source);
  }

  const std::string& source() const { return source_; }
  bool is_mmapped() const { return storage_->mapped(); }
  std::size_t size() const { return tensors_.size(); }
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }

  // Tensor names in sorted order.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(tensors_.size());
    for (const auto& kv : tensors_) out.push_back(kv.first);
    return out;
  }

  const TensorInfo& info(const std::string& name) const {
    const auto it = tensors_.find(name);
    if (it == tensors_.end()) throw_not_found(name);
    return it->second;
  }

  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // The raw little-endian bytes of a tensor (any dtype); valid while this object (or a copy of
  // it) lives.
  std::pair<const uint8_t*, std::size_t> bytes(const std::string& name) const {
    const TensorInfo& ti = info(name);
    return {data_ + ti.begin, static_cast<std::size_t>(ti.nbytes())};
  }

  // A contiguous copy of tensor `name` converted to T (float, double or bf16).
  template <class T>
  Tensor<T> get(const std::string& name) const {
    static_assert(safetensors_detail::kReadable<T>,
                  "SafeTensors::get<T>: T must be float, double or bf16");
    namespace sd = safetensors_detail;
    const TensorInfo& ti = info(name);
    check_rank(name, ti);
    Tensor<T> out(ti.shape);
    const int64_t n = ti.numel();
    const uint8_t* src = data_ + ti.begin;
    T* dst = out.data();
    switch (ti.dtype) {
      case Dtype::kF32:
        if constexpr (std::is_same_v<T, float>) {
          if (sd::host_little_endian()) {
            if (n) std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(float));
            break;
          }
        }
        for (int64_t i = 0; i < n; ++i) {
          dst[i] = sd::convert_from_float<T>(sd::load_le<float>(src + 4 * i));
        }
        break;
      case Dtype::kF64:
        for (int64_t i = 0; i < n; ++i) {
          dst[i] = sd::convert_from_double<T>(sd::load_le<double>(src + 8 * i));
        }
        break;
      case Dtype::kBF16:
        for (int64_t i = 0; i < n; ++i) {
          const uint16_t b = sd::load_le<uint16_t>(src + 2 * i);
          if constexpr (std::is_same_v<T, bf16>) {
            dst[i] = bf16::from_bits(b);
          } else {
            dst[i] = static_cast<T>(bf16::to_float(b));
          }
        }
        break;
      case Dtype::kF16:
        for (int64_t i = 0; i < n; ++i) {
          dst[i] = sd::convert_from_float<T>(half_to_float(sd::load_le<uint16_t>(src + 2 * i)));
        }
        break;
      default:
        throw Error(effattn::detail::concat(
            "safetensors: tensor '", name, "' in ", source_, " has dtype ", dtype_name(ti.dtype),
            ", which get<", type_name<T>(), ">() cannot convert (it reads F32, F64, BF16, F16)"));
    }
    return out;
  }

  // As get<T>(name), but raises unless the tensor has shape `expected`.
  template <class T>
  Tensor<T> get(const std::string& name, const Shape& expected) const {
    const TensorInfo& ti = info(name);
    check(ti.dims.size() == static_cast<std::size_t>(expected.ndim()) &&
              std::equal(ti.dims.begin(), ti.dims.end(), expected.begin()),
          "safetensors: tensor '", name, "' in ", source_, " has shape ", dims_str(ti.dims),
          ", expected ", expected.str());
    return get<T>(name);
  }

  // A zero-copy view of a tensor stored as T (F32 for float, F64 for double, BF16 for bf16).
  // Needs a little-endian host and data aligned for T in memory (true for files written with
  // the reference writer's padding). Valid while this object (or a copy of it) lives.
  template <class T>
  TensorView<const T> view(const std::string& name) const {
    static_assert(safetensors_detail::kReadable<T>,
                  "SafeTensors::view<T>: T must be float, double or bf16");
    const TensorInfo& ti = info(name);
    constexpr Dtype want = safetensors_detail::native_dtype<T>();
    check(ti.dtype == want, "safetensors: view<", type_name<T>(), ">('", name, "') in ", source_,
          ": tensor has dtype ", dtype_name(ti.dtype), ", a view needs ", dtype_name(want),
          " (use get<T>() to convert)");
    check_rank(name, ti);
    check(safetensors_detail::host_little_endian(), "safetensors: view('", name, "') in ", source_,
          ": zero-copy views need a little-endian host (use get<T>())");
    const uint8_t* p = data_ + ti.begin;
    check(reinterpret_cast<std::uintptr_t>(p) % alignof(T) == 0, "safetensors: view('", name,
          "') in ", source_, ": data at byte offset ", ti.begin, " of the data buffer is not ",
          alignof(T),
          "-byte aligned in memory (the header is likely not padded to a multiple "
          "of 8); use get<T>() to copy instead");
    return TensorView<const T>(reinterpret_cast<const T*>(p), ti.shape);
  }

  TensorView<const float> view_f32(const std::string& name) const { return view<float>(name); }

 private:
  SafeTensors(std::shared_ptr<safetensors_detail::Storage> storage, std::string source)
      : storage_(std::move(storage)), source_(std::move(source)) {
    parse();
  }

  template <class T>
  static const char* type_name() {
    if constexpr (std::is_same_v<T, float>) {
      return "float";
    } else if constexpr (std::is_same_v<T, double>) {
      return "double";
    } else {
      return "bf16";
    }
  }

  static std::string dims_str(const std::vector<int64_t>& dims) {
    std::string s = "[";
    for (std::size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
    return s + "]";
  }

  [[noreturn]] void throw_not_found(const std::string& name) const {
    std::string have;
    std::size_t i = 0;
    for (const auto& kv : tensors_) {
      if (i == 8) {
        have += ", ...";
        break;
      }
      have += (i++ ? ", '" : "'") + kv.first + "'";
    }
    throw Error(effattn::detail::concat("safetensors: tensor '", name, "' not found in ", source_,
                                        " (", tensors_.size(), " tensors",
                                        tensors_.empty() ? "" : ": ", have, ")"));
  }

  void check_rank(const std::string& name, const TensorInfo& ti) const {
    check(ti.dims.size() <= static_cast<std::size_t>(kMaxDims), "safetensors: tensor '", name,
          "' in ", source_, " has ", ti.dims.size(), " dims ", dims_str(ti.dims),
          "; effattn tensors hold at most ", kMaxDims);
  }

  [[noreturn]] void fail(const std::string& why) const {
    throw Error("safetensors: " + source_ + ": " + why);
  }
  [[noreturn]] void fail_tensor(const std::string& name, const std::string& why) const {
    throw Error("safetensors: tensor '" + name + "' in " + source_ + ": " + why);
  }

  // Reads a non-negative JSON integer; rejects floats, bools, strings and negatives.
  bool json_to_u64(const nlohmann::json& j, uint64_t* out) const {
    if (j.is_number_unsigned()) {
      *out = j.get<uint64_t>();
      return true;
    }
    if (j.is_number_integer()) {
      const int64_t v = j.get<int64_t>();
      if (v < 0) return false;
      *out = static_cast<uint64_t>(v);
      return true;
    }
    return false;
  }

  void parse() {
    namespace sd = safetensors_detail;
    using nlohmann::json;
    const uint8_t* base = storage_->data();
    const uint64_t file_size = storage_->size();
    if (file_size < 8) {
      fail(effattn::detail::concat("file is ", file_size,
                                   " bytes, too short for the 8-byte header length"));
    }
    const uint64_t header_len = sd::load_le<uint64_t>(base);
    if (header_len > sd::kMaxHeaderBytes) {
      fail(effattn::detail::concat("header length ", header_len, " exceeds the limit of ",
                                   sd::kMaxHeaderBytes, " bytes (not a safetensors file?)"));
    }
    if (header_len > file_size - 8) {
      fail(effattn::detail::concat("header length ", header_len, " runs past the end of the file (",
                                   file_size, " bytes)"));
    }
    const char* hbegin = reinterpret_cast<const char*>(base + 8);
    json header;
    try {
      header = json::parse(hbegin, hbegin + header_len);
    } catch (const json::exception& e) {
      fail(std::string("header is not valid JSON: ") + e.what());
    }
    if (!header.is_object()) {
      fail(std::string("header must be a JSON object, got a JSON ") + header.type_name());
    }
    data_ = base + 8 + header_len;
    const uint64_t data_size = file_size - 8 - header_len;

    for (const auto& [name, entry] : header.items()) {
      if (name == sd::kMetadataKey) {
        if (!entry.is_object()) fail("__metadata__ must be an object of strings");
        for (const auto& [key, value] : entry.items()) {
          if (!value.is_string()) {
            fail("__metadata__['" + key + "'] must be a string, got a JSON " + value.type_name());
          }
          metadata_[key] = value.get<std::string>();
        }
        continue;
      }
      tensors_[name] = parse_entry(name, entry, data_size);
    }
    check_overlaps();
  }

  TensorInfo parse_entry(const std::string& name, const nlohmann::json& entry,
                         uint64_t data_size) const {
    namespace sd = safetensors_detail;
    if (!entry.is_object()) {
      fail_tensor(name, std::string("entry must be an object, got a JSON ") + entry.type_name());
    }
    TensorInfo ti;
    const auto dtype_it = entry.find("dtype");
    if (dtype_it == entry.end()) fail_tensor(name, "entry has no 'dtype'");
    if (!dtype_it->is_string()) fail_tensor(name, "'dtype' must be a string");
    const std::string dtype = dtype_it->get<std::string>();
    if (!sd::parse_dtype(dtype, &ti.dtype)) fail_tensor(name, "unknown dtype '" + dtype + "'");

    const auto shape_it = entry.find("shape");
    if (shape_it == entry.end()) fail_tensor(name, "entry has no 'shape'");
    if (!shape_it->is_array()) fail_tensor(name, "'shape' must be an array of integers");
    uint64_t numel = 1;
    for (const auto& d : *shape_it) {
      uint64_t v;
      if (!json_to_u64(d, &v) || v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        fail_tensor(name, "'shape' must hold non-negative integers, got " + shape_it->dump());
      }
      if (!sd::mul_u64(numel, v, &numel)) {
        fail_tensor(name, "shape " + shape_it->dump() + " has too many elements");
      }
      ti.dims.push_back(static_cast<int64_t>(v));
    }
    uint64_t nbytes;
    if (!sd::mul_u64(numel, static_cast<uint64_t>(dtype_size(ti.dtype)), &nbytes) ||
        numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail_tensor(name, "shape " + shape_it->dump() + " has too many elements");
    }
    if (ti.dims.size() <= static_cast<std::size_t>(kMaxDims)) ti.shape = Shape(ti.dims);

    const auto off_it = entry.find("data_offsets");
    if (off_it == entry.end()) fail_tensor(name, "entry has no 'data_offsets'");
    if (!off_it->is_array() || off_it->size() != 2 || !json_to_u64((*off_it)[0], &ti.begin) ||
        !json_to_u64((*off_it)[1], &ti.end)) {
      fail_tensor(
          name, "'data_offsets' must be [begin, end] non-negative integers, got " + off_it->dump());
    }
    if (ti.end < ti.begin) {
      fail_tensor(name, effattn::detail::concat("data_offsets [", ti.begin, ", ", ti.end,
                                                "] end before begin"));
    }
    if (ti.end > data_size) {
      fail_tensor(name, effattn::detail::concat("data_offsets [", ti.begin, ", ", ti.end,
                                                "] run past the data buffer (", data_size,
                                                " bytes); the file may be truncated"));
    }
    if (ti.end - ti.begin != nbytes) {
      fail_tensor(
          name, effattn::detail::concat("data_offsets [", ti.begin, ", ", ti.end, "] span ",
                                        ti.end - ti.begin, " bytes, but shape ", dims_str(ti.dims),
                                        " of ", dtype, " needs ", nbytes));
    }
    return ti;
  }

  // Empty tensors occupy no bytes and cannot overlap anything.
  void check_overlaps() const {
    std::vector<std::pair<const TensorInfo*, const std::string*>> ranges;
    for (const auto& kv : tensors_) {
      if (kv.second.end > kv.second.begin) ranges.emplace_back(&kv.second, &kv.first);
    }
    std::sort(ranges.begin(), ranges.end(),
              [](const auto& a, const auto& b) { return a.first->begin < b.first->begin; });
    for (std::size_t i = 1; i < ranges.size(); ++i) {
      const TensorInfo& prev = *ranges[i - 1].first;
      const TensorInfo& cur = *ranges[i].first;
      if (cur.begin < prev.end) {
        fail(effattn::detail::concat("tensors '", *ranges[i - 1].second, "' [", prev.begin, ", ",
                                     prev.end, ") and '", *ranges[i].second, "' [", cur.begin, ", ",
                                     cur.end, ") overlap in the data buffer"));
      }
    }
  }

  std::shared_ptr<safetensors_detail::Storage> storage_;
  std::string source_;
  const uint8_t* data_ = nullptr;  // start of the data buffer, after the header
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Collects tensors and writes them as one safetensors file. Tensors are copied (gathered to
// row-major if strided) when added, so the views need not outlive add().
class SafeTensorsWriter {
 public:
  // `as` is the stored dtype: F32 (default), F64, BF16 or F16 (the last two round to nearest).
  void add(const std::string& name, TensorView<const float> v, Dtype as = Dtype::kF32) {
    add_converted(name, v, as);
  }
  // Stored as F64 by default; F32, BF16, F16 round through float.
  void add(const std::string& name, TensorView<const double> v, Dtype as = Dtype::kF64) {
    add_converted(name, v, as);
  }
  // Stored as BF16 bit for bit.
  void add(const std::string& name, TensorView<const bf16> v) {
    Entry& e = new_entry(name, v, Dtype::kBF16);
    const Tensor<bf16> c = contiguous(v);
    for (int64_t i = 0; i < c.numel(); ++i) {
      safetensors_detail::store_le<uint16_t>(c.data()[i].bits, &e.bytes);
    }
  }
  // Owning tensors convert to views of non-const T, which would not pick an overload alone.
  template <class T>
  void add(const std::string& name, const Tensor<T>& t) {
    add(name, TensorView<const T>(t.view()));
  }
  template <class T>
  void add(const std::string& name, const Tensor<T>& t, Dtype as) {
    add(name, TensorView<const T>(t.view()), as);
  }

  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }
  std::size_t size() const { return entries_.size(); }

  // The whole file as bytes.
  std::vector<uint8_t> serialize() const {
    std::vector<uint8_t> out;
    const std::string header = header_bytes();
    std::size_t total = 8 + header.size();
    for (const Entry* e : ordered()) total += e->bytes.size();
    out.reserve(total);
    safetensors_detail::store_le<uint64_t>(header.size(), &out);
    out.insert(out.end(), header.begin(), header.end());
    for (const Entry* e : ordered()) out.insert(out.end(), e->bytes.begin(), e->bytes.end());
    return out;
  }

  void save(const std::string& path) const {
    const std::string header = header_bytes();
    std::vector<uint8_t> len;
    safetensors_detail::store_le<uint64_t>(header.size(), &len);
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    check(f.good(), "safetensors: cannot open ", path, " for writing");
    f.write(reinterpret_cast<const char*>(len.data()), static_cast<std::streamsize>(len.size()));
    f.write(header.data(), static_cast<std::streamsize>(header.size()));
    for (const Entry* e : ordered()) {
      f.write(reinterpret_cast<const char*>(e->bytes.data()),
              static_cast<std::streamsize>(e->bytes.size()));
    }
    f.close();
    check(!f.fail(), "safetensors: failed writing ", path);
  }

 private:
  struct Entry {
    std::string name;
    Dtype dtype;
    Shape shape;
    std::vector<uint8_t> bytes;
  };

  template <class T>
  static Tensor<T> contiguous(const TensorView<const T>& v) {
    Tensor<T> c(v.shape());
    if (v.numel() > 0) c.copy_from(v);
    return c;
  }

  template <class T>
  Entry& new_entry(const std::string& name, const TensorView<const T>& v, Dtype as) {
    check(name != safetensors_detail::kMetadataKey, "safetensors: '", name,
          "' is reserved for metadata and cannot name a tensor");
    check(index_.count(name) == 0, "safetensors: tensor '", name, "' added twice");
    check(v.numel() == 0 || v.data() != nullptr, "safetensors: tensor '", name,
          "' is an empty view of shape ", v.shape().str());
    index_[name] = entries_.size();
    entries_.push_back(Entry{name, as, v.shape(), {}});
    Entry& e = entries_.back();
    e.bytes.reserve(static_cast<std::size_t>(v.numel()) * dtype_size(as));
    return e;
  }

  template <class T>
  void add_converted(const std::string& name, const TensorView<const T>& v, Dtype as) {
    namespace sd = safetensors_detail;
    check(as == Dtype::kF32 || as == Dtype::kF64 || as == Dtype::kBF16 || as == Dtype::kF16,
          "safetensors: tensor '", name, "': cannot store floating-point data as ", dtype_name(as),
          " (F32, F64, BF16, F16 are supported)");
    Entry& e = new_entry(name, v, as);
    const Tensor<T> c = contiguous(v);
    const T* p = c.data();
    const int64_t n = c.numel();
    for (int64_t i = 0; i < n; ++i) {
      switch (as) {
        case Dtype::kF64:
          sd::store_le<double>(static_cast<double>(p[i]), &e.bytes);
          break;
        case Dtype::kF32:
          sd::store_le<float>(static_cast<float>(p[i]), &e.bytes);
          break;
        case Dtype::kBF16:
          sd::store_le<uint16_t>(bf16::from_float(static_cast<float>(p[i])), &e.bytes);
          break;
        default:
          sd::store_le<uint16_t>(float_to_half(static_cast<float>(p[i])), &e.bytes);
          break;
      }
    }
  }

  // Widest dtype first, then by name, as the reference writer: every tensor's offset is then a
  // multiple of its element size, and with the header padded to 8 bytes, so is its file offset.
  std::vector<const Entry*> ordered() const {
    std::vector<const Entry*> out;
    for (const Entry& e : entries_) out.push_back(&e);
    std::sort(out.begin(), out.end(), [](const Entry* a, const Entry* b) {
      const int sa = dtype_size(a->dtype), sb = dtype_size(b->dtype);
      return sa != sb ? sa > sb : a->name < b->name;
    });
    return out;
  }

  // The JSON header, padded with spaces to a multiple of 8 bytes.
  std::string header_bytes() const {
    nlohmann::ordered_json h = nlohmann::ordered_json::object();
    if (!metadata_.empty()) {
      nlohmann::ordered_json m = nlohmann::ordered_json::object();
      for (const auto& kv : metadata_) m[kv.first] = kv.second;
      h[safetensors_detail::kMetadataKey] = std::move(m);
    }
    uint64_t offset = 0;
    for (const Entry* e : ordered()) {
      nlohmann::ordered_json t = nlohmann::ordered_json::object();
      t["dtype"] = dtype_name(e->dtype);
      t["shape"] = std::vector<int64_t>(e->shape.begin(), e->shape.end());
      t["data_offsets"] = {offset, offset + e->bytes.size()};
      offset += e->bytes.size();
      h[e->name] = std::move(t);
    }
    std::string s;
    try {
      s = h.dump();
    } catch (const nlohmann::ordered_json::exception& ex) {
      throw Error(std::string("safetensors: cannot write the header (names and metadata must be "
                              "valid UTF-8): ") +
                  ex.what());
    }
    s.append((8 - s.size() % 8) % 8, ' ');
    return s;
  }

  std::vector<Entry> entries_;
  std::map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// Writes float tensors (any strides) as F32 with optional metadata.
inline void save_safetensors(
    const std::string& path,
    const std::vector<std::pair<std::string, TensorView<const float>>>& tensors,
    const std::map<std::string, std::string>& metadata = {}) {
  SafeTensorsWriter w;
  for (const auto& [name, view] : tensors) w.add(name, view);
  for (const auto& [key, value] : metadata) w.set_metadata(key, value);
  w.save(path);
}

}  // namespace effattn::io
