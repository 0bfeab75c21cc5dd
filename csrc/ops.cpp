// The schemas of the rnnfast operators, and the device-neutral argument glue
// (ops.h). Devices register their kernels under TORCH_LIBRARY_IMPL(rnnfast,
// <key>, m) (cpu/ops_cpu.cpp); autograd.cpp registers the Autograd kernels;
// rnnfast/_ops.py registers the fake kernels used for tracing.
#include "ops.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

namespace rnnfast {

CellType cell_from_code(int64_t cell) {
  // The message names the code through std::to_string: no integer is
  // formatted by TORCH_CHECK itself (docs/ARCHITECTURE.md: the GPU machine's quirk).
  TORCH_CHECK(cell >= 0 && cell < kNumCellTypes, "rnnfast: unknown cell code ", std::to_string(cell),
              " (expected 0 LSTM, 1 GRU, 2 RNN_TANH or 3 RNN_RELU)");
  return static_cast<CellType>(cell);
}

namespace {
OptTensor contiguous(const OptTensor& t) {
  return has(t) ? OptTensor(t->contiguous()) : OptTensor();
}
}  // namespace

LayerInputs make_layer_inputs(int64_t cell, const Tensor& x, const OptTensor& batch_sizes,
                              const Tensor& h0, const OptTensor& c0, const Tensor& w_ih,
                              const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                              const OptTensor& w_hr, bool reverse) {
  TORCH_CHECK(x.defined() && h0.defined() && w_ih.defined() && w_hh.defined(),
              "rnnfast: x, h0, w_ih and w_hh are required");
  return LayerInputs{cell_from_code(cell),
                     x.contiguous(),
                     contiguous(batch_sizes),
                     h0.contiguous(),
                     contiguous(c0),
                     LayerWeights{w_ih.contiguous(), w_hh.contiguous(), contiguous(b_ih),
                                  contiguous(b_hh), contiguous(w_hr)},
                     reverse};
}

Tensor or_empty(const Tensor& t, const Tensor& like) {
  return t.defined() ? t : at::empty({0}, like.options());
}

}  // namespace rnnfast

// One schema argument list for the layer inputs of every op. `cell` is a
// CellType code (cells.h; rnnfast/_cells.py's Cell.code), not the mode string:
// torch 2.13's stable-ABI boxing leaks ~48 bytes per call of a str argument
// (pytorch#191340), and an int costs no parse per call.
#define RNNFAST_LAYER_ARGS                                                                     \
  "int cell, Tensor x, Tensor? batch_sizes, Tensor h0, Tensor? c0, Tensor w_ih, Tensor w_hh, " \
  "Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, bool reverse"

TORCH_LIBRARY(rnnfast, m) {
  m.def("layer_forward(" RNNFAST_LAYER_ARGS ") -> (Tensor y, Tensor h_n, Tensor c_n)");
  m.def("layer_forward_train(" RNNFAST_LAYER_ARGS
        ") -> (Tensor y, Tensor h_n, Tensor c_n, Tensor workspace)");
  m.def("layer_backward(" RNNFAST_LAYER_ARGS
        ", Tensor y, Tensor workspace, Tensor dy, Tensor dh_n, Tensor? dc_n, bool[3] output_mask)"
        " -> (Tensor dx, Tensor dh0, Tensor dc0, Tensor dw_ih, Tensor dw_hh, Tensor db_ih,"
        " Tensor db_hh, Tensor dw_hr)");
}
