// Argument checks that need no torch header (the stable ABI's side, issue 16):
// RNNFAST_CHECK(cond, parts...) throws std::runtime_error (RuntimeError in
// Python) whose message is the parts concatenated, nothing else. The parts are
// strings: integers go through std::to_string first (on one GPU machine's
// toolchain, formatting an integer into a TORCH_CHECK message crashed).
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>

namespace rnnfast::detail {

template <class... Parts>
[[noreturn]] void check_failed(const Parts&... parts) {
  // An integer part would be appended as one char: std::to_string it first.
  static_assert((std::is_convertible_v<const Parts&, std::string_view> && ...),
                "RNNFAST_CHECK message parts must be strings");
  std::string message;
  ((message += parts), ...);
  throw std::runtime_error(message);
}

}  // namespace rnnfast::detail

#define RNNFAST_CHECK(cond, ...)                                       \
  do {                                                                 \
    if (__builtin_expect(!(cond), 0)) ::rnnfast::detail::check_failed(__VA_ARGS__); \
  } while (0)
