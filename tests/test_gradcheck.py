"""torch.autograd.gradcheck of rnnfast modules in float64, w.r.t. input, h0, c0 and every weight.

Parameters are passed as gradcheck inputs through torch.func.functional_call, so this also checks
that rnnfast reads its parameters at call time (as torch.nn does).  gradgradcheck runs too; double
backward is not part of the contract: when the implementation refuses it with a clear error the
test is xfail; a double backward that runs must be right.
"""

import re

import pytest
import torch
from conftest import Config, build_pair, flat_outputs, make_inputs
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

SMALL = dict(input_size=2, hidden_size=3, batch=2, seq_len=3)
CASES = [
    Config(mode="LSTM", **SMALL),
    Config(mode="GRU", **SMALL),
    Config(mode="LSTM", bidirectional=True, **SMALL),
    Config(mode="GRU", bidirectional=True, **SMALL),
    Config(mode="LSTM", num_layers=2, **SMALL),
    Config(mode="GRU", num_layers=2, **SMALL),
    Config(mode="LSTM", proj_size=2, **SMALL),
    Config(mode="LSTM", proj_size=2, num_layers=2, bidirectional=True, bias=False, **SMALL),
    Config(mode="GRU", bias=False, batch_first=True, **SMALL),
    Config(mode="LSTM", form="packed_unsorted", bidirectional=True, **{**SMALL, "batch": 3}),
    Config(mode="GRU", form="packed_unsorted", bidirectional=True, **{**SMALL, "batch": 3}),
    Config(mode="LSTM", form="unbatched", **SMALL),
]
GRADGRAD_CASES = [CASES[0], CASES[1], CASES[9], CASES[10]]

# What an unsupported double backward looks like (a once_differentiable Function, a backward
# written with non-differentiable ops, or an explicit refusal).
DOUBLE_BACKWARD_UNSUPPORTED = re.compile(
    r"double backward|differentiate twice|once_differentiable|not (been )?implemented|not supported"
    r"|does not require grad and does not have a grad_fn",
    re.IGNORECASE,
)


def as_function(cfg: Config):
    """(function of (input, h0[, c0], *params) -> flat outputs, the tensors to check at)."""
    _, fast = build_pair(cfg)
    inputs = make_inputs(cfg)
    names = [name for name, _ in fast.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in fast.parameters()]
    num_states = len(inputs.leaves) - 1
    lengths = None
    if cfg.form.startswith("packed"):
        _, lengths = pad_packed_sequence(inputs.input, batch_first=cfg.batch_first)

    def function(x, *rest):
        states, weights = rest[:num_states], rest[num_states:]
        if lengths is not None:
            x = pack_padded_sequence(x, lengths, batch_first=cfg.batch_first, enforce_sorted=False)
        hx = states if cfg.mode == "LSTM" else states[0]
        result = torch.func.functional_call(fast, dict(zip(names, weights)), (x, hx))
        return tuple(flat_outputs(result))

    return function, (*inputs.leaves, *params)


@pytest.mark.parametrize("cfg", CASES, ids=[c.id for c in CASES])
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


@pytest.mark.parametrize("cfg", GRADGRAD_CASES, ids=[c.id for c in GRADGRAD_CASES])
def test_gradgradcheck(cfg):
    function, args = as_function(cfg)
    refusal = double_backward_refusal(function, args)
    if refusal is not None:
        pytest.xfail(f"double backward not supported: {refusal}")
    assert torch.autograd.gradgradcheck(function, args)
