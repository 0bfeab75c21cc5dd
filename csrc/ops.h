// The rnnfast operators (schemas in op_schemas.cpp) and the glue that turns a
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

#include <tuple>
#include <utility>
#include <vector>

#include "check.h"
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
                              const OptTensor& w_hr, bool reverse, bool allow_tf32);

// `t`, or a contiguous copy where it is not contiguous (no dispatcher call
// for the usual, contiguous tensor).
Tensor make_contiguous(const Tensor& t);

// An undefined tensor, shared: what an undefined member is copied from (a
// default-constructed torch::stable::Tensor costs a shim call and two
// allocations; a copy, a reference count).
const Tensor& undefined_tensor();

// An uninitialised contiguous tensor of `sizes` (up to 4 dimensions), of
// `like`'s dtype and device, from the shim's empty_strided: torch's allocator
// for that device (resizable, seen by the profiler). On the CPU the shim
// allocates directly, without the dispatcher (torch::stable::empty is a
// dispatcher call: ~1 us, a visible part of a one-step call); on other
// devices it calls at::empty_strided.
Tensor empty_like_device(const Tensor& like, torch::headeronly::IntHeaderOnlyArrayRef sizes);
// The same of another dtype (the GPU algorithm's accumulation buffers).
Tensor empty_like_device(const Tensor& like, torch::headeronly::IntHeaderOnlyArrayRef sizes,
                         torch::headeronly::ScalarType dtype);

// A defined tensor where `t` is undefined: [0] elements like `like`.
Tensor or_empty(const Tensor& t, const Tensor& like);

// `t` itself when it has unit column stride and rows at least its width
// apart (a column slice of a wider buffer is fine), else a contiguous copy.
Tensor row_major(const Tensor& t);

// The kernels of the three ops for one device, from its layer functions.
template <LayerOutputs (*Forward)(const LayerInputs&, bool),
          LayerGrads (*Backward)(const LayerBackwardInputs&)>
struct DeviceOps {
  static ForwardResult forward(int64_t cell, const Tensor& x, const OptTensor& batch_sizes,
                               const Tensor& h0, const OptTensor& c0, const Tensor& w_ih,
                               const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                               const OptTensor& w_hr, bool reverse, bool allow_tf32) {
    LayerOutputs o = Forward(make_layer_inputs(cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih,
                                               b_hh, w_hr, reverse, allow_tf32),
                             /*training=*/false);
    return {std::move(o.y), std::move(o.h_n), std::move(o.c_n)};
  }

  static ForwardTrainResult forward_train(int64_t cell, const Tensor& x,
                                          const OptTensor& batch_sizes, const Tensor& h0,
                                          const OptTensor& c0, const Tensor& w_ih,
                                          const Tensor& w_hh, const OptTensor& b_ih,
                                          const OptTensor& b_hh, const OptTensor& w_hr,
                                          bool reverse, bool allow_tf32) {
    LayerOutputs o = Forward(make_layer_inputs(cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih,
                                               b_hh, w_hr, reverse, allow_tf32),
                             /*training=*/true);
    return {std::move(o.y), std::move(o.h_n), std::move(o.c_n), std::move(o.workspace)};
  }

  static BackwardResult backward(int64_t cell, const Tensor& x,
                                 const OptTensor& batch_sizes, const Tensor& h0,
                                 const OptTensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                                 const OptTensor& b_ih, const OptTensor& b_hh,
                                 const OptTensor& w_hr, bool reverse, const Tensor& y,
                                 const Tensor& workspace, const Tensor& dy, const Tensor& dh_n,
                                 const OptTensor& dc_n, std::vector<bool> output_mask,
                                 bool allow_tf32) {
    RNNFAST_CHECK(output_mask.size() == 3, "rnnfast: output_mask must have 3 entries");
    LayerBackwardInputs b{make_layer_inputs(cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                            w_hr, reverse, allow_tf32),
                          row_major(y),
                          make_contiguous(workspace),
                          row_major(dy),
                          make_contiguous(dh_n),
                          has(dc_n) ? OptTensor(make_contiguous(*dc_n)) : OptTensor(),
                          output_mask[0],
                          output_mask[1],
                          output_mask[2]};
    LayerGrads g = Backward(b);
    return {or_empty(g.dx, x),     or_empty(g.dh0, x),   or_empty(g.dc0, x),
            or_empty(g.dw_ih, x),  or_empty(g.dw_hh, x), or_empty(g.db_ih, x),
            or_empty(g.db_hh, x),  or_empty(g.dw_hr, x)};
  }
};

}  // namespace rnnfast
