// The CPU kernels of the rnnfast operators (schemas: csrc/op_schemas.cpp): checks,
// output tensors, then the time loops on raw memory (layer_view.h); or the
// GPU algorithm emulated on the CPU while the tests ask for it
// (gpu/emulated.h). On the stable ABI.
#include <torch/csrc/stable/library.h>

#include "../gpu/emulated.h"
#include "../layer_view.h"
#include "../ops.h"
#include "pooled_tensor.h"

namespace rnnfast {
namespace {

// (checked by check_layer_inputs)
StorageType storage_type(torch::headeronly::ScalarType t) {
  using torch::headeronly::ScalarType;
  switch (t) {
    case ScalarType::Float: return StorageType::kFloat;
    case ScalarType::Double: return StorageType::kDouble;
    case ScalarType::BFloat16: return StorageType::kBFloat16;
    case ScalarType::Half: return StorageType::kHalf;
    default: RNNFAST_CHECK(false, "rnnfast: unsupported dtype ", torch::headeronly::toString(t));
  }
  return StorageType::kFloat;
}

const void* data_or_null(const OptTensor& t) { return has(t) ? t->const_data_ptr() : nullptr; }

// The validated inputs as raw memory.
LayerView view_of(const LayerInputs& in, const LayerDims& d) {
  RNNFAST_CHECK(in.x.is_cpu(), "rnnfast: the CPU kernel got a tensor that is not on the CPU");
  LayerView v{in.cell, storage_type(in.x.scalar_type()), d, in.reverse};
  v.x = in.x.const_data_ptr();
  v.batch_sizes = has(in.batch_sizes) ? in.batch_sizes->const_data_ptr<int64_t>() : nullptr;
  v.h0 = in.h0.const_data_ptr();
  v.c0 = data_or_null(in.c0);
  v.w_ih = in.w.w_ih.const_data_ptr();
  v.w_hh = in.w.w_hh.const_data_ptr();
  v.b_ih = data_or_null(in.w.b_ih);
  v.b_hh = data_or_null(in.w.b_hh);
  v.w_hr = data_or_null(in.w.w_hr);
  v.w_ih_owner = &in.w.w_ih;
  v.w_hh_owner = &in.w.w_hh;
  v.w_hr_owner = has(in.w.w_hr) ? &*in.w.w_hr : nullptr;
  return v;
}

}  // namespace

LayerOutputs layer_forward_cpu(const LayerInputs& in, bool training) {
  const LayerDims d = check_layer_inputs(in);
  const LayerView v = view_of(in, d);
  const CellInfo& cell = cell_info(in.cell);
  const auto dtype = in.x.scalar_type();
  // An inference call's workspace is never returned (DeviceOps::forward): no tensor for it.
  LayerOutputs out{cpu::pooled_empty({d.N, d.P}, dtype), empty_like_device(in.x, {d.B, d.P}),
                   empty_like_device(in.x, cell.cell_state ? std::initializer_list<int64_t>{d.B, d.H}
                                                           : std::initializer_list<int64_t>{0}),
                   training ? cpu::pooled_empty({d.N * saved_width(cell, d.H, d.proj)}, dtype) : undefined_tensor()};
  forward_loop_cpu(v,
                   LayerOutputView{out.y.mutable_data_ptr(), out.h_n.mutable_data_ptr(),
                                   cell.cell_state ? out.c_n.mutable_data_ptr() : nullptr,
                                   training ? out.workspace.mutable_data_ptr() : nullptr},
                   training);
  return out;
}

LayerGrads layer_backward_cpu(const LayerBackwardInputs& b) {
  const LayerDims d = check_backward_inputs(b);
  const LayerView in = view_of(b.in, d);
  const CellInfo& cell = cell_info(b.in.cell);
  const auto dtype = b.in.x.scalar_type();
  // Copies of one undefined tensor where a gradient is not computed (a default-constructed
  // stable tensor costs a shim call and two allocations).
  const Tensor& none = undefined_tensor();
  LayerGrads g{none, none, none, none, none, none, none, none};
  if (b.need_dx) g.dx = cpu::pooled_empty({d.N, d.I}, dtype);
  if (b.need_dstate) {
    g.dh0 = empty_like_device(b.in.x, {d.B, d.P});
    if (cell.cell_state) g.dc0 = empty_like_device(b.in.x, {d.B, d.H});
  }
  if (b.need_dweights) {
    g.dw_ih = cpu::pooled_empty(b.in.w.w_ih.sizes(), dtype);
    g.dw_hh = cpu::pooled_empty(b.in.w.w_hh.sizes(), dtype);
    if (d.proj) g.dw_hr = cpu::pooled_empty(b.in.w.w_hr->sizes(), dtype);
    if (has(b.in.w.b_ih)) {
      g.db_ih = empty_like_device(b.in.x, {d.G * d.H});
      g.db_hh = empty_like_device(b.in.x, {d.G * d.H});
    }
  }
  auto data = [](const Tensor& t) { return t.defined() ? t.mutable_data_ptr() : nullptr; };
  const LayerBackwardView v{in,
                            b.y.const_data_ptr(),
                            b.y.stride(0),
                            b.workspace.const_data_ptr(),
                            b.dy.const_data_ptr(),
                            b.dy.stride(0),
                            b.dh_n.const_data_ptr(),
                            data_or_null(b.dc_n)};
  backward_loop_cpu(v, LayerGradView{b.need_dx, b.need_dstate, b.need_dweights, data(g.dx), data(g.dh0),
                                     data(g.dc0), data(g.dw_ih), data(g.dw_hh), data(g.db_ih), data(g.db_hh),
                                     data(g.dw_hr)});
  return g;
}

namespace {

LayerOutputs forward_on_cpu(const LayerInputs& in, bool training) {
  return gpu::gpu_emulation() ? gpu::layer_forward_emulated(in, training) : layer_forward_cpu(in, training);
}

LayerGrads backward_on_cpu(const LayerBackwardInputs& b) {
  return gpu::gpu_emulation() ? gpu::layer_backward_emulated(b) : layer_backward_cpu(b);
}

using CpuOps = DeviceOps<&forward_on_cpu, &backward_on_cpu>;

}  // namespace
}  // namespace rnnfast

STABLE_TORCH_LIBRARY_IMPL(rnnfast, CPU, m) {
  m.impl("layer_forward", TORCH_BOX(&rnnfast::CpuOps::forward));
  m.impl("layer_forward_train", TORCH_BOX(&rnnfast::CpuOps::forward_train));
  m.impl("layer_backward", TORCH_BOX(&rnnfast::CpuOps::backward));
}
