// Micro-benchmark of the bf16 GEMM candidates (gemm_bench.cpp).
#pragma once

#include <cstdint>
#include <string>

namespace rnnfast::cpu {

struct GemmTiming {
  double seconds = 0;    // per call, single thread
  double max_error = 0;  // max |C - C_fp32| / max |C_fp32|
  std::string variant;   // which code ran
};

// C[M,N] (fp32) = A[M,K] @ B[K,N] (bf16, random), `reps` timed calls of
// impl "rnnfast" (own packed kernel of the chosen instruction set) or
// "brgemm" (at::native::cpublas::brgemm).
GemmTiming time_bf16_gemm(const std::string& impl, int64_t M, int64_t N, int64_t K, int64_t reps);

}  // namespace rnnfast::cpu
