// Bodies of the per-instruction-set CPU kernels declared in cpu/kernels.h.
//
// Included once by each cpu/kernels_<isa>.cpp, which is compiled with that
// instruction set's flags and CPU_CAPABILITY=<ISA>. simd.h puts its vectors
// into the inline namespace rnnfast::simd::CPU_CAPABILITY, and this file puts
// the kernels into rnnfast::cpu::CPU_CAPABILITY, so the builds never share a
// symbol. No torch vector header (at::vec) is included: the stable ABI
// (issue 16) refuses them. Keep the included files free of anything that
// could emit out-of-line code shared with other translation units (no
// std::string, no exceptions).
//
//   simd.h           the project's own vector layer: every vector operation
//                    of the kernels below
//   vec_math.h       exp/sigmoid/tanh, the Math policy of cell_math.h, loads,
//                    stores, storage <-> accumulation conversions
//   gemm_impl.h      packing, the GEMMs, helpers of the weight gradients
//   cell_rows_impl.h the fused pointwise row kernels of every cell
//   fingerprint_impl.h  the panel cache's hash of a weight block
#pragma once

#ifndef CPU_CAPABILITY
#error "kernels_impl.h must be included from a kernels_<isa>.cpp compiled with CPU_CAPABILITY set"
#endif

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "../cell_math.h"
#include "kernels.h"
#include "simd.h"

namespace rnnfast::cpu::CPU_CAPABILITY {

#include "vec_math.h"
#include "gemm_impl.h"
#include "cell_rows_impl.h"
#include "fingerprint_impl.h"

template <typename S>
const KernelTable<S>* make_table(const char* isa) {
  static const KernelTable<S> table{
      isa,
      &packed_b_bytes<S>,
      &pack_b<S>,
      &gemm_packed<S>,
      &gemm_streamed<S>,
      &streamed_scratch_bytes<S>,
      &streams_weight_as_a<S>,
      &gemm_direct<S>,
      &gemm_rows<S>,
      &outer_product_sum<S>,
      &transpose<S>,
      &pack_b_rows<S>,
      &add_column_sums<S>,
      &to_storage<S>,
      &fma_loop<S>,
      &fingerprint,
      {
          // Indexed by CellType: LSTM, GRU, RNN_TANH, RNN_RELU.
          {&lstm_forward_rows<S, true>, &lstm_forward_rows<S, false>, &lstm_backward_rows<S>},
          {&gru_forward_rows<S, true>, &gru_forward_rows<S, false>, &gru_backward_rows<S>},
          {&rnn_forward_rows<S, RnnActivation::kTanh>, &rnn_forward_rows<S, RnnActivation::kTanh>,
           &rnn_backward_rows<S, RnnActivation::kTanh>},
          {&rnn_forward_rows<S, RnnActivation::kRelu>, &rnn_forward_rows<S, RnnActivation::kRelu>,
           &rnn_backward_rows<S, RnnActivation::kRelu>},
      },
  };
  static_assert(kNumCellTypes == 4, "a new cell needs its kernels in this table");
  return &table;
}

}  // namespace rnnfast::cpu::CPU_CAPABILITY

// Defines the entry points of one instruction-set build; dispatch.cpp declares
// them for every build compiled in.
#define RNNFAST_DEFINE_KERNEL_TABLES(isa_name)                                               \
  namespace rnnfast::cpu::CPU_CAPABILITY {                                                   \
  const KernelTable<float>* table_f32() { return make_table<float>(isa_name); }              \
  const KernelTable<double>* table_f64() { return make_table<double>(isa_name); }            \
  const KernelTable<c10::BFloat16>* table_bf16() { return make_table<c10::BFloat16>(isa_name); } \
  const KernelTable<c10::Half>* table_f16() { return make_table<c10::Half>(isa_name); }       \
  }
