// The baseline of the stable-ABI prototype (issue 16): the same two operators and bodies as
// stable_layer_op.cpp on the C++ API of today's build (TORCH_LIBRARY, ATen tensors), with
// autograd in C++ (a torch::autograd::Function registered under the Autograd key), the way
// rnnfast's operators are bound now.
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// x [T, B, I], h0 [B, H] -> y [T, B, H], h_n [B, H], c_n [B, H], workspace [T, B, 4H]
std::tuple<Tensor, Tensor, Tensor, Tensor> layer_forward_train(
    int64_t cell, const Tensor& x, const OptTensor& batch_sizes, const Tensor& h0, const OptTensor& c0,
    const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
    const OptTensor& w_hr, bool reverse) {
  TORCH_CHECK(x.dim() == 3 && h0.dim() == 2, "rnnfast prototype: x [T, B, I] and h0 [B, H]");
  const int64_t T = x.size(0), B = x.size(1), H = h0.size(1);
  return {at::empty({T, B, H}, x.options()), at::empty({B, H}, h0.options()), at::empty({B, H}, h0.options()),
          at::empty({T, B, 4 * H}, w_ih.options())};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> layer_backward(
    int64_t cell, const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const Tensor& b_ih, const Tensor& b_hh, const Tensor& y, const Tensor& workspace, const Tensor& dy,
    const Tensor& dh_n, const Tensor& dc_n) {
  return {at::empty_like(x),    at::empty_like(h0),   at::empty_like(c0), at::empty_like(w_ih),
          at::empty_like(w_hh), at::empty_like(b_ih), at::empty_like(b_hh)};
}

// Differentiable in x, h0, c0, w_ih, w_hh, b_ih, b_hh; the forward redispatches below autograd.
struct LayerFunction : torch::autograd::Function<LayerFunction> {
  static variable_list forward(AutogradContext* ctx, int64_t cell, const Tensor& x, const Tensor& h0,
                               const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh, const Tensor& b_ih,
                               const Tensor& b_hh) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("rnnfast_unstable_proto::layer_forward_train", "")
                         .typed<decltype(layer_forward_train)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, h_n, c_n, workspace] = op.call(cell, x, std::nullopt, h0, c0, w_ih, w_hh, b_ih, b_hh, std::nullopt, false);
    ctx->saved_data["cell"] = cell;
    ctx->save_for_backward({x, h0, c0, w_ih, w_hh, b_ih, b_hh, y, workspace});
    return {y, h_n, c_n};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("rnnfast_unstable_proto::layer_backward", "")
                         .typed<decltype(layer_backward)>();
    const auto s = ctx->get_saved_variables();
    auto [dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh] =
        op.call(ctx->saved_data["cell"].toInt(), s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], grads[0],
                grads[1], grads[2]);
    return {Tensor(), dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh};
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor> layer_forward_train_autograd(
    int64_t cell, const Tensor& x, const OptTensor& batch_sizes, const Tensor& h0, const OptTensor& c0,
    const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
    const OptTensor& w_hr, bool reverse) {
  auto out = LayerFunction::apply(cell, x, h0, *c0, w_ih, w_hh, *b_ih, *b_hh);
  return {out[0], out[1], out[2], Tensor()};
}

}  // namespace

TORCH_LIBRARY(rnnfast_unstable_proto, m) {
  m.def("layer_forward_train(int cell, Tensor x, Tensor? batch_sizes, Tensor h0, Tensor? c0, Tensor w_ih, "
        "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, bool reverse) "
        "-> (Tensor y, Tensor h_n, Tensor c_n, Tensor workspace)");
  m.def("layer_backward(int cell, Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor b_ih, "
        "Tensor b_hh, Tensor y, Tensor workspace, Tensor dy, Tensor dh_n, Tensor dc_n) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rnnfast_unstable_proto, CPU, m) {
  m.impl("layer_forward_train", &layer_forward_train);
  m.impl("layer_backward", &layer_backward);
}

TORCH_LIBRARY_IMPL(rnnfast_unstable_proto, Autograd, m) {
  m.impl("layer_forward_train", &layer_forward_train_autograd);
}
