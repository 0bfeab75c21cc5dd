#include "gemm.h"

#include <atomic>

#include "kernels.h"

// MKL's Fortran-interface GEMMs, as exported by libtorch_cpu on x86. Weak, so
// the extension still loads against a torch without them (null pointers).
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc) __attribute__((weak));
}

namespace rnnfast::cpu {
namespace {

std::atomic<bool> g_use_blas{true};

bool have_blas() { return sgemm_ != nullptr && dgemm_ != nullptr; }

// Row-major C = A B is column-major C^T = B^T A^T: swap the operands.
void blas_gemm(int m, int n, int k, const float* A, int lda, const float* B, int ldb, float beta,
               float* C, int ldc) {
  const float one = 1.f;
  sgemm_("N", "N", &n, &m, &k, &one, B, &ldb, A, &lda, &beta, C, &ldc);
}
void blas_gemm(int m, int n, int k, const double* A, int lda, const double* B, int ldb,
               double beta, double* C, int ldc) {
  const double one = 1.0;
  dgemm_("N", "N", &n, &m, &k, &one, B, &ldb, A, &lda, &beta, C, &ldc);
}

}  // namespace

int64_t small_gemm_rows() { return 4; }

template <typename T>
void step_gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B,
               int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K == 0) {
    // BLAS semantics: C = beta*C (nothing to multiply).
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
    return;
  }
  if (M > small_gemm_rows() && have_blas() && g_use_blas.load(std::memory_order_relaxed)) {
    // Sizes were checked to be < 2^31 by check_forward_args.
    blas_gemm(static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), A,
              static_cast<int>(lda), B, static_cast<int>(ldb), beta, C, static_cast<int>(ldc));
    return;
  }
  kernels<T>().gemm(M, N, K, A, lda, B, ldb, beta, C, ldc);
}

template void step_gemm<float>(int64_t, int64_t, int64_t, const float*, int64_t, const float*,
                               int64_t, float, float*, int64_t);
template void step_gemm<double>(int64_t, int64_t, int64_t, const double*, int64_t, const double*,
                                int64_t, double, double*, int64_t);

const char* step_gemm_backend() {
  return have_blas() && g_use_blas.load() ? "mkl" : "rnnfast";
}

void set_step_gemm_use_blas(bool use_blas) { g_use_blas.store(use_blas); }

}  // namespace rnnfast::cpu
