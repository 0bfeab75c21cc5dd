// The cell table: what distinguishes one recurrent cell from another, as data.
//
// Device-neutral (no ATen): the op layer, the CPU loops and the CUDA loops read
// it, and rnnfast/_cells.py mirrors it for the Python side (the fake kernels
// size the workspace from it). The loops branch on the properties below, never
// on the cell's name. The per-element math cannot be data, so adding a cell
// touches these places (each fails loudly when forgotten):
//   csrc/cells.h               an entry here (kNumCellTypes)
//   csrc/cell_math.h           its forward and backward math
//   csrc/cpu/cell_rows_impl.h  its three row kernels, and their row in the table of
//   csrc/cpu/kernels_impl.h    (a static_assert on kNumCellTypes)
//   csrc/gpu/pointwise.h       its case in step_forward_element / step_backward_element
//   csrc/layer_reference.cpp   its case in the differentiable reference step
//                              (switches without default: -Werror=switch)
//   rnnfast/_cells.py          the Python mirror (tests/test_ops.py: the tables agree)
//   rnnfast/reference.py       its equations (cell_step)
//   rnnfast/modules.py         a module (or a mode of one)
// tests/test_ops.py::test_every_cell_is_complete runs each cell of this table
// through the operators, the reference and a module.
//
// Saved activations. A training forward returns one flat workspace tensor,
// [N * saved_width(cell, H, proj)], laid out as consecutive row-major blocks
// (each [N, width]) in the order of `saved` below. Block kinds:
//   kGates  [N, G*H]  activated gates (LSTM i,f,g,o; GRU r,z,n)
//   kCell   [N, H]    LSTM: c_t
//   kProjIn [N, H]    LSTM with proj_size: m_t = o*tanh(c_t), the input of w_hr
//   kHiddenN[N, H]    GRU: W_hn h_{t-1} + b_hn, the part r multiplies
// A plain RNN saves nothing: its output h_t is its activation.
#pragma once

#include <cstdint>

namespace rnnfast {

enum class CellType : int { kLSTM = 0, kGRU = 1, kRNNTanh = 2, kRNNRelu = 3 };
constexpr int kNumCellTypes = 4;

enum class SavedBlock : int { kGates = 0, kCell = 1, kProjIn = 2, kHiddenN = 3 };
constexpr int kNumSavedBlocks = 4;

enum class PrevState : int { kNone = 0, kHidden = 1, kCell = 2 };

struct CellInfo {
  CellType type;
  const char* name;  // torch.nn's mode string
  int gates;         // gate blocks of H rows in w_ih and w_hh
  // Carries a cell state c next to h (c0 in, c_n out, dc0 back).
  bool cell_state;
  // May have a projection w_hr [P, H] (h = w_hr m).
  bool projection;
  // h_{t-1} @ w_hh^T is kept apart from x @ w_ih^T instead of accumulated
  // into it (GRU: r scales the n block of the hidden part). Its backward then
  // produces two gradients for that block (hidden side dG and input side dGxn)
  // and keeps a direct path z*dh to h_{t-1} that the recurrent GEMM adds to.
  bool separate_hidden;
  // Saved blocks besides the optional projection input (see above), in
  // workspace order; kProjIn is appended when the layer has a projection.
  int num_saved;
  SavedBlock saved[2];
  // The state of the previous step its backward reads, besides the saved
  // blocks of the step itself: LSTM c_{t-1}, GRU h_{t-1}, RNN none.
  PrevState backward_prev;
};

inline constexpr CellInfo kCells[kNumCellTypes] = {
    {CellType::kLSTM, "LSTM", 4, true, true, false, 2, {SavedBlock::kGates, SavedBlock::kCell},
     PrevState::kCell},
    {CellType::kGRU, "GRU", 3, false, false, true, 2, {SavedBlock::kGates, SavedBlock::kHiddenN},
     PrevState::kHidden},
    {CellType::kRNNTanh, "RNN_TANH", 1, false, false, false, 0, {}, PrevState::kNone},
    {CellType::kRNNRelu, "RNN_RELU", 1, false, false, false, 0, {}, PrevState::kNone},
};

inline const CellInfo& cell_info(CellType cell) { return kCells[static_cast<int>(cell)]; }

// Columns of one saved block.
inline int64_t saved_block_width(const CellInfo& c, SavedBlock b, int64_t H) {
  return b == SavedBlock::kGates ? c.gates * H : H;
}

// Saved elements per row of a training forward (0 for a plain RNN).
inline int64_t saved_width(const CellInfo& c, int64_t H, bool proj) {
  int64_t w = 0;
  for (int k = 0; k < c.num_saved; ++k) w += saved_block_width(c, c.saved[k], H);
  return w + (proj ? H : 0);
}

}  // namespace rnnfast
