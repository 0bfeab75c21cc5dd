// GEMMs of the time loop: one thread's share of a per-step product, called
// inside the parallel region (cpu/recurrent_cpu.cpp), so it must not allocate,
// throw or start threads of its own.
//
// Large row counts go to MKL's sgemm/dgemm, which the x86 torch wheel exports
// (called from inside an OpenMP parallel region, MKL runs single-threaded).
// Small row counts, and builds without MKL, use rnnfast's own register-tiled
// kernel: at batch 1-4 a BLAS call costs more than the arithmetic.
#pragma once

#include <cstdint>

namespace rnnfast::cpu {

// Row-major C[M,N] = A[M,K] @ B[K,N] + beta*C.
template <typename T>
void step_gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B,
               int64_t ldb, T beta, T* C, int64_t ldc);

// "mkl" when MKL's GEMM was found at load time, else "rnnfast".
const char* step_gemm_backend();
// Tests: force rnnfast's kernel for every size (false) or restore the default.
void set_step_gemm_use_blas(bool use_blas);
// Row count at or below which rnnfast's own kernel is used.
int64_t small_gemm_rows();

}  // namespace rnnfast::cpu
