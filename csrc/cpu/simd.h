// rnnfast's own vector layer for the per-instruction-set CPU kernels: one
// vector type per element type, as wide as the build's instruction set allows,
// and the operations the kernels use (the GEMM tiles, the gate math of
// vec_math.h, packing, the conversions of 16-bit storage). No torch header:
// the stable ABI (issue 16) forbids at::vec, and the GEMM's register blocking
// wants to know exactly which instruction each line becomes.
//
//   build (CPU_CAPABILITY_*)  Vec<float>      Vec<double>    registers  Mask<T>
//   AVX512                    __m512  (16)    __m512d (8)    32         __mmask16 / __mmask8
//   AVX2 (+FMA)               __m256  (8)     __m256d (4)    16         all-ones lanes
//   DEFAULT, x86-64           __m128  (4)     __m128d (2)    16         bool per lane
//                             (SSE2 through the compiler's loops; no FMA instruction)
//   DEFAULT, elsewhere        4 / 2 scalars   (the compiler vectorizes what it can)
//
// NaN rules: max_ordered/min_ordered are the bare instructions, which return
// their second operand when either is NaN (so max_ordered(constant, x) keeps
// a NaN x in one instruction, as torch.relu and a clamp must); comparisons
// are ordered (false for NaN), so
// select(cmp_le(y, 0), 0, dh) keeps dh where y is NaN, as the scalar
// `y <= 0 ? 0 : dh` does.
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

// The generic build's arithmetic is loops over lanes, which GCC's inlining
// heuristics left as calls in the gate math (perf: out-of-line operator+, *,
// / and sigmoid, a fifth of an LSTM inference call); forced inline there, as
// intrinsics are. Not fmadd, load or broadcast: forcing those into the GEMM
// tile made it 3x slower. (The AVX builds' functions are intrinsics: plain inline.)
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#define RNNFAST_VEC_INLINE inline
#else
#define RNNFAST_VEC_INLINE inline __attribute__((always_inline))
#endif

#ifndef CPU_CAPABILITY
#error "simd.h needs CPU_CAPABILITY (the kernels_<isa>.cpp builds define it)"
#endif

namespace rnnfast::simd {
inline namespace CPU_CAPABILITY {

template <typename T>
struct Vec;

// ---------------------------------------------------------------------------
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kRegisters = 32;

template <>
struct Vec<float> {
  static constexpr int size = 16;
  using Mask = __mmask16;
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
  using Mask = __mmask8;
  __m512d v;
  static Vec zero() { return {_mm512_setzero_pd()}; }
  static Vec broadcast(double x) { return {_mm512_set1_pd(x)}; }
  static Vec load(const double* p) { return {_mm512_loadu_pd(p)}; }
  static Vec load(const double* p, int n) { return {_mm512_maskz_loadu_pd(mask(n), p)}; }
  void store(double* p) const { _mm512_storeu_pd(p, v); }
  void store(double* p, int n) const { _mm512_mask_storeu_pd(p, mask(n), v); }
  static __mmask8 mask(int n) { return __mmask8((1u << n) - 1); }
};
using F = Vec<float>;
using D = Vec<double>;
inline F fmadd(F a, F b, F c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
inline D fmadd(D a, D b, D c) { return {_mm512_fmadd_pd(a.v, b.v, c.v)}; }
inline F operator+(F a, F b) { return {_mm512_add_ps(a.v, b.v)}; }
inline D operator+(D a, D b) { return {_mm512_add_pd(a.v, b.v)}; }
inline F operator-(F a, F b) { return {_mm512_sub_ps(a.v, b.v)}; }
inline D operator-(D a, D b) { return {_mm512_sub_pd(a.v, b.v)}; }
inline F operator*(F a, F b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline D operator*(D a, D b) { return {_mm512_mul_pd(a.v, b.v)}; }
inline F operator/(F a, F b) { return {_mm512_div_ps(a.v, b.v)}; }
inline D operator/(D a, D b) { return {_mm512_div_pd(a.v, b.v)}; }
inline F operator-(F a) { return {_mm512_xor_ps(a.v, _mm512_set1_ps(-0.f))}; }
inline D operator-(D a) { return {_mm512_xor_pd(a.v, _mm512_set1_pd(-0.0))}; }
inline F abs(F a) { return {_mm512_andnot_ps(_mm512_set1_ps(-0.f), a.v)}; }
// |mag| with the sign of x.
inline F copysign(F mag, F x) {
  const __m512 sign = _mm512_set1_ps(-0.f);
  return {_mm512_or_ps(_mm512_andnot_ps(sign, mag.v), _mm512_and_ps(sign, x.v))};
}
inline F round_nearest(F a) { return {_mm512_roundscale_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
// p * 2^n for integral n.
inline F scale_pow2(F p, F n) { return {_mm512_scalef_ps(p.v, n.v)}; }
inline F::Mask cmp_lt(F a, F b) { return _mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ); }
inline D::Mask cmp_lt(D a, D b) { return _mm512_cmp_pd_mask(a.v, b.v, _CMP_LT_OQ); }
inline F::Mask cmp_le(F a, F b) { return _mm512_cmp_ps_mask(a.v, b.v, _CMP_LE_OQ); }
inline D::Mask cmp_le(D a, D b) { return _mm512_cmp_pd_mask(a.v, b.v, _CMP_LE_OQ); }
// Lanes of t where m is set, of f elsewhere.
inline F select(F::Mask m, F t, F f) { return {_mm512_mask_blend_ps(m, f.v, t.v)}; }
inline D select(D::Mask m, D t, D f) { return {_mm512_mask_blend_pd(m, f.v, t.v)}; }
inline F max_ordered(F a, F b) { return {_mm512_max_ps(a.v, b.v)}; }
inline D max_ordered(D a, D b) { return {_mm512_max_pd(a.v, b.v)}; }
inline F min_ordered(F a, F b) { return {_mm512_min_ps(a.v, b.v)}; }
inline D min_ordered(D a, D b) { return {_mm512_min_pd(a.v, b.v)}; }

// ---------------------------------------------------------------------------
#elif defined(CPU_CAPABILITY_AVX2)
constexpr int kRegisters = 16;

// Lane masks for partial loads and stores: kLaneMask + 8 - n holds n all-ones
// words followed by zeros.
alignas(64) inline constexpr int32_t kLaneMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

template <>
struct Vec<float> {
  static constexpr int size = 8;
  using Mask = __m256;  // all-ones lanes where true
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
  using Mask = __m256d;
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
using F = Vec<float>;
using D = Vec<double>;
inline F fmadd(F a, F b, F c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
inline D fmadd(D a, D b, D c) { return {_mm256_fmadd_pd(a.v, b.v, c.v)}; }
inline F operator+(F a, F b) { return {_mm256_add_ps(a.v, b.v)}; }
inline D operator+(D a, D b) { return {_mm256_add_pd(a.v, b.v)}; }
inline F operator-(F a, F b) { return {_mm256_sub_ps(a.v, b.v)}; }
inline D operator-(D a, D b) { return {_mm256_sub_pd(a.v, b.v)}; }
inline F operator*(F a, F b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline D operator*(D a, D b) { return {_mm256_mul_pd(a.v, b.v)}; }
inline F operator/(F a, F b) { return {_mm256_div_ps(a.v, b.v)}; }
inline D operator/(D a, D b) { return {_mm256_div_pd(a.v, b.v)}; }
inline F operator-(F a) { return {_mm256_xor_ps(a.v, _mm256_set1_ps(-0.f))}; }
inline D operator-(D a) { return {_mm256_xor_pd(a.v, _mm256_set1_pd(-0.0))}; }
inline F abs(F a) { return {_mm256_andnot_ps(_mm256_set1_ps(-0.f), a.v)}; }
inline F copysign(F mag, F x) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  return {_mm256_or_ps(_mm256_andnot_ps(sign, mag.v), _mm256_and_ps(sign, x.v))};
}
inline F round_nearest(F a) { return {_mm256_round_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
// p * 2^n for integral n with 2^n a normal float (exponent bits built directly).
inline F scale_pow2(F p, F n) {
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n.v), _mm256_set1_epi32(127)), 23);
  return {_mm256_mul_ps(p.v, _mm256_castsi256_ps(bits))};
}
inline F::Mask cmp_lt(F a, F b) { return _mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ); }
inline D::Mask cmp_lt(D a, D b) { return _mm256_cmp_pd(a.v, b.v, _CMP_LT_OQ); }
inline F::Mask cmp_le(F a, F b) { return _mm256_cmp_ps(a.v, b.v, _CMP_LE_OQ); }
inline D::Mask cmp_le(D a, D b) { return _mm256_cmp_pd(a.v, b.v, _CMP_LE_OQ); }
inline F select(F::Mask m, F t, F f) { return {_mm256_blendv_ps(f.v, t.v, m)}; }
inline D select(D::Mask m, D t, D f) { return {_mm256_blendv_pd(f.v, t.v, m)}; }
inline F max_ordered(F a, F b) { return {_mm256_max_ps(a.v, b.v)}; }
inline D max_ordered(D a, D b) { return {_mm256_max_pd(a.v, b.v)}; }
inline F min_ordered(F a, F b) { return {_mm256_min_ps(a.v, b.v)}; }
inline D min_ordered(D a, D b) { return {_mm256_min_pd(a.v, b.v)}; }

// ---------------------------------------------------------------------------
#else  // DEFAULT: a fixed-size array of lanes; on x86-64 the compiler turns its loops into SSE2
constexpr int kRegisters = 16;

// 16 bytes of lanes (4 floats, 2 doubles), as an SSE2 register.
template <typename T>
struct Vec {
  static constexpr int size = int(16 / sizeof(T));
  struct Mask {
    bool v[size];
  };
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

// Lane by lane: f(a.v[i], b.v[i]).
template <typename T, typename Op>
RNNFAST_VEC_INLINE Vec<T> lanes(Vec<T> a, Vec<T> b, Op f) {
  for (int i = 0; i < Vec<T>::size; ++i) a.v[i] = f(a.v[i], b.v[i]);
  return a;
}
template <typename T, typename Op>
RNNFAST_VEC_INLINE typename Vec<T>::Mask compare(Vec<T> a, Vec<T> b, Op f) {
  typename Vec<T>::Mask m;
  for (int i = 0; i < Vec<T>::size; ++i) m.v[i] = f(a.v[i], b.v[i]);
  return m;
}
template <typename T>
inline Vec<T> fmadd(Vec<T> a, Vec<T> b, Vec<T> c) {
  for (int i = 0; i < Vec<T>::size; ++i) c.v[i] += a.v[i] * b.v[i];
  return c;
}
template <typename T>
RNNFAST_VEC_INLINE Vec<T> operator+(Vec<T> a, Vec<T> b) { return lanes(a, b, [](T x, T y) { return x + y; }); }
template <typename T>
RNNFAST_VEC_INLINE Vec<T> operator-(Vec<T> a, Vec<T> b) { return lanes(a, b, [](T x, T y) { return x - y; }); }
template <typename T>
RNNFAST_VEC_INLINE Vec<T> operator*(Vec<T> a, Vec<T> b) { return lanes(a, b, [](T x, T y) { return x * y; }); }
template <typename T>
RNNFAST_VEC_INLINE Vec<T> operator/(Vec<T> a, Vec<T> b) { return lanes(a, b, [](T x, T y) { return x / y; }); }
template <typename T>
RNNFAST_VEC_INLINE Vec<T> operator-(Vec<T> a) {
  for (int i = 0; i < Vec<T>::size; ++i) a.v[i] = -a.v[i];
  return a;
}
template <typename T>
RNNFAST_VEC_INLINE typename Vec<T>::Mask cmp_lt(Vec<T> a, Vec<T> b) { return compare(a, b, [](T x, T y) { return x < y; }); }
template <typename T>
RNNFAST_VEC_INLINE typename Vec<T>::Mask cmp_le(Vec<T> a, Vec<T> b) { return compare(a, b, [](T x, T y) { return x <= y; }); }
template <typename T>
RNNFAST_VEC_INLINE Vec<T> select(typename Vec<T>::Mask m, Vec<T> t, Vec<T> f) {
  for (int i = 0; i < Vec<T>::size; ++i) f.v[i] = m.v[i] ? t.v[i] : f.v[i];
  return f;
}
template <typename T>
RNNFAST_VEC_INLINE Vec<T> max_ordered(Vec<T> a, Vec<T> b) { return lanes(a, b, [](T x, T y) { return x > y ? x : y; }); }
template <typename T>
RNNFAST_VEC_INLINE Vec<T> min_ordered(Vec<T> a, Vec<T> b) { return lanes(a, b, [](T x, T y) { return x < y ? x : y; }); }
#endif

// ---------------------------------------------------------------------------
// Every build
// ---------------------------------------------------------------------------

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

// f applied to each lane (the scalar functions the build has no vector form of).
template <typename T, typename Fn>
inline Vec<T> map(Vec<T> x, Fn f) {
  alignas(64) T lane[Vec<T>::size];
  x.store(lane);
  for (int i = 0; i < Vec<T>::size; ++i) lane[i] = f(lane[i]);
  return Vec<T>::load(lane);
}

// The sum of the lanes, as a tree of pairwise sums.
template <typename T>
inline T reduce_add(Vec<T> x) {
  alignas(64) T lane[Vec<T>::size];
  x.store(lane);
  for (int width = Vec<T>::size / 2; width > 0; width /= 2)
    for (int i = 0; i < width; ++i) lane[i] += lane[i + width];
  return lane[0];
}

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
// dst[j * ldd + i] = src[i * lds + j] for an 8x8 block of 32-bit words (bits
// moved, never converted: the bf16 packing moves k-pairs with it).
inline void transpose_8x8(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m256 r[8], t[8], u[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * lds);
  for (int i = 0; i < 4; ++i) {  // t[2i]: rows 2i, 2i+1 interleaved, words 0-1 (4-5); t[2i+1]: 2-3 (6-7)
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int h = 0; h < 2; ++h)  // u[4h + w]: word w (and w + 4) of rows 4h..4h+3
    for (int p = 0; p < 2; ++p) {
      u[4 * h + 2 * p] = _mm256_shuffle_ps(t[4 * h + p], t[4 * h + 2 + p], _MM_SHUFFLE(1, 0, 1, 0));
      u[4 * h + 2 * p + 1] = _mm256_shuffle_ps(t[4 * h + p], t[4 * h + 2 + p], _MM_SHUFFLE(3, 2, 3, 2));
    }
  for (int w = 0; w < 4; ++w) {
    _mm256_storeu_ps(dst + w * ldd, _mm256_permute2f128_ps(u[w], u[4 + w], 0x20));
    _mm256_storeu_ps(dst + (w + 4) * ldd, _mm256_permute2f128_ps(u[w], u[4 + w], 0x31));
  }
}
#endif

// dst[j * ldd + i] = src[i * lds + j] for a 16x16 block of 32-bit words.
inline void transpose_16x16(const float* src, int64_t lds, float* dst, int64_t ldd) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  for (int bi = 0; bi < 16; bi += 8)
    for (int bj = 0; bj < 16; bj += 8) transpose_8x8(src + bi * lds + bj, lds, dst + bj * ldd + bi, ldd);
#else
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) dst[j * ldd + i] = src[i * lds + j];
#endif
}

}  // namespace CPU_CAPABILITY
}  // namespace rnnfast::simd
