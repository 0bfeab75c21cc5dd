// The CPU kernels of the rnnfast operators (schemas: csrc/ops.cpp): checks,
// output tensors, then the time loops on raw memory (layer_view.h); or the
// GPU algorithm emulated on the CPU while the tests ask for it
// (gpu/emulated.h).
#include <torch/library.h>

#include "../gpu/emulated.h"
#include "../layer_view.h"
#include "../ops.h"
#include "panel_cache.h"
#include "pooled_tensor.h"

namespace rnnfast {
namespace {

// (checked by check_layer_inputs)
StorageType storage_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return StorageType::kFloat;
    case at::kDouble: return StorageType::kDouble;
    case at::kBFloat16: return StorageType::kBFloat16;
    case at::kHalf: return StorageType::kHalf;
    default: TORCH_CHECK(false, "rnnfast: unsupported dtype ", c10::toString(t));
  }
}

const void* data_or_null(const OptTensor& t) { return has(t) ? t->data_ptr() : nullptr; }

// The panel cache's weak reference to a weight: its storage. The views' owner
// handles point at the weight tensors of the call's LayerInputs.
class StorageOwner final : public cpu::WeightOwner {
 public:
  explicit StorageOwner(const Tensor& weight) : storage_(weight.storage().getWeakStorageImpl()) {}
  bool expired() const override { return storage_.expired(); }

 private:
  c10::weak_intrusive_ptr<c10::StorageImpl> storage_;
};

const bool owner_factory_set = (cpu::set_weight_owner_factory([](const void* handle) {
                                  return std::unique_ptr<cpu::WeightOwner>(
                                      new StorageOwner(*static_cast<const Tensor*>(handle)));
                                }),
                                true);

// The validated inputs as raw memory.
LayerView view_of(const LayerInputs& in, const LayerDims& d) {
  TORCH_CHECK(in.x.device().is_cpu(), "rnnfast: the CPU kernel got a ", in.x.device().str(), " tensor");
  LayerView v{in.cell, storage_type(in.x.scalar_type()), d, in.reverse};
  v.x = in.x.data_ptr();
  v.batch_sizes = has(in.batch_sizes) ? in.batch_sizes->data_ptr<int64_t>() : nullptr;
  v.h0 = in.h0.data_ptr();
  v.c0 = data_or_null(in.c0);
  v.w_ih = in.w.w_ih.data_ptr();
  v.w_hh = in.w.w_hh.data_ptr();
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
  const auto opts = in.x.options();
  LayerOutputs out;
  out.y = cpu::pooled_empty({d.N, d.P}, opts);
  out.h_n = cpu::cpu_empty({d.B, d.P}, opts);
  out.c_n = cell.cell_state ? cpu::cpu_empty({d.B, d.H}, opts) : cpu::cpu_empty({0}, opts);
  out.workspace = training ? cpu::pooled_empty({d.N * saved_width(cell, d.H, d.proj)}, opts)
                           : cpu::cpu_empty({0}, opts);
  forward_loop_cpu(v,
                   LayerOutputView{out.y.data_ptr(), out.h_n.data_ptr(),
                                   cell.cell_state ? out.c_n.data_ptr() : nullptr,
                                   training ? out.workspace.data_ptr() : nullptr},
                   training);
  return out;
}

LayerGrads layer_backward_cpu(const LayerBackwardInputs& b) {
  const LayerDims d = check_backward_inputs(b);
  const LayerView in = view_of(b.in, d);
  const CellInfo& cell = cell_info(b.in.cell);
  const auto opts = b.in.x.options();
  LayerGrads g;
  if (b.need_dx) g.dx = cpu::pooled_empty({d.N, d.I}, opts);
  if (b.need_dstate) {
    g.dh0 = cpu::cpu_empty({d.B, d.P}, opts);
    if (cell.cell_state) g.dc0 = cpu::cpu_empty({d.B, d.H}, opts);
  }
  if (b.need_dweights) {
    g.dw_ih = cpu::pooled_empty(b.in.w.w_ih.sizes(), opts);
    g.dw_hh = cpu::pooled_empty(b.in.w.w_hh.sizes(), opts);
    if (d.proj) g.dw_hr = cpu::pooled_empty(b.in.w.w_hr->sizes(), opts);
    if (has(b.in.w.b_ih)) {
      g.db_ih = cpu::cpu_empty({d.G * d.H}, opts);
      g.db_hh = cpu::cpu_empty({d.G * d.H}, opts);
    }
  }
  auto data = [](const Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; };
  const LayerBackwardView v{in,
                            b.y.data_ptr(),
                            b.y.stride(0),
                            b.workspace.data_ptr(),
                            b.dy.data_ptr(),
                            b.dy.stride(0),
                            b.dh_n.data_ptr(),
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

TORCH_LIBRARY_IMPL(rnnfast, CPU, m) {
  m.impl("layer_forward", &rnnfast::CpuOps::forward);
  m.impl("layer_forward_train", &rnnfast::CpuOps::forward_train);
  m.impl("layer_backward", &rnnfast::CpuOps::backward);
}
