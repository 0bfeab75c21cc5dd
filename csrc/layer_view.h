// One validated layer-direction as raw memory: what the CPU time loops
// (cpu/forward_loop.cpp, cpu/backward_loop.cpp) read and write. No torch
// header: the loops compile on the stable ABI's side (issue 16); the
// operators' CPU kernels (cpu/ops_cpu.cpp) check the tensors, allocate the
// outputs and hand the loops these views.
//
// Layout and sizes are layer.h's (time-major packed rows; G gates, H hidden,
// P = proj_size or H, B = batch, N rows, T steps). Every pointer is to
// contiguous row-major memory of the call's storage type, except y and dy,
// whose rows may be further apart than P (a column slice of a wider buffer).
#pragma once

#include <cstdint>

#include "cells.h"
#include "step_plan.h"

namespace rnnfast {

// Sizes of a validated call (layer_checks.cpp).
struct LayerDims {
  int64_t N, T, B, I, H, P, G;
  bool proj;
};

// The storage types the loops are built for.
enum class StorageType { kFloat, kDouble, kBFloat16, kHalf };

struct LayerView {
  CellType cell;
  StorageType dtype;
  LayerDims d;
  bool reverse;                             // process steps T-1 .. 0
  const void* x = nullptr;                  // [N, I]
  const int64_t* batch_sizes = nullptr;     // [T]; nullptr: padded (T = N / B)
  const void* h0 = nullptr;                 // [B, P]
  const void* c0 = nullptr;                 // [B, H], cells with a cell state only
  const void* w_ih = nullptr;               // [G*H, I]
  const void* w_hh = nullptr;               // [G*H, P]
  const void* b_ih = nullptr;               // [G*H] or nullptr (then b_hh too)
  const void* b_hh = nullptr;               // [G*H] or nullptr
  const void* w_hr = nullptr;               // [P, H], LSTM with projection only
  // The caller's opaque handles of the tensors holding w_ih, w_hh, w_hr, for
  // the panel cache's weak reference to them (cpu/panel_cache.h, WeightOwner);
  // nullptr: none.
  const void* w_ih_owner = nullptr;
  const void* w_hh_owner = nullptr;
  const void* w_hr_owner = nullptr;
};

// Where a forward writes (allocated by the caller).
struct LayerOutputView {
  void* y = nullptr;          // [N, P]
  void* h_n = nullptr;        // [B, P]
  void* c_n = nullptr;        // [B, H], cells with a cell state only
  void* workspace = nullptr;  // [N * saved_width], training only
};

// What a backward reads.
struct LayerBackwardView {
  LayerView in;
  const void* y = nullptr;          // [N, P], rows ld_y apart
  int64_t ld_y = 0;
  const void* workspace = nullptr;  // the training forward's
  const void* dy = nullptr;         // [N, P], rows ld_dy apart
  int64_t ld_dy = 0;
  const void* dh_n = nullptr;       // [B, P]
  const void* dc_n = nullptr;       // [B, H], cells with a cell state only
};

// Where a backward writes its gradients (allocated by the caller), in three
// groups asked for whole: dx; dh0 (and dc0); the weights (and biases,
// projection). nullptr where one is not asked for, does not exist, or has no
// elements (input_size 0).
struct LayerGradView {
  bool need_dx = false, need_dstate = false, need_dweights = false;
  void* dx = nullptr;     // [N, I]
  void* dh0 = nullptr;    // [B, P]
  void* dc0 = nullptr;    // [B, H]
  void* dw_ih = nullptr;  // [G*H, I]
  void* dw_hh = nullptr;  // [G*H, P]
  void* db_ih = nullptr;  // [G*H]
  void* db_hh = nullptr;  // [G*H]
  void* dw_hr = nullptr;  // [P, H]
};

// Where each saved block starts in a training forward's workspace, in
// elements ([N, width] row-major blocks, cells.h); -1 where the cell saves
// no such block.
struct SavedLayout {
  int64_t gates = -1;     // [N, G*H] activated gates
  int64_t cell = -1;      // [N, H] LSTM c_t
  int64_t proj_in = -1;   // [N, H] LSTM with projection: m_t
  int64_t hidden_n = -1;  // [N, H] GRU: W_hn h + b_hn

  static SavedLayout of(CellType cell, const LayerDims& d) {
    const CellInfo& info = cell_info(cell);
    SavedLayout s;
    int64_t offset = 0;
    for (int k = 0; k < info.num_saved; ++k) {
      const SavedBlock block = info.saved[k];
      switch (block) {
        case SavedBlock::kGates: s.gates = offset; break;
        case SavedBlock::kCell: s.cell = offset; break;
        case SavedBlock::kProjIn: s.proj_in = offset; break;
        case SavedBlock::kHiddenN: s.hidden_n = offset; break;
      }
      offset += d.N * saved_block_width(info, block, d.H);
    }
    if (d.proj) s.proj_in = offset;
    return s;
  }
  // The [N, H] block of the cell's step state (LSTM c_t, GRU W_hn h + b_hn),
  // which its fused kernels write in the forward and read in the backward as
  // `saved`; -1 for a cell that has none.
  int64_t step_state(CellType cell) const {
    const CellInfo& info = cell_info(cell);
    for (int k = 0; k < info.num_saved; ++k) {
      if (info.saved[k] == SavedBlock::kCell) return this->cell;
      if (info.saved[k] == SavedBlock::kHiddenN) return hidden_n;
    }
    return -1;
  }
  // The block at `offset` of a workspace of S, or nullptr for -1.
  template <typename S>
  static S* block(S* workspace, int64_t offset) {
    return offset < 0 ? nullptr : workspace + offset;
  }
};

// The step plan of a validated call.
inline StepPlan make_step_plan(const LayerView& v) {
  return v.batch_sizes ? StepPlan(v.batch_sizes, v.d.T, v.reverse) : StepPlan(v.d.T, v.d.B, v.reverse);
}

// The CPU time loops (cpu/forward_loop.cpp, cpu/backward_loop.cpp).
void forward_loop_cpu(const LayerView& in, const LayerOutputView& out, bool training);
void backward_loop_cpu(const LayerBackwardView& b, const LayerGradView& g);

}  // namespace rnnfast
