// Golden-vector runner API: the case type handlers read, the handler registry, the output
// comparison and the runner loop that effattn_golden's main() calls.
//
// A case is a directory <golden>/<case>/ with meta.json and one .npy per input and expected
// output (see tests/data/golden/README.md). Each op family registers one handler per op name
// in its own tests/golden/golden_<family>.cpp:
//
//   EFFATTN_GOLDEN_HANDLER(sdpa) {
//     const Tensor<float> q = c.in("q");  // [B, Tq, Hq, Dk], shape checked against meta.json
//     ...
//     return {{"o", to_double(o)}, {"lse", to_double(lse)}};
//   }
//
// The handler returns every expected output by name, as double; integer outputs (topk_idx)
// hold integer values and are compared exactly.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "effattn/core/error.hpp"
#include "effattn/core/tensor.hpp"
#include "effattn/io/npy.hpp"

namespace effattn::golden {

using json = nlohmann::json;

// One golden case: its name (directory name), op, directory and parsed meta.json.
struct GoldenCase {
  std::string name, op, dir;
  json meta;

  // meta["params"], or an empty object.
  const json& params() const {
    static const json kEmpty = json::object();
    auto it = meta.find("params");
    return it != meta.end() && it->is_object() ? *it : kEmpty;
  }

  // Optional inputs (initial_state, bias, D, z, ...) are simply absent from meta "inputs".
  bool has(const std::string& input) const { return find_entry("inputs", input) != nullptr; }
  // Whether meta lists `output` among the expected outputs.
  bool expects(const std::string& output) const {
    return find_entry("expected_outputs", output) != nullptr;
  }

  std::string input_path(const std::string& input) const {
    return dir + "/" + entry("inputs", input).at("file").get<std::string>();
  }
  // The shape meta.json gives for an input / expected output (e.g. to size a handler's output).
  Shape input_shape(const std::string& input) const { return meta_shape("inputs", input); }
  Shape output_shape(const std::string& output) const {
    return meta_shape("expected_outputs", output);
  }

  // Loads an input, converted to float / int32, and checks its shape against meta.json.
  Tensor<float> in(const std::string& input) const { return load<float>(input); }
  Tensor<int32_t> in_i32(const std::string& input) const { return load<int32_t>(input); }
  Tensor<double> in_f64(const std::string& input) const { return load<double>(input); }

  // A param that is present and not null.
  bool has_param(const std::string& key) const {
    auto it = params().find(key);
    return it != params().end() && !it->is_null();
  }
  // Typed params; a missing or null param gives `def`, a wrongly typed one throws.
  double param_double(const std::string& key, double def) const {
    return param_or<double>(key, def);
  }
  int64_t param_int(const std::string& key, int64_t def) const {
    return param_or<int64_t>(key, def);
  }
  bool param_bool(const std::string& key, bool def) const { return param_or<bool>(key, def); }
  std::string param_str(const std::string& key, const std::string& def) const {
    return param_or<std::string>(key, def);
  }

 private:
  const json* find_entry(const char* section, const std::string& key) const {
    auto s = meta.find(section);
    if (s == meta.end() || !s->is_object()) return nullptr;
    auto it = s->find(key);
    return it == s->end() ? nullptr : &*it;
  }
  const json& entry(const char* section, const std::string& key) const {
    const json* e = find_entry(section, key);
    check(e != nullptr, name, ": meta.json has no ", section, " entry '", key, "'");
    return *e;
  }
  Shape meta_shape(const char* section, const std::string& key) const {
    const json& e = entry(section, key);
    check(e.contains("shape") && e["shape"].is_array(), name, ": ", section, " '", key,
          "' has no shape in meta.json");
    return Shape(e["shape"].get<std::vector<int64_t>>());
  }
  template <class T>
  Tensor<T> load(const std::string& input) const {
    Tensor<T> t = io::load_npy<T>(input_path(input));
    const Shape want = input_shape(input);
    check(t.shape() == want, name, ": input '", input, "' has shape ", t.shape().str(),
          " on disk, meta.json says ", want.str());
    return t;
  }
  template <class T>
  T param_or(const std::string& key, const T& def) const {
    auto it = params().find(key);
    if (it == params().end() || it->is_null()) return def;
    try {
      return it->get<T>();
    } catch (const json::exception& e) {
      throw Error(effattn::detail::concat(name, ": param '", key, "' = ", it->dump(),
                                          " has the wrong type (", e.what(), ")"));
    }
  }
};

// Outputs by expected-output name.
using GoldenOutputs = std::map<std::string, Tensor<double>>;
using GoldenHandler = std::function<GoldenOutputs(const GoldenCase&)>;

// A contiguous double copy of any tensor or view, for a handler's outputs.
template <class T>
Tensor<double> to_double(const TensorView<T>& v) {
  return Tensor<double>::from(v);
}
template <class T>
Tensor<double> to_double(const Tensor<T>& t) {
  return Tensor<double>::from(t.view());
}

namespace detail {
// Function-local statics: registrations run during static initialisation of other TUs, in an
// unspecified order, so the map must exist on first use.
inline std::map<std::string, GoldenHandler>& handler_registry() {
  static std::map<std::string, GoldenHandler> registry;
  return registry;
}
inline std::vector<std::string>& duplicate_registrations() {
  static std::vector<std::string> dups;
  return dups;
}
}  // namespace detail

// Registers the handler for `op`. Returns false (and records the clash, which makes the runner
// fail) if `op` already has one: throwing here would abort during static initialisation.
inline bool register_golden_handler(const std::string& op, GoldenHandler handler) {
  const bool inserted = detail::handler_registry().emplace(op, std::move(handler)).second;
  if (!inserted) detail::duplicate_registrations().push_back(op);
  return inserted;
}

// The handler for `op`, or nullptr.
inline const GoldenHandler* find_golden_handler(const std::string& op) {
  const auto& reg = detail::handler_registry();
  auto it = reg.find(op);
  return it == reg.end() ? nullptr : &it->second;
}

#define EFFATTN_GOLDEN_CAT_IMPL(a, b) a##b
#define EFFATTN_GOLDEN_CAT(a, b) EFFATTN_GOLDEN_CAT_IMPL(a, b)
// Defines and registers the handler for op `op_name` (an identifier, the meta.json "op").
// The body that follows sees the case as `c` and returns GoldenOutputs.
#define EFFATTN_GOLDEN_HANDLER(op_name)                                                        \
  static ::effattn::golden::GoldenOutputs EFFATTN_GOLDEN_CAT(                                  \
      effattn_golden_run_, op_name)(const ::effattn::golden::GoldenCase& c);                   \
  [[maybe_unused]] static const bool EFFATTN_GOLDEN_CAT(effattn_golden_registered_, op_name) = \
      ::effattn::golden::register_golden_handler(                                              \
          #op_name, &EFFATTN_GOLDEN_CAT(effattn_golden_run_, op_name));                        \
  static ::effattn::golden::GoldenOutputs EFFATTN_GOLDEN_CAT(                                  \
      effattn_golden_run_, op_name)([[maybe_unused]] const ::effattn::golden::GoldenCase& c)

// ---------------------------------------------------------------------------------------------
// Comparison.

struct CompareResult {
  bool ok = true;
  std::string message;       // why it failed (empty when ok)
  double max_abs_err = 0;    // max |got - expected|
  double max_rel_err = 0;    // max_abs_err / max|expected|: scale-aware, not blown up by zeros
  double max_tol_ratio = 0;  // max |got - expected| / (atol + rtol |expected|); <= 1 passes
  int64_t worst_index = -1;  // flat C-order index of the worst element (first NaN if any)
  double worst_got = 0, worst_expected = 0;
  int64_t num_bad = 0;  // elements outside tolerance (or NaN, or unequal integers)
};

// "[1, 37, 2, 5]" for a flat index into `shape`.
inline std::string unravel_index(const Shape& shape, int64_t flat) {
  std::vector<int64_t> ix(static_cast<std::size_t>(shape.ndim()));
  for (int d = shape.ndim() - 1; d >= 0; --d) {
    const int64_t n = std::max<int64_t>(shape[d], 1);
    ix[static_cast<std::size_t>(d)] = flat % n;
    flat /= n;
  }
  std::string s = "[";
  for (std::size_t d = 0; d < ix.size(); ++d) s += (d ? ", " : "") + std::to_string(ix[d]);
  return s + "]";
}

// Elementwise |got - expected| <= atol + rtol |expected|; with `integer`, got == expected
// exactly. A NaN or infinity in got always fails (unless expected holds the same infinity).
inline CompareResult compare_output(const Tensor<double>& got, const Tensor<double>& expected,
                                    bool integer, double rtol, double atol) {
  CompareResult r;
  if (got.shape() != expected.shape()) {
    r.ok = false;
    r.message = "shape " + got.shape().str() + " != expected " + expected.shape().str();
    return r;
  }
  const int64_t n = got.numel();
  const double* g = got.data();
  const double* e = expected.data();
  double max_abs_expected = 0;
  int64_t first_nan = -1;
  for (int64_t i = 0; i < n; ++i) {
    const double d = std::abs(g[i] - e[i]);
    bool bad;
    double ratio;
    if (std::isnan(g[i]) || std::isnan(e[i])) {
      bad = true;
      ratio = std::numeric_limits<double>::infinity();
      if (first_nan < 0) first_nan = i;
    } else if (std::isinf(g[i]) || std::isinf(e[i])) {
      bad = g[i] != e[i];
      ratio = bad ? std::numeric_limits<double>::infinity() : 0.0;
    } else if (integer) {
      bad = g[i] != e[i];
      ratio = bad ? std::numeric_limits<double>::infinity() : 0.0;
    } else {
      const double tol = atol + rtol * std::abs(e[i]);
      bad = !(d <= tol);
      ratio = tol > 0 ? d / tol : (d > 0 ? std::numeric_limits<double>::infinity() : 0.0);
    }
    if (bad) ++r.num_bad;
    if (std::isfinite(e[i])) max_abs_expected = std::max(max_abs_expected, std::abs(e[i]));
    if (!std::isnan(d)) r.max_abs_err = std::max(r.max_abs_err, d);
    if (r.worst_index < 0 || ratio > r.max_tol_ratio) {
      r.max_tol_ratio = ratio;
      r.worst_index = i;
    }
  }
  if (first_nan >= 0) {
    r.worst_index = first_nan;
    r.max_abs_err = std::numeric_limits<double>::quiet_NaN();
  }
  if (n > 0) {
    r.worst_got = g[r.worst_index];
    r.worst_expected = e[r.worst_index];
  }
  r.max_rel_err = r.max_abs_err / std::max(max_abs_expected, std::numeric_limits<double>::min());
  r.ok = r.num_bad == 0;
  if (!r.ok) {
    std::ostringstream os;
    os << std::setprecision(9);
    os << r.num_bad << "/" << n << (integer ? " integers differ" : " elements out of tolerance")
       << (first_nan >= 0 ? " (NaN)" : "") << ", worst at "
       << unravel_index(got.shape(), r.worst_index) << ": got " << r.worst_got << ", expected "
       << r.worst_expected;
    r.message = os.str();
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
// Runner.

struct RunSummary {
  int passed = 0, failed = 0, skipped = 0;
};

// Case directory names: index.json's "cases" (entries {"case": name, ...} or plain names), in
// index order; without index.json, every subdirectory holding a meta.json, sorted by name.
inline std::vector<std::string> list_golden_cases(const std::string& root) {
  namespace fs = std::filesystem;
  check(fs::is_directory(root), root, ": not a directory");
  std::vector<std::string> names;
  const fs::path index = fs::path(root) / "index.json";
  if (fs::exists(index)) {
    std::ifstream f(index);
    json j;
    try {
      f >> j;
    } catch (const json::exception& e) {
      throw Error(effattn::detail::concat(index.string(), ": ", e.what()));
    }
    check(j.contains("cases") && j["cases"].is_array(), index.string(), ": no 'cases' list");
    for (const json& c : j["cases"]) {
      if (c.is_string()) {
        names.push_back(c.get<std::string>());
      } else {
        check(c.is_object() && c.contains("case") && c["case"].is_string(), index.string(),
              ": bad cases entry ", c.dump());
        names.push_back(c["case"].get<std::string>());
      }
    }
  } else {
    for (const auto& ent : fs::directory_iterator(root)) {
      if (ent.is_directory() && fs::exists(ent.path() / "meta.json")) {
        names.push_back(ent.path().filename().string());
      }
    }
    std::sort(names.begin(), names.end());
  }
  return names;
}

inline GoldenCase load_golden_case(const std::string& root, const std::string& name) {
  GoldenCase c;
  c.name = name;
  c.dir = root + "/" + name;
  const std::string meta_path = c.dir + "/meta.json";
  std::ifstream f(meta_path);
  check(static_cast<bool>(f), meta_path, ": cannot open");
  try {
    f >> c.meta;
  } catch (const json::exception& e) {
    throw Error(effattn::detail::concat(meta_path, ": ", e.what()));
  }
  check(c.meta.contains("op") && c.meta["op"].is_string(), meta_path, ": no 'op'");
  c.op = c.meta["op"].get<std::string>();
  return c;
}

namespace detail {
inline std::string fmt_err(double v) {
  std::ostringstream os;
  os << std::setprecision(3) << std::scientific << v;
  return os.str();
}
}  // namespace detail

// Runs one case; prints
//   PASS <name> <max_abs_err> <max_rel_err> err/tol=<r> worst=<output>[<index>]
// or "FAIL <name> ..." with the same numbers followed by "; <reason>" per failed output, or
// "SKIP <name> (...)". max_rel_err is max|got - exp| / max|exp| per output; err/tol is the
// largest |got - exp| / (atol + rtol |exp|), which must stay <= 1. Numbers are maxima over the
// case's outputs. Returns +1 pass, 0 skip, -1 fail.
inline int run_golden_case(const std::string& root, const std::string& name, std::ostream& out) {
  GoldenCase c;
  try {
    c = load_golden_case(root, name);
  } catch (const std::exception& e) {
    out << "FAIL " << name << " (cannot load case: " << e.what() << ")\n";
    return -1;
  }
  const GoldenHandler* handler = find_golden_handler(c.op);
  if (handler == nullptr) {
    out << "SKIP " << name << " (op '" << c.op << "' has no handler)\n";
    return 0;
  }

  double rtol = 1e-4, atol = 1e-5;  // README section 4 baseline, if the case gives none
  const json& tol = c.meta.value("recommended_tolerance_float32", json::object());
  if (tol.is_object()) {
    rtol = tol.value("rtol", rtol);
    atol = tol.value("atol", atol);
  }

  GoldenOutputs got;
  try {
    got = (*handler)(c);
  } catch (const std::exception& e) {
    out << "FAIL " << name << " (handler threw: " << e.what() << ")\n";
    return -1;
  }

  double max_abs = 0, max_rel = 0, max_ratio = 0;
  std::string worst_output;
  std::vector<std::string> failures;
  const json& outputs = c.meta.value("expected_outputs", json::object());
  if (!outputs.is_object() || outputs.empty()) failures.push_back("meta.json lists no outputs");
  for (auto it = outputs.begin(); outputs.is_object() && it != outputs.end(); ++it) {
    const std::string& o = it.key();
    auto g = got.find(o);
    if (g == got.end()) {
      failures.push_back("missing output " + o);
      continue;
    }
    try {
      const std::string path = c.dir + "/" + it.value().at("file").get<std::string>();
      const io::NpyArray arr = io::read_npy(path);
      const Tensor<double> expected = io::to_tensor<double>(arr, path);
      if (it.value().contains("shape")) {
        const Shape meta_shape(it.value()["shape"].get<std::vector<int64_t>>());
        check(meta_shape == expected.shape(), path, ": shape ", expected.shape().str(),
              " != meta.json ", meta_shape.str());
      }
      const CompareResult r = compare_output(g->second, expected, arr.is_integer(), rtol, atol);
      if (!r.ok) failures.push_back("output " + o + ": " + r.message);
      if (std::isnan(r.max_abs_err) || r.max_abs_err > max_abs) max_abs = r.max_abs_err;
      if (std::isnan(r.max_rel_err) || r.max_rel_err > max_rel) max_rel = r.max_rel_err;
      if (r.max_tol_ratio > max_ratio || worst_output.empty()) {
        max_ratio = std::max(max_ratio, r.max_tol_ratio);
        worst_output = o + unravel_index(expected.shape(), std::max<int64_t>(r.worst_index, 0));
      }
    } catch (const std::exception& e) {
      failures.push_back("output " + o + ": " + e.what());
    }
  }

  std::string stats = detail::fmt_err(max_abs) + " " + detail::fmt_err(max_rel) +
                      " err/tol=" + detail::fmt_err(max_ratio);
  if (max_ratio > 0 && !worst_output.empty()) stats += " worst=" + worst_output;
  if (failures.empty()) {
    out << "PASS " << name << " " << stats << "\n";
    return 1;
  }
  out << "FAIL " << name << " " << stats;
  for (const std::string& f : failures) out << "; " << f;
  out << "\n";
  return -1;
}

// Runs every case whose name contains `filter` and prints "N passed, M failed, K skipped".
// Returns the process exit code: 0 iff nothing failed and at least one case was found.
inline int run_golden(const std::string& root, const std::string& filter, std::ostream& out) {
  RunSummary s;
  std::vector<std::string> names;
  try {
    names = list_golden_cases(root);
  } catch (const std::exception& e) {
    out << "error: " << e.what() << "\n";
  }
  int matched = 0;
  for (const std::string& name : names) {
    if (name.find(filter) == std::string::npos) continue;
    ++matched;
    const int r = run_golden_case(root, name, out);
    if (r > 0) ++s.passed;
    if (r < 0) ++s.failed;
    if (r == 0) ++s.skipped;
  }
  for (const std::string& op : detail::duplicate_registrations()) {
    out << "error: op '" << op << "' has more than one registered handler\n";
  }
  if (matched == 0) {
    out << "error: no cases in " << root << (filter.empty() ? "" : " matching '" + filter + "'")
        << "\n";
  }
  out << s.passed << " passed, " << s.failed << " failed, " << s.skipped << " skipped\n";
  return matched == 0 || s.failed > 0 || !detail::duplicate_registrations().empty() ? 1 : 0;
}

}  // namespace effattn::golden
