// effattn::Error and the argument checks every op runs before it touches memory.
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace effattn {

// Every bad argument raises this. Messages name the argument, its shape and what was expected,
// e.g. "attention: k has shape [2, 37, 3, 16], expected [B, Tk, Hkv, K] = [2, *, 3, 32]".
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {

template <class... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

}  // namespace detail

// Throws effattn::Error with the concatenation of the arguments when `cond` is false.
template <class... Args>
inline void check(bool cond, Args&&... args) {
  if (!cond) throw Error(detail::concat(std::forward<Args>(args)...));
}

}  // namespace effattn
