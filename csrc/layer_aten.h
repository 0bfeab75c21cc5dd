// The layer structures of layer.h over at::Tensor, for the code still on
// torch's C++ API: the C++ autograd and its reference path
// (layer_reference.cpp). The operators hand them their stable tensors, which
// these see as at::Tensor without a copy (a stable tensor's handle is an
// at::Tensor*, as torch's own shim treats it), and take their at::Tensor
// results back as stable tensors. Goes when that code moves to the stable ABI
// (issue 16).
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/csrc/inductor/aoti_torch/utils.h>

#include "layer.h"

namespace rnnfast::aten_layer {

using Tensor = at::Tensor;
using OptTensor = std::optional<at::Tensor>;
using LayerWeights = LayerWeightsT<Tensor>;
using LayerInputs = LayerInputsT<Tensor>;
using LayerOutputs = LayerOutputsT<Tensor>;
using LayerBackwardInputs = LayerBackwardInputsT<Tensor>;
using LayerGrads = LayerGradsT<Tensor>;

// The at::Tensor a stable tensor holds (the same TensorImpl: no copy).
inline Tensor aten(const torch::stable::Tensor& t) {
  return *torch::aot_inductor::tensor_handle_to_tensor_pointer(t.get());
}
inline OptTensor aten(const std::optional<torch::stable::Tensor>& t) {
  return t.has_value() ? OptTensor(aten(*t)) : OptTensor();
}
// A stable tensor holding `t` (undefined stays undefined).
inline torch::stable::Tensor stable(Tensor t) {
  return torch::stable::Tensor(torch::aot_inductor::new_tensor_handle(std::move(t)));
}
inline std::optional<torch::stable::Tensor> stable(const OptTensor& t) {
  return t.has_value() ? std::optional<torch::stable::Tensor>(stable(*t)) : std::nullopt;
}

inline LayerInputs aten(const rnnfast::LayerInputs& in) {
  return LayerInputs{in.cell, aten(in.x), aten(in.batch_sizes), aten(in.h0), aten(in.c0),
                     LayerWeights{aten(in.w.w_ih), aten(in.w.w_hh), aten(in.w.b_ih), aten(in.w.b_hh),
                                  aten(in.w.w_hr)},
                     in.reverse, in.allow_tf32};
}

inline LayerBackwardInputs aten(const rnnfast::LayerBackwardInputs& b) {
  return LayerBackwardInputs{aten(b.in),     aten(b.y),      aten(b.workspace), aten(b.dy),
                             aten(b.dh_n),   aten(b.dc_n),   b.need_dx,         b.need_dstate,
                             b.need_dweights};
}

inline rnnfast::LayerInputs stable(const LayerInputs& in) {
  return rnnfast::LayerInputs{in.cell, stable(in.x), stable(in.batch_sizes), stable(in.h0), stable(in.c0),
                              rnnfast::LayerWeights{stable(in.w.w_ih), stable(in.w.w_hh), stable(in.w.b_ih),
                                                    stable(in.w.b_hh), stable(in.w.w_hr)},
                              in.reverse, in.allow_tf32};
}

inline rnnfast::LayerOutputs stable(const LayerOutputs& o) {
  return {stable(o.y), stable(o.h_n), stable(o.c_n), stable(o.workspace)};
}

inline rnnfast::LayerGrads stable(const LayerGrads& g) {
  return {stable(g.dx),    stable(g.dh0),   stable(g.dc0),   stable(g.dw_ih),
          stable(g.dw_hh), stable(g.db_ih), stable(g.db_hh), stable(g.dw_hr)};
}

// The same layer-direction written with differentiable ATen ops, step by
// step (layer_reference.cpp): the C++ autograd's double backward recomputes
// the forward through it. Inputs row-major (checked). Returns (y [N, P],
// h_n [B, P], c_n [B, H] or undefined).
std::tuple<Tensor, Tensor, Tensor> layer_reference(const LayerInputs& in);

}  // namespace rnnfast::aten_layer
