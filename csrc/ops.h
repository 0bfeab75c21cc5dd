// The rnnfast operators (schemas in ops.cpp) and the glue that turns a
// device's layer implementation into their kernels.
//
//   rnnfast::layer_forward        inference: (y, h_n, c_n); differentiable
//   rnnfast::layer_forward_train  (y, h_n, c_n, workspace): what the autograd
//                                 kernel of layer_forward runs when a gradient
//                                 is needed; also differentiable
//   rnnfast::layer_backward       the fused gradients of one layer-direction;
//                                 differentiable itself (double backward,
//                                 through layer_reference)
//
// Shapes are layer.h's. c_n is [0] for cells without a cell state; gradients
// that were not requested (output_mask: input, initial states, weights) or do
// not exist come back as [0] tensors (an op returns no None).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <tuple>

#include "layer.h"

namespace rnnfast {

using ForwardResult = std::tuple<Tensor, Tensor, Tensor>;
using ForwardTrainResult = std::tuple<Tensor, Tensor, Tensor, Tensor>;
using BackwardResult =
    std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

// The cell of a CellType code (the ops' `int cell`); unknown codes raise.
CellType cell_from_code(int64_t cell);

// The op arguments as LayerInputs: every tensor made contiguous (a no-op for
// the usual inputs), batch_sizes kept where given.
LayerInputs make_layer_inputs(int64_t cell, const Tensor& x, const OptTensor& batch_sizes,
                              const Tensor& h0, const OptTensor& c0, const Tensor& w_ih,
                              const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                              const OptTensor& w_hr, bool reverse);

// A defined tensor where `t` is undefined: [0] elements like `like`.
Tensor or_empty(const Tensor& t, const Tensor& like);

// The kernels of the three ops for one device, from its layer functions.
template <LayerOutputs (*Forward)(const LayerInputs&, bool),
          LayerGrads (*Backward)(const LayerBackwardInputs&)>
struct DeviceOps {
  static ForwardResult forward(int64_t cell, const Tensor& x, const OptTensor& batch_sizes,
                               const Tensor& h0, const OptTensor& c0, const Tensor& w_ih,
                               const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                               const OptTensor& w_hr, bool reverse) {
    LayerOutputs o = Forward(make_layer_inputs(cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih,
                                               b_hh, w_hr, reverse),
                             /*training=*/false);
    return {o.y, o.h_n, o.c_n};
  }

  static ForwardTrainResult forward_train(int64_t cell, const Tensor& x,
                                          const OptTensor& batch_sizes, const Tensor& h0,
                                          const OptTensor& c0, const Tensor& w_ih,
                                          const Tensor& w_hh, const OptTensor& b_ih,
                                          const OptTensor& b_hh, const OptTensor& w_hr,
                                          bool reverse) {
    LayerOutputs o = Forward(make_layer_inputs(cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih,
                                               b_hh, w_hr, reverse),
                             /*training=*/true);
    return {o.y, o.h_n, o.c_n, o.workspace};
  }

  static BackwardResult backward(int64_t cell, const Tensor& x,
                                 const OptTensor& batch_sizes, const Tensor& h0,
                                 const OptTensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                                 const OptTensor& b_ih, const OptTensor& b_hh,
                                 const OptTensor& w_hr, bool reverse, const Tensor& y,
                                 const Tensor& workspace, const Tensor& dy, const Tensor& dh_n,
                                 const OptTensor& dc_n, std::array<bool, 3> output_mask) {
    LayerBackwardInputs b{make_layer_inputs(cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                            w_hr, reverse),
                          row_major(y),
                          workspace.contiguous(),
                          row_major(dy),
                          dh_n.contiguous(),
                          has(dc_n) ? OptTensor(dc_n->contiguous()) : OptTensor(),
                          output_mask[0],
                          output_mask[1],
                          output_mask[2]};
    LayerGrads g = Backward(b);
    return {or_empty(g.dx, x),     or_empty(g.dh0, x),   or_empty(g.dc0, x),
            or_empty(g.dw_ih, x),  or_empty(g.dw_hh, x), or_empty(g.db_ih, x),
            or_empty(g.db_hh, x),  or_empty(g.dw_hr, x)};
  }

  // Unit column stride (a column slice of a wider buffer is fine), else a copy.
  static Tensor row_major(const Tensor& t) {
    const bool ok = t.dim() == 2 && (t.size(1) <= 1 || t.stride(1) == 1) &&
                    (t.size(0) <= 1 || t.stride(0) >= t.size(1));
    return ok ? t : t.contiguous();
  }
};

}  // namespace rnnfast
