// The schemas of the rnnfast operators, on the stable ABI: defined once, by
// the CPU library (rnnfast._C). Devices register their kernels under
// STABLE_TORCH_LIBRARY_IMPL(rnnfast, <key>, m) (cpu/ops_cpu.cpp; the CUDA
// library's cuda/ops_cuda.cpp); the autograd kernels are autograd.cpp's (C++)
// or rnnfast/_autograd.py's; rnnfast/_ops.py registers the fake kernels used
// for tracing.
#include <torch/csrc/stable/library.h>

// One schema argument list for the layer inputs of every op. `cell` is a
// CellType code (cells.h; rnnfast/_cells.py's Cell.code), not the mode string:
// torch 2.13's stable-ABI boxing leaks ~48 bytes per call of a str argument
// (pytorch#191340), and an int costs no parse per call.
#define RNNFAST_LAYER_ARGS                                                                     \
  "int cell, Tensor x, Tensor? batch_sizes, Tensor h0, Tensor? c0, Tensor w_ih, Tensor w_hh, " \
  "Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, bool reverse"

// The last argument of every op: whether fp32 GEMMs may use TF32 tensor cores
// (LayerInputs::allow_tf32). The caller reads torch's switch for RNNs
// (rnnfast/_tf32.py); the stable ABI offers no way to read it here. Only the
// CUDA kernels look at it. Defaults to full fp32.
#define RNNFAST_TF32_ARG "bool allow_tf32=False"

STABLE_TORCH_LIBRARY(rnnfast, m) {
  m.def("layer_forward(" RNNFAST_LAYER_ARGS ", " RNNFAST_TF32_ARG ") -> (Tensor y, Tensor h_n, Tensor c_n)");
  m.def("layer_forward_train(" RNNFAST_LAYER_ARGS ", " RNNFAST_TF32_ARG
        ") -> (Tensor y, Tensor h_n, Tensor c_n, Tensor workspace)");
  m.def("layer_backward(" RNNFAST_LAYER_ARGS
        ", Tensor y, Tensor workspace, Tensor dy, Tensor dh_n, Tensor? dc_n, bool[3] output_mask, "
        RNNFAST_TF32_ARG ")"
        " -> (Tensor dx, Tensor dh0, Tensor dc0, Tensor dw_ih, Tensor dw_hh, Tensor db_ih,"
        " Tensor db_hh, Tensor dw_hr)");
}
