"""Double backward through rnnfast, in float64.

rnnfast's first-order backward is the fused kernel ``rnnfast::layer_backward``; that op is itself
differentiable (csrc/autograd.cpp: its node recomputes the layer through the differentiable ATen
reference, csrc/layer_reference.cpp, and differentiates it).  These tests check that:

* ``torch.autograd.gradgradcheck`` passes for every module and option (w.r.t. the input, the
  initial states and every weight, all passed as explicit arguments through
  ``torch.func.functional_call``), and for the operator ``rnnfast::layer_forward`` itself;
* a gradient-penalty loss (loss + ||d loss / d input||^2) gives the same gradients as torch.nn,
  whose CPU kernels support double backward;
* the first-order gradients under ``create_graph=True`` are still the fused kernel's, bitwise equal
  to the ones of a plain backward.

Sizes are tiny: gradgradcheck costs O(numel^2) evaluations.
"""

from __future__ import annotations

import pytest
import torch
from cases import EVERY_MODULE, Case, detached_params

from rnnfast._cells import CELLS

TIGHT = dict(rtol=1e-10, atol=1e-10)

SMALL = dict(input_size=2, hidden_size=2, batch=2, seq_len=3)
GRADGRAD_CASES = [
    Case("LSTM", **SMALL),
    Case("LSTM", proj_size=1, **SMALL),
    Case("LSTM", bidirectional=True, **SMALL),
    Case("LSTM", num_layers=2, **SMALL),
    Case("LSTM", batch_first=True, **SMALL),
    Case("LSTM", bias=False, **SMALL),
    Case("LSTM", form="packed_unsorted", **{**SMALL, "batch": 3}),
    Case("LSTM", form="unbatched", **SMALL),
    Case("LSTM", proj_size=1, num_layers=2, bidirectional=True, bias=False, form="packed_unsorted",
         **{**SMALL, "batch": 3, "seq_len": 2}),
    Case("LSTM", proj_size=1, bidirectional=True, bias=False, form="packed_unsorted", batch_first=True,
         **{**SMALL, "batch": 3}),
    Case("GRU", **SMALL),
    Case("GRU", num_layers=2, bidirectional=True, batch_first=True, **SMALL),
    Case("GRU", bidirectional=True, batch_first=True, **SMALL),
    Case("GRU", form="packed_unsorted", bias=False, **{**SMALL, "batch": 3}),
    Case("GRU", form="unbatched", **SMALL),
    Case("RNN", nonlinearity="tanh", **SMALL),
    Case("RNN", nonlinearity="tanh", num_layers=2, bidirectional=True, form="packed_unsorted", **{**SMALL, "batch": 3}),
    Case("RNN", nonlinearity="tanh", bidirectional=True, form="packed_unsorted", **{**SMALL, "batch": 3}),
    Case("RNN", nonlinearity="relu", **SMALL),
    Case("RNN", nonlinearity="relu", bidirectional=True, bias=False, batch_first=True, **SMALL),
    Case("LSTMCell", **SMALL),
    Case("LSTMCell", form="unbatched", bias=False, **SMALL),
    Case("GRUCell", **SMALL),
    Case("GRUCell", form="unbatched", **SMALL),
    Case("RNNCell", nonlinearity="tanh", **SMALL),
    Case("RNNCell", nonlinearity="relu", bias=False, **SMALL),
]


@pytest.mark.parametrize("case", GRADGRAD_CASES)
def test_gradgradcheck_module(case):
    _, fast = case.build_pair()
    lengths = case.make_lengths()
    function, _ = case.params_function(fast, lengths)
    args = (*case.tensors(), *detached_params(fast))
    # The first-order check as well: gradgradcheck assumes the gradient is right.
    assert torch.autograd.gradcheck(function, args)
    assert torch.autograd.gradgradcheck(function, args)


@pytest.mark.parametrize("case", [Case("LSTM", num_layers=n, **SMALL) for n in (1, 2)])
def test_gradgradcheck_module_without_states(case):
    """hx omitted: the zero initial states are made inside the module (no gradient for them)."""
    _, fast = case.build_pair()
    names = [n for n, _ in fast.named_parameters()]

    def function(x, *weights):
        return case.call(fast, x, params=dict(zip(names, weights)))

    args = (case.tensors()[0], *detached_params(fast))
    assert torch.autograd.gradgradcheck(function, args)


@pytest.mark.parametrize("case", [Case("LSTM", **SMALL), Case("GRU", num_layers=2, **SMALL)])
def test_gradgradcheck_weights_only(case):
    """Only the weights require grad (input and states are constants): the recomputation of the
    double backward must not need gradients w.r.t. the constants."""
    _, fast = case.build_pair()
    function, _ = case.params_function(fast)
    constants = case.tensors(requires_grad=False)

    def weights_function(*weights):
        return function(*constants, *weights)

    assert torch.autograd.gradgradcheck(weights_function, tuple(detached_params(fast)))


@pytest.mark.parametrize("case", [Case("LSTM", **SMALL), Case("GRUCell", **SMALL)], ids=lambda c: c.id)
def test_gradgradcheck_inputs_only(case):
    """Weights frozen (requires_grad=False), gradients w.r.t. input and states only."""
    _, fast = case.build_pair()
    fast.requires_grad_(False)

    def function(x, *states):
        return case.call(fast, x, *states)

    assert torch.autograd.gradgradcheck(function, case.tensors())


@pytest.mark.parametrize("keep", ["output", "h_n", "c_n"])
def test_gradgradcheck_of_one_output(keep):
    """Only one output feeds the loss: the first-order node gets undefined gradients for the
    others (zeros in the fused backward), and the double backward must handle them."""
    case = Case("LSTM", bidirectional=True, **SMALL)
    _, fast = case.build_pair()
    function, _ = case.params_function(fast)
    index = ["output", "h_n", "c_n"].index(keep)

    def one_output(*args):
        return function(*args)[index]

    assert torch.autograd.gradgradcheck(one_output, (*case.tensors(), *detached_params(fast)))


def test_gradgradcheck_mixed_requires_grad():
    """h0 requires grad but c0 does not, b_ih is frozen: the op computes gradients by groups
    (input / states / weights) and the double backward must use only those asked for."""
    case = Case("LSTM", **SMALL)
    _, fast = case.build_pair()
    fast.bias_ih_l0.requires_grad_(False)
    x, h0, c0 = case.tensors()
    c0 = c0.detach()

    def function(x, h0):
        return case.call(fast, x, h0, c0)

    assert torch.autograd.gradgradcheck(function, (x, h0))
    # And the weights (except the frozen bias) through functional_call, c0 still constant.
    names = [n for n, _ in fast.named_parameters() if n != "bias_ih_l0"]
    frozen = {"bias_ih_l0": fast.bias_ih_l0.detach()}

    def weights_function(h0, *weights):
        return case.call(fast, x.detach(), h0, c0, params={**frozen, **dict(zip(names, weights))})

    weights = [getattr(fast, n).detach().clone().requires_grad_() for n in names]
    assert torch.autograd.gradgradcheck(weights_function, (h0, *weights))


# ---- the operator ---------------------------------------------------------------------------

OP_CELLS = [("LSTM", False), ("LSTM", True), ("GRU", False), ("RNN_TANH", False), ("RNN_RELU", False)]


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("cell, proj", OP_CELLS, ids=[c + ("_proj" if p else "") for c, p in OP_CELLS])
def test_gradgradcheck_layer_forward_op(cell, proj, packed, reverse):
    I, H, P = 2, 2, (1 if proj else 2)
    G = CELLS[cell].gates
    if packed:
        batch_sizes = torch.tensor([3, 2, 1], dtype=torch.int64)
        B, N = 3, 6
    else:
        batch_sizes = None
        B, N = 2, 6  # 3 steps of 2 rows
    dt = torch.float64

    def leaf(*shape):
        return torch.randn(*shape, dtype=dt, requires_grad=True)

    x, h0 = leaf(N, I), leaf(B, P)
    c0 = leaf(B, H) if cell == "LSTM" else None
    w_ih, w_hh, b_ih, b_hh = leaf(G * H, I), leaf(G * H, P), leaf(G * H), leaf(G * H)
    w_hr = leaf(P, H) if proj else None
    optional = [t for t in (c0, w_hr) if t is not None]

    def function(x, h0, w_ih, w_hh, b_ih, b_hh, *rest):
        it = iter(rest)
        c = next(it) if c0 is not None else None
        hr = next(it) if w_hr is not None else None
        y, h_n, c_n = torch.ops.rnnfast.layer_forward(CELLS[cell].code, x, batch_sizes, h0, c, w_ih, w_hh, b_ih, b_hh, hr,
                                                       reverse)
        return (y, h_n, c_n) if cell == "LSTM" else (y, h_n)

    args = (x, h0, w_ih, w_hh, b_ih, b_hh, *optional)
    assert torch.autograd.gradcheck(function, args)
    assert torch.autograd.gradgradcheck(function, args)


# ---- gradient penalty against torch.nn ------------------------------------------------------

PENALTY_CASES = [
    Case("LSTM", input_size=3, hidden_size=4, batch=3, seq_len=5),
    Case("LSTM", bidirectional=True, proj_size=2, input_size=3, hidden_size=4, batch=3, seq_len=4),
    Case("LSTM", num_layers=2, bidirectional=True, proj_size=2, input_size=3, hidden_size=4, batch=3, seq_len=4),
    Case("LSTM", form="packed_unsorted", batch_first=True, input_size=3, hidden_size=4, batch=3, seq_len=4),
    Case("GRU", input_size=3, hidden_size=4, batch=3, seq_len=4),
    Case("GRU", num_layers=2, input_size=3, hidden_size=4, batch=3, seq_len=4),
    Case("RNN", nonlinearity="tanh", bidirectional=True, input_size=3, hidden_size=4, batch=3, seq_len=4),
    Case("RNN", nonlinearity="relu", input_size=3, hidden_size=4, batch=3, seq_len=4),
    Case("LSTMCell", input_size=3, hidden_size=4, batch=3),
    Case("GRUCell", input_size=3, hidden_size=4, batch=3),
    Case("RNNCell", input_size=3, hidden_size=4, batch=3),
]


def penalty_gradients(case, module, inputs, lengths, loss_of_outputs):
    """Gradients of loss + ||d loss / d (x, states)||^2 w.r.t. every parameter, the input and the
    states, with loss = loss_of_outputs(outputs)."""
    x, *states = inputs
    loss = loss_of_outputs(case.call(module, x, *states, lengths=lengths))
    grads = torch.autograd.grad(loss, inputs, create_graph=True)
    total = loss + sum(g.pow(2).sum() for g in grads)
    params = list(module.parameters())
    return [t.detach() for t in torch.autograd.grad(total, [*params, *inputs])], total.detach()


def compare_penalty(case, make_loss):
    reference, fast = case.build_pair()
    lengths = case.make_lengths()
    inputs = case.tensors(requires_grad=False)
    with torch.no_grad():
        shapes = [o.shape for o in case.call(reference, *inputs, lengths=lengths)]
    loss_of_outputs = make_loss([torch.randn(s, dtype=case.dtype) for s in shapes])

    def leaves():
        return tuple(t.clone().requires_grad_() for t in inputs)

    expected, expected_total = penalty_gradients(case, reference, leaves(), lengths, loss_of_outputs)
    actual, actual_total = penalty_gradients(case, fast, leaves(), lengths, loss_of_outputs)
    torch.testing.assert_close(actual_total, expected_total, **TIGHT)
    names = [n for n, _ in reference.named_parameters()] + ["x"] + [f"state{k}" for k in range(len(inputs) - 1)]
    for name, a, e in zip(names, actual, expected, strict=True):
        assert e.abs().max() > 0, f"degenerate test: torch's gradient of {name} is zero"
        torch.testing.assert_close(a, e, **TIGHT, msg=lambda m, name=name: f"gradient of {name}:\n{m}")


@pytest.mark.parametrize("case", PENALTY_CASES)
def test_gradient_penalty_linear_loss_matches_torch(case):
    """loss = sum(outputs * w) for random constants w: the output cotangents are constants."""
    compare_penalty(case, lambda ws: lambda outputs: sum((o * w).sum() for o, w in zip(outputs, ws)))


NONLINEAR_CASES = [c for c in PENALTY_CASES if c.is_cell or c.num_layers == 1]


@pytest.mark.parametrize("case", NONLINEAR_CASES, ids=[c.id for c in NONLINEAR_CASES])
def test_gradient_penalty_nonlinear_loss_matches_torch(case):
    """The usual gradient penalty: a loss nonlinear in the outputs (here sum(w * tanh(o))), so the
    output cotangents the fused backward receives are themselves functions of the outputs."""
    compare_penalty(case, lambda ws: lambda outputs: sum((o.tanh() * w).sum() for o, w in zip(outputs, ws)))


def test_gradient_penalty_on_weight_gradients_matches_torch():
    """A penalty on the *weight* gradients (d loss / d W), as in some meta-learning setups: the
    second derivative w.r.t. the weights."""
    case = Case("LSTM", num_layers=2, input_size=3, hidden_size=4, batch=2, seq_len=4)
    reference, fast = case.build_pair()
    inputs = case.tensors(requires_grad=False)

    def run(module):
        outputs = case.call(module, *inputs)
        loss = outputs[0].pow(2).sum() + outputs[1].sin().sum()
        params = list(module.parameters())
        grads = torch.autograd.grad(loss, params, create_graph=True)
        total = loss + sum(g.pow(2).sum() for g in grads)
        return [g.detach() for g in torch.autograd.grad(total, params)]

    for (name, _), a, e in zip(reference.named_parameters(), run(fast), run(reference), strict=True):
        torch.testing.assert_close(a, e, **TIGHT, msg=lambda m, name=name: f"gradient of {name}:\n{m}")


def test_double_backward_through_backward_call():
    """.backward() on a penalty (not torch.autograd.grad) accumulates the same .grad as torch.nn."""
    case = Case("GRU", bidirectional=True, input_size=3, hidden_size=4, batch=2, seq_len=4)
    reference, fast = case.build_pair()
    inputs = case.tensors(requires_grad=False)
    grads = {}
    for name, module in (("torch", reference), ("rnnfast", fast)):
        x = inputs[0].clone().requires_grad_()
        out, h_n = case.call(module, x, inputs[1])
        (gx,) = torch.autograd.grad(out.tanh().sum(), x, create_graph=True)
        (gx.pow(2).sum() + h_n.sum()).backward()
        grads[name] = [p.grad.clone() for p in module.parameters()] + [x.grad.clone()]
    for a, e in zip(grads["rnnfast"], grads["torch"], strict=True):
        torch.testing.assert_close(a, e, **TIGHT)


def test_double_backward_through_backward_call_linear_loss():
    """As above with a loss linear in the output (constant cotangents): .grad matches torch.nn."""
    case = Case("GRU", bidirectional=True, input_size=3, hidden_size=4, batch=2, seq_len=4)
    reference, fast = case.build_pair()
    inputs = case.tensors(requires_grad=False)
    w = torch.randn(case.seq_len, case.batch, 2 * case.hidden_size, dtype=case.dtype)
    grads = {}
    for name, module in (("torch", reference), ("rnnfast", fast)):
        x = inputs[0].clone().requires_grad_()
        out, h_n = case.call(module, x, inputs[1])
        (gx,) = torch.autograd.grad((out * w).sum(), x, create_graph=True)
        (gx.pow(2).sum() + h_n.sum()).backward()
        grads[name] = [p.grad.clone() for p in module.parameters()] + [x.grad.clone()]
    for a, e in zip(grads["rnnfast"], grads["torch"], strict=True):
        torch.testing.assert_close(a, e, **TIGHT)


# ---- first order under create_graph ---------------------------------------------------------

FIRST_ORDER_CASES = [
    Case("LSTM", num_layers=2, bidirectional=True, proj_size=2, input_size=3, hidden_size=4, batch=3, seq_len=5),
    Case("GRU", form="packed_unsorted", input_size=3, hidden_size=4, batch=3, seq_len=5),
    Case("RNN", nonlinearity="relu", input_size=3, hidden_size=4, batch=3, seq_len=5),
    Case("LSTMCell", input_size=3, hidden_size=4, batch=3),
    Case("GRUCell", input_size=3, hidden_size=4, batch=3, dtype=torch.float32),
    Case("LSTM", input_size=3, hidden_size=4, batch=3, seq_len=5, dtype=torch.float32),
]


def made_by_layer_backward(grad: torch.Tensor) -> bool:
    """grad is an output of rnnfast::layer_backward, possibly seen through views."""
    fn = grad.grad_fn
    while fn is not None and fn.name() in ("ViewBackward0", "UnsqueezeBackward0", "SqueezeBackward1", "TransposeBackward0"):
        fn = fn.next_functions[0][0]
    return fn is not None and fn.name() == "rnnfast::LayerBackwardBackward"


@pytest.mark.parametrize("case", FIRST_ORDER_CASES, ids=[c.id for c in FIRST_ORDER_CASES])
def test_first_order_gradient_same_under_create_graph(case):
    """Bitwise equal: with create_graph=True the first-order gradients are still computed by the
    fused rnnfast::layer_backward (recorded in the graph as its double-backward node)."""
    _, fast = case.build_pair()
    lengths = case.make_lengths()
    inputs = case.tensors()
    outputs = case.call(fast, *inputs, lengths=lengths)
    cotangents = [torch.randn_like(o) for o in outputs]
    wrt = [*inputs, *fast.parameters()]
    plain = torch.autograd.grad(outputs, wrt, cotangents, retain_graph=True)
    graphed = torch.autograd.grad(outputs, wrt, cotangents, create_graph=True)
    for k, (p, g) in enumerate(zip(plain, graphed, strict=True)):
        assert p.grad_fn is None and not p.requires_grad
        assert g.requires_grad, f"gradient {k} under create_graph has no graph"
        assert torch.equal(p, g), f"gradient {k} differs under create_graph: {(p - g).abs().max()}"
    # The input gradient of a one-layer, one-direction network or a cell is an output of
    # layer_backward itself (seen through the module's reshapes).
    if case.is_cell or (case.num_layers == 1 and not case.bidirectional and not case.form.startswith("packed")):
        assert made_by_layer_backward(graphed[0]), graphed[0].grad_fn


def test_fused_backward_runs_under_create_graph():
    """The profiler sees one rnnfast::layer_backward call per layer in a create_graph backward:
    the first order stays fused."""
    case = Case("LSTM", num_layers=2, input_size=3, hidden_size=4, batch=3, seq_len=5)
    _, fast = case.build_pair()
    inputs = case.tensors()
    outputs = case.call(fast, *inputs)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        torch.autograd.grad(outputs[0].sum(), inputs[0], create_graph=True)
    names = [e.name for e in prof.events()]
    assert names.count("rnnfast::layer_backward") == 2, sorted(set(names))


# ---- third order ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", EVERY_MODULE, ids=[c.id for c in EVERY_MODULE])
def test_third_order_matches_torch(case):
    """A third derivative (d/dW of a second derivative): LayerBackwardBackward differentiates with
    create_graph when asked, so a further order should be available.  Output cotangents are
    constants here, so only the retain_graph bug is in the way."""
    case = Case(case.kind, nonlinearity=case.nonlinearity, proj_size=case.proj_size and 1,
                input_size=2, hidden_size=2, batch=2, seq_len=2)
    reference, fast = case.build_pair()
    inputs = case.tensors(requires_grad=False)
    with torch.no_grad():
        weights = [torch.randn_like(o) for o in case.call(reference, *inputs)]

    def third(module):
        x = inputs[0].clone().requires_grad_()
        outputs = case.call(module, x, *inputs[1:])
        (gx,) = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outputs, weights)), x, create_graph=True)
        (ggx,) = torch.autograd.grad(gx.pow(2).sum(), x, create_graph=True)
        return torch.autograd.grad(ggx.sum(), list(module.parameters()))

    for (name, _), a, e in zip(reference.named_parameters(), third(fast), third(reference), strict=True):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-10, msg=lambda m, name=name: f"{name}:\n{m}")
