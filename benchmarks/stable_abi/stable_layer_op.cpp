// The stable-ABI prototype of issue 16: rnnfast's layer operator on the LibTorch stable ABI
// (torch/csrc/stable, STABLE_TORCH_LIBRARY, TORCH_BOX), built with TORCH_TARGET_VERSION 2.11.
// The schema is rnnfast::layer_forward_train's / layer_backward's with the cell as an int (the
// str argument leaks in torch 2.13's stable boxing). The bodies allocate the outputs and compute
// nothing: benchmarks/stable_abi_overhead.py times the per-call cost of the boxed stable call and
// of autograd registered from Python, against the same bodies on the C++ API
// (unstable_layer_op.cpp).
#include <Python.h>

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <cstdint>
#include <cstdlib>
#include <optional>
#include <tuple>

extern "C" {
// An empty Python module: importing it loads this library, whose static initializers register
// the operators.
PyMODINIT_FUNC PyInit__stable_layer_op(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_stable_layer_op", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace {

using torch::stable::Tensor;

// x [T, B, I], h0 [B, H] -> y [T, B, H], h_n [B, H], c_n [B, H], workspace [T, B, 4H]
std::tuple<Tensor, Tensor, Tensor, Tensor> layer_forward_train(
    int64_t cell, Tensor x, std::optional<Tensor> batch_sizes, Tensor h0, std::optional<Tensor> c0,
    Tensor w_ih, Tensor w_hh, std::optional<Tensor> b_ih, std::optional<Tensor> b_hh,
    std::optional<Tensor> w_hr, bool reverse) {
  STD_TORCH_CHECK(x.dim() == 3 && h0.dim() == 2, "rnnfast prototype: x [T, B, I] and h0 [B, H]");
  const int64_t T = x.size(0), B = x.size(1), H = h0.size(1);
  (void)cell, (void)batch_sizes, (void)c0, (void)w_hh, (void)b_ih, (void)b_hh, (void)w_hr, (void)reverse;
  return {torch::stable::new_empty(x, {T, B, H}), torch::stable::new_empty(h0, {B, H}),
          torch::stable::new_empty(h0, {B, H}), torch::stable::new_empty(w_ih, {T, B, 4 * H})};
}

// A contiguous float32 CPU tensor over memory of rnnfast's own (malloc here; the buffer pool in
// rnnfast), freed by a deleter: allocation without a dispatcher call.
Tensor owned(int64_t d0, int64_t d1, int64_t d2) {
  const int64_t sizes[3] = {d0, d1, d2};
  const int64_t strides[3] = {d1 * d2, d2, 1};
  void* data = std::malloc(static_cast<size_t>(d0 * d1 * d2) * sizeof(float));
  STD_TORCH_CHECK(data != nullptr, "rnnfast prototype: out of memory");
  return torch::stable::from_blob(data, {sizes, 3}, {strides, 3}, torch::stable::Device(torch::headeronly::DeviceType::CPU),
                                  torch::headeronly::ScalarType::Float, &std::free);
}

// layer_forward_train with its outputs allocated by owned().
std::tuple<Tensor, Tensor, Tensor, Tensor> layer_forward_train_owned(
    int64_t cell, Tensor x, std::optional<Tensor> batch_sizes, Tensor h0, std::optional<Tensor> c0,
    Tensor w_ih, Tensor w_hh, std::optional<Tensor> b_ih, std::optional<Tensor> b_hh,
    std::optional<Tensor> w_hr, bool reverse) {
  STD_TORCH_CHECK(x.dim() == 3 && h0.dim() == 2, "rnnfast prototype: x [T, B, I] and h0 [B, H]");
  const int64_t T = x.size(0), B = x.size(1), H = h0.size(1);
  (void)cell, (void)batch_sizes, (void)c0, (void)w_ih, (void)w_hh, (void)b_ih, (void)b_hh, (void)w_hr, (void)reverse;
  return {owned(T, B, H), owned(1, B, H), owned(1, B, H), owned(T, B, 4 * H)};
}

// Gradients of x, h0, c0, w_ih, w_hh, b_ih, b_hh in their shapes.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> layer_backward(
    int64_t cell, Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor b_ih, Tensor b_hh,
    Tensor y, Tensor workspace, Tensor dy, Tensor dh_n, Tensor dc_n) {
  (void)cell, (void)y, (void)workspace, (void)dy, (void)dh_n, (void)dc_n;
  return {torch::stable::empty_like(x),    torch::stable::empty_like(h0),   torch::stable::empty_like(c0),
          torch::stable::empty_like(w_ih), torch::stable::empty_like(w_hh), torch::stable::empty_like(b_ih),
          torch::stable::empty_like(b_hh)};
}

}  // namespace

STABLE_TORCH_LIBRARY(rnnfast_stable_proto, m) {
  m.def("layer_forward_train(int cell, Tensor x, Tensor? batch_sizes, Tensor h0, Tensor? c0, Tensor w_ih, "
        "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, bool reverse) "
        "-> (Tensor y, Tensor h_n, Tensor c_n, Tensor workspace)");
  m.def("layer_forward_train_owned(int cell, Tensor x, Tensor? batch_sizes, Tensor h0, Tensor? c0, Tensor w_ih, "
        "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, bool reverse) "
        "-> (Tensor y, Tensor h_n, Tensor c_n, Tensor workspace)");
  m.def("layer_backward(int cell, Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor b_ih, "
        "Tensor b_hh, Tensor y, Tensor workspace, Tensor dy, Tensor dh_n, Tensor dc_n) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

STABLE_TORCH_LIBRARY_IMPL(rnnfast_stable_proto, CPU, m) {
  m.impl("layer_forward_train", TORCH_BOX(&layer_forward_train));
  m.impl("layer_forward_train_owned", TORCH_BOX(&layer_forward_train_owned));
  m.impl("layer_backward", TORCH_BOX(&layer_backward));
}
