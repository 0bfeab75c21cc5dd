// One layer-direction of a recurrent network: the device-independent interface.
//
// Everything works on the *time-major packed* layout of torch's PackedSequence:
//   x:            [N, I]   rows of all time steps, step t occupying rows
//                          offset[t] .. offset[t] + batch_sizes[t]
//   batch_sizes:  [T]      int64 on the CPU, positive, non-increasing, sum N
// A padded [T, B, I] input is the special case batch_sizes = [B] * T, so padded
// and packed input share one code path. Row b of step t belongs to sequence b
// (sequences sorted by decreasing length, as PackedSequence guarantees).
//
// Sizes: G gates (LSTM 4, GRU 3, RNN 1), H hidden size, P = proj_size if the
// LSTM has a projection else H, B = batch_sizes[0].
//
// Parameters (torch.nn layout, gate blocks stacked along rows):
//   w_ih [G*H, I]   w_hh [G*H, P]   b_ih, b_hh [G*H] (optional)   w_hr [P, H] (LSTM proj)
//
// A forward call writes its outputs into tensors the caller allocated, so a
// bidirectional layer writes both directions into one [N, 2P] output without a
// concatenation:
//   y     [N, P]   rows with unit column stride and any row stride >= P
//   h_n   [B, P]   final hidden state of every sequence (its last valid step)
//   c_n   [B, H]   final cell state (LSTM)
// and returns what backward needs ("saved", empty unless training):
//   LSTM: gates [N, 4H] activated i,f,g,o;  cells [N, H] c_t;  m [N, H] o*tanh(c_t) (proj only)
//   GRU:  gates [N, 3H] activated r,z,n;    hn [N, H] W_hn h + b_hn
//
// A backward call takes the forward's inputs, y and saved, plus
//   dy [N, P] (same row-stride freedom as y), dh_n [B, P], dc_n [B, H] (LSTM)
// and returns the gradients. dx [N, I] is caller-allocated so that the two
// directions of a bidirectional layer accumulate into one buffer
// (accumulate_dx); it may be undefined when the input needs no gradient.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <vector>

namespace rnnfast {

using at::Tensor;
using OptTensor = c10::optional<Tensor>;

enum class CellType : int { kLSTM = 0, kGRU = 1, kRNNTanh = 2, kRNNRelu = 3 };

inline int gate_count(CellType cell) {
  switch (cell) {
    case CellType::kLSTM: return 4;
    case CellType::kGRU: return 3;
    default: return 1;
  }
}

inline const char* cell_name(CellType cell) {
  switch (cell) {
    case CellType::kLSTM: return "LSTM";
    case CellType::kGRU: return "GRU";
    case CellType::kRNNTanh: return "RNN_TANH";
    default: return "RNN_RELU";
  }
}

// The parameters of one layer-direction.
struct LayerWeights {
  Tensor w_ih;   // [G*H, I]
  Tensor w_hh;   // [G*H, P]
  OptTensor b_ih;  // [G*H]
  OptTensor b_hh;  // [G*H]
  OptTensor w_hr;  // [P, H], LSTM with proj_size > 0 only
};

struct LayerForwardArgs {
  CellType cell;
  Tensor x;            // [N, I]
  Tensor batch_sizes;  // [T] int64, CPU
  Tensor h0;           // [B, P]
  OptTensor c0;        // [B, H], LSTM only
  LayerWeights w;
  bool reverse;        // process steps T-1 .. 0
  bool training;       // save activations for backward
  Tensor y;            // out [N, P]
  Tensor h_n;          // out [B, P]
  OptTensor c_n;       // out [B, H], LSTM only
};

struct LayerBackwardArgs {
  LayerForwardArgs fwd;       // the forward's arguments (training must have been true)
  std::vector<Tensor> saved;  // what the forward returned
  Tensor dy;                  // [N, P]
  Tensor dh_n;                // [B, P]
  OptTensor dc_n;             // [B, H], LSTM only
  OptTensor dx;               // out [N, I]; undefined: input gradient not needed
  bool accumulate_dx;         // dx += instead of dx =
  bool need_weight_grads;     // compute dw_ih, dw_hh, db_*, dw_hr
};

// Gradients of one layer-direction. Undefined tensors for gradients that were
// not requested or do not exist (no bias, no projection, GRU has no dc0).
struct LayerGrads {
  Tensor dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr;
};

// Validates a forward/backward call (shapes, dtypes, devices, batch_sizes).
// Throws c10::Error with a readable message; shared by every device. The
// backward check skips h_n/c_n, which the backward does not use.
void check_forward_args(const LayerForwardArgs& a, bool check_final_states = true);
void check_backward_args(const LayerBackwardArgs& a);

// CPU implementations (csrc/cpu/recurrent_cpu.cpp).
std::vector<Tensor> layer_forward_cpu(const LayerForwardArgs& a);
LayerGrads layer_backward_cpu(const LayerBackwardArgs& a);

}  // namespace rnnfast
