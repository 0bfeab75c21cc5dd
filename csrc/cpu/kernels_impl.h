// Bodies of the per-instruction-set CPU kernels declared in cpu/kernels.h.
//
// Included once by each cpu/kernels_<isa>.cpp, which is compiled with that
// instruction set's flags and CPU_CAPABILITY=<ISA>. at::vec puts Vectorized<T>
// into the inline namespace at::vec::CPU_CAPABILITY, and this file puts the
// kernels into rnnfast::cpu::CPU_CAPABILITY, so the builds never share a
// symbol. Keep this file free of anything that could emit out-of-line code
// shared with other translation units (no std::string, no exceptions).
#pragma once

#ifndef CPU_CAPABILITY
#error "kernels_impl.h must be included from a kernels_<isa>.cpp compiled with CPU_CAPABILITY set"
#endif

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <type_traits>

#include "../cell_math.h"
#include "kernels.h"

namespace rnnfast::cpu::CPU_CAPABILITY {

using at::vec::Vectorized;

// float exp, sigmoid and tanh for the AVX2/AVX-512 builds, inlined. The
// library versions (Sleef, behind at::vec) are out-of-line calls, and around
// each call the compiler spills the live vector registers of the fused gate
// loop: the inline versions make that loop ~2.5x faster. Accuracy, checked in
// tests/cpp/test_cpu_kernels.cpp against double precision: a few ulp.
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#define RNNFAST_INLINE_FLOAT_MATH 1

// exp(x): x = n*ln2 + r with |r| <= ln2/2 (Cody-Waite split of ln2), exp(r)
// by its degree-7 Taylor polynomial (truncation < 5e-9), times 2^n. Inputs are
// clamped: below to where 2^n is a normal float (exp saturates at ~1e-38),
// above to 89, where 2^n (n = 128) overflows to +inf. That overflow matters:
// sigmoid(x) = 1/(1 + exp(-x)) must be exactly 0 for x = -inf, as torch's is,
// or its derivative s(1-s) is a denormal and an infinite input times it gives
// inf instead of torch's NaN (0 * inf) in the weight gradients.
inline Vectorized<float> exp_inline(Vectorized<float> x) {
  using V = Vectorized<float>;
  x = at::vec::minimum(at::vec::maximum(x, V(-87.3f)), V(89.0f));
  const V n = (x * V(1.44269504088896341f)).round();
  V r = at::vec::fmadd(n, V(-0.693359375f), x);
  r = at::vec::fmadd(n, V(2.12194440e-4f), r);
  V p = V(1.f / 5040.f);
  p = at::vec::fmadd(p, r, V(1.f / 720.f));
  p = at::vec::fmadd(p, r, V(1.f / 120.f));
  p = at::vec::fmadd(p, r, V(1.f / 24.f));
  p = at::vec::fmadd(p, r, V(1.f / 6.f));
  p = at::vec::fmadd(p, r, V(0.5f));
  p = at::vec::fmadd(p, r, V(1.f));
  p = at::vec::fmadd(p, r, V(1.f));
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_scalef_ps(p, n);
#else
  const __m256i bits = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return p * V(_mm256_castsi256_ps(bits));
#endif
}

// tanh(x): an odd polynomial fitted for relative error on |x| < 0.625 (1.3
// ulp), 1 - 2/(exp(2|x|) + 1) with x's sign beyond (no cancellation there).
inline Vectorized<float> tanh_inline(Vectorized<float> x) {
  using V = Vectorized<float>;
  const V ax = x.abs();
  const V x2 = x * x;
  V p = V(0.0021286187693476677f);
  p = at::vec::fmadd(p, x2, V(-0.008159236051142216f));
  p = at::vec::fmadd(p, x2, V(0.02169187180697918f));
  p = at::vec::fmadd(p, x2, V(-0.05394470691680908f));
  p = at::vec::fmadd(p, x2, V(0.13333183526992798f));
  p = at::vec::fmadd(p, x2, V(-0.333333283662796f));
  const V small = at::vec::fmadd(p * x2, x, x);
  const V large = V(1.f) - V(2.f) / (exp_inline(ax + ax) + V(1.f));
  const V signed_large = large | (x & V(-0.f));
  return V::blendv(signed_large, small, ax < V(0.625f));
}
#endif

// Math policy of cell_math.h for SIMD vectors; sigmoid is 1 / (1 + exp(-x)).
template <typename T>
struct VecMath {
  using V = Vectorized<T>;
  static V one() { return V(T(1)); }
  static V zero() { return V(T(0)); }
  static V exp(V x) {
#ifdef RNNFAST_INLINE_FLOAT_MATH
    if constexpr (std::is_same_v<T, float>) return exp_inline(x);
#endif
    return x.exp();
  }
  static V sigmoid(V x) { return one() / (one() + exp(x.neg())); }
  static V tanh(V x) {
#ifdef RNNFAST_INLINE_FLOAT_MATH
    if constexpr (std::is_same_v<T, float>) return tanh_inline(x);
#endif
    return x.tanh();
  }
  static V relu(V x) { return at::vec::maximum(x, zero()); }
  static V relu_backward(V y, V dh) { return V::blendv(dh, zero(), y <= zero()); }
};

template <typename T>
inline Vectorized<T> load(const T* p, int64_t n) {
  return n == Vectorized<T>::size() ? Vectorized<T>::loadu(p) : Vectorized<T>::loadu(p, n);
}

template <typename T>
inline void store(T* p, const Vectorized<T>& v, int64_t n) {
  if (n == Vectorized<T>::size()) {
    v.store(p);
  } else {
    v.store(p, static_cast<int>(n));
  }
}

// Calls f(u, n) for consecutive vectors covering [u0, u1): n lanes starting at
// unit u, the last vector possibly partial (masked loads and stores).
template <typename T, typename F>
inline void for_each_vector(int64_t u0, int64_t u1, F&& f) {
  constexpr int64_t W = Vectorized<T>::size();
  int64_t u = u0;
  for (; u + W <= u1; u += W) f(u, W);
  if (u < u1) f(u, u1 - u);
}

// ---------------------------------------------------------------------------
// GEMM of the time loop: C[M,N] = A[M,K] @ B[K,N] + beta*C, row-major, with B
// pre-packed into panels of kPanel columns (rows of a panel contiguous, the
// last panel zero-padded). The weights are packed once per call and then
// streamed sequentially every step; panels are the outer loop so one panel
// stays in cache while all row blocks of A pass over it. Register tile:
// kRows rows x kPanelVectors vectors; for one or two rows a second set of
// accumulators (even/odd k) hides the FMA latency.
// ---------------------------------------------------------------------------
#if defined(CPU_CAPABILITY_AVX2)
constexpr int kRows = 2;  // 16 vector registers
#else
constexpr int kRows = 4;  // 32 vector registers (AVX-512); the generic build is not tuned
#endif
constexpr int kPanelVectors = 4;

template <typename T>
constexpr int64_t panel_width() {
  return kPanelVectors * Vectorized<T>::size();
}

template <typename T>
int64_t packed_b_size(int64_t K, int64_t N) {
  const int64_t NR = panel_width<T>();
  return K * ((N + NR - 1) / NR) * NR;
}

template <typename T>
void pack_b(int64_t K, int64_t N, const T* src, int64_t k_stride, ColumnMap columns, T* Bp) {
  const int64_t NR = panel_width<T>();
  for (int64_t j0 = 0; j0 < N; j0 += NR) {
    T* panel = Bp + j0 * K;
    int64_t c = 0;
#ifdef RNNFAST_INLINE_FLOAT_MATH
    // Weights stored transposed (k contiguous, w_ih^T and w_hh^T): 16x16 blocks
    // through a register transpose instead of one scalar store per element.
    if constexpr (std::is_same_v<T, float>) {
      if (k_stride == 1) {
        for (; c + 16 <= NR && j0 + c + 16 <= N; c += 16) {
          const int64_t first = columns.offset(j0 + c);
          const int64_t stride = columns.col_stride;
          if (columns.offset(j0 + c + 15) - first != 15 * stride) break;  // crosses a block
          int64_t k = 0;
          for (; k + 16 <= K; k += 16)
            at::vec::transpose_mxn<float, 16, 16>(src + first + k, stride, panel + k * NR + c, NR);
          for (; k < K; ++k)
            for (int64_t q = 0; q < 16; ++q) panel[k * NR + c + q] = src[first + q * stride + k];
        }
      }
    }
#endif
    // Row-major weights (n contiguous, e.g. w_hh as B of dh = dG @ w_hh): the
    // panel's columns are one contiguous run of each row, copied row by row.
    const int64_t run = std::min(NR, N - j0);
    if (c == 0 && columns.col_stride == 1 && k_stride != 1 &&
        columns.offset(j0 + run - 1) - columns.offset(j0) == run - 1) {
      using V = Vectorized<T>;
      const T* first = src + columns.offset(j0);
      for (int64_t k = 0; k < K; ++k) {
        const T* row = first + k * k_stride;
        T* dst = panel + k * NR;
        for_each_vector<T>(0, NR, [&](int64_t q, int64_t n) {
          const int64_t valid = std::max<int64_t>(0, std::min<int64_t>(n, run - q));
          store(dst + q, valid == 0 ? V(T(0)) : load(row + q, valid), n);
        });
      }
      continue;
    }
    for (; c < NR; ++c) {
      if (j0 + c >= N) {  // zero padding of the last panel
        for (int64_t k = 0; k < K; ++k) panel[k * NR + c] = T(0);
        continue;
      }
      const T* col = src + columns.offset(j0 + c);
      for (int64_t k = 0; k < K; ++k) panel[k * NR + c] = col[k * k_stride];
    }
  }
}

template <typename T, int R>
inline void panel_tile(int64_t K, const T* A, int64_t lda, const T* panel, T beta, T* Cm,
                       int64_t ldc, int64_t ncols) {
  using V = Vectorized<T>;
  constexpr int64_t W = V::size();
  constexpr int C = kPanelVectors;
  constexpr int64_t NR = C * W;
  constexpr int S = R <= 2 ? 2 : 1;  // accumulator sets
  V acc[S][R][C];
  if (beta != T(0)) {
    // C is read and written after the k loop: fetch its lines (for writing)
    // now. In the time loop it is the step's pre-activations, written by the
    // chunk's projection many steps ago and out of the core's caches by now:
    // measured -3 % time of a T=100, B=64, H=512 LSTM inference.
    for (int r = 0; r < R; ++r)
      for (int64_t c = 0; c < NR * int64_t(sizeof(T)); c += 64)
        __builtin_prefetch(reinterpret_cast<const char*>(Cm + r * ldc) + c, 1, 3);
  }
  for (int q = 0; q < S; ++q)
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[q][r][c] = V(T(0));
  int64_t k = 0;
  for (; k + S <= K; k += S) {
    for (int q = 0; q < S; ++q) {
      const T* brow = panel + (k + q) * NR;
      V bv[C];
      for (int c = 0; c < C; ++c) bv[c] = V::loadu(brow + c * W);
      for (int r = 0; r < R; ++r) {
        const V av(A[r * lda + k + q]);
        for (int c = 0; c < C; ++c) acc[q][r][c] = at::vec::fmadd(av, bv[c], acc[q][r][c]);
      }
    }
  }
  for (; k < K; ++k) {
    const T* brow = panel + k * NR;
    for (int r = 0; r < R; ++r) {
      const V av(A[r * lda + k]);
      for (int c = 0; c < C; ++c)
        acc[0][r][c] = at::vec::fmadd(av, V::loadu(brow + c * W), acc[0][r][c]);
    }
  }
  for (int r = 0; r < R; ++r) {
    T* crow = Cm + r * ldc;
    for (int c = 0; c < C; ++c) {
      const int64_t n = std::min<int64_t>(W, ncols - c * W);
      if (n <= 0) break;
      V out = acc[0][r][c];
      if constexpr (S == 2) out = out + acc[1][r][c];
      if (beta != T(0)) out = at::vec::fmadd(V(beta), load(crow + c * W, n), out);
      store(crow + c * W, out, n);
    }
  }
}

// Rows of A are taken in blocks of about 256 KB, so that a block stays in the
// L2 cache while every panel of B passes over it.
template <typename T>
void gemm_packed(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* Bp, T beta,
                 T* Cm, int64_t ldc) {
  const int64_t NR = panel_width<T>();
  const int64_t block_rows = std::max<int64_t>(
      kRows, (int64_t(256 * 1024) / (sizeof(T) * std::max<int64_t>(K, 1))) / kRows * kRows);
  for (int64_t m0 = 0; m0 < M; m0 += block_rows) {
    const int64_t m1 = std::min(M, m0 + block_rows);
    for (int64_t j0 = 0; j0 < N; j0 += NR) {
      const T* panel = Bp + j0 * K;
      const int64_t ncols = std::min(NR, N - j0);
      int64_t m = m0;
      for (; m + kRows <= m1; m += kRows)
        panel_tile<T, kRows>(K, A + m * lda, lda, panel, beta, Cm + m * ldc + j0, ldc, ncols);
      const int64_t left = m1 - m;
      const T* a = A + m * lda;
      T* c = Cm + m * ldc + j0;
      if (left == 3) panel_tile<T, 3>(K, a, lda, panel, beta, c, ldc, ncols);
      if (left == 2) panel_tile<T, 2>(K, a, lda, panel, beta, c, ldc, ncols);
      if (left == 1) panel_tile<T, 1>(K, a, lda, panel, beta, c, ldc, ncols);
    }
  }
}

// C[M,N] = A[M,K] @ W[N,K]^T + beta*C with W's rows used as they are stored
// (k contiguous): a dot product per output. For calls too small to repay
// packing (a single time step of a small batch), where rows of the weights
// are read once.
#if defined(CPU_CAPABILITY_AVX512)
// Sums of 16 vectors, r[j] = sum of the lanes of a[j], by a tree of 128-bit
// lane shuffles and adds (30 shuffles, 15 adds, one permute): a horizontal
// sum per output would cost ~8 operations each, as much as the dot products
// of a short row.
inline __m512 sum_lanes_of_16(__m512 a[16]) {
  __m512 b[8], c[4], d[2];
  for (int i = 0; i < 8; ++i)  // lanes 0-1: a[2i] folded to 256 bits, lanes 2-3: a[2i+1]
    b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xEE));
  for (int i = 0; i < 4; ++i)  // 128-bit lane l: a[4i + l] folded to 128 bits
    c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xDD));
  for (int i = 0; i < 2; ++i)
    d[i] = _mm512_add_ps(_mm512_unpacklo_ps(c[2 * i], c[2 * i + 1]),
                         _mm512_unpackhi_ps(c[2 * i], c[2 * i + 1]));
  const __m512 e = _mm512_add_ps(
      _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(d[0]), _mm512_castps_pd(d[1]))),
      _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(d[0]), _mm512_castps_pd(d[1]))));
  // e[4l + j] = sum of a[4j + l]: transpose the 4x4 index.
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(order, e);
}

// 16 outputs of one row of A at a time: 16 accumulators (enough independent
// FMA chains), one tree reduction. The weights stream from L2 at close to its
// bandwidth, as the packed GEMM's do (measured 2x the 4-output loop at
// N=512, K=128).
inline int64_t gemm_direct_16(int64_t N, int64_t K, const float* a, const float* Wt, int64_t ldw,
                              float beta, float* c) {
  int64_t n0 = 0;
  for (; n0 + 16 <= N; n0 += 16) {
    __m512 acc[16];
    for (int j = 0; j < 16; ++j) acc[j] = _mm512_setzero_ps();
    const float* w = Wt + n0 * ldw;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
      const __m512 av = _mm512_loadu_ps(a + k);
      for (int j = 0; j < 16; ++j)
        acc[j] = _mm512_fmadd_ps(av, _mm512_loadu_ps(w + j * ldw + k), acc[j]);
    }
    if (k < K) {
      const __mmask16 mask = __mmask16((1u << (K - k)) - 1);
      const __m512 av = _mm512_maskz_loadu_ps(mask, a + k);
      for (int j = 0; j < 16; ++j)
        acc[j] = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(mask, w + j * ldw + k), acc[j]);
    }
    __m512 sums = sum_lanes_of_16(acc);
    if (beta != 0.f) sums = _mm512_fmadd_ps(_mm512_set1_ps(beta), _mm512_loadu_ps(c + n0), sums);
    _mm512_storeu_ps(c + n0, sums);
  }
  return n0;
}
#endif

template <typename T>
void gemm_direct(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* Wt,
                 int64_t ldw, T beta, T* Cm, int64_t ldc) {
  using V = Vectorized<T>;
  constexpr int J = 4;  // outputs at a time (independent accumulators)
  for (int64_t m = 0; m < M; ++m) {
    const T* a = A + m * lda;
    int64_t first = 0;  // outputs done by the 16-wide loop
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<T, float>) first = gemm_direct_16(N, K, a, Wt, ldw, beta, Cm + m * ldc);
#endif
    for (int64_t n0 = first; n0 < N; n0 += J) {
      const int64_t nj = std::min<int64_t>(J, N - n0);
      V acc[J];
      for (int j = 0; j < J; ++j) acc[j] = V(T(0));
      for_each_vector<T>(0, K, [&](int64_t k, int64_t n) {
        const V av = load(a + k, n);
        for (int j = 0; j < nj; ++j) acc[j] = at::vec::fmadd(av, load(Wt + (n0 + j) * ldw + k, n), acc[j]);
      });
      for (int j = 0; j < nj; ++j) {
        T dot = at::vec::vec_reduce_all<T>([](V& x, V& y) { return x + y; }, acc[j]);
        T* c = Cm + m * ldc + n0 + j;
        *c = beta == T(0) ? dot : dot + beta * *c;
      }
    }
  }
}

// C[M,N] = A[M,K] @ B[K,N] + beta*C reading B's rows where they are (ldb
// apart): an axpy of each B row per row of A, vectorized along N. For calls
// too small to repay packing (a single step of a small batch).
template <typename T>
void gemm_rows(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* Bm,
               int64_t ldb, T beta, T* Cm, int64_t ldc) {
  using V = Vectorized<T>;
  constexpr int64_t W = V::size();
  constexpr int C = kPanelVectors;
  for (int64_t m = 0; m < M; ++m) {
    const T* a = A + m * lda;
    T* c = Cm + m * ldc;
    for (int64_t n0 = 0; n0 < N; n0 += C * W) {
      V acc[C];
      for (int q = 0; q < C; ++q) acc[q] = V(T(0));
      if (n0 + C * W <= N) {
        for (int64_t k = 0; k < K; ++k) {
          const V av(a[k]);
          const T* b = Bm + k * ldb + n0;
          for (int q = 0; q < C; ++q) acc[q] = at::vec::fmadd(av, V::loadu(b + q * W), acc[q]);
        }
      } else {
        for (int64_t k = 0; k < K; ++k) {
          const V av(a[k]);
          const T* b = Bm + k * ldb + n0;
          for (int q = 0; q < C; ++q) {
            const int64_t n = std::min<int64_t>(W, N - n0 - q * W);
            if (n <= 0) break;
            acc[q] = at::vec::fmadd(av, load(b + q * W, n), acc[q]);
          }
        }
      }
      for (int q = 0; q < C; ++q) {
        const int64_t n = std::min<int64_t>(W, N - n0 - q * W);
        if (n <= 0) break;
        V out = acc[q];
        if (beta != T(0)) out = at::vec::fmadd(V(beta), load(c + n0 + q * W, n), out);
        store(c + n0 + q * W, out, n);
      }
    }
  }
}

// The machine's peak for this build, for reports (fraction of peak): 12
// independent chains of vector FMAs on registers, no memory traffic (enough
// chains to cover the FMA latency on two pipes). Returns a checksum (so the
// loop is kept) and the flops done in *flops.
template <typename T>
double fma_loop(int64_t iterations, double* flops) {
  using V = Vectorized<T>;
  constexpr int kChains = 12;
  V acc[kChains];
  for (int j = 0; j < kChains; ++j) acc[j] = V(T(1) + T(j) * T(1e-3));
  const V m(T(0.9999999)), a(T(1e-7));
  for (int64_t i = 0; i < iterations; ++i)
    for (int j = 0; j < kChains; ++j) acc[j] = at::vec::fmadd(acc[j], m, a);
  V sum = acc[0];
  for (int j = 1; j < kChains; ++j) sum = sum + acc[j];
  *flops = 2.0 * kChains * V::size() * double(iterations);
  return double(at::vec::vec_reduce_all<T>([](V& x, V& y) { return x + y; }, sum));
}

// dst[c, r] = src[r, c] for a [rows, cols] block: the weight gradients sum
// over rows, and the GEMM wants that sum along contiguous memory.
template <typename T>
void transpose(int64_t rows, int64_t cols, const T* src, int64_t lds, T* dst, int64_t ldd) {
  int64_t r0 = 0;
#ifdef RNNFAST_INLINE_FLOAT_MATH
  if constexpr (std::is_same_v<T, float>) {
    for (; r0 + 16 <= rows; r0 += 16) {
      int64_t c0 = 0;
      for (; c0 + 16 <= cols; c0 += 16)
        at::vec::transpose_mxn<float, 16, 16>(src + r0 * lds + c0, lds, dst + c0 * ldd + r0, ldd);
      for (; c0 < cols; ++c0)
        for (int64_t r = r0; r < r0 + 16; ++r) dst[c0 * ldd + r] = src[r * lds + c0];
    }
  }
#endif
  for (int64_t r = r0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
}

// Packs rows row_ptrs[0..K) (columns col0 .. col0+N of each) as B[K, N].
template <typename T>
void pack_b_rows(int64_t K, int64_t N, const T* const* row_ptrs, int64_t col0, T* Bp) {
  const int64_t NR = panel_width<T>();
  for (int64_t j0 = 0; j0 < N; j0 += NR) {
    const int64_t n = std::min(NR, N - j0);
    T* panel = Bp + j0 * K;
    for (int64_t k = 0; k < K; ++k) {
      const T* src = row_ptrs[k] + col0 + j0;
      T* dst = panel + k * NR;
      for (int64_t c = 0; c < n; ++c) dst[c] = src[c];
      for (int64_t c = n; c < NR; ++c) dst[c] = T(0);
    }
  }
}

// out[0..cols) += sum over rows of A[r, 0..cols), rows in order (deterministic).
template <typename T>
void add_column_sums(int64_t rows, int64_t cols, const T* A, int64_t lda, T* out) {
  for (int64_t r = 0; r < rows; ++r)
    for_each_vector<T>(0, cols, [&](int64_t c, int64_t n) {
      store(out + c, load(out + c, n) + load(A + r * lda + c, n), n);
    });
}

// ---------------------------------------------------------------------------
// Fused pointwise row kernels, one set per cell (see CellForwardRows and
// CellBackwardRows in kernels.h for the buffers): vector loops over the
// slice's units around the per-element math of cell_math.h.
// ---------------------------------------------------------------------------

// LSTM
template <typename T, bool Training>
void lstm_forward_rows(const CellForwardRows<T>& a) {
  using V = Vectorized<T>;
  const int64_t H = a.H;
  const int64_t nu = a.u1 - a.u0;
  for (int64_t b = 0; b < a.rows; ++b) {
    const T* pre = a.gx + b * a.ld_gx;
    T* c = a.c + b * a.ld_c;
    T* m = a.h + b * a.ld_h;
    for_each_vector<T>(a.u0, a.u1, [&](int64_t u, int64_t n) {
      const int64_t j = u - a.u0;
      const V ai = load(pre + j, n) + load(a.bias + u, n);
      const V af = load(pre + nu + j, n) + load(a.bias + H + u, n);
      const V ag = load(pre + 2 * nu + j, n) + load(a.bias + 2 * H + u, n);
      const V ao = load(pre + 3 * nu + j, n) + load(a.bias + 3 * H + u, n);
      LstmGates<V> g;
      V c_new, m_new;
      lstm_forward<VecMath<T>>(ai, af, ag, ao, load(c + u, n), g, c_new, m_new);
      store(c + u, c_new, n);
      store(m + u, m_new, n);
      if constexpr (Training) {
        T* gates = a.gates + b * a.ld_gates;
        store(gates + u, g.i, n);
        store(gates + H + u, g.f, n);
        store(gates + 2 * H + u, g.g, n);
        store(gates + 3 * H + u, g.o, n);
        store(a.saved + b * a.ld_saved + u, c_new, n);
      }
    });
  }
}

template <typename T>
void lstm_backward_rows(const CellBackwardRows<T>& a) {
  using V = Vectorized<T>;
  const int64_t H = a.H;
  for (int64_t b = 0; b < a.rows; ++b) {
    const T* gates = a.gates + b * a.ld_gates;
    const T* c = a.saved + b * a.ld_saved;
    const T* c_prev = a.prev.row(b);
    const T* dm_a = a.dh_a + b * a.ld_dh_a;
    const T* dm_b = a.dh_b ? a.dh_b + b * a.ld_dh_b : nullptr;
    T* dc = a.dc + b * a.ld_dc;
    T* dg = a.dg + b * a.ld_dg;
    for_each_vector<T>(a.u0, a.u1, [&](int64_t u, int64_t n) {
      const LstmGates<V> g{load(gates + u, n), load(gates + H + u, n), load(gates + 2 * H + u, n),
                           load(gates + 3 * H + u, n)};
      V dm = load(dm_a + u, n);
      if (dm_b) dm = dm + load(dm_b + u, n);
      V dai, daf, dag, dao, dc_prev;
      lstm_backward<VecMath<T>>(g, load(c + u, n), load(c_prev + u, n), dm, load(dc + u, n), dai,
                                daf, dag, dao, dc_prev);
      store(dg + u, dai, n);
      store(dg + H + u, daf, n);
      store(dg + 2 * H + u, dag, n);
      store(dg + 3 * H + u, dao, n);
      store(dc + u, dc_prev, n);
    });
  }
}

// GRU
template <typename T, bool Training>
void gru_forward_rows(const CellForwardRows<T>& a) {
  using V = Vectorized<T>;
  const int64_t H = a.H;
  const int64_t nu = a.u1 - a.u0;
  for (int64_t b = 0; b < a.rows; ++b) {
    const T* gx = a.gx + b * a.ld_gx;
    const T* gh = a.gh + b * a.ld_gh;
    const T* h_prev = a.h_prev.row(b);
    T* h = a.h + b * a.ld_h;
    for_each_vector<T>(a.u0, a.u1, [&](int64_t u, int64_t n) {
      const int64_t j = u - a.u0;
      const V ar = load(gx + j, n) + load(gh + j, n) + load(a.bias + u, n);
      const V az = load(gx + nu + j, n) + load(gh + nu + j, n) + load(a.bias + H + u, n);
      const V axn = load(gx + 2 * nu + j, n) + load(a.bias + 2 * H + u, n);
      const V hn = load(gh + 2 * nu + j, n) + load(a.bias_hn + u, n);
      GruGates<V> g;
      V h_new;
      gru_forward<VecMath<T>>(ar, az, axn, hn, load(h_prev + u, n), g, h_new);
      store(h + u, h_new, n);
      if constexpr (Training) {
        T* gates = a.gates + b * a.ld_gates;
        store(gates + u, g.r, n);
        store(gates + H + u, g.z, n);
        store(gates + 2 * H + u, g.n, n);
        store(a.saved + b * a.ld_saved + u, hn, n);
      }
    });
  }
}

template <typename T>
void gru_backward_rows(const CellBackwardRows<T>& a) {
  using V = Vectorized<T>;
  const int64_t H = a.H;
  for (int64_t b = 0; b < a.rows; ++b) {
    const T* gates = a.gates + b * a.ld_gates;
    const T* hn = a.saved + b * a.ld_saved;
    const T* h_prev = a.prev.row(b);
    const T* dy = a.dh_a + b * a.ld_dh_a;
    const T* dh = a.dh_b + b * a.ld_dh_b;
    T* dh_direct = a.dh_direct + b * a.ld_dh_direct;
    T* dgh = a.dg + b * a.ld_dg;
    T* dgxn = a.dgxn + b * a.ld_dgxn;
    for_each_vector<T>(a.u0, a.u1, [&](int64_t u, int64_t n) {
      const GruGates<V> g{load(gates + u, n), load(gates + H + u, n), load(gates + 2 * H + u, n)};
      const V dh_total = load(dy + u, n) + load(dh + u, n);
      V dar, daz, daxn, dhn, dh_prev_direct;
      gru_backward<VecMath<T>>(g, load(hn + u, n), load(h_prev + u, n), dh_total, dar, daz, daxn,
                               dhn, dh_prev_direct);
      store(dgh + u, dar, n);
      store(dgh + H + u, daz, n);
      store(dgh + 2 * H + u, dhn, n);
      store(dgxn + u, daxn, n);
      store(dh_direct + u, dh_prev_direct, n);
    });
  }
}

// Plain RNN (tanh or relu): one gate, nothing saved but the output itself.
template <typename T, RnnActivation Act>
void rnn_forward_rows(const CellForwardRows<T>& a) {
  for (int64_t b = 0; b < a.rows; ++b) {
    const T* pre = a.gx + b * a.ld_gx;
    T* h = a.h + b * a.ld_h;
    for_each_vector<T>(a.u0, a.u1, [&](int64_t u, int64_t n) {
      const auto v = load(pre + (u - a.u0), n) + load(a.bias + u, n);
      store(h + u, rnn_forward<VecMath<T>, Act>(v), n);
    });
  }
}

template <typename T, RnnActivation Act>
void rnn_backward_rows(const CellBackwardRows<T>& a) {
  for (int64_t b = 0; b < a.rows; ++b) {
    const T* h = a.h + b * a.ld_h;
    const T* dh_a = a.dh_a + b * a.ld_dh_a;
    const T* dh_b = a.dh_b ? a.dh_b + b * a.ld_dh_b : nullptr;
    T* dg = a.dg + b * a.ld_dg;
    for_each_vector<T>(a.u0, a.u1, [&](int64_t u, int64_t n) {
      auto dh = load(dh_a + u, n);
      if (dh_b) dh = dh + load(dh_b + u, n);
      store(dg + u, rnn_backward<VecMath<T>, Act>(load(h + u, n), dh), n);
    });
  }
}

template <typename T>
const KernelTable<T>* make_table(const char* isa) {
  static const KernelTable<T> table{
      isa,
      &panel_width<T>,
      &packed_b_size<T>,
      &pack_b<T>,
      &gemm_packed<T>,
      &gemm_direct<T>,
      &gemm_rows<T>,
      &transpose<T>,
      &pack_b_rows<T>,
      &add_column_sums<T>,
      &fma_loop<T>,
      {
          // Indexed by CellType: LSTM, GRU, RNN_TANH, RNN_RELU.
          {&lstm_forward_rows<T, true>, &lstm_forward_rows<T, false>, &lstm_backward_rows<T>},
          {&gru_forward_rows<T, true>, &gru_forward_rows<T, false>, &gru_backward_rows<T>},
          {&rnn_forward_rows<T, RnnActivation::kTanh>, &rnn_forward_rows<T, RnnActivation::kTanh>,
           &rnn_backward_rows<T, RnnActivation::kTanh>},
          {&rnn_forward_rows<T, RnnActivation::kRelu>, &rnn_forward_rows<T, RnnActivation::kRelu>,
           &rnn_backward_rows<T, RnnActivation::kRelu>},
      },
  };
  static_assert(kNumCellTypes == 4, "a new cell needs its kernels in this table");
  return &table;
}

}  // namespace rnnfast::cpu::CPU_CAPABILITY

// Defines the entry points of one instruction-set build; dispatch.cpp declares
// them for every build compiled in.
#define RNNFAST_DEFINE_KERNEL_TABLES(isa_name)                                   \
  namespace rnnfast::cpu::CPU_CAPABILITY {                                       \
  const KernelTable<float>* table_f32() { return make_table<float>(isa_name); }  \
  const KernelTable<double>* table_f64() { return make_table<double>(isa_name); } \
  }
