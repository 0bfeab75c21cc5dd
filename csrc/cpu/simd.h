// rnnfast's own vector layer for the per-instruction-set CPU kernels: one
// vector type per element type, as wide as the build's instruction set allows,
// and the handful of operations the kernels use. No torch header: the stable
// ABI (issue 16) forbids at::vec, and the GEMM's register blocking wants to
// know exactly which instruction each line becomes.
//
//   build (CPU_CAPABILITY_*)  Vec<float>      Vec<double>    registers
//   AVX512                    __m512  (16)    __m512d (8)    32
//   AVX2 (+FMA)               __m256  (8)     __m256d (4)    16
//   DEFAULT, x86-64           __m128  (4)     __m128d (2)    16  (SSE2: no FMA instruction)
//   DEFAULT, elsewhere        4 / 2 scalars   (the compiler vectorizes what it can)
//
// Everything lives in rnnfast::simd::CPU_CAPABILITY (an inline namespace), so
// the builds of one binary never share a symbol: an AVX-512 function picked
// by the linker for the AVX2 build would crash on an AVX2 machine.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#ifndef CPU_CAPABILITY
#error "simd.h needs CPU_CAPABILITY (the kernels_<isa>.cpp builds define it)"
#endif

namespace rnnfast::simd {
inline namespace CPU_CAPABILITY {

// ---------------------------------------------------------------------------
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kRegisters = 32;

template <typename T>
struct Vec;

template <>
struct Vec<float> {
  static constexpr int size = 16;
  __m512 v;
  static Vec zero() { return {_mm512_setzero_ps()}; }
  static Vec broadcast(float x) { return {_mm512_set1_ps(x)}; }
  static Vec load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static Vec load(const float* p, int n) { return {_mm512_maskz_loadu_ps(mask(n), p)}; }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  void store(float* p, int n) const { _mm512_mask_storeu_ps(p, mask(n), v); }
  static __mmask16 mask(int n) { return __mmask16((1u << n) - 1); }
};
template <>
struct Vec<double> {
  static constexpr int size = 8;
  __m512d v;
  static Vec zero() { return {_mm512_setzero_pd()}; }
  static Vec broadcast(double x) { return {_mm512_set1_pd(x)}; }
  static Vec load(const double* p) { return {_mm512_loadu_pd(p)}; }
  static Vec load(const double* p, int n) { return {_mm512_maskz_loadu_pd(__mmask8((1u << n) - 1), p)}; }
  void store(double* p) const { _mm512_storeu_pd(p, v); }
  void store(double* p, int n) const { _mm512_mask_storeu_pd(p, __mmask8((1u << n) - 1), v); }
};
inline Vec<float> fmadd(Vec<float> a, Vec<float> b, Vec<float> c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
inline Vec<double> fmadd(Vec<double> a, Vec<double> b, Vec<double> c) { return {_mm512_fmadd_pd(a.v, b.v, c.v)}; }
inline Vec<float> operator+(Vec<float> a, Vec<float> b) { return {_mm512_add_ps(a.v, b.v)}; }
inline Vec<double> operator+(Vec<double> a, Vec<double> b) { return {_mm512_add_pd(a.v, b.v)}; }
inline Vec<float> operator*(Vec<float> a, Vec<float> b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline Vec<double> operator*(Vec<double> a, Vec<double> b) { return {_mm512_mul_pd(a.v, b.v)}; }

// ---------------------------------------------------------------------------
#elif defined(CPU_CAPABILITY_AVX2)
constexpr int kRegisters = 16;

template <typename T>
struct Vec;

// Lane masks for partial loads and stores: kLaneMask + 8 - n holds n all-ones
// words followed by zeros.
alignas(64) inline constexpr int32_t kLaneMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

template <>
struct Vec<float> {
  static constexpr int size = 8;
  __m256 v;
  static Vec zero() { return {_mm256_setzero_ps()}; }
  static Vec broadcast(float x) { return {_mm256_set1_ps(x)}; }
  static Vec load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static Vec load(const float* p, int n) { return {_mm256_maskload_ps(p, mask(n))}; }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  void store(float* p, int n) const { _mm256_maskstore_ps(p, mask(n), v); }
  static __m256i mask(int n) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLaneMask + 8 - n)); }
};
template <>
struct Vec<double> {
  static constexpr int size = 4;
  __m256d v;
  static Vec zero() { return {_mm256_setzero_pd()}; }
  static Vec broadcast(double x) { return {_mm256_set1_pd(x)}; }
  static Vec load(const double* p) { return {_mm256_loadu_pd(p)}; }
  static Vec load(const double* p, int n) { return {_mm256_maskload_pd(p, mask(n))}; }
  void store(double* p) const { _mm256_storeu_pd(p, v); }
  void store(double* p, int n) const { _mm256_maskstore_pd(p, mask(n), v); }
  // Two 32-bit mask words per lane.
  static __m256i mask(int n) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLaneMask + 8 - 2 * n));
  }
};
inline Vec<float> fmadd(Vec<float> a, Vec<float> b, Vec<float> c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
inline Vec<double> fmadd(Vec<double> a, Vec<double> b, Vec<double> c) { return {_mm256_fmadd_pd(a.v, b.v, c.v)}; }
inline Vec<float> operator+(Vec<float> a, Vec<float> b) { return {_mm256_add_ps(a.v, b.v)}; }
inline Vec<double> operator+(Vec<double> a, Vec<double> b) { return {_mm256_add_pd(a.v, b.v)}; }
inline Vec<float> operator*(Vec<float> a, Vec<float> b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline Vec<double> operator*(Vec<double> a, Vec<double> b) { return {_mm256_mul_pd(a.v, b.v)}; }

// ---------------------------------------------------------------------------
#else  // DEFAULT: a fixed-size array of lanes; on x86-64 the compiler turns its loops into SSE2
constexpr int kRegisters = 16;

// 16 bytes of lanes (4 floats, 2 doubles), as an SSE2 register.
template <typename T>
struct Vec {
  static constexpr int size = int(16 / sizeof(T));
  T v[size];
  static Vec zero() { return broadcast(T(0)); }
  static Vec broadcast(T x) {
    Vec r;
    for (int i = 0; i < size; ++i) r.v[i] = x;
    return r;
  }
  static Vec load(const T* p) {
    Vec r;
    std::memcpy(r.v, p, sizeof(r.v));
    return r;
  }
  static Vec load(const T* p, int n) {
    Vec r = zero();
    std::memcpy(r.v, p, sizeof(T) * n);
    return r;
  }
  void store(T* p) const { std::memcpy(p, v, sizeof(v)); }
  void store(T* p, int n) const { std::memcpy(p, v, sizeof(T) * n); }
};
template <typename T>
inline Vec<T> fmadd(Vec<T> a, Vec<T> b, Vec<T> c) {
  for (int i = 0; i < Vec<T>::size; ++i) c.v[i] += a.v[i] * b.v[i];
  return c;
}
template <typename T>
inline Vec<T> operator+(Vec<T> a, Vec<T> b) {
  for (int i = 0; i < Vec<T>::size; ++i) a.v[i] += b.v[i];
  return a;
}
template <typename T>
inline Vec<T> operator*(Vec<T> a, Vec<T> b) {
  for (int i = 0; i < Vec<T>::size; ++i) a.v[i] *= b.v[i];
  return a;
}
#endif

// A full vector, or the first n lanes (zeros beyond on load; memory beyond
// untouched on store).
template <typename T>
inline Vec<T> load(const T* p, int n) {
  return n == Vec<T>::size ? Vec<T>::load(p) : Vec<T>::load(p, n);
}
template <typename T>
inline void store(T* p, Vec<T> x, int n) {
  if (n == Vec<T>::size) {
    x.store(p);
  } else {
    x.store(p, n);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace rnnfast::simd
