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

#include <torch/csrc/stable/tensor.h>

#include <optional>
#include <tuple>

#include "cells.h"
#include "layer_view.h"
#include "step_plan.h"

namespace rnnfast {

// The structures below are templates over the tensor type: the operators
// hold torch::stable::Tensor (the aliases after them); the GPU algorithm and
// the C++ autograd, still on torch's C++ API, hold at::Tensor views of the
// same tensors (layer_aten.h) until they move to the stable ABI too.

template <class T>
bool has(const std::optional<T>& t) {
  return t.has_value() && t->defined();
}

// The parameters of one layer-direction.
template <class T>
struct LayerWeightsT {
  T w_ih;                   // [G*H, I]
  T w_hh;                   // [G*H, P]
  std::optional<T> b_ih;    // [G*H]
  std::optional<T> b_hh;    // [G*H]
  std::optional<T> w_hr;    // [P, H], LSTM with proj_size > 0 only
};

// The inputs of one layer-direction (what the forward op takes).
template <class T>
struct LayerInputsT {
  CellType cell;
  T x;                             // [N, I]
  std::optional<T> batch_sizes;    // [T] int64 CPU; absent: padded (T = N / B)
  T h0;                            // [B, P]
  std::optional<T> c0;             // [B, H], cells with a cell state only
  LayerWeightsT<T> w;
  bool reverse;                    // process steps T-1 .. 0
  // fp32 GEMMs may run on TF32 tensor cores (the CUDA kernels; the other
  // devices have none). torch's switch for RNNs, read by the Python caller
  // (rnnfast/_tf32.py): the stable ABI has no access to it.
  bool allow_tf32 = false;
};

template <class T>
struct LayerOutputsT {
  T y;          // [N, P]
  T h_n;        // [B, P]
  T c_n;        // [B, H] (LSTM) or [0]
  T workspace;  // [N * saved_width] (training) or [0]
};

// What a backward needs. dy may be a row-strided view (unit column stride).
template <class T>
struct LayerBackwardInputsT {
  LayerInputsT<T> in;
  T y;                  // [N, P] the forward's output
  T workspace;          // the training forward's workspace
  T dy;                 // [N, P]
  T dh_n;               // [B, P]
  std::optional<T> dc_n;  // [B, H], LSTM only
  bool need_dx;         // input gradient
  bool need_dstate;     // dh0 (and dc0)
  bool need_dweights;
};

// Gradients; undefined where not requested or not existing (no bias, no
// projection, no cell state).
template <class T>
struct LayerGradsT {
  T dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr;
};

// The step plan of validated inputs.
template <class T>
StepPlan make_step_plan(const LayerInputsT<T>& in, const LayerDims& d) {
  if (has(in.batch_sizes)) return StepPlan(in.batch_sizes->template const_data_ptr<int64_t>(), d.T, in.reverse);
  return StepPlan(d.T, d.B, in.reverse);
}

// The operators' tensors: the stable ABI's.
using Tensor = torch::stable::Tensor;
using OptTensor = std::optional<Tensor>;
using LayerWeights = LayerWeightsT<Tensor>;
using LayerInputs = LayerInputsT<Tensor>;
using LayerOutputs = LayerOutputsT<Tensor>;
using LayerBackwardInputs = LayerBackwardInputsT<Tensor>;
using LayerGrads = LayerGradsT<Tensor>;

// Validation shared by every device: shapes, dtypes, devices, batch_sizes
// (layer_checks.cpp). Throws std::runtime_error with a readable message, and
// returns the sizes.
LayerDims check_layer_inputs(const LayerInputs& in);
LayerDims check_backward_inputs(const LayerBackwardInputs& b);

// CPU implementations (csrc/cpu/ops_cpu.cpp: checks, outputs, then the
// time loops on raw memory, layer_view.h).
LayerOutputs layer_forward_cpu(const LayerInputs& in, bool training);
LayerGrads layer_backward_cpu(const LayerBackwardInputs& b);

}  // namespace rnnfast
