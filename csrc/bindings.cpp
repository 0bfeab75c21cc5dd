// Python bindings of rnnfast._C: one forward and one backward entry point per
// cell type, each for one layer-direction (see layer.h), dispatched on the
// device of the input. The GIL is released while the kernels run.
#include <torch/extension.h>
#include <torch/version.h>

#include "cpu/buffer_pool.h"
#include "cpu/kernels.h"
#include "layer.h"

namespace rnnfast {
namespace {

namespace py = pybind11;

// The kernels' own ATen calls (allocations, bias sums) record no autograd
// history: rnnfast.functional owns the autograd node of each layer.
std::vector<Tensor> layer_forward(const LayerForwardArgs& a) {
  at::AutoDispatchBelowADInplaceOrView no_autograd;
  TORCH_CHECK(a.x.defined(), "rnnfast: x is undefined");
  if (a.x.device().is_cpu()) return layer_forward_cpu(a);
  TORCH_CHECK(false, "rnnfast: no ", a.x.device().type(),
              " implementation in this build (built for: cpu)");
}

LayerGrads layer_backward(const LayerBackwardArgs& a) {
  at::AutoDispatchBelowADInplaceOrView no_autograd;
  TORCH_CHECK(a.fwd.x.defined(), "rnnfast: x is undefined");
  if (a.fwd.x.device().is_cpu()) return layer_backward_cpu(a);
  TORCH_CHECK(false, "rnnfast: no ", a.fwd.x.device().type(),
              " implementation in this build (built for: cpu)");
}

// An uninitialised tensor like `like` (dtype, device) for a layer's output or
// input gradient: CPU tensors from the buffer pool, which spares the page
// faults of a fresh large allocation on every call.
Tensor empty_like_sized(std::vector<int64_t> sizes, const Tensor& like) {
  if (like.device().is_cpu()) return cpu::pooled_empty(sizes, like.options());
  return at::empty(sizes, like.options());
}

// Undefined tensors become None in Python.
std::vector<OptTensor> grads_list(const LayerGrads& g) {
  auto opt = [](const Tensor& t) -> OptTensor {
    return t.defined() ? OptTensor(t) : c10::nullopt;
  };
  return {opt(g.dh0), opt(g.dc0), opt(g.dw_ih), opt(g.dw_hh),
          opt(g.db_ih), opt(g.db_hh), opt(g.dw_hr)};
}

std::vector<Tensor> lstm_forward(const Tensor& x, const Tensor& batch_sizes, const Tensor& h0,
                                 const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                                 const OptTensor& b_ih, const OptTensor& b_hh,
                                 const OptTensor& w_hr, bool reverse, bool training,
                                 const Tensor& y, const Tensor& h_n, const Tensor& c_n) {
  return layer_forward({CellType::kLSTM, x, batch_sizes, h0, c0, {w_ih, w_hh, b_ih, b_hh, w_hr},
                        reverse, training, y, h_n, c_n});
}

std::vector<OptTensor> lstm_backward(
    const Tensor& x, const Tensor& batch_sizes, const Tensor& h0, const Tensor& c0,
    const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
    const OptTensor& w_hr, bool reverse, const Tensor& y, const std::vector<Tensor>& saved,
    const Tensor& dy, const Tensor& dh_n, const Tensor& dc_n, const OptTensor& dx,
    bool accumulate_dx, bool need_weight_grads) {
  LayerForwardArgs f{CellType::kLSTM, x, batch_sizes, h0, c0, {w_ih, w_hh, b_ih, b_hh, w_hr},
                     reverse, true, y, Tensor(), c10::nullopt};
  return grads_list(layer_backward({f, saved, dy, dh_n, dc_n, dx, accumulate_dx,
                                    need_weight_grads}));
}

std::vector<Tensor> gru_forward(const Tensor& x, const Tensor& batch_sizes, const Tensor& h0,
                                const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                                const OptTensor& b_hh, bool reverse, bool training,
                                const Tensor& y, const Tensor& h_n) {
  return layer_forward({CellType::kGRU, x, batch_sizes, h0, c10::nullopt,
                        {w_ih, w_hh, b_ih, b_hh, c10::nullopt}, reverse, training, y, h_n,
                        c10::nullopt});
}

std::vector<OptTensor> gru_backward(const Tensor& x, const Tensor& batch_sizes, const Tensor& h0,
                                    const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                                    const OptTensor& b_hh, bool reverse, const Tensor& y,
                                    const std::vector<Tensor>& saved, const Tensor& dy,
                                    const Tensor& dh_n, const OptTensor& dx, bool accumulate_dx,
                                    bool need_weight_grads) {
  LayerForwardArgs f{CellType::kGRU, x, batch_sizes, h0, c10::nullopt,
                     {w_ih, w_hh, b_ih, b_hh, c10::nullopt}, reverse, true, y, Tensor(),
                     c10::nullopt};
  return grads_list(layer_backward({f, saved, dy, dh_n, c10::nullopt, dx, accumulate_dx,
                                    need_weight_grads}));
}

py::dict build_info() {
  py::dict d;
  d["torch_version"] = TORCH_VERSION;
  d["cuda"] = false;
  d["cuda_arches"] = py::list();
  int n = 0;
  const char* const* caps = cpu::available_cpu_capabilities(&n);
  py::list avail;
  for (int i = 0; i < n; ++i) avail.append(caps[i]);
  d["cpu_capabilities"] = avail;
#ifdef _OPENMP
  d["openmp"] = true;
#else
  d["openmp"] = false;
#endif
  return d;
}

}  // namespace
}  // namespace rnnfast

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace rnnfast;
  namespace py = pybind11;
  m.doc() = "rnnfast fused recurrent kernels (see csrc/layer.h for the layout)";
  const auto nogil = py::call_guard<py::gil_scoped_release>();

  m.def("lstm_forward", &lstm_forward, nogil, py::arg("x"), py::arg("batch_sizes"),
        py::arg("h0"), py::arg("c0"), py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"),
        py::arg("b_hh"), py::arg("w_hr"), py::arg("reverse"), py::arg("training"), py::arg("y"),
        py::arg("h_n"), py::arg("c_n"),
        "One LSTM layer-direction; writes y, h_n, c_n. Returns the tensors saved for backward "
        "(empty unless training).");
  m.def("lstm_backward", &lstm_backward, nogil, py::arg("x"), py::arg("batch_sizes"),
        py::arg("h0"), py::arg("c0"), py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"),
        py::arg("b_hh"), py::arg("w_hr"), py::arg("reverse"), py::arg("y"), py::arg("saved"),
        py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"), py::arg("dx"),
        py::arg("accumulate_dx"), py::arg("need_weight_grads"),
        "Gradients of one LSTM layer-direction: [dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr].");
  m.def("gru_forward", &gru_forward, nogil, py::arg("x"), py::arg("batch_sizes"), py::arg("h0"),
        py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("reverse"),
        py::arg("training"), py::arg("y"), py::arg("h_n"),
        "One GRU layer-direction; writes y and h_n. Returns the tensors saved for backward.");
  m.def("gru_backward", &gru_backward, nogil, py::arg("x"), py::arg("batch_sizes"),
        py::arg("h0"), py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"),
        py::arg("reverse"), py::arg("y"), py::arg("saved"), py::arg("dy"), py::arg("dh_n"),
        py::arg("dx"), py::arg("accumulate_dx"), py::arg("need_weight_grads"),
        "Gradients of one GRU layer-direction: [dh0, None, dw_ih, dw_hh, db_ih, db_hh, None].");

  m.def("empty", &empty_like_sized, py::arg("sizes"), py::arg("like"),
        "Uninitialised tensor of the given sizes with like's dtype and device (CPU: pooled).");
  m.def("build_info", &build_info, "What this build of the extension contains.");
  m.def("empty_cache", &cpu::pool_empty_cache,
        "Free the cached buffers of the pool (see csrc/cpu/buffer_pool.h).");
  m.def("cached_bytes", &cpu::pool_cached_bytes, "Bytes of unused buffers the pool keeps.");
  m.def("cpu_capability", &cpu::cpu_capability, "Instruction set of the CPU kernels in use.");
  m.def("set_cpu_capability", [](const std::string& name) { cpu::set_cpu_capability(name.c_str()); },
        "Use the CPU kernels of another instruction set (avx512, avx2, default).");
}
