// Vector math of the per-instruction-set CPU kernels (included by
// kernels_impl.h, inside namespace rnnfast::cpu::CPU_CAPABILITY): inline
// exp/sigmoid/tanh, the Math policy of cell_math.h for SIMD vectors, masked
// loads and stores, and the conversions between storage and accumulation
// types (Storage<S>: BFloat16 and Half load as float vectors and store back
// rounded to nearest even, exactly as torch converts them).
#pragma once

// float exp, sigmoid and tanh for the AVX2/AVX-512 builds, inlined. Library
// vector versions (Sleef's, as torch uses) are out-of-line calls, and around
// each call the compiler spills the live vector registers of the fused gate
// loop: the inline versions make that loop ~2.5x faster. Accuracy, checked in
// tests/cpp/test_cpu_kernels.cpp against double precision: a few ulp.
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#define RNNFAST_INLINE_FLOAT_MATH 1

using simd::fmadd;

// exp(x): x = n*ln2 + r with |r| <= ln2/2 (Cody-Waite split of ln2), exp(r)
// by its degree-7 Taylor polynomial (truncation < 5e-9), times 2^n. Inputs are
// clamped: below to where 2^n is a normal float (exp saturates at ~1e-38),
// above to 89, where 2^n (n = 128) overflows to +inf. That overflow matters:
// sigmoid(x) = 1/(1 + exp(-x)) must be exactly 0 for x = -inf, as torch's is,
// or its derivative s(1-s) is a denormal and an infinite input times it gives
// inf instead of torch's NaN (0 * inf) in the weight gradients. A NaN input
// stays NaN: the bare max/min instructions return their second operand when
// either is NaN, and x is the second (one instruction each, no NaN fix-up).
inline simd::Vec<float> exp_inline(simd::Vec<float> x) {
  using V = simd::Vec<float>;
  x = simd::min_ordered(V::broadcast(89.0f), simd::max_ordered(V::broadcast(-87.3f), x));
  const V n = simd::round_nearest(x * V::broadcast(1.44269504088896341f));
  V r = fmadd(n, V::broadcast(-0.693359375f), x);
  r = fmadd(n, V::broadcast(2.12194440e-4f), r);
  V p = V::broadcast(1.f / 5040.f);
  p = fmadd(p, r, V::broadcast(1.f / 720.f));
  p = fmadd(p, r, V::broadcast(1.f / 120.f));
  p = fmadd(p, r, V::broadcast(1.f / 24.f));
  p = fmadd(p, r, V::broadcast(1.f / 6.f));
  p = fmadd(p, r, V::broadcast(0.5f));
  p = fmadd(p, r, V::broadcast(1.f));
  p = fmadd(p, r, V::broadcast(1.f));
  return simd::scale_pow2(p, n);
}

// tanh(x): an odd polynomial fitted for relative error on |x| < 0.625 (1.3
// ulp), 1 - 2/(exp(2|x|) + 1) with x's sign beyond (no cancellation there).
inline simd::Vec<float> tanh_inline(simd::Vec<float> x) {
  using V = simd::Vec<float>;
  const V ax = simd::abs(x);
  const V x2 = x * x;
  V p = V::broadcast(0.0021286187693476677f);
  p = fmadd(p, x2, V::broadcast(-0.008159236051142216f));
  p = fmadd(p, x2, V::broadcast(0.02169187180697918f));
  p = fmadd(p, x2, V::broadcast(-0.05394470691680908f));
  p = fmadd(p, x2, V::broadcast(0.13333183526992798f));
  p = fmadd(p, x2, V::broadcast(-0.333333283662796f));
  const V small = fmadd(p * x2, x, x);
  const V one = V::broadcast(1.f), two = V::broadcast(2.f);
  const V large = one - two / (exp_inline(ax + ax) + one);
  return simd::select(simd::cmp_lt(ax, V::broadcast(0.625f)), small, simd::copysign(large, x));
}
#endif

// Math policy of cell_math.h for SIMD vectors; sigmoid is 1 / (1 + exp(-x)).
// Where the build has no inline vector form (double; every type in the
// generic build) exp and tanh are the C library's, lane by lane.
template <typename T>
struct VecMath {
  using V = simd::Vec<T>;
  RNNFAST_VEC_INLINE static V one() { return V::broadcast(T(1)); }
  RNNFAST_VEC_INLINE static V zero() { return V::zero(); }
  RNNFAST_VEC_INLINE static V exp(V x) {
#ifdef RNNFAST_INLINE_FLOAT_MATH
    if constexpr (std::is_same_v<T, float>) return exp_inline(x);
#endif
    return simd::map(x, [](T v) { return scalar_exp(v); });
  }
  RNNFAST_VEC_INLINE static V sigmoid(V x) { return one() / (one() + exp(-x)); }
  RNNFAST_VEC_INLINE static V tanh(V x) {
#ifdef RNNFAST_INLINE_FLOAT_MATH
    if constexpr (std::is_same_v<T, float>) return tanh_inline(x);
#endif
    return simd::map(x, [](T v) { return scalar_tanh(v); });
  }
  // NaN propagates, as in torch.relu (x is the bare instruction's second operand).
  RNNFAST_VEC_INLINE static V relu(V x) { return simd::max_ordered(zero(), x); }
  RNNFAST_VEC_INLINE static V relu_backward(V y, V dh) { return simd::select(simd::cmp_le(y, zero()), zero(), dh); }
};

template <typename T>
inline simd::Vec<T> load(const T* p, int64_t n) {
  return simd::load(p, int(n));
}

template <typename T>
inline void store(T* p, simd::Vec<T> v, int64_t n) {
  simd::store(p, v, int(n));
}

// Calls f(u, n) for consecutive vectors covering [u0, u1): n lanes starting at
// unit u, the last vector possibly partial (masked loads and stores).
template <typename T, typename F>
inline void for_each_vector(int64_t u0, int64_t u1, F&& f) {
  constexpr int64_t W = simd::Vec<T>::size;
  int64_t u = u0;
  for (; u + W <= u1; u += W) f(u, W);
  if (u < u1) f(u, u1 - u);
}


// Storage <-> accumulation vectors. For float and double the storage is the
// accumulation type and these are plain loads and stores.
template <typename S>
struct Storage {
  using A = acc_t<S>;
  static simd::Vec<A> load(const S* p, int64_t n) { return simd::load(p, int(n)); }
  static void store(S* p, simd::Vec<A> v, int64_t n) { simd::store(p, v, int(n)); }
  static A scalar(S x) { return x; }
};

// A 16-bit float type: converted through a lane buffer where a partial vector
// or a build without the matching instructions needs it.
template <typename S>
struct Storage16 {
  using V = simd::Vec<float>;
  static constexpr int64_t W = V::size;
  static float scalar(S x) { return static_cast<float>(x); }
  static V load(const S* p, int64_t n) {
#if defined(CPU_CAPABILITY_AVX512)
    const __mmask16 mask = n == 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
    const __m256i raw = _mm256_maskz_loadu_epi16(mask, p);
    if constexpr (std::is_same_v<S, c10::BFloat16>) {
      return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16))};
    } else {
      return {_mm512_cvtph_ps(raw)};
    }
#elif defined(CPU_CAPABILITY_AVX2)
    alignas(16) uint16_t buffer[8] = {0};
    std::memcpy(buffer, p, sizeof(S) * n);
    const __m128i raw = _mm_load_si128(reinterpret_cast<const __m128i*>(buffer));
    if constexpr (std::is_same_v<S, c10::BFloat16>) {
      return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16))};
    } else {
      return {_mm256_cvtph_ps(raw)};
    }
#else
    alignas(64) float buffer[W] = {0};
    for (int64_t i = 0; i < n; ++i) buffer[i] = static_cast<float>(p[i]);
    return V::load(buffer);
#endif
  }
  static void store(S* p, V v, int64_t n) {
#if defined(CPU_CAPABILITY_AVX512)
    const __mmask16 mask = n == 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
    __m256i out;
    if constexpr (std::is_same_v<S, c10::BFloat16>) {
      // c10::BFloat16's rounding: nearest even; a NaN becomes the quiet NaN 0x7FC0.
      const __m512i bits = _mm512_castps_si512(v.v);
      const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
      const __m512i rounded = _mm512_srli_epi32(
          _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
      const __mmask16 nan = _mm512_cmp_ps_mask(v.v, v.v, _CMP_UNORD_Q);
      out = _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7FC0)));
    } else {
      out = _mm512_cvtps_ph(v.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
    _mm256_mask_storeu_epi16(p, mask, out);
#else
    alignas(64) float buffer[W];
    v.store(buffer);
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<S>(buffer[i]);
#endif
  }
};
template <>
struct Storage<c10::BFloat16> : Storage16<c10::BFloat16> {};
template <>
struct Storage<c10::Half> : Storage16<c10::Half> {};
