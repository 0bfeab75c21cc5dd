// One layer-direction of a recurrent network: the device-independent interface
// behind the ops (ops.cpp) and in front of the device loops (cpu/, cuda/).
//
// Everything works on the *time-major packed* layout of torch's PackedSequence:
//   x:            [N, I]   rows of all time steps, step t occupying rows
//                          offset[t] .. offset[t] + batch_sizes[t]
//   batch_sizes:  [T]      int64 on the CPU, positive, non-increasing, sum N;
//                          absent for a padded input: T = N / B steps of B rows
// Row b of step t belongs to sequence b (sequences sorted by decreasing
// length, as PackedSequence guarantees).
//
// Sizes: G gates (cells.h), H hidden size, P = proj_size if the LSTM has a
// projection else H, B = h0.size(0).
//
// Parameters (torch.nn layout, gate blocks stacked along rows):
//   w_ih [G*H, I]   w_hh [G*H, P]   b_ih, b_hh [G*H] (optional)   w_hr [P, H] (LSTM proj)
//
// A forward returns, freshly allocated:
//   y          [N, P]  h_t of every row
//   h_n        [B, P]  final hidden state of every sequence (its last valid step)
//   c_n        [B, H]  final cell state (LSTM; [0] for other cells)
//   workspace  [N * saved_width]  training only ([0] in inference): the saved
//                      activations, laid out as cells.h describes
// A backward takes the forward's inputs, y and workspace, and the gradients
//   dy [N, P], dh_n [B, P], dc_n [B, H] (LSTM)
// and returns the gradients of the inputs it was asked for.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include "cells.h"
#include "layer_view.h"
#include "step_plan.h"

namespace rnnfast {

using at::Tensor;
using OptTensor = c10::optional<Tensor>;

inline bool has(const OptTensor& t) { return t.has_value() && t->defined(); }

// The parameters of one layer-direction.
struct LayerWeights {
  Tensor w_ih;     // [G*H, I]
  Tensor w_hh;     // [G*H, P]
  OptTensor b_ih;  // [G*H]
  OptTensor b_hh;  // [G*H]
  OptTensor w_hr;  // [P, H], LSTM with proj_size > 0 only
};

// The inputs of one layer-direction (what the forward op takes).
struct LayerInputs {
  CellType cell;
  Tensor x;               // [N, I]
  OptTensor batch_sizes;  // [T] int64 CPU; absent: padded (T = N / B)
  Tensor h0;              // [B, P]
  OptTensor c0;           // [B, H], cells with a cell state only
  LayerWeights w;
  bool reverse;           // process steps T-1 .. 0
};

// The saved activations of a training forward: named views into its
// workspace (undefined where the cell saves no such block), at SavedLayout's
// offsets (layer_view.h).
struct SavedActivations {
  Tensor gates;     // [N, G*H] activated gates
  Tensor cell;      // [N, H] LSTM c_t
  Tensor proj_in;   // [N, H] LSTM with projection: m_t = o*tanh(c_t)
  Tensor hidden_n;  // [N, H] GRU: W_hn h_{t-1} + b_hn

  // Views of `workspace` ([N * saved_width]) for a layer of these dims.
  static SavedActivations view(const Tensor& workspace, CellType cell, const LayerDims& d);
  // The [N, H] block of a cell's step state, which its fused kernels write in
  // the forward and read in the backward as `saved` (LSTM c_t, GRU
  // W_hn h + b_hn), by the cell table; undefined for a cell that has none.
  const Tensor& step_state(CellType cell) const;
};

// The data of a tensor, or nullptr if it is undefined.
template <typename T>
T* ptr(const Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

struct LayerOutputs {
  Tensor y;          // [N, P]
  Tensor h_n;        // [B, P]
  Tensor c_n;        // [B, H] (LSTM) or [0]
  Tensor workspace;  // [N * saved_width] (training) or [0]
};

// What a backward needs. dy may be a row-strided view (unit column stride).
struct LayerBackwardInputs {
  LayerInputs in;
  Tensor y;          // [N, P] the forward's output
  Tensor workspace;  // the training forward's workspace
  Tensor dy;         // [N, P]
  Tensor dh_n;       // [B, P]
  OptTensor dc_n;    // [B, H], LSTM only
  bool need_dx;      // input gradient
  bool need_dstate;  // dh0 (and dc0)
  bool need_dweights;
};

// Gradients; undefined where not requested or not existing (no bias, no
// projection, no cell state).
struct LayerGrads {
  Tensor dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr;
};

// Validation shared by every device: shapes, dtypes, devices, batch_sizes.
// Throws c10::Error with a readable message, and returns the sizes.
LayerDims check_layer_inputs(const LayerInputs& in);
LayerDims check_backward_inputs(const LayerBackwardInputs& b);
// The step plan of validated inputs.
StepPlan make_step_plan(const LayerInputs& in, const LayerDims& d);

// CPU implementations (csrc/cpu/ops_cpu.cpp: checks, outputs, then the
// time loops on raw memory, layer_view.h).
LayerOutputs layer_forward_cpu(const LayerInputs& in, bool training);
LayerGrads layer_backward_cpu(const LayerBackwardInputs& b);

// The same layer-direction written with differentiable ATen ops, step by
// step (layer_reference.cpp): the double backward recomputes the forward
// through it. Returns (y [N, P], h_n [B, P], c_n [B, H] or undefined).
std::tuple<Tensor, Tensor, Tensor> layer_reference(const LayerInputs& in);

}  // namespace rnnfast
