// CPU kernels that are compiled once per instruction set (cpu/kernels_*.cpp)
// and picked at run time (cpu/dispatch.cpp): the fused per-step gate loops and
// the GEMMs of the time loops. They see raw pointers only: no allocation, no
// exceptions, so they are safe inside the parallel time loop.
//
// Two types per table, by role (flashrnn's lesson: separate dtypes per role):
//   S  storage: inputs, weights, outputs, saved activations, gradients handed
//      to torch (float, double, BFloat16, Half);
//   A  accumulation: GEMM results, gate math, the running cell state and the
//      recurrent gradients, weight-gradient sums (acc_t<S>: float for the
//      16-bit types, S otherwise).
// Packed GEMM panels are opaque bytes: each build chooses their layout (fp32
// panels, or bf16 k-pairs for AVX512-BF16's dot-product instruction).
//
// A "row kernel" processes rows [0, rows) of one time step and the hidden units
// [u0, u1) of one column slice. All pointers are the step's first row; every
// buffer has its own row stride (ld_*) in elements.
#pragma once

#include <cstdint>

#include "../acc_type.h"
#include "../controls.h"
#include "../cells.h"
#include "../loop_shared.h"

namespace rnnfast::cpu {

// Forward buffers come in two layouts. Per-step scratch of the time loop is
// *slice-blocked*: a slice's columns are contiguous, gate g of its unit
// u0 + j at column g*(u1-u0) + j (pointers point at the slice's first
// column). Saved activations use torch's layout: gate g of unit u at g*H + u.
//
// One row-argument struct serves every cell; each cell's kernel reads the
// fields its CellInfo (cells.h) says it has and ignores the rest.
template <typename S>
struct CellForwardRows {
  using A = acc_t<S>;
  int64_t rows = 0, u0 = 0, u1 = 0, H = 0;
  const A* gx = nullptr;       // [rows, G*nu] slice-blocked x @ w_ih^T, plus h_{t-1} @ w_hh^T
  int64_t ld_gx = 0;           //   unless the cell keeps that apart (no bias)
  const A* gh = nullptr;       // separate_hidden: [rows, G*nu] slice-blocked h_{t-1} @ w_hh^T
  int64_t ld_gh = 0;
  const A* bias = nullptr;     // [G*H] b_ih + b_hh (separate_hidden: + b_hh only outside the
                               //   last block), zeros without bias
  const A* bias_hn = nullptr;  // separate_hidden: [H] b_hh of the last block
  PrevRows<S> h_prev;          // separate_hidden: h_{t-1} of each row
  A* c = nullptr;              // cell_state: [rows, H] in c_{t-1}, out c_t
  int64_t ld_c = 0;
  S* h = nullptr;              // [rows, H] out: h_t (LSTM: m_t = o*tanh(c_t), w_hr's input with
  int64_t ld_h = 0;            //   a projection)
  S* gates = nullptr;          // training: [rows, G*H] out: activated gates
  int64_t ld_gates = 0;
  S* saved = nullptr;          // training: [rows, H] out: LSTM c_t, GRU W_hn h + b_hn
  int64_t ld_saved = 0;
};

template <typename S>
struct CellBackwardRows {
  using A = acc_t<S>;
  int64_t rows = 0, u0 = 0, u1 = 0, H = 0;
  const S* gates = nullptr;  // [rows, G*H] saved activated gates
  int64_t ld_gates = 0;
  const S* saved = nullptr;  // [rows, H] saved LSTM c_t, GRU W_hn h + b_hn
  int64_t ld_saved = 0;
  const S* h = nullptr;      // [rows, H] the step's output h_t (RNN: its activation)
  int64_t ld_h = 0;
  PrevRows<S> prev;          // backward_prev: LSTM c_{t-1}, GRU h_{t-1} of each row
  const S* dy = nullptr;     // the gradient w.r.t. h_t (LSTM: m_t) is dy + dh, either of
  int64_t ld_dy = 0;         //   which may be null: [rows, H] of the output's gradient,
  const A* dh = nullptr;     //   and the recurrent part (or, with a projection, the whole
  int64_t ld_dh = 0;         //   gradient of m_t)
  A* dc = nullptr;           // cell_state: [rows, H] in dc_t, out dc_{t-1}
  int64_t ld_dc = 0;
  A* dh_direct = nullptr;    // separate_hidden: [rows, H] out: the direct path z*dh to h_{t-1}
  int64_t ld_dh_direct = 0;  //   (may alias dh: each element is read before it is written)
  S* dg = nullptr;           // [rows, G*H] out: pre-activation gradients (separate_hidden: the
  int64_t ld_dg = 0;         //   hidden side): the A operand of the backward GEMMs
  S* dgxn = nullptr;         // separate_hidden: [rows, H] out: the input side of the last block
  int64_t ld_dgxn = 0;
};

// The fused pointwise kernels of one cell.
template <typename S>
struct CellKernels {
  void (*forward_train)(const CellForwardRows<S>&);
  void (*forward_infer)(const CellForwardRows<S>&);
  void (*backward)(const CellBackwardRows<S>&);
};

// Column n of a matrix to pack lives at src + offset(n) (rows k at + k*k_stride):
//   offset(n) = base + (n / block) * block_stride + (n % block) * col_stride.
// Lets pack_b gather a slice of transposed, gate-blocked weights directly,
// e.g. the columns {g*H + u0 + j} of w_hh^T for all gates g.
struct ColumnMap {
  int64_t base = 0;
  int64_t block = 1;
  int64_t block_stride = 0;
  int64_t col_stride = 1;
  int64_t first = 0;  // column n of this map is column first + n of the whole (a panel's share)
  int64_t offset(int64_t n) const {
    n += first;
    return base + (n / block) * block_stride + (n % block) * col_stride;
  }
  ColumnMap from(int64_t n) const {
    ColumnMap m = *this;
    m.first += n;
    return m;
  }
};

template <typename S>
struct KernelTable {
  using A = acc_t<S>;
  const char* isa;
  // The GEMM of the time loop, row-major C[M,N] = A[M,K] @ B[K,N] + beta*C
  // (C and beta in A), with B packed once by pack_b into opaque panels of
  // packed_b_bytes(K, N) bytes (64-byte aligned), read first to last or, with
  // `descending`, last to first (the same result bit for bit).
  int64_t (*packed_b_bytes)(int64_t K, int64_t N);
  void (*pack_b)(int64_t K, int64_t N, const S* src, int64_t k_stride, ColumnMap columns,
                 void* packed);
  void (*gemm_packed)(int64_t M, int64_t N, int64_t K, const S* A_, int64_t lda,
                      const void* packed, A beta, A* C, int64_t ldc, bool descending);
  // The same product with B read from `src` as pack_b reads it, for a
  // weight multiplied once per call (a one-step call, a sequence's single
  // chunk), which the panel cache would read twice (fingerprint, panels).
  // Each panel is packed into `scratch` (streamed_scratch_bytes(M_max, K,
  // k_stride) bytes serve every call of up to M_max rows; 64-byte aligned) right before every
  // row of A passes over it: the weight is read once, each panel hot when
  // used. Same tiles, same sums as gemm_packed over pack_b's panels
  // (identical results). Where streams_weight_as_a(M, k_stride) (a
  // k-contiguous weight times a few dozen rows), the weight is instead read
  // in place as the A operand of C^T = W A^T (gemm_impl.h, gemm_weight_as_a):
  // every output summed in k order, one fmadd of beta * C, so the same
  // values as gemm_packed wherever its tiles keep one accumulator set (tiles
  // of 4+ rows).
  void (*gemm_streamed)(int64_t M, int64_t N, int64_t K, const S* A_, int64_t lda, const S* src,
                        int64_t k_stride, ColumnMap columns, A beta, A* C, int64_t ldc, void* scratch);
  int64_t (*streamed_scratch_bytes)(int64_t M_max, int64_t K, int64_t k_stride);
  bool (*streams_weight_as_a)(int64_t M, int64_t k_stride);
  // C[M,N] = A[M,K] @ W[N,K]^T + beta*C reading W's rows in place (no packing):
  // for calls too small to repay packing.
  void (*gemm_direct)(int64_t M, int64_t N, int64_t K, const S* A_, int64_t lda, const S* W,
                      int64_t ldw, A beta, A* C, int64_t ldc);
  // C[M,N] = A[M,K] @ B[K,N] + beta*C with B row-major as stored (rows ldb
  // apart, no packing): for calls too small to repay packing.
  void (*gemm_rows)(int64_t M, int64_t N, int64_t K, const S* A_, int64_t lda, const S* B,
                    int64_t ldb, A beta, A* C, int64_t ldc);
  // C[M,N] = A[K,M]^T @ B[K,N] + beta*C with B's row k at rows[k] + col0,
  // neither operand transposed nor packed: the weight gradients of a few rows.
  void (*outer_product_sum)(int64_t M, int64_t N, int64_t K, const S* A_, int64_t lda, const S* const* rows,
                            int64_t col0, A beta, A* C, int64_t ldc);
  // dst[c, r] = src[r, c] for a [rows, cols] block (A operands of the weight
  // gradients, which sum over rows).
  void (*transpose)(int64_t rows, int64_t cols, const S* src, int64_t lds, S* dst, int64_t ldd);
  // Packs B[K, N] whose row k is row_ptrs[k] + col0 (rows gathered from anywhere).
  void (*pack_b_rows)(int64_t K, int64_t N, const S* const* row_ptrs, int64_t col0, void* packed);
  // out[0, cols) += column sums of A[rows, cols] (rows added in order: deterministic).
  void (*add_column_sums)(int64_t rows, int64_t cols, const S* A_, int64_t lda, A* out);
  // dst[r, c] = src[r, c] converted to storage (rounded to nearest even).
  void (*to_storage)(int64_t rows, int64_t cols, const A* src, int64_t lds, S* dst, int64_t ldd);
  // Register-only FMA loop for measuring the peak (flops done in *flops).
  double (*fma_loop)(int64_t iterations, double* flops);
  // 64-bit hash of `bytes` bytes, the same in every build (panel_cache.h).
  uint64_t (*fingerprint)(const void* p, int64_t bytes);
  CellKernels<S> cells[kNumCellTypes];  // indexed by CellType
};

// The table for the instruction set chosen at run time (cpu/dispatch.cpp).
template <typename S>
const KernelTable<S>& kernels();

// The chosen instruction set (cpu_capability, set_cpu_capability,
// available_cpu_capabilities: controls.h): "avx512_bf16", "avx512", "avx2" or
// "default". The environment variable RNNFAST_CPU_CAPABILITY (or
// set_cpu_capability) can lower it, e.g. to test the generic build on an
// AVX-512 machine.

}  // namespace rnnfast::cpu
