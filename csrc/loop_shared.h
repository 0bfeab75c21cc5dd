// What the CPU time loops (cpu/forward_loop.cpp, cpu/backward_loop.cpp) and
// the GPU algorithm (gpu/layer_loop.h, its pointwise and persistent kernels)
// share, device-neutral and compiled by nvcc too (RNNFAST_HD): the previous
// state of a step's rows, the bias folding rule, and the few-rows threshold.
// The step state a training forward saves is SavedLayout::step_state
// (layer_view.h).
#pragma once

#include <cstdint>

#include "cell_math.h"
#include "cells.h"

namespace rnnfast {

// The previous state of each row of a step: rows [0, n_first) continue a
// sequence from the previous step (`first`), the others start from the
// initial state (`initial`). Only the first step, and the reverse direction
// of a packed batch, have rows of the second kind.
template <typename T>
struct PrevRows {
  const T* first = nullptr;
  int64_t ld_first = 0;
  int64_t n_first = 0;
  const T* initial = nullptr;
  int64_t ld_initial = 0;

  RNNFAST_HD const T* row(int64_t b) const {
    return b < n_first ? first + b * ld_first : initial + b * ld_initial;
  }
};

// Biases are folded once per call into one vector of G*H columns, in the
// accumulation type: b_ih + b_hh in the first folded_bias_columns() columns,
// b_ih alone beyond (a separate_hidden cell: GRU's n block, where r
// multiplies W_hn h + b_hn, so that block's b_hh stays apart as bias_hn).
inline int64_t folded_bias_columns(const CellInfo& c, int64_t H) {
  return c.separate_hidden ? (c.gates - 1) * H : c.gates * H;
}

// Calls of at most this many rows (one step of a small batch) read the
// weights where they are: packing costs about as much as one GEMM pass over
// them, which such a call does not repay.
constexpr int64_t kMaxUnpackedRows = 4;

}  // namespace rnnfast
