// The executor of gpu/layer_loop.h on the CPU: what the CUDA executor does,
// without a GPU, so the CPU test suite checks the GPU algorithm (its GEMM
// arguments, row bookkeeping, packed-sequence handling, accumulations and
// conversions) against torch.nn. Column-major GEMMs with cuBLAS's semantics
// as plain loops over the raw buffers (products summed in the accumulation
// type, like cublasGemmEx with a 32-bit compute type); the element-wise work
// as loops over the very functions the CUDA kernels run per thread. With
// allow_tf32, fp32 GEMM inputs are rounded to TF32's 10 mantissa bits (to
// nearest even here; the hardware's conversion may round ties differently or
// truncate), so the argument's path through the ops and their autograd is
// visible on the CPU at TF32's precision.
//
// Not a fast path: it exists for tests (rnnfast._C._set_gpu_emulation).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../check.h"
#include "path.h"
#include "persistent.h"
#include "persistent_backward.h"
#include "pointwise.h"

namespace rnnfast::gpu {

// `v` rounded to TF32's 10 mantissa bits, to nearest even (Inf and NaN kept).
inline float round_to_tf32(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  if ((bits & 0x7f800000u) != 0x7f800000u) {
    bits += 0x0fffu + ((bits >> 13) & 1u);
    bits &= 0xffffe000u;
  }
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

class EmulatedExec {
 public:
  // `tf32`: the ops' allow_tf32 (CudaExec's compute type for fp32 GEMMs).
  explicit EmulatedExec(bool tf32) : tf32_(tf32) {}

  template <typename S, typename Out>
  void gemm_cm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const S* A, int64_t lda,
               const S* B, int64_t ldb, acc_t<S> beta, Out* C, int64_t ldc, bool exact) {
    // gemm_rm writes empty products itself: a GEMM with k == 0 here is a bug.
    RNNFAST_CHECK(k > 0, "rnnfast: internal error: a GEMM with k == 0 reached the executor");
    if constexpr (std::is_same_v<S, float>) {
      if (tf32_ && !exact) {  // the same GEMM on TF32-rounded copies of its inputs
        const std::vector<float> a = tf32_copy(A, (trans_a ? m - 1 : k - 1) * lda + (trans_a ? k : m));
        const std::vector<float> b = tf32_copy(B, (trans_b ? k - 1 : n - 1) * ldb + (trans_b ? n : k));
        gemm_loops<S, Out>(trans_a, trans_b, m, n, k, a.data(), lda, b.data(), ldb, beta, C, ldc);
        return;
      }
    }
    gemm_loops<S, Out>(trans_a, trans_b, m, n, k, A, lda, B, ldb, beta, C, ldc);
  }

  // Row-major C[rows, cols] (row stride ldc) = 0.
  template <typename Out>
  void zero_rows(int64_t rows, int64_t cols, Out* C, int64_t ldc) {
    for (int64_t r = 0; r < rows; ++r) std::fill_n(C + r * ldc, cols, Out(0));
  }

  template <typename S>
  void step_forward(const StepForwardArgs<S>& a, bool training) {
    for (int64_t b = 0; b < a.rows; ++b)
      for (int64_t u = 0; u < a.H; ++u) {
        if (training) {
          step_forward_element<S, true>(a, b, u);
        } else {
          step_forward_element<S, false>(a, b, u);
        }
      }
  }

  template <typename S>
  void step_backward(const StepBackwardArgs<S>& a) {
    for (int64_t b = 0; b < a.rows; ++b)
      for (int64_t u = 0; u < a.H; ++u) step_backward_element<S>(a, b, u);
  }

  template <typename To, typename From>
  void convert(const ConvertArgs<To, From>& a) {
    for (int64_t r = 0; r < a.rows; ++r)
      for (int64_t c = 0; c < a.cols; ++c) convert_element<To, From>(a, r, c);
  }

  template <typename S>
  void add_rows(const AddRowsArgs<S>& a) {
    for (int64_t r = 0; r < a.rows; ++r)
      for (int64_t c = 0; c < a.cols; ++c) add_rows_element<S>(a, r, c);
  }

  // The persistent kernels' geometry on the emulated device (gpu/path.h: one block per SM).
  template <typename S>
  PersistentGeometry plan_persistent(PersistentKind kind, int64_t G, int64_t H, int64_t B) {
    const EmulatedDevice dev = emulated_device();
    return gpu::plan_persistent<S>(kind, G, H, B, size_t(dev.smem_per_block),
                                   [&](size_t) { return int64_t(dev.sms); });
  }

  // One persistent launch: the kernel's phases (cuda/persistent_kernels.cuh) block by block and
  // thread by thread, each block with its own shared memory, kept across the launch's steps. The
  // blocks of a step are independent (gpu/persistent.h), so running them one after another within
  // each step is one of the orders the grid barrier allows.
  template <typename S>
  void persistent_forward(const PersistentForwardArgs<S>& a, bool training) {
    const PersistentGeometry& g = a.geom;
    const int nt = g.threads;
    BlockMemory<S> smem(g);
    for (int block = 0; block < g.blocks; ++block)
      for (int tid = 0; tid < nt; ++tid) persistent_load_weights(a, block, tid, nt, smem(block).w);
    for (int s = 0; s < a.n_steps; ++s) {
      const PersistentStep& st = a.steps[s];
      for (int block = 0; block < g.blocks; ++block) {
        const PersistentSmem<S> sm = smem(block);
        for (int r0 = 0; r0 < st.rows; r0 += g.row_tile) {
          for (int tid = 0; tid < nt; ++tid) persistent_load_rows(a, st, r0, tid, nt, sm.h);
          for (int tid = 0; tid < nt; ++tid) persistent_partial_dots(a, tid, nt, sm.w, sm.h, sm.part);
          for (int tid = 0; tid < nt; ++tid) persistent_store_products(a, st, r0, block, tid, nt, sm.part);
          for (int tid = 0; tid < nt; ++tid) {
            if (training) {
              persistent_pointwise<S, true>(a, st, r0, block, tid, nt);
            } else {
              persistent_pointwise<S, false>(a, st, r0, block, tid, nt);
            }
          }
        }
      }
    }
  }

  // One persistent backward launch (cuda/persistent_kernels.cuh): per step, phase A of every
  // block, then (the grid barrier) phase B of every block.
  template <typename S>
  void persistent_backward(const PersistentBackwardArgs<S>& a) {
    const PersistentGeometry& g = a.geom;
    const int nt = g.threads;
    BlockMemory<S> smem(g);
    for (int block = 0; block < g.blocks; ++block)
      for (int tid = 0; tid < nt; ++tid) persistent_backward_load_weights(a, block, tid, nt, smem(block).w);
    for (int s = 0; s < a.n_steps; ++s) {
      const PersistentStep& st = a.steps[s];
      for (int block = 0; block < g.blocks; ++block)
        for (int tid = 0; tid < nt; ++tid) persistent_backward_gates(a, st, block, tid, nt);
      for (int block = 0; block < g.blocks; ++block) {
        const PersistentSmem<S> sm = smem(block);
        for (int r0 = 0; r0 < st.rows; r0 += g.row_tile) {
          for (int tid = 0; tid < nt; ++tid) persistent_backward_load_rows(a, st, r0, tid, nt, sm.h);
          for (int tid = 0; tid < nt; ++tid) persistent_backward_partial_dots(a, tid, nt, sm.w, sm.h, sm.part);
          for (int tid = 0; tid < nt; ++tid) persistent_backward_store_dh(a, st, r0, block, tid, nt, sm.part);
        }
      }
    }
  }

 private:
  static std::vector<float> tf32_copy(const float* x, int64_t size) {
    std::vector<float> out(x, x + size);
    for (float& v : out) v = round_to_tf32(v);
    return out;
  }

  // cublasGemmEx's column-major GEMM as loops: C = op(A) op(B) + beta C.
  template <typename S, typename Out>
  static void gemm_loops(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const S* A, int64_t lda,
                         const S* B, int64_t ldb, acc_t<S> beta, Out* C, int64_t ldc) {
    using Acc = acc_t<S>;
    // Column-major X with leading dimension ld: element (r, c) at r + c*ld; op(X) its transpose
    // when trans. Each sum runs over p = 0 .. k-1 in order, in Acc.
    auto b_at = [&](int64_t p, int64_t j) { return Acc(trans_b ? B[j + p * ldb] : B[p + j * ldb]); };
    std::vector<Acc> col(static_cast<size_t>(m));  // C's column j, summed
    for (int64_t j = 0; j < n; ++j) {
      if (trans_a) {  // op(A)(i, p) = A[p + i*lda]: a dot product along A's columns
        for (int64_t i = 0; i < m; ++i) {
          Acc sum = Acc(0);
          for (int64_t p = 0; p < k; ++p) sum += Acc(A[p + i * lda]) * b_at(p, j);
          col[size_t(i)] = sum;
        }
      } else {  // op(A)(i, p) = A[i + p*lda]: column p of A scaled into the sums
        std::fill(col.begin(), col.end(), Acc(0));
        for (int64_t p = 0; p < k; ++p) {
          const Acc bpj = b_at(p, j);
          const S* a_col = A + p * lda;
          for (int64_t i = 0; i < m; ++i) col[size_t(i)] += Acc(a_col[i]) * bpj;
        }
      }
      Out* c_col = C + j * ldc;
      for (int64_t i = 0; i < m; ++i)  // C is not read when beta == 0 (cuBLAS's semantics)
        c_col[i] = Out(beta == Acc(0) ? col[size_t(i)] : col[size_t(i)] + beta * Acc(c_col[i]));
    }
  }

  // Each emulated block's shared memory, kept across the steps of a launch.
  template <typename S>
  struct BlockMemory {
    explicit BlockMemory(const PersistentGeometry& g)
        : geom(g), storage((size_t(g.blocks) * g.smem_bytes + sizeof(double) - 1) / sizeof(double)) {}
    PersistentSmem<S> operator()(int block) {
      return persistent_smem<S>(geom, reinterpret_cast<unsigned char*>(storage.data()) + size_t(block) * geom.smem_bytes);
    }
    const PersistentGeometry& geom;
    std::vector<double> storage;
  };

  bool tf32_;
};

}  // namespace rnnfast::gpu
