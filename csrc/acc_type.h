// The accumulation type A of a storage type S (flashrnn's "dtype per role"):
// float for the 16-bit types (GEMM sums, gate math, cell state, gradient sums
// in fp32), S itself for float and double. Shared by the CPU kernels and the
// GPU path; host and device code.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace rnnfast {

template <typename S>
struct AccType {
  using type = S;
};
template <>
struct AccType<c10::BFloat16> {
  using type = float;
};
template <>
struct AccType<c10::Half> {
  using type = float;
};
template <typename S>
using acc_t = typename AccType<S>::type;

}  // namespace rnnfast
