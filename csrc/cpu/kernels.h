// CPU kernels that are compiled once per instruction set (cpu/kernels_*.cpp)
// and picked at run time (cpu/dispatch.cpp): the fused per-step gate loops and
// a small-matrix GEMM. They see raw pointers only: no allocation, no
// exceptions, so they are safe inside the parallel time loop.
//
// A "row kernel" processes rows [0, rows) of one time step and the hidden units
// [u0, u1) of one column slice. All pointers are the step's first row; every
// buffer has its own row stride (ld_*) in elements.
#pragma once

#include <cstdint>

#include "../cells.h"

namespace rnnfast::cpu {

// The previous state of each row of a step: rows [0, n_first) continue a
// sequence from the previous step (`first`), the others start from the
// initial state (`initial`). Only the reverse direction of a packed batch has
// rows of the second kind after its first step.
template <typename T>
struct PrevRows {
  const T* first = nullptr;
  int64_t ld_first = 0;
  int64_t n_first = 0;
  const T* initial = nullptr;
  int64_t ld_initial = 0;

  const T* row(int64_t b) const {
    return b < n_first ? first + b * ld_first : initial + b * ld_initial;
  }
};

// Forward buffers come in two layouts. Per-step scratch of the time loop is
// *slice-blocked*: a slice's columns are contiguous, gate g of its unit
// u0 + j at column g*(u1-u0) + j (pointers point at the slice's first
// column). Saved activations use torch's layout: gate g of unit u at g*H + u.
//
// One row-argument struct serves every cell; each cell's kernel reads the
// fields its CellInfo (cells.h) says it has and ignores the rest.
template <typename T>
struct CellForwardRows {
  int64_t rows = 0, u0 = 0, u1 = 0, H = 0;
  const T* gx = nullptr;       // [rows, G*nu] slice-blocked x @ w_ih^T, plus h_{t-1} @ w_hh^T
  int64_t ld_gx = 0;           //   unless the cell keeps that apart (no bias)
  const T* gh = nullptr;       // separate_hidden: [rows, G*nu] slice-blocked h_{t-1} @ w_hh^T
  int64_t ld_gh = 0;
  const T* bias = nullptr;     // [G*H] b_ih + b_hh (separate_hidden: + b_hh only outside the
                               //   last block), zeros without bias
  const T* bias_hn = nullptr;  // separate_hidden: [H] b_hh of the last block
  PrevRows<T> h_prev;          // separate_hidden: h_{t-1} of each row
  T* c = nullptr;              // cell_state: [rows, H] in c_{t-1}, out c_t
  int64_t ld_c = 0;
  T* h = nullptr;              // [rows, H] out: h_t (LSTM: m_t = o*tanh(c_t), w_hr's input with
  int64_t ld_h = 0;            //   a projection)
  T* gates = nullptr;          // training: [rows, G*H] out: activated gates
  int64_t ld_gates = 0;
  T* saved = nullptr;          // training: [rows, H] out: LSTM c_t, GRU W_hn h + b_hn
  int64_t ld_saved = 0;
};

template <typename T>
struct CellBackwardRows {
  int64_t rows = 0, u0 = 0, u1 = 0, H = 0;
  const T* gates = nullptr;  // [rows, G*H] saved activated gates
  int64_t ld_gates = 0;
  const T* saved = nullptr;  // [rows, H] saved LSTM c_t, GRU W_hn h + b_hn
  int64_t ld_saved = 0;
  const T* h = nullptr;      // [rows, H] the step's output h_t (RNN: its activation)
  int64_t ld_h = 0;
  PrevRows<T> prev;          // backward_prev: LSTM c_{t-1}, GRU h_{t-1} of each row
  const T* dh_a = nullptr;   // dh = dh_a + dh_b: gradient w.r.t. h_t (LSTM: m_t);
  int64_t ld_dh_a = 0;       //   dh_b may be null
  const T* dh_b = nullptr;
  int64_t ld_dh_b = 0;
  T* dc = nullptr;           // cell_state: [rows, H] in dc_t, out dc_{t-1}
  int64_t ld_dc = 0;
  T* dh_direct = nullptr;    // separate_hidden: [rows, H] out: the direct path z*dh to h_{t-1}
  int64_t ld_dh_direct = 0;  //   (may alias dh_b: each element is read before it is written)
  T* dg = nullptr;           // [rows, G*H] out: pre-activation gradients (separate_hidden: the
  int64_t ld_dg = 0;         //   hidden side)
  T* dgxn = nullptr;         // separate_hidden: [rows, H] out: the input side of the last block
  int64_t ld_dgxn = 0;
};

// The fused pointwise kernels of one cell.
template <typename T>
struct CellKernels {
  void (*forward_train)(const CellForwardRows<T>&);
  void (*forward_infer)(const CellForwardRows<T>&);
  void (*backward)(const CellBackwardRows<T>&);
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
  int64_t offset(int64_t n) const { return base + (n / block) * block_stride + (n % block) * col_stride; }
};

template <typename T>
struct KernelTable {
  const char* isa;
  // The GEMM of the time loop, row-major C[M,N] = A[M,K] @ B[K,N] + beta*C,
  // with B packed once by pack_b into panels of panel_width() columns
  // (packed_b_size(K, N) elements).
  int64_t (*panel_width)();
  int64_t (*packed_b_size)(int64_t K, int64_t N);
  void (*pack_b)(int64_t K, int64_t N, const T* src, int64_t k_stride, ColumnMap columns,
                 T* packed);
  void (*gemm_packed)(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* packed,
                      T beta, T* C, int64_t ldc);
  // C[M,N] = A[M,K] @ W[N,K]^T + beta*C reading W's rows in place (no packing):
  // for calls too small to repay packing.
  void (*gemm_direct)(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* W,
                      int64_t ldw, T beta, T* C, int64_t ldc);
  // C[M,N] = A[M,K] @ B[K,N] + beta*C with B row-major as stored (rows ldb
  // apart, no packing): for calls too small to repay packing.
  void (*gemm_rows)(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B,
                    int64_t ldb, T beta, T* C, int64_t ldc);
  // dst[c, r] = src[r, c] for a [rows, cols] block (A operands of the weight
  // gradients, which sum over rows).
  void (*transpose)(int64_t rows, int64_t cols, const T* src, int64_t lds, T* dst, int64_t ldd);
  // Packs B[K, N] whose row k is row_ptrs[k] + col0 (rows gathered from anywhere).
  void (*pack_b_rows)(int64_t K, int64_t N, const T* const* row_ptrs, int64_t col0, T* packed);
  // out[0, cols) += column sums of A[rows, cols] (rows added in order: deterministic).
  void (*add_column_sums)(int64_t rows, int64_t cols, const T* A, int64_t lda, T* out);
  // Register-only FMA loop for measuring the peak (flops done in *flops).
  double (*fma_loop)(int64_t iterations, double* flops);
  CellKernels<T> cells[kNumCellTypes];  // indexed by CellType
};

// The table for the instruction set chosen at run time (cpu/dispatch.cpp).
const KernelTable<float>& kernels_f32();
const KernelTable<double>& kernels_f64();
template <typename T>
const KernelTable<T>& kernels();

// Chosen instruction set: "avx512", "avx2" or "default". The environment
// variable RNNFAST_CPU_CAPABILITY (or set_cpu_capability) can lower it, e.g.
// to test the generic build on an AVX-512 machine.
const char* cpu_capability();
void set_cpu_capability(const char* name);  // throws on an unsupported name
// Instruction sets compiled into this build and supported by this CPU.
const char* const* available_cpu_capabilities(int* count);

}  // namespace rnnfast::cpu
