// The accumulation type A of a storage type S (flashrnn's "dtype per role"):
// float for the 16-bit types (GEMM sums, gate math, cell state, gradient sums
// in fp32), S itself for float and double. Shared by the CPU kernels and the
// GPU path; host and device code.
#pragma once

// torch's header-only 16-bit types (c10::BFloat16, c10::Half): stable-ABI
// headers, which pull in no ATen vector code (c10/util/Half.h would, in the
// AVX2 and AVX-512 builds).
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

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
