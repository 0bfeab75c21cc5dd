// One layer-direction written with differentiable ATen ops, one step at a
// time. Not a fast path: the double backward (autograd.cpp) recomputes the
// forward through it to differentiate the fused backward, and it runs on any
// device and dtype ATen supports. Same equations as cell_math.h and
// rnnfast/reference.py.
#include <ATen/ATen.h>

#include <vector>

#include "layer_aten.h"

namespace rnnfast::aten_layer {
namespace {

Tensor affine(const Tensor& x, const Tensor& w, const OptTensor& b) {
  return has(b) ? at::addmm(*b, x, w.t()) : at::mm(x, w.t());
}

// One step of `rows` active rows: (h, c) from the step's input rows and the
// active rows of the previous state.
std::pair<Tensor, Tensor> cell_step(CellType cell, const LayerWeights& w, const Tensor& x,
                                    const Tensor& h, const Tensor& c) {
  switch (cell) {
    case CellType::kLSTM: {
      const auto g = (affine(x, w.w_ih, w.b_ih) + affine(h, w.w_hh, w.b_hh)).chunk(4, 1);
      const Tensor i = g[0].sigmoid(), f = g[1].sigmoid(), gg = g[2].tanh(), o = g[3].sigmoid();
      Tensor c_new = f * c + i * gg;
      Tensor m = o * c_new.tanh();
      return {has(w.w_hr) ? at::mm(m, w.w_hr->t()) : m, c_new};
    }
    case CellType::kGRU: {
      const auto gx = affine(x, w.w_ih, w.b_ih).chunk(3, 1);
      const auto gh = affine(h, w.w_hh, w.b_hh).chunk(3, 1);
      const Tensor r = (gx[0] + gh[0]).sigmoid(), z = (gx[1] + gh[1]).sigmoid();
      const Tensor n = (gx[2] + r * gh[2]).tanh();
      return {n + z * (h - n), Tensor()};
    }
    case CellType::kRNNTanh:
      return {(affine(x, w.w_ih, w.b_ih) + affine(h, w.w_hh, w.b_hh)).tanh(), Tensor()};
    case CellType::kRNNRelu:
      return {(affine(x, w.w_ih, w.b_ih) + affine(h, w.w_hh, w.b_hh)).relu(), Tensor()};
  }
  TORCH_CHECK(false, "rnnfast: unknown cell");
}

// The state after a step that updated the first `rows` rows.
Tensor replace_rows(const Tensor& state, const Tensor& rows_new) {
  const int64_t rows = rows_new.size(0);
  if (rows == state.size(0)) return rows_new;
  return at::cat({rows_new, state.narrow(0, rows, state.size(0) - rows)});
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> layer_reference(const LayerInputs& in) {
  const LayerDims d = check_layer_inputs(stable(in));
  const StepPlan plan = make_step_plan(in, d);
  const bool cell_state = cell_info(in.cell).cell_state;
  // Only the active rows (a prefix) of the state change at a step: in the
  // forward direction each row keeps the state of its own last step, in the
  // reverse one each row starts from its initial state at its last step.
  Tensor h = in.h0, c = cell_state ? *in.c0 : Tensor();
  std::vector<Tensor> outputs(plan.T);
  for (int64_t s = 0; s < plan.T; ++s) {
    const int64_t t = plan.step(s), rows = plan.bs(t);
    const Tensor h_act = h.narrow(0, 0, rows);
    const Tensor c_act = cell_state ? c.narrow(0, 0, rows) : Tensor();
    auto [h_new, c_new] = cell_step(in.cell, in.w, in.x.narrow(0, plan.offset(t), rows), h_act, c_act);
    outputs[t] = h_new;
    h = replace_rows(h, h_new);
    if (cell_state) c = replace_rows(c, c_new);
  }
  return {at::cat(outputs), h, c};
}

}  // namespace rnnfast::aten_layer
