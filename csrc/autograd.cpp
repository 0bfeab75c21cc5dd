// Autograd kernels of the rnnfast operators (the Autograd key; unless
// RNNFAST_AUTOGRAD=python, see the end of the file), written the way PyTorch's generated VariableType code is: a
// graph node with saved variables and explicit next edges. Unlike a C++
// torch::autograd::Function, this works under torch.func transforms, and it
// costs no Python: a differentiable call stays in C++.
//
// First order: layer_forward / layer_forward_train record a
// LayerForwardBackward node that calls the fused layer_backward op.
// Second order: layer_backward records a LayerBackwardBackward node when its
// own inputs need gradients (create_graph=True). That node recomputes the
// forward with differentiable ATen ops (layer_reference.cpp), takes its
// gradient with create_graph, and differentiates that: exact, slower, and only
// on this path. The first-order gradients stay the fused kernel's.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/csrc/dynamo/compiled_autograd.h>
#include <torch/library.h>

#include <array>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>

#include "layer_aten.h"
#include "ops.h"

namespace rnnfast {
namespace {

using torch::autograd::collect_next_edges;
using torch::autograd::compute_requires_grad;
using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// The C++ autograd is on torch's C++ API: at::Tensor throughout (layer_aten.h).
using aten_layer::OptTensor;
using aten_layer::Tensor;
using ForwardResult = std::tuple<Tensor, Tensor, Tensor>;
using ForwardTrainResult = std::tuple<Tensor, Tensor, Tensor, Tensor>;
using BackwardResult = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

// The reference path's inputs: row-major, as layer_reference takes them
// (contiguous() keeps the graph, and is a no-op on the usual inputs).
aten_layer::LayerInputs reference_inputs(int64_t cell, const Tensor& x, const OptTensor& batch_sizes,
                                         const Tensor& h0, const OptTensor& c0, const Tensor& w_ih,
                                         const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                                         const OptTensor& w_hr, bool reverse) {
  auto contiguous = [](const OptTensor& t) { return has(t) ? OptTensor(t->contiguous()) : OptTensor(); };
  return aten_layer::LayerInputs{cell_from_code(cell),
                                 x.contiguous(),
                                 contiguous(batch_sizes),
                                 h0.contiguous(),
                                 contiguous(c0),
                                 aten_layer::LayerWeights{w_ih.contiguous(), w_hh.contiguous(), contiguous(b_ih),
                                                          contiguous(b_hh), contiguous(w_hr)},
                                 reverse};
}

// The autograd graph owns its nodes through c10::intrusive_ptr in recent torch
// releases and through std::shared_ptr in earlier ones; this alias and the
// two helpers below keep the file building against either.
using NodePtr = decltype(std::declval<torch::autograd::Edge>().function);
constexpr bool kSharedNodes = std::is_same_v<NodePtr, std::shared_ptr<Node>>;

template <typename T>
auto make_node() {
  if constexpr (kSharedNodes) {
    return std::shared_ptr<T>(new T());
  } else {
    return c10::make_intrusive<T>();
  }
}

// An owning pointer to a node from inside its own methods.
template <typename NodeT>
NodePtr self_ptr(NodeT& node) {
  if constexpr (kSharedNodes) {
    return node.shared_from_this();
  } else {
    return c10::intrusive_ptr<Node>::reclaim_copy(&node);
  }
}

// Typed handles of the ops, looked up once.
const c10::TypedOperatorHandle<ForwardResult(int64_t, const Tensor&, const OptTensor&,
                                             const Tensor&, const OptTensor&, const Tensor&,
                                             const Tensor&, const OptTensor&, const OptTensor&,
                                             const OptTensor&, bool, bool)>&
forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("rnnfast::layer_forward", "")
                             .typed<ForwardResult(int64_t, const Tensor&, const OptTensor&,
                                                  const Tensor&, const OptTensor&, const Tensor&,
                                                  const Tensor&, const OptTensor&,
                                                  const OptTensor&, const OptTensor&, bool, bool)>();
  return op;
}

const c10::TypedOperatorHandle<ForwardTrainResult(int64_t, const Tensor&,
                                                  const OptTensor&, const Tensor&,
                                                  const OptTensor&, const Tensor&, const Tensor&,
                                                  const OptTensor&, const OptTensor&,
                                                  const OptTensor&, bool, bool)>&
forward_train_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("rnnfast::layer_forward_train", "")
          .typed<ForwardTrainResult(int64_t, const Tensor&, const OptTensor&,
                                    const Tensor&, const OptTensor&, const Tensor&, const Tensor&,
                                    const OptTensor&, const OptTensor&, const OptTensor&, bool, bool)>();
  return op;
}

using BackwardSignature = BackwardResult(int64_t, const Tensor&, const OptTensor&,
                                         const Tensor&, const OptTensor&, const Tensor&,
                                         const Tensor&, const OptTensor&, const OptTensor&,
                                         const OptTensor&, bool, const Tensor&, const Tensor&,
                                         const Tensor&, const Tensor&, const OptTensor&,
                                         std::array<bool, 3>, bool);

const c10::TypedOperatorHandle<BackwardSignature>& backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("rnnfast::layer_backward", "")
                             .typed<BackwardSignature>();
  return op;
}

Tensor value(const OptTensor& t) { return has(t) ? *t : Tensor(); }
OptTensor opt(const Tensor& t) { return t.defined() ? OptTensor(t) : OptTensor(); }

// The inputs of a layer-direction that can carry gradients, in edge order.
constexpr int kNumLayerInputs = 8;  // x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr

struct SavedLayerInputs {
  int64_t cell = 0;  // CellType code
  Tensor batch_sizes;  // int64 CPU, never differentiable (undefined: padded)
  bool reverse = false;
  bool allow_tf32 = false;
  std::array<SavedVariable, kNumLayerInputs> v;

  void save(int64_t cell_code, const OptTensor& bs, bool rev, bool tf32,
            const std::array<Tensor, kNumLayerInputs>& inputs) {
    cell = cell_code;
    batch_sizes = value(bs);
    reverse = rev;
    allow_tf32 = tf32;
    for (int k = 0; k < kNumLayerInputs; ++k) v[k] = SavedVariable(inputs[k], /*is_output=*/false);
  }
  std::array<Tensor, kNumLayerInputs> unpack() const {
    std::array<Tensor, kNumLayerInputs> t;
    for (int k = 0; k < kNumLayerInputs; ++k) t[k] = v[k].unpack();
    return t;
  }
  void release() {
    for (auto& s : v) s.reset_data();
  }
  // Compiled autograd (torch._dynamo.compiled_autograd): the constants it specializes on and the
  // tensors it lifts into its graph's inputs, and their swap for its proxies while it traces.
  void collect(torch::dynamo::autograd::CompiledNodeArgs& args) const {
    args.collect(cell);
    args.collect(batch_sizes);
    args.collect(reverse);
    args.collect(allow_tf32);
    for (const SavedVariable& s : v) args.collect(s, /*is_output=*/false);
  }
  void before(torch::dynamo::autograd::SwapSavedVariables& saved) {
    saved.before(batch_sizes);
    for (SavedVariable& s : v) saved.before(s);
  }
  void after(torch::dynamo::autograd::SwapSavedVariables& saved) {
    saved.after(batch_sizes);
    for (SavedVariable& s : v) saved.after(s);
  }
};

// Backward of layer_forward / layer_forward_train: the fused layer_backward.
struct LayerForwardBackward : public Node {
  SavedLayerInputs in;
  SavedVariable y, workspace;
  bool cell_state = false;

  std::string name() const override { return "rnnfast::LayerForwardBackward"; }
  void release_variables() override {
    in.release();
    y.reset_data();
    workspace.reset_data();
  }

  // Compiled autograd traces apply() on its proxies: the backward becomes one
  // rnnfast::layer_backward call in its graph (the op's fake kernel gives the shapes).
  void compiled_args(torch::dynamo::autograd::CompiledNodeArgs& args) const override {
    in.collect(args);
    args.collect(y, /*is_output=*/true);
    args.collect(workspace, /*is_output=*/false);
    args.collect(cell_state);
  }
  variable_list apply_with_saved(const variable_list& grads,
                                 torch::dynamo::autograd::SwapSavedVariables& saved) override {
    in.before(saved);
    saved.before(y);
    saved.before(workspace);
    variable_list out = apply(variable_list(grads));
    in.after(saved);
    saved.after(y);
    saved.after(workspace);
    return out;
  }

  variable_list apply(variable_list&& grads) override {
    const auto t = in.unpack();  // x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr
    const Tensor y_ = y.unpack(self_ptr(*this));
    const Tensor ws = workspace.unpack();
    // Outputs that fed nothing have no gradient: zeros.
    const Tensor dy = grads[0].defined() ? grads[0] : at::zeros_like(y_);
    const Tensor dh_n = grads[1].defined() ? grads[1] : at::zeros_like(t[1]);
    OptTensor dc_n;
    if (cell_state) dc_n = grads[2].defined() ? grads[2] : at::zeros_like(t[2]);
    const std::array<bool, 3> mask{should_compute_output(0),
                                   should_compute_output({{1, 3}}),
                                   should_compute_output({{3, kNumLayerInputs}})};
    const BackwardResult g = backward_op().call(
        in.cell, t[0], opt(in.batch_sizes), t[1], opt(t[2]), t[3], t[4], opt(t[5]), opt(t[6]),
        opt(t[7]), in.reverse, y_, ws, dy, dh_n, dc_n, mask, in.allow_tf32);
    const std::array<Tensor, kNumLayerInputs> all{std::get<0>(g), std::get<1>(g), std::get<2>(g),
                                                  std::get<3>(g), std::get<4>(g), std::get<5>(g),
                                                  std::get<6>(g), std::get<7>(g)};
    variable_list out(kNumLayerInputs);
    for (int k = 0; k < kNumLayerInputs; ++k)
      if (should_compute_output(k)) out[k] = all[k];
    return out;
  }
};

// Backward of layer_backward (a double backward): differentiates the
// first-order gradients, recomputed through layer_reference.
struct LayerBackwardBackward : public Node {
  SavedLayerInputs in;
  SavedVariable dy, dh_n, dc_n;
  std::array<bool, kNumLayerInputs> computed{};  // which first-order gradients the op returned

  std::string name() const override { return "rnnfast::LayerBackwardBackward"; }
  void release_variables() override {
    in.release();
    dy.reset_data();
    dh_n.reset_data();
    dc_n.reset_data();
  }

  // Edges: the 8 layer inputs, then dy, dh_n, dc_n.
  variable_list apply(variable_list&& ggrads) override {
    const bool outer_create_graph = at::GradMode::is_enabled();
    at::AutoGradMode enable(true);
    std::array<Tensor, kNumLayerInputs> t = in.unpack();
    std::array<Tensor, 3> v{dy.unpack(), dh_n.unpack(), dc_n.unpack()};
    // Differentiate with respect to fresh aliases of the saved tensors, not the
    // tensors themselves: a saved tensor may have a history (the layer below, a
    // dy computed from the output), and the inner grads must stop at this
    // node's inputs instead of running (and freeing) that history, which the
    // outer backward still has to run. Higher orders reach the originals
    // through the alias's view node.
    for (Tensor& s : t)
      if (s.defined() && s.requires_grad()) s = s.view_as(s);
    for (Tensor& s : v)
      if (s.defined() && s.requires_grad()) s = s.view_as(s);
    // A first-order gradient is a function of the inputs it differentiates:
    // an input that does not require grad itself gets a stand-in leaf.
    for (int k = 0; k < kNumLayerInputs; ++k)
      if (computed[k] && ggrads[k].defined() && t[k].defined() && !t[k].requires_grad())
        t[k] = t[k].detach().requires_grad_(true);

    auto [y, h_n, c_n] = aten_layer::layer_reference(reference_inputs(
        in.cell, t[0], opt(in.batch_sizes), t[1], opt(t[2]), t[3], t[4], opt(t[5]), opt(t[6]), opt(t[7]), in.reverse));
    variable_list outputs{y, h_n}, grad_outputs{v[0], v[1]};
    if (c_n.defined()) {
      outputs.push_back(c_n);
      grad_outputs.push_back(v[2]);
    }
    variable_list wrt;
    std::vector<int> wrt_index;
    for (int k = 0; k < kNumLayerInputs; ++k) {
      if (computed[k] && ggrads[k].defined() && t[k].defined()) {
        wrt.push_back(t[k]);
        wrt_index.push_back(k);
      }
    }
    variable_list out(kNumLayerInputs + 3);
    if (wrt.empty()) return out;
    const variable_list first = torch::autograd::grad(outputs, wrt, grad_outputs,
                                                      /*retain_graph=*/true,
                                                      /*create_graph=*/true, /*allow_unused=*/true);
    variable_list targets, target_grads;
    for (size_t j = 0; j < first.size(); ++j) {
      if (first[j].defined() && first[j].requires_grad()) {
        targets.push_back(first[j]);
        target_grads.push_back(ggrads[wrt_index[j]]);
      }
    }
    // Differentiate w.r.t. every saved input that has an edge here.
    variable_list sources;
    std::vector<int> source_index;
    for (int k = 0; k < kNumLayerInputs + 3; ++k) {
      const Tensor& s = k < kNumLayerInputs ? t[k] : v[k - kNumLayerInputs];
      if (should_compute_output(k) && s.defined() && s.requires_grad()) {
        sources.push_back(s);
        source_index.push_back(k);
      }
    }
    if (targets.empty() || sources.empty()) return out;
    const variable_list second =
        torch::autograd::grad(targets, sources, target_grads,
                              /*retain_graph=*/outer_create_graph,  // a third order reads it again
                              /*create_graph=*/outer_create_graph, /*allow_unused=*/true);
    for (size_t j = 0; j < second.size(); ++j) out[source_index[j]] = second[j];
    return out;
  }
};

// Forward-mode AD (torch.func.jvp, forward_ad): the fused kernels carry no
// tangents. layer_forward then runs layer_reference, whose ATen ops do; the
// other ops refuse, loudly, instead of returning a zero tangent.
bool any_forward_grad(std::initializer_list<Tensor> tensors) {
  for (const Tensor& t : tensors)
    if (t.defined() && t._fw_grad(/*level=*/0).defined()) return true;
  return false;
}

void refuse_forward_ad(const char* op, std::initializer_list<Tensor> tensors) {
  TORCH_CHECK_NOT_IMPLEMENTED(!any_forward_grad(tensors), "rnnfast::", op,
                              " does not support forward-mode AD; rnnfast::layer_forward does "
                              "(through the reference equations)");
}

std::array<Tensor, kNumLayerInputs> layer_tensors(const Tensor& x, const Tensor& h0,
                                                  const OptTensor& c0, const Tensor& w_ih,
                                                  const Tensor& w_hh, const OptTensor& b_ih,
                                                  const OptTensor& b_hh, const OptTensor& w_hr) {
  return {x, h0, value(c0), w_ih, w_hh, value(b_ih), value(b_hh), value(w_hr)};
}

// Records the first-order node around a training forward, or returns null
// when no input needs a gradient.
auto make_forward_node(
    int64_t cell, const OptTensor& batch_sizes, bool reverse, bool allow_tf32,
    const std::array<Tensor, kNumLayerInputs>& t) {
  decltype(make_node<LayerForwardBackward>()) node;
  if (!compute_requires_grad(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7])) return node;
  node = make_node<LayerForwardBackward>();
  node->set_next_edges(collect_next_edges(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]));
  node->in.save(cell, batch_sizes, reverse, allow_tf32, t);
  node->cell_state = cell_info(cell_from_code(cell)).cell_state;
  return node;
}

void finish_forward_node(LayerForwardBackward& node, const Tensor& y, const Tensor& h_n,
                         const Tensor& c_n, const Tensor& workspace) {
  const NodePtr self = self_ptr(node);
  torch::autograd::set_history(y, self);
  torch::autograd::set_history(h_n, self);
  if (node.cell_state) {
    torch::autograd::set_history(c_n, self);
  } else {
    node.add_input_metadata(Node::undefined_input());  // c_n ([0]) carries no gradient
  }
  node.y = SavedVariable(y, /*is_output=*/true);
  node.workspace = SavedVariable(workspace, /*is_output=*/false);
}

ForwardTrainResult run_forward_train(int64_t cell, const Tensor& x,
                                     const OptTensor& batch_sizes, const Tensor& h0,
                                     const OptTensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                                     const OptTensor& b_ih, const OptTensor& b_hh,
                                     const OptTensor& w_hr, bool reverse, bool allow_tf32,
                                     LayerForwardBackward* node) {
  ForwardTrainResult r;
  {
    at::AutoDispatchBelowADInplaceOrView below;
    r = forward_train_op().call(cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                reverse, allow_tf32);
  }
  if (node) finish_forward_node(*node, std::get<0>(r), std::get<1>(r), std::get<2>(r), std::get<3>(r));
  return r;
}

ForwardResult layer_forward_autograd(c10::DispatchKeySet ks, int64_t cell,
                                     const Tensor& x, const OptTensor& batch_sizes,
                                     const Tensor& h0, const OptTensor& c0, const Tensor& w_ih,
                                     const Tensor& w_hh, const OptTensor& b_ih,
                                     const OptTensor& b_hh, const OptTensor& w_hr, bool reverse,
                                     bool allow_tf32) {
  const auto t = layer_tensors(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr);
  if (any_forward_grad({t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]})) {
    auto [y, h_n, c_n] = aten_layer::layer_reference(reference_inputs(cell, x, batch_sizes, h0, c0, w_ih,
                                                           w_hh, b_ih, b_hh, w_hr, reverse));
    return {y, h_n, c_n.defined() ? c_n : at::empty({0}, x.options())};
  }
  auto node = make_forward_node(cell, batch_sizes, reverse, allow_tf32, t);
  if (!node) {  // inference: nothing saved
    at::AutoDispatchBelowADInplaceOrView below;
    return forward_op().redispatch(ks & c10::after_autograd_keyset, cell, x, batch_sizes, h0, c0,
                                   w_ih, w_hh, b_ih, b_hh, w_hr, reverse, allow_tf32);
  }
  auto r = run_forward_train(cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                             allow_tf32, node.get());
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
}

ForwardTrainResult layer_forward_train_autograd(c10::DispatchKeySet ks, int64_t cell,
                                                const Tensor& x, const OptTensor& batch_sizes,
                                                const Tensor& h0, const OptTensor& c0,
                                                const Tensor& w_ih, const Tensor& w_hh,
                                                const OptTensor& b_ih, const OptTensor& b_hh,
                                                const OptTensor& w_hr, bool reverse,
                                                bool allow_tf32) {
  const auto t = layer_tensors(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr);
  refuse_forward_ad("layer_forward_train", {t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]});
  auto node = make_forward_node(cell, batch_sizes, reverse, allow_tf32, t);
  if (!node) {
    at::AutoDispatchBelowADInplaceOrView below;
    return forward_train_op().redispatch(ks & c10::after_autograd_keyset, cell, x, batch_sizes,
                                         h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, allow_tf32);
  }
  return run_forward_train(cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                           allow_tf32, node.get());
}

BackwardResult layer_backward_autograd(c10::DispatchKeySet ks, int64_t cell,
                                       const Tensor& x, const OptTensor& batch_sizes,
                                       const Tensor& h0, const OptTensor& c0, const Tensor& w_ih,
                                       const Tensor& w_hh, const OptTensor& b_ih,
                                       const OptTensor& b_hh, const OptTensor& w_hr, bool reverse,
                                       const Tensor& y, const Tensor& workspace, const Tensor& dy,
                                       const Tensor& dh_n, const OptTensor& dc_n,
                                       std::array<bool, 3> output_mask, bool allow_tf32) {
  const auto t = layer_tensors(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr);
  const Tensor dc = value(dc_n);
  refuse_forward_ad("layer_backward",
                    {t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], y, dy, dh_n, dc});
  // y and the workspace are functions of the other inputs, which the
  // recomputation differentiates through: they get no edge of their own.
  decltype(make_node<LayerBackwardBackward>()) node;
  if (compute_requires_grad(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], dy, dh_n, dc)) {
    node = make_node<LayerBackwardBackward>();
    node->set_next_edges(
        collect_next_edges(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], dy, dh_n, dc));
    node->in.save(cell, batch_sizes, reverse, allow_tf32, t);
    node->dy = SavedVariable(dy, false);
    node->dh_n = SavedVariable(dh_n, false);
    node->dc_n = SavedVariable(dc, false);
  }
  BackwardResult r;
  {
    at::AutoDispatchBelowADInplaceOrView below;
    r = backward_op().redispatch(ks & c10::after_autograd_keyset, cell, x, batch_sizes, h0, c0,
                                 w_ih, w_hh, b_ih, b_hh, w_hr, reverse, y, workspace, dy, dh_n,
                                 dc_n, output_mask, allow_tf32);
  }
  if (node) {
    const std::array<Tensor, kNumLayerInputs> g{std::get<0>(r), std::get<1>(r), std::get<2>(r),
                                                std::get<3>(r), std::get<4>(r), std::get<5>(r),
                                                std::get<6>(r), std::get<7>(r)};
    const NodePtr self = node;
    for (int k = 0; k < kNumLayerInputs; ++k) {
      // [0] placeholders (not requested or not existing) carry no gradient.
      const bool requested = k == 0 ? output_mask[0] : (k < 3 ? output_mask[1] : output_mask[2]);
      node->computed[k] = requested && t[k].defined();
      if (node->computed[k]) {
        torch::autograd::set_history(g[k], self);
      } else {
        node->add_input_metadata(Node::undefined_input());
      }
    }
  }
  return r;
}

}  // namespace
}  // namespace rnnfast

namespace rnnfast {
namespace {

// RNNFAST_AUTOGRAD=python leaves the Autograd key to rnnfast/_autograd.py, the
// autograd of the stable-ABI build (issue 16), so that the tests can run it
// on today's build too; rnnfast.backend()["autograd"] reports which is in use.
bool python_autograd_requested() {
  const char* v = std::getenv("RNNFAST_AUTOGRAD");
  return v != nullptr && std::string(v) == "python";
}

// What TORCH_LIBRARY_IMPL(rnnfast, Autograd, m) would register, unless
// python_autograd_requested(). Kept for the process's lifetime.
const std::unique_ptr<torch::Library> autograd_registration = [] {
  if (python_autograd_requested()) return std::unique_ptr<torch::Library>();
  auto m = std::make_unique<torch::Library>(torch::Library::IMPL, "rnnfast",
                                            std::make_optional(c10::DispatchKey::Autograd), __FILE__,
                                            __LINE__);
  m->impl("layer_forward", &layer_forward_autograd);
  m->impl("layer_forward_train", &layer_forward_train_autograd);
  m->impl("layer_backward", &layer_backward_autograd);
  return m;
}();

}  // namespace
}  // namespace rnnfast
