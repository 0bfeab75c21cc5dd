// Argument checks that need no torch header (the stable ABI's side, issue 16):
// RNNFAST_CHECK(cond, parts...) throws std::runtime_error (RuntimeError in
// Python) whose message is the parts concatenated, nothing else. The parts are
// strings: integers go through std::to_string first (on one GPU machine's
// toolchain, formatting an integer into a TORCH_CHECK message crashed).
#pragma once

#include <stdexcept>
#include <string>

namespace rnnfast::detail {

template <class... Parts>
[[noreturn]] void check_failed(const Parts&... parts) {
  std::string message;
  ((message += parts), ...);
  throw std::runtime_error(message);
}

}  // namespace rnnfast::detail

#define RNNFAST_CHECK(cond, ...)                                       \
  do {                                                                 \
    if (__builtin_expect(!(cond), 0)) ::rnnfast::detail::check_failed(__VA_ARGS__); \
  } while (0)
