// Tests of the golden runner itself, before any op handler exists: the .npy reader/writer, the
// tolerance comparison, GoldenCase's accessors and the runner loop on a synthetic golden dir.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "effattn/io/npy.hpp"
#include "golden/golden.hpp"

namespace {

namespace fs = std::filesystem;
using effattn::Error;
using effattn::Shape;
using effattn::Tensor;
using effattn::TensorView;
using effattn::io::load_npy;
using effattn::io::read_npy;
using effattn::io::save_npy;
using namespace effattn::golden;

// A fresh directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            (std::string("effattn_golden_") + info->test_suite_name() + "_" + info->name() + "_" +
             std::to_string(reinterpret_cast<uintptr_t>(this)));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

// Writes a hand-made .npy: version bytes, header text (padded to end in '\n'), then raw data.
void write_raw_npy(const std::string& path, int major, const std::string& dict,
                   const std::vector<unsigned char>& data, const char* magic = "\x93NUMPY") {
  const std::size_t preamble = major == 1 ? 10 : 12;
  std::string header = dict;
  while ((preamble + header.size() + 1) % 64 != 0) header.push_back(' ');
  header.push_back('\n');
  std::ofstream f(path, std::ios::binary);
  f.write(magic, 6);
  f.put(static_cast<char>(major));
  f.put(0);
  for (std::size_t i = 0; i < preamble - 8; ++i) {
    f.put(static_cast<char>((header.size() >> (8 * i)) & 0xff));
  }
  f.write(header.data(), static_cast<std::streamsize>(header.size()));
  f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}

std::vector<unsigned char> float_bytes(std::vector<float> v) {
  std::vector<unsigned char> b(v.size() * sizeof(float));
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

// Expects read_npy(path) to throw an effattn::Error that names the file and contains `what`.
void expect_npy_error(const std::string& path, const std::string& what) {
  try {
    read_npy(path);
    ADD_FAILURE() << "no error for " << path;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(what), std::string::npos) << msg;
  }
}

// ---------------------------------------------------------------------------------------------
// npy

TEST(Npy, RoundTripF4) {
  TempDir tmp;
  Tensor<float> x({2, 3, 4});
  for (int64_t i = 0; i < x.numel(); ++i) x.data()[i] = 0.25f * static_cast<float>(i) - 1.5f;
  save_npy(tmp.file("x.npy"), x);
  const auto a = read_npy(tmp.file("x.npy"));
  EXPECT_EQ(a.descr, "<f4");
  EXPECT_EQ(a.shape, Shape({2, 3, 4}));
  const Tensor<float> y = load_npy<float>(tmp.file("x.npy"));
  ASSERT_EQ(y.shape(), x.shape());
  for (int64_t i = 0; i < x.numel(); ++i) EXPECT_EQ(y.data()[i], x.data()[i]);
  // numpy's alignment: preamble + header is a multiple of 64.
  std::ifstream f(tmp.file("x.npy"), std::ios::binary);
  unsigned char pre[10];
  f.read(reinterpret_cast<char*>(pre), 10);
  EXPECT_EQ(pre[6], 1);
  EXPECT_EQ((10 + pre[8] + 256 * pre[9]) % 64, 0);
}

TEST(Npy, RoundTripF8AndI4AndI8) {
  TempDir tmp;
  Tensor<double> d({5});
  for (int i = 0; i < 5; ++i) d(i) = 1.0 / (i + 1);
  Tensor<int32_t> n({3, 2});
  for (int i = 0; i < 6; ++i) n.data()[i] = i * 1000 - 2500;
  Tensor<int64_t> l({2});
  l(0) = -(int64_t{1} << 40);
  l(1) = 7;
  save_npy(tmp.file("d.npy"), d);
  save_npy(tmp.file("n.npy"), n);
  save_npy(tmp.file("l.npy"), l);

  EXPECT_EQ(read_npy(tmp.file("d.npy")).descr, "<f8");
  const Tensor<double> d2 = load_npy<double>(tmp.file("d.npy"));
  ASSERT_EQ(d2.shape(), Shape({5}));  // (5,) tuple
  for (int i = 0; i < 5; ++i) EXPECT_EQ(d2(i), d(i));

  const auto na = read_npy(tmp.file("n.npy"));
  EXPECT_EQ(na.descr, "<i4");
  EXPECT_TRUE(na.is_integer());
  const Tensor<int32_t> n2 = load_npy<int32_t>(tmp.file("n.npy"));
  ASSERT_EQ(n2.shape(), Shape({3, 2}));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(n2.data()[i], n.data()[i]);
  // Integer data converts to float / double.
  const Tensor<double> n3 = load_npy<double>(tmp.file("n.npy"));
  EXPECT_EQ(n3(2, 1), 2500.0);

  const Tensor<int64_t> l2 = load_npy<int64_t>(tmp.file("l.npy"));
  EXPECT_EQ(l2(0), l(0));
  // ... but an int64 that does not fit int32 is an error, not a wrap-around.
  EXPECT_THROW(load_npy<int32_t>(tmp.file("l.npy")), Error);
}

TEST(Npy, ZeroDimAndEmpty) {
  TempDir tmp;
  Tensor<float> s{Shape()};
  s.data()[0] = 3.5f;
  save_npy(tmp.file("s.npy"), s);
  const auto a = read_npy(tmp.file("s.npy"));
  EXPECT_EQ(a.shape.ndim(), 0);
  EXPECT_EQ(a.numel(), 1);
  EXPECT_EQ(load_npy<double>(tmp.file("s.npy")).data()[0], 3.5);

  Tensor<int32_t> si{Shape()};
  si.data()[0] = -7;
  save_npy(tmp.file("si.npy"), si);
  EXPECT_EQ(load_npy<int32_t>(tmp.file("si.npy")).data()[0], -7);

  Tensor<float> e({0, 3});
  save_npy(tmp.file("e.npy"), e);
  const auto ea = read_npy(tmp.file("e.npy"));
  EXPECT_EQ(ea.shape, Shape({0, 3}));
  EXPECT_TRUE(ea.data.empty());
}

TEST(Npy, StridedViewIsWrittenInLogicalOrder) {
  TempDir tmp;
  Tensor<float> x({2, 3});
  for (int i = 0; i < 6; ++i) x.data()[i] = static_cast<float>(i);
  const TensorView<const float> xt = x.view().transpose(0, 1);  // [3, 2]
  save_npy(tmp.file("t.npy"), xt);
  const Tensor<float> y = load_npy<float>(tmp.file("t.npy"));
  ASSERT_EQ(y.shape(), Shape({3, 2}));
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 2; ++j) EXPECT_EQ(y(i, j), x(j, i));
  }
}

TEST(Npy, ReadsVersion2AndNumpyStyleHeaders) {
  TempDir tmp;
  write_raw_npy(tmp.file("v2.npy"), 2, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
                float_bytes({1.f, 2.f}));
  const Tensor<float> a = load_npy<float>(tmp.file("v2.npy"));
  EXPECT_EQ(a(1), 2.f);
  // Key order is free, no trailing comma, double quotes.
  write_raw_npy(tmp.file("k.npy"), 1,
                "{\"shape\": (1, 2), \"fortran_order\": False, \"descr\": '<f4'}",
                float_bytes({1.f, 2.f}));
  EXPECT_EQ(load_npy<float>(tmp.file("k.npy")).shape(), Shape({1, 2}));
}

TEST(Npy, FloatToIntegerMustBeExact) {
  TempDir tmp;
  Tensor<float> x({2});
  x(0) = 3.f;
  x(1) = 2.5f;
  save_npy(tmp.file("x.npy"), x);
  EXPECT_THROW(load_npy<int32_t>(tmp.file("x.npy")), Error);
}

TEST(Npy, MalformedFilesRaise) {
  TempDir tmp;
  const std::string ok_dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
  const auto two = float_bytes({1.f, 2.f});

  write_raw_npy(tmp.file("magic.npy"), 1, ok_dict, two, "\x93NUMPX");
  expect_npy_error(tmp.file("magic.npy"), "magic");

  write_raw_npy(tmp.file("version.npy"), 9, ok_dict, two);
  expect_npy_error(tmp.file("version.npy"), "version");

  write_raw_npy(tmp.file("trunc.npy"), 1, ok_dict, float_bytes({1.f}));
  expect_npy_error(tmp.file("trunc.npy"), "bytes");

  write_raw_npy(tmp.file("extra.npy"), 1, ok_dict, float_bytes({1.f, 2.f, 3.f}));
  expect_npy_error(tmp.file("extra.npy"), "bytes");

  write_raw_npy(tmp.file("fortran.npy"), 1,
                "{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", two);
  expect_npy_error(tmp.file("fortran.npy"), "fortran_order");

  write_raw_npy(tmp.file("big.npy"), 1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }",
                two);
  expect_npy_error(tmp.file("big.npy"), "big-endian");

  write_raw_npy(tmp.file("dtype.npy"), 1,
                "{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }", two);
  expect_npy_error(tmp.file("dtype.npy"), "dtype");

  write_raw_npy(tmp.file("nokey.npy"), 1, "{'descr': '<f4', 'shape': (2,), }", two);
  expect_npy_error(tmp.file("nokey.npy"), "malformed");

  write_raw_npy(tmp.file("tuple.npy"), 1,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2), }", two);
  expect_npy_error(tmp.file("tuple.npy"), "malformed");

  write_raw_npy(tmp.file("garbage.npy"), 1,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)", two);
  expect_npy_error(tmp.file("garbage.npy"), "malformed");

  // Header length field larger than the file.
  {
    std::ofstream f(tmp.file("hlen.npy"), std::ios::binary);
    f.write("\x93NUMPY\x01\x00\xff\x7f{'descr'", 17);
  }
  expect_npy_error(tmp.file("hlen.npy"), "header length");

  // Cut inside the preamble.
  {
    std::ofstream f(tmp.file("short.npy"), std::ios::binary);
    f.write("\x93NUM", 4);
  }
  expect_npy_error(tmp.file("short.npy"), "magic");

  expect_npy_error(tmp.file("does_not_exist.npy"), "cannot open");
}

// ---------------------------------------------------------------------------------------------
// compare_output

Tensor<double> vec(std::vector<double> v) {
  Tensor<double> t({static_cast<int64_t>(v.size())});
  for (std::size_t i = 0; i < v.size(); ++i) t.data()[i] = v[i];
  return t;
}

TEST(Compare, ToleranceBoundary) {
  const double rtol = 1e-4, atol = 1e-5;
  const Tensor<double> expected = vec({0.0, 2.0, -3.0});
  // |d| = atol + rtol |e| exactly is inside; a hair more is outside.
  const double tol2 = atol + rtol * 2.0;
  const CompareResult inside =
      compare_output(vec({0.0, 2.0 + 0.99 * tol2, -3.0}), expected, false, rtol, atol);
  EXPECT_TRUE(inside.ok) << inside.message;
  EXPECT_NEAR(inside.max_tol_ratio, 0.99, 1e-6);
  EXPECT_EQ(inside.worst_index, 1);
  EXPECT_NEAR(inside.max_abs_err, 0.99 * tol2, 1e-15);
  EXPECT_NEAR(inside.max_rel_err, 0.99 * tol2 / 3.0, 1e-15);

  const CompareResult outside =
      compare_output(vec({0.0, 2.0 + 1.01 * tol2, -3.0}), expected, false, rtol, atol);
  EXPECT_FALSE(outside.ok);
  EXPECT_EQ(outside.num_bad, 1);
  EXPECT_EQ(outside.worst_index, 1);
  EXPECT_NE(outside.message.find("[1]"), std::string::npos) << outside.message;

  // Near zero only atol applies.
  EXPECT_TRUE(compare_output(vec({0.9 * atol, 2.0, -3.0}), expected, false, rtol, atol).ok);
  EXPECT_FALSE(compare_output(vec({1.1 * atol, 2.0, -3.0}), expected, false, rtol, atol).ok);
}

TEST(Compare, NanAndInfFail) {
  const Tensor<double> expected = vec({1.0, 2.0});
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const CompareResult r = compare_output(vec({1.0, nan}), expected, false, 1e-4, 1e-5);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.worst_index, 1);
  EXPECT_NE(r.message.find("NaN"), std::string::npos) << r.message;
  const double inf = std::numeric_limits<double>::infinity();
  EXPECT_FALSE(compare_output(vec({inf, 2.0}), expected, false, 1e-4, 1e-5).ok);
  // A huge tolerance does not let NaN through.
  EXPECT_FALSE(compare_output(vec({nan, 2.0}), expected, false, 1e9, 1e9).ok);
}

TEST(Compare, ShapeMismatchFails) {
  Tensor<double> a({2, 3}), b({3, 2}), c({6});
  EXPECT_FALSE(compare_output(a, b, false, 1, 1).ok);
  const CompareResult r = compare_output(a, c, false, 1, 1);
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.message.find("shape"), std::string::npos) << r.message;
  EXPECT_TRUE(compare_output(a, Tensor<double>({2, 3}), false, 0, 0).ok);
}

TEST(Compare, IntegersExactly) {
  const Tensor<double> expected = vec({3, 0, 7});
  EXPECT_TRUE(compare_output(vec({3, 0, 7}), expected, true, 1e-4, 1e-5).ok);
  // Within float tolerance, but indices must match exactly.
  EXPECT_FALSE(compare_output(vec({3, 0, 7.000001}), expected, true, 1.0, 1.0).ok);
  const CompareResult r = compare_output(vec({3, 1, 7}), expected, true, 1.0, 1.0);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.worst_index, 1);
}

TEST(Compare, ZeroDimAndWorstIndexIsUnravelled) {
  Tensor<double> s{Shape()}, t{Shape()};
  s.data()[0] = 1.0;
  t.data()[0] = 1.0;
  EXPECT_TRUE(compare_output(s, t, false, 0, 0).ok);
  Tensor<double> g({2, 3, 4}), e({2, 3, 4});
  g(1, 2, 3) = 1.0;
  const CompareResult r = compare_output(g, e, false, 1e-4, 1e-5);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.worst_index, 23);
  EXPECT_NE(r.message.find("[1, 2, 3]"), std::string::npos) << r.message;
}

// ---------------------------------------------------------------------------------------------
// GoldenCase, registry and runner on a synthetic golden directory.

// One case of op `op` with input x [2, 3] (values i), expected outputs y = 2x (float) and
// idx [3] int32, plus params.
void write_case(const std::string& root, const std::string& name, const std::string& op) {
  const std::string dir = root + "/" + name;
  fs::create_directories(dir);
  Tensor<float> x({2, 3});
  for (int i = 0; i < 6; ++i) x.data()[i] = static_cast<float>(i);
  Tensor<float> y({2, 3});
  for (int i = 0; i < 6; ++i) y.data()[i] = 2.f * static_cast<float>(i);
  Tensor<int32_t> idx({3});
  idx(0) = 2;
  idx(1) = 0;
  idx(2) = 1;
  save_npy(dir + "/x.npy", x);
  save_npy(dir + "/y.npy", y);
  save_npy(dir + "/idx.npy", idx);
  json meta = {
      {"case", name},
      {"op", op},
      {"params", {{"scale", 0.5}, {"causal", true}, {"G", nullptr}, {"kind", "mixtral"}, {"N", 3}}},
      {"inputs", {{"x", {{"file", "x.npy"}, {"dtype", "float32"}, {"shape", {2, 3}}}}}},
      {"expected_outputs",
       {{"y", {{"file", "y.npy"}, {"dtype", "float32"}, {"shape", {2, 3}}}},
        {"idx", {{"file", "idx.npy"}, {"dtype", "int32"}, {"shape", {3}}}}}},
      {"recommended_tolerance_float32", {{"rtol", 1e-4}, {"atol", 1e-5}}}};
  std::ofstream(dir + "/meta.json") << meta.dump(1);
}

GoldenOutputs selftest_outputs(const GoldenCase& c, double y_offset) {
  Tensor<double> y = to_double(c.in("x"));
  for (int64_t i = 0; i < y.numel(); ++i) y.data()[i] = 2.0 * y.data()[i] + y_offset;
  Tensor<double> idx({3});
  idx(0) = 2;
  idx(1) = 0;
  idx(2) = 1;
  GoldenOutputs out;
  out.emplace("y", std::move(y));
  out.emplace("idx", std::move(idx));
  return out;
}

EFFATTN_GOLDEN_HANDLER(selftest_ok) { return selftest_outputs(c, 0.0); }
EFFATTN_GOLDEN_HANDLER(selftest_off) { return selftest_outputs(c, 1e-3); }
EFFATTN_GOLDEN_HANDLER(selftest_missing) {
  GoldenOutputs out = selftest_outputs(c, 0.0);
  out.erase("idx");
  return out;
}
EFFATTN_GOLDEN_HANDLER(selftest_throws) { throw Error(c.name + ": deliberately broken"); }
// Two op names sharing one function, as causal_conv1d / causal_conv1d_update will.
GoldenOutputs selftest_shared(const GoldenCase& c) { return selftest_outputs(c, 0.0); }
const bool kSharedA = register_golden_handler("selftest_shared_a", &selftest_shared);
const bool kSharedB = register_golden_handler("selftest_shared_b", &selftest_shared);

TEST(GoldenCase, Accessors) {
  TempDir tmp;
  write_case(tmp.file(""), "c1", "selftest_ok");
  const GoldenCase c = load_golden_case(tmp.file(""), "c1");
  EXPECT_EQ(c.op, "selftest_ok");
  EXPECT_TRUE(c.has("x"));
  EXPECT_FALSE(c.has("initial_state"));
  EXPECT_TRUE(c.expects("idx"));
  EXPECT_EQ(c.in("x")(1, 2), 5.f);
  EXPECT_EQ(c.in_i32("x")(1, 2), 5);
  EXPECT_EQ(c.output_shape("idx"), Shape({3}));
  EXPECT_EQ(c.param_double("scale", 1.0), 0.5);
  EXPECT_EQ(c.param_double("missing", 1.25), 1.25);
  EXPECT_EQ(c.param_int("G", 4), 4);  // null -> default
  EXPECT_FALSE(c.has_param("G"));
  EXPECT_TRUE(c.has_param("N"));
  EXPECT_EQ(c.param_int("N", 0), 3);
  EXPECT_TRUE(c.param_bool("causal", false));
  EXPECT_EQ(c.param_str("kind", ""), "mixtral");
  EXPECT_THROW(c.param_bool("kind", false), Error);
  EXPECT_THROW(c.in("initial_state"), Error);
}

TEST(GoldenCase, InputShapeIsCheckedAgainstMeta) {
  TempDir tmp;
  write_case(tmp.file(""), "c1", "selftest_ok");
  save_npy(tmp.file("c1/x.npy"), Tensor<float>({3, 2}));
  const GoldenCase c = load_golden_case(tmp.file(""), "c1");
  EXPECT_THROW(c.in("x"), Error);
}

TEST(Registry, RegisterAndFind) {
  EXPECT_TRUE(kSharedA);
  EXPECT_TRUE(kSharedB);
  EXPECT_NE(find_golden_handler("selftest_ok"), nullptr);
  EXPECT_NE(find_golden_handler("selftest_shared_b"), nullptr);
  EXPECT_EQ(find_golden_handler("no_such_op"), nullptr);
}

// The last line of the runner's output.
std::string last_line(const std::string& s) {
  std::string t = s;
  if (!t.empty() && t.back() == '\n') t.pop_back();
  return t.substr(t.rfind('\n') == std::string::npos ? 0 : t.rfind('\n') + 1);
}

TEST(Runner, PassFailSkipAndSummary) {
  TempDir tmp;
  const std::string root = tmp.file("");
  write_case(root, "a_ok", "selftest_ok");
  write_case(root, "b_off", "selftest_off");
  write_case(root, "c_missing", "selftest_missing");
  write_case(root, "d_throws", "selftest_throws");
  write_case(root, "e_skip", "no_handler_op");
  write_case(root, "f_shared", "selftest_shared_b");
  std::ostringstream out;
  const int rc = run_golden(root, "", out);
  const std::string s = out.str();
  EXPECT_EQ(rc, 1) << s;
  EXPECT_NE(s.find("PASS a_ok 0.000e+00 0.000e+00"), std::string::npos) << s;
  EXPECT_NE(s.find("FAIL b_off "), std::string::npos) << s;
  EXPECT_NE(s.find("output y"), std::string::npos) << s;
  EXPECT_NE(s.find("FAIL c_missing "), std::string::npos) << s;
  EXPECT_NE(s.find("missing output idx"), std::string::npos) << s;
  EXPECT_NE(s.find("FAIL d_throws (handler threw: d_throws: deliberately broken)"),
            std::string::npos)
      << s;
  EXPECT_NE(s.find("SKIP e_skip (op 'no_handler_op' has no handler)"), std::string::npos) << s;
  EXPECT_NE(s.find("PASS f_shared "), std::string::npos) << s;
  EXPECT_EQ(last_line(s), "2 passed, 3 failed, 1 skipped") << s;

  std::ostringstream only_ok;
  EXPECT_EQ(run_golden(root, "a_ok", only_ok), 0) << only_ok.str();
  EXPECT_EQ(last_line(only_ok.str()), "1 passed, 0 failed, 0 skipped");

  std::ostringstream only_skip;
  EXPECT_EQ(run_golden(root, "e_skip", only_skip), 0) << only_skip.str();
  EXPECT_EQ(last_line(only_skip.str()), "0 passed, 0 failed, 1 skipped");
}

TEST(Runner, IndexJsonOrderAndWrongIntegerOutput) {
  TempDir tmp;
  const std::string root = tmp.file("");
  write_case(root, "z_first", "selftest_ok");
  write_case(root, "a_second", "selftest_ok");
  // Corrupt one expected index: integer outputs compare exactly.
  Tensor<int32_t> idx({3});
  idx(0) = 2;
  idx(1) = 1;
  idx(2) = 1;
  save_npy(root + "/a_second/idx.npy", idx);
  std::ofstream(root + "/index.json") << R"({"cases": [{"case": "z_first", "op": "selftest_ok"},
                                                      {"case": "a_second", "op": "selftest_ok"}]})";
  std::ostringstream out;
  EXPECT_EQ(run_golden(root, "", out), 1);
  const std::string s = out.str();
  EXPECT_LT(s.find("PASS z_first"), s.find("FAIL a_second")) << s;
  EXPECT_NE(s.find("output idx: 1/3 integers differ"), std::string::npos) << s;
}

TEST(Runner, NoCasesIsAnError) {
  TempDir tmp;
  std::ostringstream empty;
  EXPECT_NE(run_golden(tmp.file(""), "", empty), 0);
  EXPECT_EQ(last_line(empty.str()), "0 passed, 0 failed, 0 skipped");
  std::ostringstream missing;
  EXPECT_NE(run_golden(tmp.file("nope"), "", missing), 0);
  write_case(tmp.file(""), "a", "selftest_ok");
  std::ostringstream filtered;
  EXPECT_NE(run_golden(tmp.file(""), "zzz", filtered), 0);
}

}  // namespace
