// GEMMs of the per-instruction-set CPU kernels (included by kernels_impl.h,
// inside namespace rnnfast::cpu::CPU_CAPABILITY), for every storage type S
// with accumulation in A = acc_t<S>:
//   * pack_b / pack_b_rows / gemm_packed: B packed once into panels of
//     kPanelVectors vectors of columns, then streamed every step;
//   * gemm_direct / gemm_rows: weights read where they are (few-row calls);
//   * outer_product_sum: the weight gradients of few-row calls, dG and the
//     rows read where they are;
//   * transpose, add_column_sums, to_storage: helpers of the weight gradients.
// Panels hold A values (float for the 16-bit types, converted when packed),
// except for BFloat16 in the AVX512-BF16 build: bf16 k-pairs, which its
// dot-product instruction (vdpbf16ps: two products per fp32 lane) reads.
#pragma once



// ---------------------------------------------------------------------------
// Register blocking of the packed GEMM, per instruction set (simd.h vectors):
// a tile of kRows rows x kPanelVectors vectors of C stays in registers for a
// pass over k, with one broadcast of A per row and k and one load of B per
// vector and k.
// ---------------------------------------------------------------------------
#if defined(CPU_CAPABILITY_AVX512)
// 32 registers: 12 x 2 accumulators, 2 of B, 1 of A. Tall tiles read each
// panel line once per 12 rows. On a 2-core Xeon VM with AMX and 2 MB of L2
// per core (Sapphire Rapids or later) the 4 x 4 tile of the Zen 5 tuning
// streamed its 64 KB panels from L2 once per 4 rows and ran at 70-80 % of
// the 12 x 2 tile's rate once the weights outgrew L2 (M = 32, N = 2048,
// K = 256: 166 vs 192 GFLOP/s on one core; 8 x 3 and 14 x 2 measured within
// 3 % of 12 x 2).
constexpr int kRows = 12;
constexpr int kPanelVectors = 2;
// axpy_rows' accumulators (independent FMA chains): up to 4 rows x 4
// vectors, or 1 x 16 (the former 4 x 4 tile's count).
constexpr int kAxpyAccumulators = 16;
// gemm_streamed reads a k-contiguous weight as the A operand up to this many
// rows of A (gemm_weight_as_a). Xeon VM, 2 threads, one-step LSTM and GRU
// inference against the weight's transpose: 7-13 % less time at B=32 H=256
// and B=64 H=512, 6 % at B=128 H=512, 2 % at B=24 H=512.
constexpr int64_t kMaxWeightAsARows = 128;
// Whether the weight-as-A path takes a product of several panels of rows
// whose last panel is partly padding (see the AVX2 build). Here it keeps the
// rule it was measured with: at most a quarter of all the padded rows empty
// (48-63, 72-95 and 97-127 rows end in a partly empty panel: half empty at
// 48, three quarters at 72). Not measured against whole panels only on
// AVX-512 (the Xeon VM measured 24, 32, 64 and 128 rows; 24 is one panel).
constexpr bool kWeightAsAPadsLastPanel = true;
#elif defined(CPU_CAPABILITY_AVX2)
// 16 registers: 6 x 2 accumulators (12: enough independent FMA chains for two
// 4-cycle pipes), 2 of B, 1 of A: the shape of BLIS's and OpenBLAS's Haswell
// sgemm kernels. k is not blocked: on Zen 3 (32 KB L1, 512 KB L2) blocks of
// 128 or 256 k (a 16 KB panel block kept in L1) measured no faster than whole
// panels of K = 256..1024 streamed from L2, and 2-10 % slower in medians.
constexpr int kRows = 6;
constexpr int kPanelVectors = 2;
// axpy_rows: 8 chains (two FMA pipes of 4 cycles' latency), e.g. 4 rows x 2
// vectors (with 4 broadcasts and a vector of B, 13 registers) or 1 x 8.
constexpr int kAxpyAccumulators = 8;
// (see the AVX-512 build) The AVX2 kernels forced on the Xeon VM at H=512:
// 9-19 % less time at B=12-32 (H=256 and 512), 6-9 % at B=48, +2.5 and -3 % at
// B=64. On Zen 3 (family 25 model 1; 512 KB of L2), one-step inference at
// H=512 against the path off (ab_builds.py, 2 threads, minima of 6-10
// alternating processes; docs/results/zen3-avx2/weight_as_a_ab_stop38.txt):
// 19-20 % less time at B=16, 5-27 % at B=32 (three runs), 4-7 % at B=48, the
// same at B=64; but 7.5-10 % more at B=24 (three runs) and 6-12 % more at
// B=40 (two), whose last 16-row panel is half empty. At B=12 (one panel, a
// quarter empty) 6-11 % less (three runs; at H=256 LSTM 8 % more, GRU the
// same). So on AVX2 a product of more than one panel of rows must fill them
// all (kWeightAsAPadsLastPanel).
constexpr int64_t kMaxWeightAsARows = 48;
constexpr bool kWeightAsAPadsLastPanel = false;
#else
// The generic build (simd.h's 4-lane arrays, SSE2 on x86-64): 4 x 2
// accumulators in 16 registers; not tuned further.
constexpr int kRows = 4;
constexpr int kPanelVectors = 2;
constexpr int kAxpyAccumulators = 8;
constexpr int64_t kMaxWeightAsARows = 0;  // (no weight-as-A path)
constexpr bool kWeightAsAPadsLastPanel = false;
#endif

#if defined(RNNFAST_NATIVE_BF16)
template <typename S>
constexpr bool kPairedPanels = std::is_same_v<S, c10::BFloat16>;
#else
template <typename S>
constexpr bool kPairedPanels = false;
#endif

// Columns per panel (kPanelVectors accumulation vectors) and the panel element.
template <typename S>
constexpr int64_t panel_width() {
  return kPanelVectors * simd::Vec<acc_t<S>>::size;
}
template <typename S>
using panel_t = std::conditional_t<kPairedPanels<S>, c10::BFloat16, acc_t<S>>;

// Rows of a panel: K, or K rounded up to whole k-pairs.
template <typename S>
constexpr int64_t panel_rows(int64_t K) {
  return kPairedPanels<S> ? (K + 1) / 2 * 2 : K;
}

template <typename S>
int64_t packed_b_bytes(int64_t K, int64_t N) {
  const int64_t NR = panel_width<S>();
  return panel_rows<S>(K) * ((N + NR - 1) / NR) * NR * int64_t(sizeof(panel_t<S>));
}

// Element (k, c) of the panel starting at `panel` (K rows of NR columns).
template <typename S>
inline int64_t panel_index(int64_t k, int64_t c) {
  constexpr int64_t NR = panel_width<S>();
  if constexpr (kPairedPanels<S>) {
    return (k / 2) * NR * 2 + c * 2 + (k & 1);
  } else {
    return k * NR + c;
  }
}

template <typename S>
inline panel_t<S> to_panel(S x) {
  if constexpr (kPairedPanels<S>) {
    return x;
  } else {
    return static_cast<panel_t<S>>(Storage<S>::scalar(x));
  }
}

// ---------------------------------------------------------------------------
// Packing
// ---------------------------------------------------------------------------
#if defined(RNNFAST_NATIVE_BF16)
// bf16 k-pair panels (AVX512-BF16 build). Pair p of column c is the 32-bit
// word p*NR + c of the panel: (B[2p, c], B[2p+1, c]), the odd K's last pair
// padded with a zero (which the GEMM multiplies by zero: it must not be NaN).
using BF16 = c10::BFloat16;

// dst[2c] = r0[c], dst[2c+1] = r1[c] for c < n, zeros for n <= c < width (a
// multiple of 32); r1 null: the zero row of an odd K.
inline void interleave_rows_bf16(const BF16* r0, const BF16* r1, int64_t n, BF16* dst, int64_t width) {
  alignas(64) static const uint16_t kIndex[2][32] = {
      {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
       8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47},
      {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
       24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63}};
  const __m512i lo = _mm512_load_si512(kIndex[0]), hi = _mm512_load_si512(kIndex[1]);
  for (int64_t c = 0; c < width; c += 32) {
    const int64_t valid = std::min<int64_t>(std::max<int64_t>(n - c, 0), 32);
    const __mmask32 m = valid == 32 ? ~__mmask32(0) : (__mmask32(1) << valid) - 1;
    const __m512i a = _mm512_maskz_loadu_epi16(m, r0 + c);
    const __m512i b = r1 ? _mm512_maskz_loadu_epi16(m, r1 + c) : _mm512_setzero_si512();
    _mm512_storeu_si512(dst + 2 * c, _mm512_permutex2var_epi16(a, lo, b));
    _mm512_storeu_si512(dst + 2 * c + 32, _mm512_permutex2var_epi16(a, hi, b));
  }
}

inline void pack_b_paired(int64_t K, int64_t N, const BF16* src, int64_t k_stride, ColumnMap columns,
                          BF16* Bp) {
  constexpr int64_t NR = panel_width<BF16>();
  const int64_t pairs = (K + 1) / 2;
  for (int64_t j0 = 0; j0 < N; j0 += NR) {
    BF16* panel = Bp + j0 * 2 * pairs;
    const int64_t run = std::min(NR, N - j0);
    // Row-major weights (n contiguous, e.g. w_hh as B of dh = dG @ w_hh):
    // two rows at a time, interleaved.
    if (k_stride != 1 && columns.col_stride == 1 &&
        columns.offset(j0 + run - 1) - columns.offset(j0) == run - 1) {
      const BF16* first = src + columns.offset(j0);
      for (int64_t p = 0; p < pairs; ++p)
        interleave_rows_bf16(first + 2 * p * k_stride, 2 * p + 1 < K ? first + (2 * p + 1) * k_stride : nullptr,
                             run, panel + p * 2 * NR, NR);
      continue;
    }
    int64_t c = 0;
    // Weights stored transposed (k contiguous): a column's pair is one 32-bit
    // word in place, so 16 columns x 16 pairs are a 32-bit 16x16 transpose
    // (columns an even number of elements apart).
    if (k_stride == 1 && columns.col_stride % 2 == 0) {
      float* words = reinterpret_cast<float*>(panel);
      for (; c + 16 <= run; c += 16) {
        const int64_t first = columns.offset(j0 + c), stride = columns.col_stride;
        if (columns.offset(j0 + c + 15) - first != 15 * stride) break;  // crosses a block
        int64_t p = 0;
        for (; p + 16 <= K / 2; p += 16)
          simd::transpose_16x16(reinterpret_cast<const float*>(src + first + 2 * p), stride / 2,
                                words + p * NR + c, NR);
        for (; p < pairs; ++p)
          for (int64_t q = 0; q < 16; ++q) {
            const BF16* col = src + first + q * stride;
            panel[p * 2 * NR + 2 * (c + q)] = col[2 * p];
            panel[p * 2 * NR + 2 * (c + q) + 1] = 2 * p + 1 < K ? col[2 * p + 1] : BF16(0.f);
          }
      }
    }
    for (; c < NR; ++c)  // the rest one element at a time, zeros past N
      for (int64_t p = 0; p < pairs; ++p) {
        BF16* dst = panel + p * 2 * NR + 2 * c;
        const BF16* col = j0 + c < N ? src + columns.offset(j0 + c) : nullptr;
        dst[0] = col ? col[2 * p * k_stride] : BF16(0.f);
        dst[1] = col && 2 * p + 1 < K ? col[(2 * p + 1) * k_stride] : BF16(0.f);
      }
  }
}
#endif

// Panels of A values (every type but the native build's bf16).
template <typename S>
void pack_b_acc(int64_t K, int64_t N, const S* src, int64_t k_stride, ColumnMap columns, void* packed) {
  using P = panel_t<S>;
  constexpr int64_t NR = panel_width<S>();
  const int64_t KP = panel_rows<S>(K);
  P* Bp = static_cast<P*>(packed);
  for (int64_t j0 = 0; j0 < N; j0 += NR) {
    P* panel = Bp + j0 * KP;
    int64_t c = 0;
#if defined(RNNFAST_INLINE_FLOAT_MATH)
    // Weights stored transposed (k contiguous, w_ih^T and w_hh^T): 16x16 blocks
    // through a register transpose instead of one scalar store per element
    // (16-bit weights in the AVX-512 builds: converted to float, then
    // transposed; the AVX2 build transposes float only).
#if defined(CPU_CAPABILITY_AVX512)
    constexpr bool kBlocks = !std::is_same_v<S, double>;
#else
    constexpr bool kBlocks = std::is_same_v<S, float>;
#endif
    if constexpr (kBlocks) {
      if (k_stride == 1) {
        for (; c + 16 <= NR && j0 + c + 16 <= N; c += 16) {
          const int64_t first = columns.offset(j0 + c);
          const int64_t stride = columns.col_stride;
          if (columns.offset(j0 + c + 15) - first != 15 * stride) break;  // crosses a block
          int64_t k = 0;
          for (; k + 16 <= K; k += 16) {
            if constexpr (std::is_same_v<S, float>) {
              simd::transpose_16x16(src + first + k, stride, panel + k * NR + c, NR);
            } else {
              alignas(64) float block[16][16];  // [column][k]
              for (int64_t q = 0; q < 16; ++q) Storage<S>::load(src + first + q * stride + k, 16).store(block[q]);
              simd::transpose_16x16(&block[0][0], 16, panel + k * NR + c, NR);
            }
          }
          for (; k < K; ++k)
            for (int64_t q = 0; q < 16; ++q) panel[k * NR + c + q] = to_panel<S>(src[first + q * stride + k]);
        }
      }
    }
#endif
    // Row-major weights (n contiguous, e.g. w_hh as B of dh = dG @ w_hh): the
    // panel's columns are one contiguous run of each row, copied row by row.
    const int64_t run = std::min(NR, N - j0);
    if (c == 0 && columns.col_stride == 1 && k_stride != 1 &&
        columns.offset(j0 + run - 1) - columns.offset(j0) == run - 1) {
      using V = simd::Vec<acc_t<S>>;
      const S* first = src + columns.offset(j0);
      for (int64_t k = 0; k < K; ++k) {
        const S* row = first + k * k_stride;
        P* dst = panel + k * NR;
        for_each_vector<acc_t<S>>(0, NR, [&](int64_t q, int64_t n) {
          const int64_t valid = std::max<int64_t>(0, std::min<int64_t>(n, run - q));
          store(dst + q, valid == 0 ? V::zero() : Storage<S>::load(row + q, valid), n);
        });
      }
      continue;
    }
    for (; c < NR; ++c) {
      if (j0 + c >= N) {  // zero padding of the last panel
        for (int64_t k = 0; k < KP; ++k) panel[k * NR + c] = P(0);
        continue;
      }
      const S* col = src + columns.offset(j0 + c);
      for (int64_t k = 0; k < K; ++k) panel[k * NR + c] = to_panel<S>(col[k * k_stride]);
    }
  }
}

template <typename S>
void pack_b(int64_t K, int64_t N, const S* src, int64_t k_stride, ColumnMap columns, void* packed) {
#if defined(RNNFAST_NATIVE_BF16)
  if constexpr (kPairedPanels<S>) {
    pack_b_paired(K, N, src, k_stride, columns, static_cast<BF16*>(packed));
  } else {
    pack_b_acc(K, N, src, k_stride, columns, packed);
  }
#else
  pack_b_acc(K, N, src, k_stride, columns, packed);
#endif
}

// Packs rows row_ptrs[0..K) (columns col0 .. col0+N of each) as B[K, N].
template <typename S>
void pack_b_rows(int64_t K, int64_t N, const S* const* row_ptrs, int64_t col0, void* packed) {
  using P = panel_t<S>;
  constexpr int64_t NR = panel_width<S>();
  const int64_t KP = panel_rows<S>(K);
  P* Bp = static_cast<P*>(packed);
#if defined(RNNFAST_NATIVE_BF16)
  if constexpr (kPairedPanels<S>) {
    for (int64_t j0 = 0; j0 < N; j0 += NR)
      for (int64_t p = 0; p < KP / 2; ++p)
        interleave_rows_bf16(row_ptrs[2 * p] + col0 + j0,
                             2 * p + 1 < K ? row_ptrs[2 * p + 1] + col0 + j0 : nullptr,
                             std::min(NR, N - j0), Bp + j0 * KP + p * 2 * NR, NR);
    return;
  }
#endif
  for (int64_t j0 = 0; j0 < N; j0 += NR) {
    const int64_t n = std::min(NR, N - j0);
    P* panel = Bp + j0 * KP;
    for (int64_t k = 0; k < KP; ++k) {
      if (k >= K) {
        for (int64_t c = 0; c < NR; ++c) panel[panel_index<S>(k, c)] = P(0);
        continue;
      }
      const S* src = row_ptrs[k] + col0 + j0;
      if constexpr (!kPairedPanels<S> && !std::is_same_v<S, acc_t<S>>) {
        P* dst = panel + k * NR;
        for_each_vector<acc_t<S>>(0, NR, [&](int64_t q, int64_t w) {
          const int64_t valid = std::max<int64_t>(0, std::min<int64_t>(w, n - q));
          store(dst + q, valid == 0 ? simd::Vec<P>::zero() : Storage<S>::load(src + q, valid), w);
        });
      } else {
        for (int64_t c = 0; c < n; ++c) panel[panel_index<S>(k, c)] = to_panel<S>(src[c]);
        for (int64_t c = n; c < NR; ++c) panel[panel_index<S>(k, c)] = P(0);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Packed GEMM: C[M,N] = A[M,K] @ B[K,N] + beta*C, row-major. Panels are the
// outer loop so one panel stays in cache while all row blocks of A pass over
// it. k is not blocked (AVX2: see above; AVX-512 on the Xeon VM, blocks of
// 128 or 256 k: a T=100 B=64 H=512 RNN inference took 4-13 % more time in
// medians, README "Intel Xeon").
// Register tile: R rows x kPanelVectors vectors.
// ---------------------------------------------------------------------------

// Accumulator sets of an R-row tile: a tile of few rows has few independent
// FMA chains, so it keeps Q sets (even/odd k, ...) and adds them at the end.
// Enough sets for 8 chains (two FMA pipes of 4 cycles' latency), at most 4.
template <int R>
constexpr int accumulator_sets() {
  constexpr int chains = R * kPanelVectors;
  return chains >= 8 ? 1 : std::min(4, (8 + chains - 1) / chains);
}

// Not inlined: inlined into gemm_packed beside its other tile sizes, GCC 12
// spilled B vectors of the tile to the stack (perf annotate of an AVX-512
// LSTM: a store and reload per k) and the same tile ran 2.5x slower in a
// stand-alone harness (AVX2 6 x 2: 1.35x slower). The call costs nothing
// against a pass over K.
// Q = 1 sums every output in k order (what gemm_streamed's weight-as-A path
// needs to give gemm_packed's sums).
template <typename S, int R, int Q = accumulator_sets<R>()>
__attribute__((noinline)) void panel_tile(int64_t K, const S* A_, int64_t lda, const acc_t<S>* panel,
                                          acc_t<S> beta, acc_t<S>* Cm, int64_t ldc, int64_t ncols) {
  using T = acc_t<S>;
  using V = simd::Vec<T>;
  constexpr int W = V::size;
  constexpr int C = kPanelVectors;
  constexpr int64_t NR = C * W;
  V acc[Q][R][C];
  if (beta != T(0)) {
    // C is read and written after the k loop: fetch its lines (for writing)
    // now. In the time loop it is the step's pre-activations, written by the
    // chunk's projection many steps ago and out of the core's caches by now:
    // measured -3 % time of a T=100, B=64, H=512 LSTM inference.
    for (int r = 0; r < R; ++r)
      for (int64_t c = 0; c < NR * int64_t(sizeof(T)); c += 64)
        __builtin_prefetch(reinterpret_cast<const char*>(Cm + r * ldc) + c, 1, 3);
  }
  for (int q = 0; q < Q; ++q)
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[q][r][c] = V::zero();
  int64_t k = 0;
  for (; k + Q <= K; k += Q) {
    for (int q = 0; q < Q; ++q) {
      const T* brow = panel + (k + q) * NR;
      V bv[C];
      for (int c = 0; c < C; ++c) bv[c] = V::load(brow + c * W);
      for (int r = 0; r < R; ++r) {
        const V av = V::broadcast(Storage<S>::scalar(A_[r * lda + k + q]));
        for (int c = 0; c < C; ++c) acc[q][r][c] = simd::fmadd(av, bv[c], acc[q][r][c]);
      }
    }
  }
  for (; k < K; ++k) {
    const T* brow = panel + k * NR;
    for (int r = 0; r < R; ++r) {
      const V av = V::broadcast(Storage<S>::scalar(A_[r * lda + k]));
      for (int c = 0; c < C; ++c) acc[0][r][c] = simd::fmadd(av, V::load(brow + c * W), acc[0][r][c]);
    }
  }
  for (int r = 0; r < R; ++r) {
    T* crow = Cm + r * ldc;
    for (int c = 0; c < C; ++c) {
      const int n = int(std::min<int64_t>(W, ncols - c * W));
      if (n <= 0) break;
      V out = acc[0][r][c];
      for (int q = 1; q < Q; ++q) out = out + acc[q][r][c];
      if (beta != T(0)) out = simd::fmadd(V::broadcast(beta), simd::load(crow + c * W, n), out);
      simd::store(crow + c * W, out, n);
    }
  }
}

#if defined(RNNFAST_NATIVE_BF16)
// The bf16 tile: per k-pair, one broadcast of the row's two A values and one
// vdpbf16ps per panel vector (16 lanes, two products each).
template <int R>
__attribute__((noinline)) void panel_tile_bf16(int64_t K, const c10::BFloat16* A_, int64_t lda,
                                               const c10::BFloat16* panel, float beta, float* Cm,
                                               int64_t ldc, int64_t ncols) {
  constexpr int C = kPanelVectors;
  constexpr int64_t NR = C * 16;
  __m512 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  const int64_t pairs = K / 2;
  for (int64_t p = 0; p < pairs; ++p) {
    const c10::BFloat16* bpair = panel + p * NR * 2;
    __m512bh bv[C];
    for (int c = 0; c < C; ++c) bv[c] = (__m512bh)_mm512_loadu_si512(bpair + c * 32);
    for (int r = 0; r < R; ++r) {
      uint32_t two;
      std::memcpy(&two, A_ + r * lda + 2 * p, sizeof(two));
      const __m512bh av = (__m512bh)_mm512_set1_epi32(int(two));
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], av, bv[c]);
    }
  }
  if (K & 1) {  // the last k pairs with a zero (the panel's pair is zero-padded too)
    const c10::BFloat16* bpair = panel + pairs * NR * 2;
    __m512bh bv[C];
    for (int c = 0; c < C; ++c) bv[c] = (__m512bh)_mm512_loadu_si512(bpair + c * 32);
    for (int r = 0; r < R; ++r) {
      uint16_t one;
      std::memcpy(&one, A_ + r * lda + K - 1, sizeof(one));
      const __m512bh av = (__m512bh)_mm512_set1_epi32(int(uint32_t(one)));
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], av, bv[c]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float* crow = Cm + r * ldc;
    for (int c = 0; c < C; ++c) {
      const int64_t n = std::min<int64_t>(16, ncols - c * 16);
      if (n <= 0) break;
      simd::Vec<float> out{acc[r][c]};
      if (beta != 0.f) out = simd::fmadd(simd::Vec<float>::broadcast(beta), load(crow + c * 16, n), out);
      store(crow + c * 16, out, n);
    }
  }
}
#endif

// f(std::integral_constant<int, R>, m) for the tile of `rows` rows (1..kRows).
template <int R = 1, typename F>
inline void call_row_tile(int rows, int64_t m, F& f) {
  if constexpr (R <= kRows) {
    if (rows == R) {
      f(std::integral_constant<int, R>(), m);
    } else {
      call_row_tile<R + 1>(rows, m, f);
    }
  }
}

// Calls f(std::integral_constant<int, R>, m) for row tiles covering [m0, m1):
// tiles of kRows rows, and the rest in at most two smaller tiles. In builds
// with tiles of more than 4 rows, a rest of fewer than kRows/2 rows joins the
// last full tile and the two split in halves (6-row tiles: 7 rows are 4 + 3,
// 8 are 4 + 4; 12-row tiles: 26 rows are 12 + 7 + 7, while 32 are
// 12 + 12 + 8): a 1- or 2-row tile has too few FMA chains to run at full rate.
template <typename F>
inline void for_each_row_tile(int64_t m0, int64_t m1, F&& f) {
  int64_t full = (m1 - m0) / kRows, left = (m1 - m0) % kRows;
  if (kRows > 4 && full > 0 && left > 0 && left < kRows / 2) {
    --full;
    left += kRows;
  }
  int64_t m = m0;
  for (int64_t i = 0; i < full; ++i, m += kRows) f(std::integral_constant<int, kRows>(), m);
  if (left > kRows) {
    const int first = int(left + 1) / 2;
    call_row_tile(first, m, f);
    m += first;
    left -= first;
  }
  if (left > 0) call_row_tile(int(left), m, f);
}

// Rows of A are taken in blocks of about 256 KB, so that a block stays in the
// L2 cache while every panel of B passes over it. `descending` walks the
// panels from the last: each panel's columns are the same tile's sums in the
// same k order either way (identical results); see SlicePanels::gemm.
// kInOrder: tiles of one accumulator set (every output summed in k order).
template <typename S, bool kInOrder = false>
void gemm_packed(int64_t M, int64_t N, int64_t K, const S* A_, int64_t lda, const void* packed,
                 acc_t<S> beta, acc_t<S>* Cm, int64_t ldc, bool descending) {
  using P = panel_t<S>;
  constexpr int64_t NR = panel_width<S>();
  const int64_t KP = panel_rows<S>(K);
  const P* Bp = static_cast<const P*>(packed);
  const int64_t block_rows = std::max<int64_t>(
      kRows, (int64_t(256 * 1024) / (sizeof(S) * std::max<int64_t>(K, 1))) / kRows * kRows);
  const int64_t panels = (N + NR - 1) / NR;
  for (int64_t m0 = 0; m0 < M; m0 += block_rows) {
    const int64_t m1 = std::min(M, m0 + block_rows);
    for (int64_t i = 0; i < panels; ++i) {
      const int64_t j0 = (descending ? panels - 1 - i : i) * NR;
      const P* panel = Bp + j0 * KP;
      const int64_t ncols = std::min(NR, N - j0);
      for_each_row_tile(m0, m1, [&](auto rows, int64_t m) {
        constexpr int Rows = decltype(rows)::value;
#if defined(RNNFAST_NATIVE_BF16)
        if constexpr (kPairedPanels<S>) {
          panel_tile_bf16<Rows>(K, A_ + m * lda, lda, panel, beta, Cm + m * ldc + j0, ldc, ncols);
          return;
        }
#endif
        if constexpr (!kPairedPanels<S>)
          panel_tile<S, Rows, kInOrder ? 1 : accumulator_sets<Rows>()>(K, A_ + m * lda, lda, panel, beta,
                                                                      Cm + m * ldc + j0, ldc, ncols);
      });
    }
  }
}

// ---------------------------------------------------------------------------
// Streamed GEMM (kernels.h): a weight multiplied once in a call
// ---------------------------------------------------------------------------

// A weight stored k-contiguous (w_ih, w_hh as the forward reads them) times a
// few dozen rows is multiplied the other way round: C^T[N, M] = W[N, K] @
// A^T[K, M], the weight's rows broadcast as the tile's A operand where they
// are stored and the rows of A packed as the panels. Packing the weight would
// transpose all of it (N x K, the largest share of a one-step call after the
// tiles: 16 % of LSTMCell inference at B=64 H=512 on the Xeon VM); this packs
// M x K and transposes the M x N result instead. From a panel's worth of
// rows less a quarter (24 on AVX-512, 12 on AVX2; fewer wasted lanes of the
// last panel) to kMaxWeightAsARows, past which the weight's transpose costs
// less than the extra passes over the weight's rows (one per panel of rows);
// on AVX2, past one panel, whole panels only (32 or 48 rows).
constexpr int64_t kWeightAsABlock = 128;  // weight rows per block of C^T (kept in L2 for its transpose)

// M rounded up to whole panels of rows (the weight-as-A path's panels of A).
template <typename S>
constexpr int64_t padded_rows(int64_t M) {
  return (M + panel_width<S>() - 1) / panel_width<S>() * panel_width<S>();
}

template <typename S>
bool streams_weight_as_a(int64_t M, int64_t k_stride) {
#if defined(RNNFAST_INLINE_FLOAT_MATH)
  if constexpr (!kPairedPanels<S> && std::is_same_v<acc_t<S>, float>) {
    return k_stride == 1 && 4 * M >= 3 * panel_width<S>() && 4 * M >= 3 * padded_rows<S>(M) &&
           M <= kMaxWeightAsARows &&
           (kWeightAsAPadsLastPanel || M <= panel_width<S>() || M == padded_rows<S>(M));
  }
#endif
  (void)M;
  (void)k_stride;
  return false;
}

// Enough for every product of up to M_max rows: the path takes only some row
// counts (a larger M_max may be off it where a smaller M is on it), so the
// bound is the path's for min(M_max, kMaxWeightAsARows) rows, whenever any
// row count up to M_max takes it.
template <typename S>
int64_t streamed_scratch_bytes(int64_t M_max, int64_t K, int64_t k_stride) {
  const int64_t one_panel = packed_b_bytes<S>(K, 1);
  const int64_t M = std::min(M_max, kMaxWeightAsARows);
  bool any = false;
  for (int64_t m = M; m > 0 && !any; --m) any = streams_weight_as_a<S>(m, k_stride);
  if (!any) return one_panel;
  const int64_t weight_as_a = (packed_b_bytes<S>(K, M) + 63) / 64 * 64 + kWeightAsABlock * padded_rows<S>(M) * 4;
  return std::max(one_panel, weight_as_a);
}

#if defined(RNNFAST_INLINE_FLOAT_MATH)
// C[m0 + i, n0 + j] = beta * C + ct[j * ldt + i] for a block of `rows` x
// `cols` (fmadd as the tiles do; C not read where beta is 0).
inline void add_transposed(int64_t rows, int64_t cols, const float* ct, int64_t ldt, float beta, float* Cm,
                           int64_t ldc) {
  using V = simd::Vec<float>;
  alignas(64) float block[16 * 16];  // [i][j]
  for (int64_t i0 = 0; i0 < rows; i0 += 16) {
    const int64_t ni = std::min<int64_t>(16, rows - i0);
    for (int64_t j0 = 0; j0 < cols; j0 += 16) {
      const int64_t nj = std::min<int64_t>(16, cols - j0);
      if (ni == 16 && nj == 16) {
        simd::transpose_16x16(ct + j0 * ldt + i0, ldt, block, 16);
      } else {
        for (int64_t j = 0; j < nj; ++j)
          for (int64_t i = 0; i < ni; ++i) block[i * 16 + j] = ct[(j0 + j) * ldt + i0 + i];
      }
      for (int64_t i = 0; i < ni; ++i) {
        float* c = Cm + (i0 + i) * ldc + j0;
        for_each_vector<float>(0, nj, [&](int64_t q, int64_t n) {
          V out = simd::load(block + i * 16 + q, n);
          if (beta != 0.f) out = simd::fmadd(V::broadcast(beta), simd::load(c + q, n), out);
          simd::store(c + q, out, n);
        });
      }
    }
  }
}
#endif

template <typename S>
void gemm_weight_as_a(int64_t M, int64_t N, int64_t K, const S* A_, int64_t lda, const S* src, ColumnMap columns,
                      float beta, float* Cm, int64_t ldc, void* scratch) {
#if defined(RNNFAST_INLINE_FLOAT_MATH)
  const int64_t padded = padded_rows<S>(M);
  uint8_t* bytes = static_cast<uint8_t*>(scratch);
  void* rows_t = bytes;  // A^T [K, M] as panels of panel_width<S>() rows of A
  float* ct = reinterpret_cast<float*>(bytes + (packed_b_bytes<S>(K, M) + 63) / 64 * 64);  // [block, padded]
  pack_b<S>(K, M, A_, 1, ColumnMap{0, M, 0, lda}, rows_t);
  for (int64_t n0 = 0; n0 < N;) {
    // Weight rows n0 .. n0 + run: equally strided (one block of the column map).
    const int64_t run = std::min({N - n0, columns.block - (n0 + columns.first) % columns.block, kWeightAsABlock});
    gemm_packed<S, /*kInOrder=*/true>(run, M, K, src + columns.offset(n0), columns.col_stride, rows_t, 0.f, ct,
                                      padded, false);
    add_transposed(M, run, ct, padded, beta, Cm + n0, ldc);
    n0 += run;
  }
#else
  (void)M, (void)N, (void)K, (void)A_, (void)lda, (void)src, (void)columns, (void)beta, (void)Cm, (void)ldc,
      (void)scratch;
#endif
}

// gemm_packed with B packed one panel at a time (kernels.h): each panel is
// packed into the caller's scratch of one panel (packed_b_bytes(K, 1) bytes),
// then every row tile passes over it while it is in cache; or, where
// streams_weight_as_a, gemm_weight_as_a.
template <typename S>
void gemm_streamed(int64_t M, int64_t N, int64_t K, const S* A_, int64_t lda, const S* src, int64_t k_stride,
                   ColumnMap columns, acc_t<S> beta, acc_t<S>* Cm, int64_t ldc, void* scratch) {
  constexpr int64_t NR = panel_width<S>();
  if constexpr (std::is_same_v<acc_t<S>, float>) {
    if (streams_weight_as_a<S>(M, k_stride)) {
      gemm_weight_as_a<S>(M, N, K, A_, lda, src, columns, beta, Cm, ldc, scratch);
      return;
    }
  }
  for (int64_t j0 = 0; j0 < N; j0 += NR) {
    const int64_t ncols = std::min(NR, N - j0);
    pack_b<S>(K, ncols, src, k_stride, columns.from(j0), scratch);
    gemm_packed<S>(M, ncols, K, A_, lda, scratch, beta, Cm + j0, ldc, false);
  }
}

// ---------------------------------------------------------------------------
// Unpacked GEMMs of few-row calls
// ---------------------------------------------------------------------------
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
// N=512, K=128). 16-bit storage converts 16 elements per load (bf16 with the
// dot-product instruction in the AVX512-BF16 build: 32 per load).
template <typename S>
inline int64_t gemm_direct_16(int64_t N, int64_t K, const S* a, const S* Wt, int64_t ldw,
                              float beta, float* c) {
  int64_t n0 = 0;
  for (; n0 + 16 <= N; n0 += 16) {
    __m512 acc[16];
    for (int j = 0; j < 16; ++j) acc[j] = _mm512_setzero_ps();
    const S* w = Wt + n0 * ldw;
    int64_t k = 0;
#if defined(RNNFAST_NATIVE_BF16)
    if constexpr (std::is_same_v<S, c10::BFloat16>) {
      for (; k < K; k += 32) {
        const __mmask32 mask = K - k >= 32 ? ~__mmask32(0) : __mmask32((uint64_t(1) << (K - k)) - 1);
        const __m512bh av = (__m512bh)_mm512_maskz_loadu_epi16(mask, a + k);
        for (int j = 0; j < 16; ++j)
          acc[j] = _mm512_dpbf16_ps(acc[j], av, (__m512bh)_mm512_maskz_loadu_epi16(mask, w + j * ldw + k));
      }
    }
#endif
    for (; k < K; k += 16) {
      const int64_t n = std::min<int64_t>(16, K - k);
      const __m512 av = Storage<S>::load(a + k, n).v;
      for (int j = 0; j < 16; ++j)
        acc[j] = _mm512_fmadd_ps(av, Storage<S>::load(w + j * ldw + k, n).v, acc[j]);
    }
    __m512 sums = sum_lanes_of_16(acc);
    if (beta != 0.f) sums = _mm512_fmadd_ps(_mm512_set1_ps(beta), _mm512_loadu_ps(c + n0), sums);
    _mm512_storeu_ps(c + n0, sums);
  }
  return n0;
}
#endif

#if defined(CPU_CAPABILITY_AVX2)
// Sums of 8 vectors, r[j] = sum of the lanes of a[j]: two levels of hadd
// within 128-bit halves, then the halves added across (7 operations for 8
// sums instead of ~5 per horizontal sum).
inline __m256 sum_lanes_of_8(const __m256 a[8]) {
  const __m256 s01 = _mm256_hadd_ps(a[0], a[1]), s23 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 s45 = _mm256_hadd_ps(a[4], a[5]), s67 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 s0123 = _mm256_hadd_ps(s01, s23), s4567 = _mm256_hadd_ps(s45, s67);
  // s0123: [a0 a1 a2 a3 | a0 a1 a2 a3] partial sums of the low and high halves.
  return _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20), _mm256_permute2f128_ps(s0123, s4567, 0x31));
}

// 8 outputs of one row of A at a time: 8 accumulators, one tree reduction
// (the AVX2 counterpart of gemm_direct_16). 16-bit storage converts on load.
template <typename S>
inline int64_t gemm_direct_8(int64_t N, int64_t K, const S* a, const S* Wt, int64_t ldw, float beta,
                             float* c) {
  int64_t n0 = 0;
  for (; n0 + 8 <= N; n0 += 8) {
    __m256 acc[8];
    for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_ps();
    const S* w = Wt + n0 * ldw;
    for (int64_t k = 0; k < K; k += 8) {
      const int64_t n = std::min<int64_t>(8, K - k);
      const __m256 av = Storage<S>::load(a + k, n).v;
      for (int j = 0; j < 8; ++j)
        acc[j] = _mm256_fmadd_ps(av, Storage<S>::load(w + j * ldw + k, n).v, acc[j]);
    }
    __m256 sums = sum_lanes_of_8(acc);
    if (beta != 0.f) sums = _mm256_fmadd_ps(_mm256_set1_ps(beta), _mm256_loadu_ps(c + n0), sums);
    _mm256_storeu_ps(c + n0, sums);
  }
  return n0;
}
#endif

// C[M,N] = A[M,K] @ W[N,K]^T + beta*C with W's rows used as they are stored
// (k contiguous): a dot product per output. For calls too small to repay
// packing (a single time step of a small batch), where rows of the weights
// are read once.
template <typename S>
void gemm_direct(int64_t M, int64_t N, int64_t K, const S* A_, int64_t lda, const S* Wt,
                 int64_t ldw, acc_t<S> beta, acc_t<S>* Cm, int64_t ldc) {
  using T = acc_t<S>;
  using V = simd::Vec<T>;
  constexpr int J = 4;  // outputs at a time (independent accumulators)
  for (int64_t m = 0; m < M; ++m) {
    const S* a = A_ + m * lda;
    int64_t first = 0;  // outputs done by the 16-wide loop
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<T, float>) first = gemm_direct_16<S>(N, K, a, Wt, ldw, beta, Cm + m * ldc);
#elif defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<T, float>) first = gemm_direct_8<S>(N, K, a, Wt, ldw, beta, Cm + m * ldc);
#endif
    for (int64_t n0 = first; n0 < N; n0 += J) {
      const int64_t nj = std::min<int64_t>(J, N - n0);
      V acc[J];
      for (int j = 0; j < J; ++j) acc[j] = V::zero();
      for_each_vector<T>(0, K, [&](int64_t k, int64_t n) {
        const V av = Storage<S>::load(a + k, n);
        for (int j = 0; j < nj; ++j)
          acc[j] = simd::fmadd(av, Storage<S>::load(Wt + (n0 + j) * ldw + k, n), acc[j]);
      });
      for (int j = 0; j < nj; ++j) {
        const T dot = simd::reduce_add(acc[j]);
        T* c = Cm + m * ldc + n0 + j;
        *c = beta == T(0) ? dot : dot + beta * *c;
      }
    }
  }
}

// Rows m0 .. m0+R of axpy_rows, C = kAxpyAccumulators / R vectors of
// columns at a time: each row of B is loaded once for R rows of C, and the
// R x C accumulators are independent FMA chains.
template <typename S, int R, typename AOf, typename RowOf>
inline void axpy_row_tile(int64_t m0, int64_t N, int64_t K, AOf& a, RowOf& row, acc_t<S> beta, acc_t<S>* Cm,
                          int64_t ldc) {
  using T = acc_t<S>;
  using V = simd::Vec<T>;
  constexpr int64_t W = V::size;
  constexpr int C = std::max(1, kAxpyAccumulators / R);
  for (int64_t n0 = 0; n0 < N; n0 += C * W) {
    int64_t width[C];  // lanes of each vector inside N (0: past the end)
    for (int q = 0; q < C; ++q) width[q] = std::clamp<int64_t>(N - n0 - q * W, 0, W);
    V acc[R][C];
    for (int r = 0; r < R; ++r)
      for (int q = 0; q < C; ++q) acc[r][q] = V::zero();
    // kWhole: every vector of the pass is inside N. Its loop has no lane counts:
    // on Zen 3 a one-row gemm_rows took 13-20 % less time with a 4 MB weight and
    // 8-42 % less with a 256 KB weight in L2
    // (docs/results/zen3-avx2/row_kernels_harness_stop40.txt).
    auto k_loop = [&](auto whole) {
      constexpr bool kWhole = decltype(whole)::value;
      for (int64_t k = 0; k < K; ++k) {
        const S* b = row(k) + n0;
        V av[R];
        for (int r = 0; r < R; ++r) av[r] = V::broadcast(Storage<S>::scalar(a(m0 + r, k)));
        for (int q = 0; q < C; ++q) {
          if (!kWhole && width[q] == 0) break;
          const V bv = Storage<S>::load(b + q * W, kWhole ? W : width[q]);
          for (int r = 0; r < R; ++r) acc[r][q] = simd::fmadd(av[r], bv, acc[r][q]);
        }
      }
    };
    if (n0 + C * W <= N) {
      k_loop(std::true_type());
    } else {
      k_loop(std::false_type());
    }
    for (int r = 0; r < R; ++r) {
      T* c = Cm + (m0 + r) * ldc + n0;
      for (int q = 0; q < C; ++q) {
        if (width[q] == 0) break;
        V out = acc[r][q];
        if (beta != T(0)) out = simd::fmadd(V::broadcast(beta), load(c + q * W, width[q]), out);
        store(c + q * W, out, width[q]);
      }
    }
  }
}

// C[M,N] = sum over k of a(m, k) * row(k)[0, N) + beta*C, B's rows read
// where they are, tiles of up to 4 rows of C: every output sums its k in
// order before beta*C is added (one fmadd, as in gemm_packed's tiles of one
// accumulator set). The core of gemm_rows and outer_product_sum: a(m, k) is
// A's element, row(k) B's k-th row.
template <typename S, typename AOf, typename RowOf>
inline void axpy_rows(int64_t M, int64_t N, int64_t K, AOf a, RowOf row, acc_t<S> beta, acc_t<S>* Cm, int64_t ldc) {
  int64_t m0 = 0;
  for (; m0 + 4 <= M; m0 += 4) axpy_row_tile<S, 4>(m0, N, K, a, row, beta, Cm, ldc);
  switch (M - m0) {
    case 3: return axpy_row_tile<S, 3>(m0, N, K, a, row, beta, Cm, ldc);
    case 2: return axpy_row_tile<S, 2>(m0, N, K, a, row, beta, Cm, ldc);
    case 1: return axpy_row_tile<S, 1>(m0, N, K, a, row, beta, Cm, ldc);
    default: return;
  }
}

// C[M,N] = A[M,K] @ B[K,N] + beta*C reading B's rows where they are (ldb
// apart). For calls too small to repay packing (a single step of a small
// batch).
template <typename S>
void gemm_rows(int64_t M, int64_t N, int64_t K, const S* A_, int64_t lda, const S* Bm,
               int64_t ldb, acc_t<S> beta, acc_t<S>* Cm, int64_t ldc) {
  axpy_rows<S>(
      M, N, K, [&](int64_t m, int64_t k) { return A_[m * lda + k]; },
      [&](int64_t k) { return Bm + k * ldb; }, beta, Cm, ldc);
}

// C[M,N] = A[K,M]^T @ B[K,N] + beta*C, the sum of K outer products, with
// B's row k at rows[k] + col0: a weight gradient (dw = dG^T x) of a chunk of
// a few rows, read where dG and the rows are (no transpose, no packing).
template <typename S>
void outer_product_sum(int64_t M, int64_t N, int64_t K, const S* A_, int64_t lda, const S* const* rows,
                       int64_t col0, acc_t<S> beta, acc_t<S>* Cm, int64_t ldc) {
  axpy_rows<S>(
      M, N, K, [&](int64_t m, int64_t k) { return A_[k * lda + m]; },
      [&](int64_t k) { return rows[k] + col0; }, beta, Cm, ldc);
}

// ---------------------------------------------------------------------------
// Helpers of the weight gradients
// ---------------------------------------------------------------------------

// dst[c, r] = src[r, c] for a [rows, cols] block: the weight gradients sum
// over rows, and the GEMM wants that sum along contiguous memory.
template <typename S>
void transpose(int64_t rows, int64_t cols, const S* src, int64_t lds, S* dst, int64_t ldd) {
  int64_t r0 = 0;
#if defined(CPU_CAPABILITY_AVX512)
  constexpr bool kBlocks = !std::is_same_v<S, double>;
#elif defined(RNNFAST_INLINE_FLOAT_MATH)
  constexpr bool kBlocks = std::is_same_v<S, float>;
#else
  constexpr bool kBlocks = false;
#endif
  if constexpr (kBlocks) {
    for (; r0 + 16 <= rows; r0 += 16) {
      int64_t c0 = 0;
      for (; c0 + 16 <= cols; c0 += 16) {
        const S* in = src + r0 * lds + c0;
        S* out = dst + c0 * ldd + r0;
        if constexpr (std::is_same_v<S, float>) {
          simd::transpose_16x16(in, lds, out, ldd);
        } else {  // 16-bit (AVX-512 builds): through float, exact both ways
          alignas(64) float rows_f[16][16], cols_f[16][16];
          for (int r = 0; r < 16; ++r) Storage<S>::load(in + r * lds, 16).store(rows_f[r]);
          simd::transpose_16x16(&rows_f[0][0], 16, &cols_f[0][0], 16);
          for (int c = 0; c < 16; ++c) Storage<S>::store(out + c * ldd, simd::Vec<float>::load(cols_f[c]), 16);
        }
      }
      for (; c0 < cols; ++c0)
        for (int64_t r = r0; r < r0 + 16; ++r) dst[c0 * ldd + r] = src[r * lds + c0];
    }
  }
  for (int64_t r = r0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
}

// out[0..cols) += sum over rows of A[r, 0..cols), rows in order (deterministic).
template <typename S>
void add_column_sums(int64_t rows, int64_t cols, const S* A_, int64_t lda, acc_t<S>* out) {
  using T = acc_t<S>;
  for (int64_t r = 0; r < rows; ++r)
    for_each_vector<T>(0, cols, [&](int64_t c, int64_t n) {
      store(out + c, load(out + c, n) + Storage<S>::load(A_ + r * lda + c, n), n);
    });
}

// dst = src converted to storage, row by row.
template <typename S>
void to_storage(int64_t rows, int64_t cols, const acc_t<S>* src, int64_t lds, S* dst, int64_t ldd) {
  using T = acc_t<S>;
  for (int64_t r = 0; r < rows; ++r)
    for_each_vector<T>(0, cols, [&](int64_t c, int64_t n) {
      Storage<S>::store(dst + r * ldd + c, load(src + r * lds + c, n), n);
    });
}

// The machine's peak for this build, for reports (fraction of peak): 12
// independent chains of vector FMAs on registers, no memory traffic (enough
// chains to cover the FMA latency on two pipes); for BFloat16 in the
// AVX512-BF16 build, chains of its dot-product instruction. Returns a checksum
// (so the loop is kept) and the flops done in *flops.
template <typename S>
double fma_loop(int64_t iterations, double* flops) {
  using T = acc_t<S>;
  using V = simd::Vec<T>;
  constexpr int kChains = 12;
#if defined(RNNFAST_NATIVE_BF16)
  if constexpr (std::is_same_v<S, c10::BFloat16>) {
    __m512 acc[kChains];
    for (int j = 0; j < kChains; ++j) acc[j] = _mm512_set1_ps(float(j));
    const __m512bh m = (__m512bh)_mm512_set1_epi32(0x3F803F80);  // (1.0, 1.0) in bf16
    for (int64_t i = 0; i < iterations; ++i)
      for (int j = 0; j < kChains; ++j) acc[j] = _mm512_dpbf16_ps(acc[j], m, m);
    __m512 sum = acc[0];
    for (int j = 1; j < kChains; ++j) sum = _mm512_add_ps(sum, acc[j]);
    *flops = 4.0 * kChains * 16 * double(iterations);  // two multiply-adds per lane
    return double(_mm512_reduce_add_ps(sum));
  }
#endif
  // Start values read through volatile: with compile-time constants the
  // compiler evaluates the first rounds itself, finds a fixed point (in float,
  // x * 0.9999999 + 1e-7 rounds back to x near 1) and drops the loop (the
  // generic build's array vectors measured 3x the machine's peak that way).
  volatile T start = T(1), scale = T(0.9999999), add = T(1e-7);
  V acc[kChains];
  for (int j = 0; j < kChains; ++j) acc[j] = V::broadcast(start + T(j) * T(1e-3));
  const V m = V::broadcast(scale), a = V::broadcast(add);
  for (int64_t i = 0; i < iterations; ++i)
    for (int j = 0; j < kChains; ++j) acc[j] = simd::fmadd(acc[j], m, a);
  V sum = acc[0];
  for (int j = 1; j < kChains; ++j) sum = sum + acc[j];
  *flops = 2.0 * kChains * V::size * double(iterations);
  return double(simd::reduce_add(sum));
}
