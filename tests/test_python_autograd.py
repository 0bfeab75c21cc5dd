"""rnnfast/_autograd.py's eager entry (``_autograd.layer_forward``, what the modules call under the
Python autograd): the same results as the operator, and everything that only the dispatcher
honours still sees the operator. It runs the Python autograd whichever autograd kernel the
operators have registered, so these run in every CI job."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import rnnfast  # noqa: F401  (registers the operators)
from rnnfast import _autograd

OP = torch.ops.rnnfast.layer_forward.default


def layer_args(requires_grad: bool, seed: int = 0):
    """LSTM layer-direction with a projection, 5 steps of 3 rows, float64, random values."""
    g = torch.Generator().manual_seed(seed)
    I, H, P, B, T = 4, 6, 3, 3, 5

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(requires_grad)

    return [0, rand(T * B, I), None, rand(B, P), rand(B, H), rand(4 * H, I), rand(4 * H, P), rand(4 * H),
            rand(4 * H), rand(P, H), False]


def outputs_and_grads(entry, args):
    y, h_n, c_n = entry(*args)
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    grads = torch.autograd.grad((y.sum() + 2 * h_n.sum() + 3 * c_n.sum()), leaves) if leaves else []
    return [y.detach(), h_n.detach(), c_n.detach(), *grads]


@pytest.mark.parametrize("requires_grad", [False, True])
def test_eager_entry_matches_the_operator_bitwise(requires_grad):
    expected = outputs_and_grads(OP, layer_args(requires_grad))
    actual = outputs_and_grads(_autograd.layer_forward, layer_args(requires_grad))
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert torch.equal(a, e)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_eager_entry_reads_negated_views_as_their_values(requires_grad):
    """A lazily negated view (its memory holds the negation) reaches no kernel unresolved."""
    args = layer_args(requires_grad)
    negated = list(args)
    negated[5] = torch._neg_view(-args[5].detach()).requires_grad_(requires_grad)  # args[5]'s values, stored negated
    assert negated[5].is_neg() and torch.equal(negated[5], args[5])
    for a, e in zip(_autograd.layer_forward(*negated), OP(*args), strict=True):
        assert torch.equal(a, e)


class RecordingMode(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func)
        return func(*args, **(kwargs or {}))


def test_dispatch_modes_see_the_operator():
    args = layer_args(True)
    with RecordingMode() as mode:
        y, _, _ = _autograd.layer_forward(*args)
        y.sum().backward()
    assert torch.ops.rnnfast.layer_forward_train.default in mode.ops or OP in mode.ops, mode.ops
    assert torch.ops.rnnfast.layer_backward.default in mode.ops, mode.ops


def test_dispatch_modes_see_the_backward_operator():
    """A graph recorded on plain tensors outside any mode, its backward run inside one: the
    backward's direct path to the kernel checks again, at backward time."""
    y, _, _ = _autograd.layer_forward(*layer_args(True))
    with RecordingMode() as mode:
        y.sum().backward()
    assert torch.ops.rnnfast.layer_backward.default in mode.ops, mode.ops


def test_profiler_sees_the_backward_operator():
    y, _, _ = _autograd.layer_forward(*layer_args(True))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        y.sum().backward()
    assert "rnnfast::layer_backward" in {e.key for e in prof.key_averages()}


def test_negated_output_gradients_are_read_as_their_values():
    """An output gradient that is a lazily negated view reaches the backward kernel resolved."""
    grads = {}
    for negated in (False, True):
        args = layer_args(True)
        y, _, _ = _autograd.layer_forward(*args)
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
        if negated:
            dy = torch._neg_view(-dy)
            assert dy.is_neg()
        leaves = [a for a in args if isinstance(a, torch.Tensor)]
        grads[negated] = torch.autograd.grad(y, leaves, dy)
    for a, e in zip(grads[True], grads[False], strict=True):
        assert torch.equal(a, e)


def test_profiler_sees_the_operator():
    args = layer_args(True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        y, _, _ = _autograd.layer_forward(*args)
        y.sum().backward()
    names = {e.key for e in prof.key_averages()}
    assert "rnnfast::layer_forward" in names and "rnnfast::layer_backward" in names, names


def test_subclass_tensors_go_through_the_dispatcher():
    """A __torch_function__ subclass sees the operator call instead of being read as raw memory."""
    seen = []

    class Traced(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            seen.append(func)
            return super().__torch_function__(func, types, args, kwargs)

    args = layer_args(False)
    args[5] = args[5].as_subclass(Traced)
    expected = OP(*layer_args(False))
    actual = _autograd.layer_forward(*args)
    assert OP in seen
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a.as_subclass(torch.Tensor), e, rtol=0, atol=0)


class AddToWeight(torch.overrides.TorchFunctionMode):
    """Hands the operator w_ih + delta (a LoRA-like mode): the call then records a graph."""

    def __init__(self, delta):
        super().__init__()
        self.delta = delta

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is OP:
            args = list(args)
            args[5] = args[5] + self.delta
        return func(*args, **(kwargs or {}))


def test_torch_function_mode_that_adds_a_grad_input_records_a_graph():
    """The inference shortcut is decided on the call's own arguments: a __torch_function__ mode that
    hands the operator a tensor that requires grad still gets a graph and its gradient."""
    args = layer_args(requires_grad=False)
    delta = torch.randn_like(args[5]).requires_grad_(True)
    with AddToWeight(delta):
        y, _, _ = _autograd.layer_forward(*args)
    assert y.requires_grad
    y.sum().backward()
    expected_args = list(args)
    expected_args[5] = (args[5] + delta).detach().requires_grad_(True)
    OP(*expected_args)[0].sum().backward()
    torch.testing.assert_close(delta.grad, expected_args[5].grad, rtol=0, atol=0)


# torch's forward-AD machinery loads jit-scripted decompositions on first use in a process (its own
# deprecation warning; test_autograd_hygiene.py's QUIET_JIT, there when both run in one process).
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_inference_skips_only_the_autograd_kernel():
    """An inference call (no input requires grad) skips the Autograd kernel: modes still see the
    operator; under forward AD, even inside no_grad, the call keeps its tangents (the reference
    path), so the skip is not taken there."""
    args = layer_args(requires_grad=False)
    with torch.no_grad(), RecordingMode() as mode:
        _autograd.layer_forward(*args)
    assert OP in mode.ops
    import torch.autograd.forward_ad as fwAD  # noqa: PLC0415

    tangent = torch.randn_like(args[1])
    with torch.no_grad(), fwAD.dual_level():
        dual = list(args)
        dual[1] = fwAD.make_dual(args[1], tangent)
        y_tangent = fwAD.unpack_dual(_autograd.layer_forward(*dual)[0]).tangent
    assert y_tangent is not None
    # The reference equations' own tangent: a finite difference of the operator.
    eps = 1e-6
    plus, minus = list(args), list(args)
    plus[1], minus[1] = args[1] + eps * tangent, args[1] - eps * tangent
    expected = (OP(*plus)[0] - OP(*minus)[0]) / (2 * eps)
    torch.testing.assert_close(y_tangent, expected, rtol=1e-6, atol=1e-6)
