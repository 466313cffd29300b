// Test helper: the message of the exception a callable throws, or "(no error)".
#pragma once
#include <exception>
#include <functional>
#include <string>

namespace testdata {

inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace testdata
