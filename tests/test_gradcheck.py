"""torch.autograd.gradcheck of rnnfast modules and cells in float64, w.r.t. input, h0, c0 and every weight.

Parameters are passed as gradcheck inputs through torch.func.functional_call, so this also checks
that rnnfast reads its parameters at call time (as torch.nn does).  gradgradcheck runs too; double
backward is not part of the contract: when the implementation refuses it with a clear error the
test is xfail; a double backward that runs must be right.
"""

import re

import pytest
import torch
from cases import SMALL, Case, detached_params, ids

CASES = [
    Case(kind="LSTM", **SMALL),
    Case(kind="GRU", **SMALL),
    Case(kind="LSTM", bidirectional=True, **SMALL),
    Case(kind="GRU", bidirectional=True, **SMALL),
    Case(kind="LSTM", num_layers=2, **SMALL),
    Case(kind="GRU", num_layers=2, **SMALL),
    Case(kind="LSTM", proj_size=2, **SMALL),
    Case(kind="LSTM", proj_size=2, num_layers=2, bidirectional=True, bias=False, **SMALL),
    Case(kind="GRU", bias=False, batch_first=True, **SMALL),
    Case(kind="LSTM", form="packed_unsorted", bidirectional=True, **{**SMALL, "batch": 3}),
    Case(kind="GRU", form="packed_unsorted", bidirectional=True, **{**SMALL, "batch": 3}),
    Case(kind="LSTM", form="unbatched", **SMALL),
    Case(kind="RNN", **SMALL),
    Case(kind="RNN", nonlinearity="relu", **SMALL),
    Case(kind="RNN", num_layers=2, bidirectional=True, **SMALL),
    Case(kind="RNN", nonlinearity="relu", num_layers=2, bidirectional=True, bias=False, batch_first=True, **SMALL),
    Case(kind="RNN", form="packed_unsorted", bidirectional=True, **{**SMALL, "batch": 3}),
    Case(kind="RNN", nonlinearity="relu", form="packed_unsorted", num_layers=2, **{**SMALL, "batch": 3}),
    Case(kind="RNN", nonlinearity="relu", form="unbatched", **SMALL),
    Case(kind="GRU", form="unbatched", bidirectional=True, **SMALL),
]
# The cells, batched and unbatched (1-D), with and without bias.
CELL_CASES = [
    Case(kind=kind, nonlinearity=nonlinearity, bias=bias, form=form, **SMALL)
    for kind, nonlinearity in (("LSTMCell", "tanh"), ("GRUCell", "tanh"), ("RNNCell", "tanh"), ("RNNCell", "relu"))
    for bias, form in ((True, "padded"), (False, "unbatched"))
]
CASES += CELL_CASES
# Single-layer networks only: double backward through a stack (and through a loss nonlinear in the
# outputs) hits a known rnnfast bug covered, with its xfail, by test_double_backward.py.
GRADGRAD_CASES = [CASES[0], CASES[1], CASES[9], CASES[10], CASES[12], CASES[13], CASES[16], CASES[18]] + CELL_CASES[::2]


# What an unsupported double backward looks like (a once_differentiable Function, a backward
# written with non-differentiable ops, or an explicit refusal).
DOUBLE_BACKWARD_UNSUPPORTED = re.compile(
    r"double backward|differentiate twice|once_differentiable|not (been )?implemented|not supported"
    r"|does not require grad and does not have a grad_fn",
    re.IGNORECASE,
)


def as_function(cfg: Case):
    """(function of (input, h0[, c0], *params) -> flat outputs, the tensors to check at): every
    tensor an explicit argument, the parameters through torch.func.functional_call."""
    _, fast = cfg.build_pair()
    function, _ = cfg.params_function(fast, cfg.make_lengths())
    return function, (*cfg.tensors(), *detached_params(fast))


@pytest.mark.parametrize("cfg", CASES, ids=ids(CASES))
def test_gradcheck(cfg):
    function, args = as_function(cfg)
    assert torch.autograd.gradcheck(function, args)


def double_backward_refusal(function, args) -> str | None:
    """The error a double backward raises through .backward(), if the implementation refuses it.

    A Function marked @once_differentiable returns first-order gradients whose graph ends in a
    node that raises when it runs; torch.autograd.grad w.r.t. the inputs never reaches that node
    and silently reports the second-order gradient as zero, so gradgradcheck alone would show a
    Jacobian mismatch instead of the refusal.  Running .backward() does reach it.
    """
    outputs = function(*args)
    grad_outputs = [torch.randn_like(o).requires_grad_() for o in outputs]
    grads = torch.autograd.grad(outputs, args, grad_outputs, create_graph=True, allow_unused=True)
    try:
        sum(g.sum() for g in grads if g is not None).backward()
    except (NotImplementedError, RuntimeError) as exc:
        if DOUBLE_BACKWARD_UNSUPPORTED.search(str(exc)):
            return f"{type(exc).__name__}: {exc}"
        raise
    return None


@pytest.mark.parametrize("cfg", GRADGRAD_CASES, ids=ids(GRADGRAD_CASES))
def test_gradgradcheck(cfg):
    function, args = as_function(cfg)
    refusal = double_backward_refusal(function, args)
    if refusal is not None:
        pytest.xfail(f"double backward not supported: {refusal}")
    assert torch.autograd.gradgradcheck(function, args)
