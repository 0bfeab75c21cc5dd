"""How rnnfast modules behave inside autograd, beyond the gradient values of one backward.

Repeated backward over a retained graph, torch.func transforms (functional_call, grad, vjp,
jacrev, forward mode), copies and serialization, backward in eval mode, in-place modification
of outputs, partial use of the outputs, allow_unused, tensor / module hooks, saved-tensor hooks
and activation checkpointing.  Every check compares against torch.nn (or against rnnfast itself
where the property is bitwise) on fresh random inputs.
"""

from __future__ import annotations

import copy
import io
import pickle
import re
import warnings

import pytest
import torch
from cases import EVERY_MODULE, Case, assert_all_close, assert_close, ids
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnfast

STRUCTURES = [
    Case("LSTM", num_layers=2, bidirectional=True, proj_size=2, form="packed_unsorted", batch=3),
    Case("GRU", num_layers=2, batch_first=True, bias=False),
    Case("RNN", nonlinearity="relu", bidirectional=True, form="unbatched"),
    Case("LSTMCell", form="unbatched"),
]
ALL_CASES = EVERY_MODULE + STRUCTURES
F32_CASES = [Case("LSTM", num_layers=2, dtype=torch.float32), Case("GRUCell", dtype=torch.float32)]


class Setup:
    """A torch.nn / rnnfast pair with the same weights, inputs, lengths and output cotangents."""

    def __init__(self, case: Case):
        self.case = case
        self.reference, self.fast = case.build_pair()
        self.inputs = case.tensors(requires_grad=False)
        self.lengths = case.make_lengths()
        with torch.no_grad():
            outputs = case.call(self.reference, *self.inputs, lengths=self.lengths)
        self.cotangents = [torch.randn_like(o) for o in outputs]
        self.param_names = [n for n, _ in self.fast.named_parameters()]
        self.input_names = ["x"] + [f"state{k}" for k in range(len(self.inputs) - 1)]

    def leaves(self):
        return tuple(t.clone().requires_grad_() for t in self.inputs)

    def outputs(self, module, inputs, params=None):
        return self.case.call(module, *inputs, lengths=self.lengths, params=params)

    def loss(self, outputs):
        return sum((o * w).sum() for o, w in zip(outputs, self.cotangents))

    def reference_grads(self, module=None, inputs=None):
        """Gradients of the loss on torch.nn w.r.t. (inputs, parameters)."""
        module = module or self.reference
        inputs = inputs or self.leaves()
        loss = self.loss(self.outputs(module, inputs))
        return torch.autograd.grad(loss, [*inputs, *module.parameters()])

    def random_params(self):
        return {n: torch.randn_like(p) for n, p in self.fast.named_parameters()}


# ---- repeated backward ----------------------------------------------------------------------


@pytest.mark.parametrize("case", ALL_CASES + F32_CASES, ids=ids(ALL_CASES + F32_CASES))
def test_backward_twice_with_retained_graph(case):
    """Two backwards over one retained graph: bitwise the same gradients (the fused backward must
    not consume or overwrite its saved activations), accumulating to exactly twice."""
    s = Setup(case)
    inputs = s.leaves()
    loss = s.loss(s.outputs(s.fast, inputs))
    leaves = [*inputs, *s.fast.parameters()]
    loss.backward(retain_graph=True)
    first = [t.grad.clone() for t in leaves]
    again = torch.autograd.grad(loss, leaves, retain_graph=True)
    for name, a, b in zip(s.input_names + s.param_names, first, again):
        assert torch.equal(a, b), f"{name}: second backward differs by {(a - b).abs().max()}"
    loss.backward()
    for name, t, g in zip(s.input_names + s.param_names, leaves, first):
        assert torch.equal(t.grad, 2 * g), f"{name}: accumulated gradient is not 2x"
    assert_all_close(first, s.reference_grads(), s.input_names + s.param_names)


def test_backward_twice_without_retain_graph_raises():
    """The saved activations are released after a backward, like torch's."""
    s = Setup(Case("LSTM"))
    loss = s.loss(s.outputs(s.fast, s.leaves()))
    loss.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()


# ---- torch.func -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", ALL_CASES, ids=ids(ALL_CASES))
def test_functional_call_with_other_weights(case):
    """functional_call with a different weight dict matches torch.nn with those weights (outputs
    and gradients w.r.t. the dict), and leaves the module's own weights in use afterwards."""
    s = Setup(case)
    own_before = s.outputs(s.fast, s.inputs)
    for _ in range(2):  # two different dicts in a row: nothing cached from the first
        params = s.random_params()
        fast_params = {n: p.clone().requires_grad_() for n, p in params.items()}
        ref_params = {n: p.clone().requires_grad_() for n, p in params.items()}
        actual = s.outputs(s.fast, s.inputs, fast_params)
        expected = s.outputs(s.reference, s.inputs, ref_params)
        assert_all_close(actual, expected, [f"output {k}" for k in range(len(expected))])
        fast_grads = torch.autograd.grad(s.loss(actual), list(fast_params.values()))
        ref_grads = torch.autograd.grad(s.loss(expected), list(ref_params.values()))
        assert_all_close(fast_grads, ref_grads, s.param_names)
    own_after = s.outputs(s.fast, s.inputs)
    for a, b in zip(own_after, own_before):
        assert torch.equal(a, b), "the module's own weights are not used after functional_call"


@pytest.mark.parametrize("case", ALL_CASES, ids=ids(ALL_CASES))
def test_func_grad_of_parameters_matches_torch(case):
    """torch.func.grad of a scalar loss w.r.t. the parameter dict (through functional_call)."""
    s = Setup(case)
    params = {n: p.detach() for n, p in s.fast.named_parameters()}

    def loss_of_params(p):
        return s.loss(s.outputs(s.fast, s.inputs, p))

    grads = torch.func.grad(loss_of_params)(params)
    assert list(grads) == s.param_names
    expected = s.reference_grads()[len(s.inputs):]
    assert_all_close(grads.values(), expected, s.param_names)


def transform_inputs(s: Setup):
    """The inputs a torch.func transform differentiates, and the function calling the module on
    them.  pack_padded_sequence's backward cannot run on functorch's wrapped tensors (a torch
    limitation, torch.nn fails the same way), so a packed case is packed outside the transform
    and differentiated w.r.t. the PackedSequence's data."""
    if s.lengths is None:
        return s.inputs, lambda module, inputs, params=None: s.outputs(module, inputs, params)
    packed = pack_padded_sequence(s.inputs[0], s.lengths, batch_first=s.case.batch_first, enforce_sorted=False)

    def call(module, inputs, params=None):
        data, *states = inputs
        x = PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
        return s.case.call(module, x, *states, params=params)

    return (packed.data, *s.inputs[1:]), call


def autograd_grads(module, inputs, call, loss):
    """Gradients of loss(call(module, inputs)) w.r.t. (inputs, module parameters) by autograd."""
    leaves = [t.clone().requires_grad_() for t in inputs]
    return torch.autograd.grad(loss(call(module, leaves)), [*leaves, *module.parameters()])


@pytest.mark.parametrize("case", ALL_CASES, ids=ids(ALL_CASES))
def test_func_grad_of_inputs_matches_torch(case):
    """torch.func.grad w.r.t. the input and states, calling the module directly (no
    functional_call: its parameters are constants of the transform)."""
    s = Setup(case)
    inputs, call = transform_inputs(s)

    def loss_of_inputs(*inputs):
        return s.loss(call(s.fast, inputs))

    grads = torch.func.grad(loss_of_inputs, argnums=tuple(range(len(inputs))))(*inputs)
    expected = autograd_grads(s.reference, inputs, call, s.loss)[: len(inputs)]
    assert_all_close(grads, expected, s.input_names)


@pytest.mark.parametrize("case", ALL_CASES, ids=ids(ALL_CASES))
def test_func_grad_and_value_with_aux(case):
    """grad_and_value with has_aux: the value and aux outputs are the plain forward's."""
    s = Setup(case)
    params = {n: p.detach() for n, p in s.fast.named_parameters()}

    def loss_of_params(p):
        outputs = s.outputs(s.fast, s.inputs, p)
        return s.loss(outputs), outputs

    grads, (value, aux) = torch.func.grad_and_value(loss_of_params, has_aux=True)(params)
    with torch.no_grad():
        plain = s.outputs(s.fast, s.inputs)
    for a, b in zip(aux, plain):
        assert torch.equal(a, b)
    assert torch.equal(value, s.loss(plain))
    assert_all_close(grads.values(), s.reference_grads()[len(s.inputs):], s.param_names)


@pytest.mark.parametrize("case", ALL_CASES, ids=ids(ALL_CASES))
def test_func_vjp_matches_torch(case):
    """torch.func.vjp of (inputs, parameter dict) -> outputs, with random cotangents."""
    s = Setup(case)
    inputs, call = transform_inputs(s)
    params = {n: p.detach() for n, p in s.fast.named_parameters()}

    outputs, vjp_fn = torch.func.vjp(lambda inputs, p: call(s.fast, inputs, p), inputs, params)
    with torch.no_grad():
        plain = call(s.fast, inputs)
    for a, b in zip(outputs, plain):
        assert torch.equal(a, b)
    input_grads, param_grads = vjp_fn(tuple(s.cotangents))
    expected = autograd_grads(s.reference, inputs, call, s.loss)
    assert_all_close([*input_grads, *param_grads.values()], expected, s.input_names + s.param_names)


@pytest.mark.parametrize("case", [Case("LSTM", hidden_size=2, seq_len=2), Case("GRUCell", hidden_size=2)], ids=lambda c: c.id)
def test_func_jacrev_matches_torch(case):
    """jacrev (vmap over the backward; rnnfast has no batching rule, so torch's slow fallback
    runs, with a performance warning)."""
    s = Setup(case)

    def function(module):
        return lambda x: s.outputs(module, (x, *s.inputs[1:]))[0]

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        actual = torch.func.jacrev(function(s.fast))(s.inputs[0])
    expected = torch.func.jacrev(function(s.reference))(s.inputs[0])
    assert_close(actual, expected, "jacobian")


# torch's forward-AD machinery loads jit-scripted decompositions on first use (its own warning).
QUIET_JIT = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def forward_ad_outcome(fn):
    """fn() -> ("ok", value), or ("refused", message) for torch's refusal of forward AD."""
    try:
        return "ok", fn()
    except (NotImplementedError, RuntimeError) as exc:
        if re.search(r"forward AD|forward-mode|jvp|not (yet )?(been )?implemented|not supported", str(exc), re.I):
            return "refused", str(exc)
        raise


def assert_matches_or_refused(outcome, expected, name):
    """A forward-mode result must be right, or an error: never a silently wrong tangent."""
    kind, value = outcome
    if kind == "refused":
        return
    assert value is not None, f"{name}: forward-mode tangent is None (the input's tangent was dropped)"
    assert_close(value, expected, name)


@QUIET_JIT
@pytest.mark.parametrize("case", [Case("LSTM"), Case("GRU", num_layers=2), Case("RNNCell")], ids=lambda c: c.id)
def test_func_jvp_matches_torch_or_is_refused(case):
    s = Setup(case)
    tangents = tuple(torch.randn_like(t) for t in s.inputs)

    def jvp(module):
        return torch.func.jvp(lambda *inputs: s.outputs(module, inputs)[0], s.inputs, tangents)[1]

    # rnnfast::layer_forward carries tangents through the reference equations: no refusal here.
    outcome = forward_ad_outcome(lambda: jvp(s.fast))
    assert outcome[0] == "ok", outcome[1]
    assert_matches_or_refused(outcome, jvp(s.reference), "jvp tangent")


@QUIET_JIT
@pytest.mark.parametrize("case", [Case("LSTM"), Case("GRUCell")], ids=lambda c: c.id)
def test_forward_ad_dual_tensors_match_torch_or_are_refused(case):
    import torch.autograd.forward_ad as fwAD

    s = Setup(case)
    tangent = torch.randn_like(s.inputs[0])

    def tangent_of(module):
        with fwAD.dual_level():
            x = fwAD.make_dual(s.inputs[0], tangent)
            out = s.outputs(module, (x, *s.inputs[1:]))[0]
            return fwAD.unpack_dual(out).tangent

    outcome = forward_ad_outcome(lambda: tangent_of(s.fast))
    assert outcome[0] == "ok", outcome[1]
    assert_matches_or_refused(outcome, tangent_of(s.reference), "tangent")


@QUIET_JIT
def test_func_hessian_matches_torch_or_is_refused():
    s = Setup(Case("LSTM", hidden_size=2, seq_len=2, batch=1, input_size=2))

    def hessian(module):
        return torch.func.hessian(lambda x: s.loss(s.outputs(module, (x, *s.inputs[1:]))).tanh())(s.inputs[0])

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        outcome = forward_ad_outcome(lambda: hessian(s.fast))
    assert_matches_or_refused(outcome, hessian(s.reference), "hessian")


# ---- copies and serialization ---------------------------------------------------------------


def copy_by(method, module):
    if method == "deepcopy":
        return copy.deepcopy(module)
    if method == "pickle":
        return pickle.loads(pickle.dumps(module))
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("method", ["deepcopy", "pickle", "torch.save"])
@pytest.mark.parametrize("case", ALL_CASES, ids=ids(ALL_CASES))
def test_copy_then_forward_and_backward_parity(case, method):
    """The copy is an independent rnnfast module with equal weights: same outputs and gradients
    as the original (bitwise) and as torch.nn; training the copy leaves the original alone."""
    s = Setup(case)
    clone = copy_by(method, s.fast)
    assert type(clone) is type(s.fast)
    for (n, a), (_, b) in zip(clone.named_parameters(), s.fast.named_parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), n
    inputs = s.leaves()
    clone_grads = torch.autograd.grad(s.loss(s.outputs(clone, inputs)), [*inputs, *clone.parameters()])
    inputs = s.leaves()
    fast_grads = torch.autograd.grad(s.loss(s.outputs(s.fast, inputs)), [*inputs, *s.fast.parameters()])
    for name, a, b in zip(s.input_names + s.param_names, clone_grads, fast_grads):
        assert torch.equal(a, b), name
    assert_all_close(clone_grads, s.reference_grads(), s.input_names + s.param_names)
    # The copy reads its own weights: changing them changes its output, not the original's.
    before = s.outputs(s.fast, s.inputs)
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(0.5)
    changed = s.outputs(clone, s.inputs)
    assert not torch.equal(changed[0], before[0])
    for a, b in zip(s.outputs(s.fast, s.inputs), before):
        assert torch.equal(a, b)


# ---- eval mode ------------------------------------------------------------------------------


EVAL_CASES = ALL_CASES + [Case("LSTM", num_layers=3), Case("GRU", num_layers=2, bidirectional=True)]


@pytest.mark.parametrize("case", EVAL_CASES, ids=ids(EVAL_CASES))
def test_backward_in_eval_mode(case):
    """eval() switches off dropout, not autograd: backward works and matches torch.nn in eval."""
    if not case.is_cell and case.num_layers > 1:
        kwargs = case.kwargs()
        kwargs["dropout"] = 0.5
        reference = getattr(torch.nn, case.kind)(case.input_size, case.hidden_size, **kwargs)
        fast = getattr(rnnfast, case.kind)(case.input_size, case.hidden_size, **kwargs)
        fast.load_state_dict(reference.state_dict())
        s = Setup(case)
        s.reference, s.fast = reference, fast
    else:
        s = Setup(case)
    s.fast.eval()
    s.reference.eval()
    inputs = s.leaves()
    outputs = s.outputs(s.fast, inputs)
    assert all(o.requires_grad for o in outputs)
    s.loss(outputs).backward()
    actual = [*(t.grad for t in inputs), *(p.grad for p in s.fast.parameters())]
    assert_all_close(actual, s.reference_grads(), s.input_names + s.param_names)


# ---- in-place modification of outputs ------------------------------------------------------

NETWORK_CASES = [c for c in ALL_CASES if not c.is_cell]


VERSION_ERROR = "modified by an inplace operation"


def inplace_outcome(s, module, which, inplace, part=lambda t: t):
    """Gradients after modifying outputs[k] (k in which) in place, or the version-counter error;
    with inplace=False the same modification out of place (the mathematical reference)."""
    inputs = s.leaves()
    outputs = list(s.outputs(module, inputs))
    for k in which:
        if inplace:
            part(outputs[k]).mul_(-1.5).add_(0.25)
        else:
            mask = torch.zeros_like(outputs[k], dtype=torch.bool)
            part(mask).fill_(True)
            outputs[k] = torch.where(mask, outputs[k] * -1.5 + 0.25, outputs[k])
    try:
        return "ok", torch.autograd.grad(s.loss(outputs), [*inputs, *module.parameters()])
    except RuntimeError as exc:
        if VERSION_ERROR in str(exc):
            return "raised", str(exc)
        raise


def assert_right_or_refused(s, actual, expected):
    """In-place modification of an output: rnnfast must raise torch's version-counter error or
    give the gradients of the same modification done out of place (never silently wrong)."""
    kind, value = actual
    if kind == "ok":
        assert_all_close(value, expected, s.input_names + s.param_names)


@pytest.mark.parametrize("case", NETWORK_CASES, ids=ids(NETWORK_CASES))
def test_inplace_on_output_before_backward(case):
    """The fused backward reads the saved output sequence of the last layer.  A one-direction
    network returns that tensor (or a view of it): modifying it in place must raise torch's
    version-counter error.  A bidirectional one returns a concatenation that nothing saved
    aliases: the gradients must then be those of the out-of-place modification."""
    s = Setup(case)
    for part in (lambda t: t, lambda t: t.select(-2 if case.form != "unbatched" else 0, 0)):
        expected = inplace_outcome(s, s.reference, [0], inplace=False, part=part)[1]
        actual = inplace_outcome(s, s.fast, [0], inplace=True, part=part)
        if not case.bidirectional:
            assert actual[0] == "raised", "in-place modification of the saved output went unnoticed"
        assert_right_or_refused(s, actual, expected)


@pytest.mark.parametrize("case", ALL_CASES, ids=ids(ALL_CASES))
def test_inplace_on_final_states(case):
    """h_n / c_n (a cell's h / c) are not saved by rnnfast: modifying them in place gives the
    gradients of the out-of-place modification (so no saved tensor aliases them), or torch's
    version-counter error (torch.nn.RNNCell raises here: its tanh saves the output)."""
    s = Setup(case)
    which = list(range(0 if case.is_cell else 1, len(s.cotangents)))
    expected = inplace_outcome(s, s.reference, which, inplace=False)[1]
    actual = inplace_outcome(s, s.fast, which, inplace=True)
    assert_right_or_refused(s, actual, expected)
    assert actual[0] == "ok", "rnnfast saves no final state, yet raised"


# ---- partial use of the outputs -------------------------------------------------------------


def partial_grads(s, module, which):
    inputs = s.leaves()
    outputs = s.outputs(module, inputs)
    loss = sum((outputs[k] * s.cotangents[k]).sum() for k in which)
    return torch.autograd.grad(loss, [*inputs, *module.parameters()], allow_unused=True, materialize_grads=True)


@pytest.mark.parametrize("case", ALL_CASES, ids=ids(ALL_CASES))
def test_gradient_of_each_output_alone(case):
    """Gradient w.r.t. only the output (final states unused), only h_n (output unused), only c_n."""
    s = Setup(case)
    for k in range(len(s.cotangents)):
        actual = partial_grads(s, s.fast, [k])
        expected = partial_grads(s, s.reference, [k])
        assert_all_close(actual, expected, [f"{n} (output {k} alone)" for n in s.input_names + s.param_names])


def test_allow_unused_for_weights_not_contributing():
    """A 2-layer LSTM differentiated through layer 0's final state only: layer 1's weights do not
    contribute (zero, or None under allow_unused, as torch.nn), and an unrelated tensor is None."""
    s = Setup(Case("LSTM", num_layers=2, bidirectional=True, hidden_size=4))
    unrelated = torch.randn(3, requires_grad=True)

    def grads(module):
        inputs = s.leaves()
        _, h_n, _ = s.outputs(module, inputs)
        return torch.autograd.grad(h_n[0].sum(), [*module.parameters(), unrelated], allow_unused=True)

    actual, expected = grads(s.fast), grads(s.reference)
    assert actual[-1] is None and expected[-1] is None
    for name, a, e in zip(s.param_names, actual[:-1], expected[:-1]):
        contributes = name.endswith("_l0")
        if not contributes:
            assert a is None or not a.any(), f"{name} does not contribute but has gradient"
            continue
        assert a is not None and e is not None, name
        assert_close(a, e, name)
    with pytest.raises(RuntimeError, match="not have been used in the graph"):
        torch.autograd.grad(s.outputs(s.fast, s.leaves())[1].sum(), [unrelated])


def test_frozen_weights_get_no_gradient():
    """A parameter with requires_grad=False is a constant: no .grad, the others match torch.nn."""
    s = Setup(Case("GRU", num_layers=2))
    for module in (s.fast, s.reference):
        module.weight_hh_l0.requires_grad_(False)
        module.bias_ih_l1.requires_grad_(False)
    for module in (s.fast, s.reference):
        s.loss(s.outputs(module, s.inputs)).backward()
    for (name, a), (_, e) in zip(s.fast.named_parameters(), s.reference.named_parameters()):
        if name in ("weight_hh_l0", "bias_ih_l1"):
            assert a.grad is None, name
        else:
            assert_close(a.grad, e.grad, name)


# ---- hooks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ALL_CASES, ids=ids(ALL_CASES))
def test_tensor_hooks_fire_and_can_rescale(case):
    """A hook on the output fires once with the output's gradient; its return value replaces
    that gradient (doubling it doubles every gradient reached through the output only)."""
    s = Setup(case)
    seen = []

    def hook(grad):
        seen.append(grad.clone())
        return grad * 2

    inputs = s.leaves()
    outputs = s.outputs(s.fast, inputs)
    handle = outputs[0].register_hook(hook)
    loss = (outputs[0] * s.cotangents[0]).sum()
    actual = torch.autograd.grad(loss, [*inputs, *s.fast.parameters()], allow_unused=True, materialize_grads=True)
    handle.remove()
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], s.cotangents[0], rtol=0, atol=0)
    expected = partial_grads(s, s.reference, [0])
    assert_all_close(actual, [2 * e for e in expected], s.input_names + s.param_names)


@pytest.mark.parametrize("case", ALL_CASES, ids=ids(ALL_CASES))
def test_parameter_hooks_fire_once_with_the_gradient(case):
    """Hooks on every parameter (and post-accumulate-grad hooks) fire once per backward with the
    parameter's gradient."""
    s = Setup(case)
    seen, accumulated = {}, {}
    handles = []
    for name, p in s.fast.named_parameters():
        handles.append(p.register_hook(lambda g, name=name: seen.setdefault(name, []).append(g.clone())))
        handles.append(p.register_post_accumulate_grad_hook(
            lambda p, name=name: accumulated.setdefault(name, []).append(p.grad.clone())))
    s.loss(s.outputs(s.fast, s.leaves())).backward()
    for h in handles:
        h.remove()
    expected = s.reference_grads()[len(s.inputs):]
    for name, e in zip(s.param_names, expected):
        assert len(seen.get(name, [])) == 1 and len(accumulated.get(name, [])) == 1, name
        assert_close(seen[name][0], e, name)
        assert torch.equal(accumulated[name][0], seen[name][0]), name


UNPACKED_CASES = [c for c in ALL_CASES if not c.form.startswith("packed")]


@pytest.mark.parametrize("case", UNPACKED_CASES, ids=ids(UNPACKED_CASES))
def test_module_full_backward_hook_matches_torch(case):
    """register_full_backward_hook sees the same grad_input / grad_output as on torch.nn.  (With
    a PackedSequence input and output the hook never fires, on torch.nn either.)"""
    s = Setup(case)
    calls = {}
    for key, module in (("fast", s.fast), ("torch", s.reference)):
        log = calls.setdefault(key, [])
        module.register_full_backward_hook(lambda mod, gin, gout, log=log: log.append((gin, gout)))
        s.loss(s.outputs(module, s.leaves())).backward()
    assert len(calls["fast"]) == len(calls["torch"]) == 1
    for part in (0, 1):
        fast_part, torch_part = calls["fast"][0][part], calls["torch"][0][part]
        assert len(fast_part) == len(torch_part)
        for k, (a, e) in enumerate(zip(fast_part, torch_part)):
            assert (a is None) == (e is None), (part, k)
            if e is not None:
                assert_close(a, e, f"hook {'grad_output' if part else 'grad_input'}[{k}]")


# ---- saved tensors --------------------------------------------------------------------------


@pytest.mark.parametrize("case", ALL_CASES, ids=ids(ALL_CASES))
def test_saved_tensor_hooks_are_applied(case):
    """Default saved-tensor hooks (pack / unpack) see rnnfast's saved tensors, and gradients are
    unchanged when packing goes through a copy (as torch.autograd.graph.save_on_cpu does)."""
    s = Setup(case)
    packed = []

    def pack(t):
        packed.append(t.shape)
        return t.clone()

    inputs = s.leaves()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outputs = s.outputs(s.fast, inputs)
    assert packed, "no saved tensor went through the pack hook"
    actual = torch.autograd.grad(s.loss(outputs), [*inputs, *s.fast.parameters()])
    assert_all_close(actual, s.reference_grads(), s.input_names + s.param_names)


@pytest.mark.parametrize("use_reentrant", [False, True], ids=["nonreentrant", "reentrant"])
@pytest.mark.parametrize("case", ALL_CASES, ids=ids(ALL_CASES))
def test_activation_checkpointing_matches_torch(case, use_reentrant):
    """torch.utils.checkpoint around the module: the recomputed forward must save the same
    tensors (the non-reentrant variant checks that) and the gradients are torch.nn's."""
    s = Setup(case)
    inputs = s.leaves()

    def run(*inputs):
        return s.outputs(s.fast, inputs)

    outputs = torch.utils.checkpoint.checkpoint(run, *inputs, use_reentrant=use_reentrant)
    s.loss(outputs).backward()
    actual = [*(t.grad for t in inputs), *(p.grad for p in s.fast.parameters())]
    assert_all_close(actual, s.reference_grads(), s.input_names + s.param_names)


def test_no_grad_and_inference_mode_record_nothing():
    s = Setup(Case("LSTM", num_layers=2))
    inputs = s.leaves()
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            outputs = s.outputs(s.fast, inputs)
        assert all(o.grad_fn is None and not o.requires_grad for o in outputs)
    expected = s.outputs(s.reference, s.inputs)
    assert_all_close(outputs, expected, ["output", "h_n", "c_n"])


def test_outputs_are_fresh_tensors():
    """Outputs do not share memory with the inputs (the module returns new tensors)."""
    s = Setup(Case("LSTMCell"))
    inputs = s.leaves()
    outputs = s.outputs(s.fast, inputs)
    storages = {t.untyped_storage().data_ptr() for t in inputs}
    assert all(o.untyped_storage().data_ptr() not in storages for o in outputs)
    assert len({o.untyped_storage().data_ptr() for o in outputs}) == len(outputs)
