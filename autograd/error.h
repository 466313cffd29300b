// Misuse checks: every failure throws autograd::Error naming the op and the shapes involved.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace autograd {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail {
inline void append(std::ostringstream&) {}
template <class T, class... R>
void append(std::ostringstream& os, const T& v, const R&... rest) {
  os << v;
  append(os, rest...);
}
}  // namespace detail

// Builds a message from any streamable pieces: fail("matmul: ", a.shape(), " vs ", b.shape()).
template <class... A>
[[noreturn]] void fail(const A&... parts) {
  std::ostringstream os;
  detail::append(os, parts...);
  throw Error(os.str());
}

}  // namespace autograd

// BN_CHECK(cond, "op", pieces...) throws "op: pieces" when cond is false.
#define BN_CHECK(cond, op, ...)                           \
  do {                                                    \
    if (!(cond)) ::autograd::fail(op, ": ", __VA_ARGS__); \
  } while (0)
