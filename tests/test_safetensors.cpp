// safetensors reader/writer: round trips through files and buffers, hand-built F16 bytes, and
// one malformed file per validation rule (each must raise effattn::Error, never crash).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "effattn/core/bf16.hpp"
#include "effattn/core/error.hpp"
#include "effattn/core/tensor.hpp"
#include "effattn/io/safetensors.hpp"
#include "test_util.hpp"

namespace effattn {
namespace {

using io::Dtype;
using io::SafeTensors;
using io::SafeTensorsWriter;
using ::testing::HasSubstr;

namespace fs = std::filesystem;

fs::path temp_path(const std::string& name) {
  const fs::path dir = fs::path(::testing::TempDir()) / "effattn_safetensors_test";
  fs::create_directories(dir);
  return dir / name;
}

void write_bytes(const fs::path& p, const std::vector<uint8_t>& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.good()) << p;
}

void append_u64(uint64_t v, std::vector<uint8_t>* out) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<uint8_t>(v >> (8 * i)));
}

// A file made of a literal JSON header (optionally space-padded to `pad_to`) and data bytes.
std::vector<uint8_t> build_file(std::string header, const std::vector<uint8_t>& data,
                                std::size_t pad_to = 8) {
  header.append((pad_to - header.size() % pad_to) % pad_to, ' ');
  std::vector<uint8_t> out;
  append_u64(header.size(), &out);
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

std::string error_of(const std::vector<uint8_t>& bytes) {
  try {
    SafeTensors::from_buffer(bytes, "bad.safetensors");
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no effattn::Error raised";
  return "";
}

template <class T>
void expect_bitwise_equal(const Tensor<T>& a, const Tensor<T>& b) {
  ASSERT_EQ(a.shape(), b.shape()) << a.shape().str() << " vs " << b.shape().str();
  if (a.numel() == 0) return;
  EXPECT_EQ(std::memcmp(a.data(), b.data(), sizeof(T) * a.numel()), 0);
}

Tensor<bf16> random_bf16(const Shape& s, uint64_t seed) {
  const Tensor<float> f = testing::random_tensor<float>(s, seed);
  Tensor<bf16> b(s);
  for (int64_t i = 0; i < f.numel(); ++i) b.data()[i] = bf16(f.data()[i]);
  return b;
}

// ---------------------------------------------------------------- round trips

TEST(SafeTensors, RoundTripF32F64BF16) {
  const auto a = testing::random_tensor<float>({3, 5, 7}, 1);
  const auto b = testing::random_tensor<double>({2, 9}, 2);
  const auto c = random_bf16({4, 3, 2, 5}, 3);
  SafeTensorsWriter w;
  w.add("layers.0.a", a);
  w.add("b", b);
  w.add("c", c);
  const fs::path p = temp_path("roundtrip.safetensors");
  w.save(p.string());

  const SafeTensors st = SafeTensors::open(p.string());
  EXPECT_EQ(st.names(), (std::vector<std::string>{"b", "c", "layers.0.a"}));
  EXPECT_TRUE(st.contains("b"));
  EXPECT_FALSE(st.contains("d"));
  EXPECT_EQ(st.info("layers.0.a").dtype, Dtype::kF32);
  EXPECT_EQ(st.info("b").dtype, Dtype::kF64);
  EXPECT_EQ(st.info("c").dtype, Dtype::kBF16);
  EXPECT_EQ(st.info("c").shape, Shape({4, 3, 2, 5}));
  EXPECT_EQ(st.info("b").nbytes(), 2u * 9u * 8u);

  expect_bitwise_equal(st.get<float>("layers.0.a"), a);
  expect_bitwise_equal(st.get<double>("b"), b);
  expect_bitwise_equal(st.get<bf16>("c"), c);

  // Widening conversions are exact.
  const Tensor<double> a64 = st.get<double>("layers.0.a");
  const Tensor<float> c32 = st.get<float>("c");
  for (int64_t i = 0; i < a.numel(); ++i) EXPECT_EQ(a64.data()[i], double(a.data()[i]));
  for (int64_t i = 0; i < c.numel(); ++i) EXPECT_EQ(c32.data()[i], float(c.data()[i]));
}

TEST(SafeTensors, HeaderIsPaddedAndDataAligned) {
  SafeTensorsWriter w;
  w.add("x", testing::random_tensor<float>({3}, 4));
  w.add("y", testing::random_tensor<double>({1}, 5));
  w.add("z", random_bf16({3}, 6));
  const std::vector<uint8_t> bytes = w.serialize();
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(bytes[i]) << (8 * i);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes[8 + n - 1] == ' ' || bytes[8 + n - 1] == '}', true);
  const SafeTensors st = SafeTensors::from_buffer(bytes);
  // Widest first: y (F64) at 0, x (F32) at 8, z (BF16) at 20.
  EXPECT_EQ(st.info("y").begin, 0u);
  EXPECT_EQ(st.info("x").begin, 8u);
  EXPECT_EQ(st.info("z").begin, 20u);
  EXPECT_EQ(bytes.size(), 8 + n + 8 + 12 + 6);
}

TEST(SafeTensors, StridedViewsAreGathered) {
  const auto x = testing::random_tensor<float>({2, 5, 3, 4}, 7);  // [B, T, H, D]
  const TensorView<const float> head = x.view().select(2, 1);     // [B, T, D], strided
  const TensorView<const float> tr = x.view().transpose(1, 3);    // [B, D, H, T]
  const auto xd = testing::random_tensor<double>({6, 4}, 8);
  const auto xb = random_bf16({6, 4}, 9);
  SafeTensorsWriter w;
  w.add("head", head);
  w.add("tr", tr);
  w.add("xd_t", xd.view().transpose(0, 1));
  w.add("xb_s", xb.view().slice(0, 1, 5).transpose(0, 1));
  const SafeTensors st = SafeTensors::from_buffer(w.serialize());
  expect_bitwise_equal(st.get<float>("head"), Tensor<float>::from(head));
  expect_bitwise_equal(st.get<float>("tr"), Tensor<float>::from(tr));
  expect_bitwise_equal(st.get<double>("xd_t"),
                       Tensor<double>::from(TensorView<const double>(xd.view().transpose(0, 1))));
  expect_bitwise_equal(
      st.get<bf16>("xb_s"),
      Tensor<bf16>::from(TensorView<const bf16>(xb.view().slice(0, 1, 5).transpose(0, 1))));
}

TEST(SafeTensors, ZeroDimAndEmptyTensors) {
  Tensor<float> scalar{Shape{}};
  scalar.data()[0] = 3.5f;
  const Tensor<float> empty({0, 4});
  const Tensor<double> empty64({2, 0});
  SafeTensorsWriter w;
  w.add("scalar", scalar);
  w.add("empty", empty);
  w.add("empty64", empty64);
  const fs::path p = temp_path("zero_dim.safetensors");
  w.save(p.string());
  const SafeTensors st = SafeTensors::open(p.string());
  const Tensor<float> s = st.get<float>("scalar");
  EXPECT_EQ(s.ndim(), 0);
  EXPECT_EQ(s.numel(), 1);
  EXPECT_EQ(s.data()[0], 3.5f);
  EXPECT_EQ(st.get<float>("empty").shape(), Shape({0, 4}));
  EXPECT_EQ(st.get<double>("empty64").shape(), Shape({2, 0}));
  EXPECT_EQ(st.info("empty").nbytes(), 0u);
  EXPECT_EQ(st.view_f32("empty").shape(), Shape({0, 4}));
}

TEST(SafeTensors, EmptyFileWithOnlyMetadata) {
  SafeTensorsWriter w;
  w.set_metadata("format", "pt");
  const SafeTensors st = SafeTensors::from_buffer(w.serialize());
  EXPECT_EQ(st.size(), 0u);
  EXPECT_EQ(st.metadata().at("format"), "pt");
}

TEST(SafeTensors, MetadataRoundTrip) {
  const fs::path p = temp_path("meta.safetensors");
  const auto x = testing::random_tensor<float>({4, 4}, 10);
  io::save_safetensors(p.string(), {{"x", x.view()}, {"xt", x.view().transpose(0, 1)}},
                       {{"format", "pt"}, {"note", "quotes \" and \\ and \xc3\xa9"}});
  const SafeTensors st = SafeTensors::open(p.string());
  EXPECT_EQ(st.metadata().size(), 2u);
  EXPECT_EQ(st.metadata().at("format"), "pt");
  EXPECT_EQ(st.metadata().at("note"), "quotes \" and \\ and \xc3\xa9");
  expect_bitwise_equal(st.get<float>("x"), x);
  EXPECT_EQ(st.get<float>("xt")(1, 2), x(2, 1));
}

TEST(SafeTensors, MmapBufferedAndFromBufferAgree) {
  SafeTensorsWriter w;
  w.add("a", testing::random_tensor<float>({17, 3}, 11));
  w.add("b", random_bf16({5}, 12));
  const fs::path p = temp_path("modes.safetensors");
  w.save(p.string());
  const SafeTensors mapped = SafeTensors::open(p.string(), /*use_mmap=*/true);
  const SafeTensors buffered = SafeTensors::open(p.string(), /*use_mmap=*/false);
  const SafeTensors mem = SafeTensors::from_buffer(w.serialize());
#if defined(__unix__) || defined(__APPLE__)
  EXPECT_TRUE(mapped.is_mmapped());
#endif
  EXPECT_FALSE(buffered.is_mmapped());
  EXPECT_EQ(mapped.names(), buffered.names());
  EXPECT_EQ(mapped.names(), mem.names());
  for (const std::string& n : mapped.names()) {
    expect_bitwise_equal(mapped.get<float>(n), buffered.get<float>(n));
    expect_bitwise_equal(mapped.get<float>(n), mem.get<float>(n));
  }
}

TEST(SafeTensors, ZeroCopyViewOutlivesReaderCopies) {
  const auto a = testing::random_tensor<float>({6, 5}, 13);
  SafeTensorsWriter w;
  w.add("a", a);
  w.add("b", random_bf16({2}, 14));
  const fs::path p = temp_path("view.safetensors");
  w.save(p.string());
  TensorView<const float> v;
  {
    const SafeTensors st = SafeTensors::open(p.string());
    const SafeTensors copy = st;  // shares the mapping
    v = copy.view_f32("a");
    EXPECT_EQ(v.shape(), Shape({6, 5}));
    EXPECT_TRUE(v.is_contiguous());
    for (int64_t i = 0; i < 6; ++i) {
      for (int64_t j = 0; j < 5; ++j) EXPECT_EQ(v(i, j), a(i, j));
    }
    EXPECT_EQ(copy.view<bf16>("b").numel(), 2);
    EXPECT_THROW(copy.view<float>("b"), Error);   // dtype BF16
    EXPECT_THROW(copy.view<double>("a"), Error);  // dtype F32
  }
}

TEST(SafeTensors, MisalignedViewThrowsButGetWorks) {
  // Header length 13 (not a multiple of 4): the data starts at byte 21 of the buffer.
  const float one = 1.0f;
  std::vector<uint8_t> data(4);
  std::memcpy(data.data(), &one, 4);
  const std::string h = R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  std::string padded = h;
  while ((8 + padded.size()) % 4 != 1) padded += ' ';
  const SafeTensors st = SafeTensors::from_buffer(build_file(padded, data, 1), "odd.safetensors");
  EXPECT_EQ(st.get<float>("x").data()[0], 1.0f);
  try {
    st.view_f32("x");
    FAIL() << "expected an alignment error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("'x'"));
    EXPECT_THAT(e.what(), HasSubstr("aligned"));
  }
}

// ---------------------------------------------------------------- F16 and conversions

TEST(SafeTensors, ReadsF16HandBuilt) {
  const std::vector<uint16_t> halves = {0x3C00, 0x0001, 0x7C00, 0xFC00, 0x7E00, 0xC000,
                                        0x8000, 0x7BFF, 0x0400, 0x03FF, 0x3555, 0x8001};
  std::vector<uint8_t> data;
  for (uint16_t h : halves) {
    data.push_back(static_cast<uint8_t>(h & 0xff));
    data.push_back(static_cast<uint8_t>(h >> 8));
  }
  const std::string header =
      R"({"h":{"dtype":"F16","shape":[3,4],"data_offsets":[0,24]},"__metadata__":{"k":"v"}})";
  const fs::path p = temp_path("f16.safetensors");
  write_bytes(p, build_file(header, data));
  const SafeTensors st = SafeTensors::open(p.string());
  EXPECT_EQ(st.info("h").dtype, Dtype::kF16);
  EXPECT_EQ(st.metadata().at("k"), "v");
  const Tensor<float> f = st.get<float>("h");
  ASSERT_EQ(f.shape(), Shape({3, 4}));
  const float* x = f.data();
  EXPECT_EQ(x[0], 1.0f);
  EXPECT_EQ(x[1], std::ldexp(1.0f, -24));
  EXPECT_TRUE(std::isinf(x[2]) && x[2] > 0);
  EXPECT_TRUE(std::isinf(x[3]) && x[3] < 0);
  EXPECT_TRUE(std::isnan(x[4]));
  EXPECT_EQ(x[5], -2.0f);
  EXPECT_EQ(x[6], 0.0f);
  EXPECT_TRUE(std::signbit(x[6]));
  EXPECT_EQ(x[7], 65504.0f);
  EXPECT_EQ(x[8], std::ldexp(1.0f, -14));
  EXPECT_EQ(x[9], std::ldexp(1023.0f, -24));
  EXPECT_EQ(x[10], 1365.0f / 4096.0f);  // 0x3555: nearest half to 1/3
  EXPECT_EQ(x[11], -std::ldexp(1.0f, -24));

  const Tensor<double> d = st.get<double>("h");
  for (int64_t i = 0; i < 12; ++i) {
    if (std::isnan(x[i])) {
      EXPECT_TRUE(std::isnan(d.data()[i]));
    } else {
      EXPECT_EQ(d.data()[i], double(x[i]));
    }
  }
  const Tensor<bf16> b = st.get<bf16>("h");
  EXPECT_EQ(float(b.data()[0]), 1.0f);
  EXPECT_EQ(float(b.data()[5]), -2.0f);
  EXPECT_TRUE(std::isnan(float(b.data()[4])));
}

TEST(SafeTensors, HalfConversionsRoundTripExhaustively) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = io::half_to_float(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(((h >> 10) & 0x1f) == 0x1f && (h & 0x3ff) != 0) << std::hex << h;
      EXPECT_TRUE(std::isnan(io::half_to_float(io::float_to_half(f))));
      continue;
    }
    ASSERT_EQ(io::float_to_half(f), h) << std::hex << h;
  }
  // Ties to even, overflow and underflow.
  EXPECT_EQ(io::float_to_half(65519.0f), 0x7BFF);
  EXPECT_EQ(io::float_to_half(65520.0f), 0x7C00);
  EXPECT_EQ(io::float_to_half(1e30f), 0x7C00);
  EXPECT_EQ(io::float_to_half(-1e30f), 0xFC00);
  EXPECT_EQ(io::float_to_half(std::ldexp(1.0f, -25)), 0x0000);  // 0.5 ulp -> even (0)
  EXPECT_EQ(io::float_to_half(std::ldexp(3.0f, -25)), 0x0002);  // 1.5 ulp -> even (2)
  EXPECT_EQ(io::float_to_half(std::ldexp(1.0f, -26)), 0x0000);
  EXPECT_EQ(io::float_to_half(1.0f + std::ldexp(1.0f, -11)), 0x3C00);  // tie -> even
  EXPECT_EQ(io::float_to_half(1.0f + std::ldexp(3.0f, -11)), 0x3C02);  // tie -> even
  EXPECT_EQ(io::float_to_half(std::ldexp(2047.0f, -25)), 0x0400);      // rounds up into normals
}

TEST(SafeTensors, WriterStoresReducedPrecision) {
  const auto x = testing::random_tensor<float>({4, 9}, 15, -100, 100);
  const auto xd = testing::random_tensor<double>({7}, 16);
  SafeTensorsWriter w;
  w.add("h", x, Dtype::kF16);
  w.add("b", x, Dtype::kBF16);
  w.add("d", x, Dtype::kF64);
  w.add("xd32", xd, Dtype::kF32);
  const SafeTensors st = SafeTensors::from_buffer(w.serialize());
  EXPECT_EQ(st.info("h").dtype, Dtype::kF16);
  const Tensor<float> h = st.get<float>("h");
  const Tensor<bf16> b = st.get<bf16>("b");
  const Tensor<float> d = st.get<float>("d");
  const Tensor<double> xd32 = st.get<double>("xd32");
  for (int64_t i = 0; i < x.numel(); ++i) {
    EXPECT_EQ(h.data()[i], io::half_to_float(io::float_to_half(x.data()[i])));
    EXPECT_EQ(b.data()[i], bf16(x.data()[i]));
    EXPECT_EQ(d.data()[i], x.data()[i]);
  }
  for (int64_t i = 0; i < xd.numel(); ++i) {
    EXPECT_EQ(xd32.data()[i], double(float(xd.data()[i])));
  }
}

TEST(SafeTensors, GetBf16RoundsF32) {
  const std::vector<float> vals = {1.0f, 1.0f + std::ldexp(1.0f, -8),  // tie -> even (1.0)
                                   1.0f + std::ldexp(3.0f, -8),        // tie -> even up
                                   -3.14159f};
  std::vector<uint8_t> data(vals.size() * 4);
  std::memcpy(data.data(), vals.data(), data.size());
  const SafeTensors st = SafeTensors::from_buffer(
      build_file(R"({"v":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", data));
  const Tensor<bf16> b = st.get<bf16>("v");
  for (std::size_t i = 0; i < vals.size(); ++i) EXPECT_EQ(b.data()[i], bf16(vals[i]));
  EXPECT_EQ(float(b.data()[1]), 1.0f);
  EXPECT_EQ(float(b.data()[2]), 1.0f + std::ldexp(1.0f, -6));
}

TEST(SafeTensors, GetWithExpectedShape) {
  SafeTensorsWriter w;
  w.add("w_q", testing::random_tensor<float>({8, 4}, 17));
  const SafeTensors st = SafeTensors::from_buffer(w.serialize(), "model.safetensors");
  EXPECT_EQ(st.get<float>("w_q", Shape{8, 4}).shape(), Shape({8, 4}));
  try {
    st.get<float>("w_q", Shape{4, 8});
    FAIL() << "expected a shape error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("'w_q'"));
    EXPECT_THAT(e.what(), HasSubstr("[8, 4]"));
    EXPECT_THAT(e.what(), HasSubstr("[4, 8]"));
    EXPECT_THAT(e.what(), HasSubstr("model.safetensors"));
  }
  EXPECT_THROW(st.get<float>("w_q", Shape{32}), Error);
}

TEST(SafeTensors, UnsupportedDtypesValidateButDoNotConvert) {
  std::vector<uint8_t> data(8 + 3);
  const int64_t ids = 42;
  std::memcpy(data.data(), &ids, 8);
  const std::string h = R"({"ids":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},)"
                        R"("mask":{"dtype":"BOOL","shape":[3],"data_offsets":[8,11]}})";
  const SafeTensors st = SafeTensors::from_buffer(build_file(h, data), "ints.safetensors");
  EXPECT_EQ(st.info("ids").dtype, Dtype::kI64);
  const auto raw = st.bytes("ids");
  ASSERT_EQ(raw.second, 8u);
  int64_t back = 0;
  std::memcpy(&back, raw.first, 8);
  EXPECT_EQ(back, 42);
  try {
    st.get<float>("ids");
    FAIL() << "expected a dtype error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("'ids'"));
    EXPECT_THAT(e.what(), HasSubstr("I64"));
  }
  EXPECT_THROW(st.get<bf16>("mask"), Error);
}

TEST(SafeTensors, MoreThanMaxDimsOpensButCannotBecomeTensor) {
  const std::string h = R"({"big":{"dtype":"F32","shape":[1,1,1,1,1,2],"data_offsets":[0,8]}})";
  const SafeTensors st = SafeTensors::from_buffer(build_file(h, std::vector<uint8_t>(8)));
  EXPECT_EQ(st.info("big").dims.size(), 6u);
  EXPECT_THAT([&] { st.get<float>("big"); }, ::testing::ThrowsMessage<Error>(HasSubstr("'big'")));
}

// ---------------------------------------------------------------- malformed files

std::vector<uint8_t> valid_file() {
  SafeTensorsWriter w;
  w.add("weight", testing::random_tensor<float>({4, 8}, 18));
  w.add("bias", testing::random_tensor<float>({8}, 19));
  return w.serialize();
}

const std::vector<uint8_t> kData64(64);

TEST(SafeTensorsMalformed, TooShortForHeaderLength) {
  EXPECT_THAT(error_of({}), HasSubstr("bad.safetensors"));
  EXPECT_THROW(SafeTensors::from_buffer({1, 2, 3, 4, 5, 6, 7}), Error);
  const fs::path p = temp_path("empty.safetensors");
  write_bytes(p, {});
  EXPECT_THROW(SafeTensors::open(p.string(), true), Error);
  EXPECT_THROW(SafeTensors::open(p.string(), false), Error);
}

TEST(SafeTensorsMalformed, MissingFile) {
  const std::string p = temp_path("does_not_exist.safetensors").string();
  EXPECT_THAT([&] { SafeTensors::open(p, true); },
              ::testing::ThrowsMessage<Error>(HasSubstr("does_not_exist")));
  EXPECT_THROW(SafeTensors::open(p, false), Error);
  const std::string dir = temp_path("a_directory").string();
  fs::create_directories(dir);
  EXPECT_THAT([&] { SafeTensors::open(dir, true); },
              ::testing::ThrowsMessage<Error>(HasSubstr("directory")));
  EXPECT_THROW(SafeTensors::open(dir, false), Error);
}

TEST(SafeTensorsMalformed, TruncatedInData) {
  std::vector<uint8_t> bytes = valid_file();
  bytes.resize(bytes.size() - 5);
  EXPECT_THAT(error_of(bytes), HasSubstr("truncated"));
  const fs::path p = temp_path("truncated.safetensors");
  write_bytes(p, bytes);
  EXPECT_THROW(SafeTensors::open(p.string(), true), Error);
  EXPECT_THROW(SafeTensors::open(p.string(), false), Error);
  // Cut inside the header too.
  bytes.resize(20);
  EXPECT_THROW(SafeTensors::from_buffer(bytes), Error);
}

TEST(SafeTensorsMalformed, HeaderLengthTooLarge) {
  std::vector<uint8_t> bytes = valid_file();
  std::vector<uint8_t> big = bytes;
  const uint64_t past_end = bytes.size();  // > file size - 8
  for (int i = 0; i < 8; ++i) big[i] = static_cast<uint8_t>(past_end >> (8 * i));
  EXPECT_THAT(error_of(big), HasSubstr("header length"));
  for (int i = 0; i < 8; ++i) big[i] = 0xff;  // 2^64 - 1: no overflow in the check
  EXPECT_THAT(error_of(big), HasSubstr("header length"));
  for (int i = 0; i < 8; ++i) big[i] = static_cast<uint8_t>(uint64_t(200'000'000) >> (8 * i));
  EXPECT_THAT(error_of(big), HasSubstr("limit"));
}

TEST(SafeTensorsMalformed, BadJson) {
  EXPECT_THAT(error_of(build_file(R"({"x": {"dtype": "F32", )", kData64)), HasSubstr("JSON"));
  EXPECT_THROW(SafeTensors::from_buffer(build_file("", kData64)), Error);
  EXPECT_THROW(SafeTensors::from_buffer(build_file(std::string("{\"a\":\xff}"), kData64)), Error);
}

TEST(SafeTensorsMalformed, NotAnObject) {
  EXPECT_THAT(
      error_of(build_file(R"([{"dtype":"F32","shape":[1],"data_offsets":[0,4]}])", kData64)),
      HasSubstr("object"));
  EXPECT_THROW(SafeTensors::from_buffer(build_file("42", kData64)), Error);
  EXPECT_THROW(SafeTensors::from_buffer(build_file(R"({"x": [1, 2]})", kData64)), Error);
  EXPECT_THROW(SafeTensors::from_buffer(build_file(R"({"__metadata__": [1]})", kData64)), Error);
  EXPECT_THROW(SafeTensors::from_buffer(build_file(R"({"__metadata__": {"a": 1}})", kData64)),
               Error);
}

TEST(SafeTensorsMalformed, MissingOrMistypedFields) {
  const char* cases[] = {
      R"({"t":{"dtype":"F32","shape":[2]}})",                          // no data_offsets
      R"({"t":{"shape":[2],"data_offsets":[0,8]}})",                   // no dtype
      R"({"t":{"dtype":"F32","data_offsets":[0,8]}})",                 // no shape
      R"({"t":{"dtype":32,"shape":[2],"data_offsets":[0,8]}})",        // dtype not a string
      R"({"t":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})",     // shape not an array
      R"({"t":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})",   // float dim
      R"({"t":{"dtype":"F32","shape":[true],"data_offsets":[0,8]}})",  // bool dim
      R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0]}})",       // one offset
      R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}})",   // three offsets
      R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0.0,8]}})",   // float offset
      R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})",    // negative offset
      R"({"t":{"dtype":"F32","shape":[2],"data_offsets":{"a":0}}})",   // object offsets
  };
  for (const char* h : cases) {
    const std::string msg = error_of(build_file(h, kData64));
    EXPECT_THAT(msg, HasSubstr("'t'")) << h;
    EXPECT_THAT(msg, HasSubstr("bad.safetensors")) << h;
  }
  EXPECT_THAT(error_of(build_file(R"({"t":{"dtype":"F32","shape":[2]}})", kData64)),
              HasSubstr("data_offsets"));
}

TEST(SafeTensorsMalformed, NegativeDim) {
  const std::string msg = error_of(
      build_file(R"({"neg":{"dtype":"F32","shape":[-2, 4],"data_offsets":[0,0]}})", kData64));
  EXPECT_THAT(msg, HasSubstr("'neg'"));
  EXPECT_THAT(msg, HasSubstr("non-negative"));
}

TEST(SafeTensorsMalformed, UnknownDtype) {
  EXPECT_THAT(
      error_of(build_file(R"({"q":{"dtype":"Q4_K","shape":[2],"data_offsets":[0,8]}})", kData64)),
      HasSubstr("Q4_K"));
}

TEST(SafeTensorsMalformed, OffsetsOutOfRange) {
  const std::string msg = error_of(
      build_file(R"({"far":{"dtype":"F32","shape":[4],"data_offsets":[56,72]}})", kData64));
  EXPECT_THAT(msg, HasSubstr("'far'"));
  EXPECT_THAT(msg, HasSubstr("past the data buffer"));
  // Huge offsets whose difference matches the size must not wrap around.
  EXPECT_THROW(SafeTensors::from_buffer(
                   build_file(R"({"w":{"dtype":"F32","shape":[1],)"
                              R"("data_offsets":[18446744073709551612,18446744073709551616]}})",
                              kData64)),
               Error);
  EXPECT_THROW(SafeTensors::from_buffer(
                   build_file(R"({"w":{"dtype":"F32","shape":[1],)"
                              R"("data_offsets":[18446744073709551611,18446744073709551615]}})",
                              kData64)),
               Error);
}

TEST(SafeTensorsMalformed, EndBeforeBegin) {
  EXPECT_THAT(
      error_of(build_file(R"({"r":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", kData64)),
      HasSubstr("'r'"));
}

TEST(SafeTensorsMalformed, OverlappingOffsets) {
  const std::string h = R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                        R"("b":{"dtype":"F32","shape":[4],"data_offsets":[12,28]}})";
  const std::string msg = error_of(build_file(h, kData64));
  EXPECT_THAT(msg, HasSubstr("overlap"));
  EXPECT_THAT(msg, HasSubstr("'a'"));
  EXPECT_THAT(msg, HasSubstr("'b'"));
  const std::string same = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},)"
                           R"("b":{"dtype":"F16","shape":[4],"data_offsets":[8,16]}})";
  EXPECT_THROW(SafeTensors::from_buffer(build_file(same, kData64)), Error);
}

TEST(SafeTensorsMalformed, HolesAndEmptyRangesAreTolerated) {
  const std::string h = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                        R"("e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},)"
                        R"("b":{"dtype":"F32","shape":[2],"data_offsets":[24,32]}})";
  const SafeTensors st = SafeTensors::from_buffer(build_file(h, kData64));
  EXPECT_EQ(st.size(), 3u);
}

TEST(SafeTensorsMalformed, SizeMismatchWithShape) {
  const std::string msg =
      error_of(build_file(R"({"m":{"dtype":"F32","shape":[3,4],"data_offsets":[0,44]}})", kData64));
  EXPECT_THAT(msg, HasSubstr("'m'"));
  EXPECT_THAT(msg, HasSubstr("48"));
  // numel * element size overflows uint64.
  EXPECT_THROW(SafeTensors::from_buffer(build_file(
                   R"({"o":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]}})",
                   kData64)),
               Error);
  EXPECT_THROW(SafeTensors::from_buffer(build_file(
                   R"({"o":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,0]}})",
                   kData64)),
               Error);
}

TEST(SafeTensorsMalformed, MissingTensor) {
  const SafeTensors st = SafeTensors::from_buffer(valid_file(), "model.safetensors");
  try {
    st.get<float>("nope");
    FAIL() << "expected a missing-tensor error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("safetensors: tensor 'nope' not found in model.safetensors"));
  }
  EXPECT_THROW(st.info("nope"), Error);
  EXPECT_THROW(st.view_f32("nope"), Error);
  EXPECT_THROW(st.get<double>("nope", Shape{1}), Error);
}

// ---------------------------------------------------------------- fuzz

// A file with every convertible dtype, a 0-d and an empty tensor, and metadata.
std::vector<uint8_t> fuzz_seed_file() {
  SafeTensorsWriter w;
  w.add("model.w32", testing::random_tensor<float>({3, 5}, 1));
  w.add("model.w64", testing::random_tensor<double>({2, 3}, 2));
  w.add("model.wbf", random_bf16({4, 2}, 3));
  w.add("model.w16", testing::random_tensor<float>({7}, 4), Dtype::kF16);
  w.add("scalar", testing::random_tensor<float>(Shape{}, 5));
  w.add("empty", Tensor<float>({0, 3}));
  w.set_metadata("format", "pt");
  return w.serialize();
}

// Touches everything a loader would: every tensor through every conversion and a view.
void read_everything(const SafeTensors& st) {
  for (const auto& kv : st.metadata()) EXPECT_FALSE(kv.first.empty() && kv.second.empty());
  for (const std::string& name : st.names()) {
    const io::TensorInfo& ti = st.info(name);
    const auto raw = st.bytes(name);
    EXPECT_EQ(raw.second, ti.nbytes());
    try {
      const Tensor<float> f = st.get<float>(name);
      const Tensor<double> d = st.get<double>(name);
      const Tensor<bf16> b = st.get<bf16>(name);
      EXPECT_EQ(f.numel(), ti.numel());
      EXPECT_EQ(d.numel(), b.numel());
      st.get<float>(name, ti.shape);
    } catch (const Error&) {  // unconvertible dtype or too many dims: fine
    }
    try {
      st.view<float>(name);
    } catch (const Error&) {
    }
  }
}

// Truncated and corrupted files raise effattn::Error, never anything else, never crash (CI runs
// this under ASan + UBSan). Seeded: the same variants on every run.
TEST(SafeTensorsFuzz, CorruptedFilesRaiseErrorOnly) {
  const std::vector<uint8_t> good = fuzz_seed_file();
  read_everything(SafeTensors::from_buffer(good, "seed"));
  const std::size_t header_end = 8 + static_cast<std::size_t>(good[0] | (good[1] << 8));
  std::mt19937_64 rng(2026);
  auto below = [&](std::size_t n) {
    return static_cast<std::size_t>(rng() % std::max<std::size_t>(1, n));
  };
  int parsed = 0, rejected = 0;
  for (int it = 0; it < 600; ++it) {
    std::vector<uint8_t> b = good;
    switch (it % 6) {
      case 0:  // truncated anywhere
        b.resize(below(b.size()));
        break;
      case 1:  // random bytes anywhere
        for (int k = 0, n = 1 + int(below(8)); k < n; ++k) b[below(b.size())] = uint8_t(rng());
        break;
      case 2:  // random bytes inside the JSON header
        for (int k = 0, n = 1 + int(below(3)); k < n; ++k)
          b[8 + below(header_end - 8)] = uint8_t(rng());
        break;
      case 3: {  // a digit of the header replaced by another: plausible shapes and offsets
        std::vector<std::size_t> digits;
        for (std::size_t i = 8; i < header_end; ++i)
          if (b[i] >= '0' && b[i] <= '9') digits.push_back(i);
        b[digits[below(digits.size())]] = uint8_t('0' + below(10));
        break;
      }
      case 4: {  // header length off by a little or a lot
        uint64_t len = header_end - 8;
        const uint64_t deltas[] = {1, 7, 8, 64, uint64_t(1) << 40, ~uint64_t(0) - len};
        len = rng() % 2 ? len + deltas[below(6)] : len - std::min<uint64_t>(len, 1 + below(16));
        for (int i = 0; i < 8; ++i) b[i] = uint8_t(len >> (8 * i));
        break;
      }
      default:  // a byte inserted into or deleted from the header
        if (rng() % 2) {
          b.insert(b.begin() + std::ptrdiff_t(8 + below(header_end - 8)), uint8_t(rng()));
        } else {
          b.erase(b.begin() + std::ptrdiff_t(8 + below(header_end - 8)));
        }
        break;
    }
    try {
      const SafeTensors st = SafeTensors::from_buffer(b, "fuzz");
      read_everything(st);
      ++parsed;
    } catch (const Error&) {
      ++rejected;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "variant " << it << ": non-effattn exception: " << e.what();
    }
  }
  // Both outcomes occur: the mutations reach past the first validation.
  RecordProperty("parsed", parsed);
  RecordProperty("rejected", rejected);
  EXPECT_GT(parsed, 20);
  EXPECT_GT(rejected, 300);
}

TEST(SafeTensorsWriterErrors, RejectsBadInput) {
  SafeTensorsWriter w;
  const auto x = testing::random_tensor<float>({2}, 20);
  w.add("x", x);
  EXPECT_THROW(w.add("x", x), Error);
  EXPECT_THROW(w.add("__metadata__", x), Error);
  EXPECT_THROW(w.add("y", x, Dtype::kI32), Error);
  EXPECT_THROW(w.add("z", TensorView<const float>()), Error);  // 0-d view with no data
  EXPECT_THROW(w.save((temp_path("no_such_dir") / "sub" / "f.safetensors").string()), Error);
  SafeTensorsWriter bad_utf8;
  bad_utf8.add(std::string("\xff"), x);
  EXPECT_THROW(bad_utf8.serialize(), Error);
}

}  // namespace
}  // namespace effattn
