"""torch's NaN/Inf semantics: a NaN, +-Inf, a huge or a denormal value in the input, the initial
states or a weight gives the same pattern of NaN and +-Inf as torch.nn in the outputs and in every
gradient, and the same values where both are finite.

torch.nn is the reference for the pattern; the finite values are compared at the usual tolerance
(relative to the tensor's finite magnitude).
"""

import itertools

import pytest
import torch

from cases import assert_close

import rnnfast

VALUES = {
    "nan": float("nan"),
    "+inf": float("inf"),
    "-inf": float("-inf"),
    "huge": 1e30,
    "denormal": 1e-40,
}
WHERE = ["input", "h0", "c0", "weight_ih_l0", "weight_hh_l0", "bias_hh_l0"]
MODES = [("LSTM", {}), ("GRU", {}), ("RNN", {}), ("RNN", {"nonlinearity": "relu"})]


def cases():
    for (mode, kw), where, value, dtype in itertools.product(MODES, WHERE, VALUES, (torch.float32, torch.float64)):
        if where == "c0" and mode != "LSTM":
            continue
        yield pytest.param(mode, kw, where, value, dtype,
                           id=f"{mode}{'_relu' if kw else ''}-{where}-{value}-{str(dtype)[6:]}")


def run(module, x, hx, dtype):
    x = x.clone().requires_grad_()
    hx = tuple(h.clone().requires_grad_() for h in hx)
    out, hidden = module(x, hx if module.mode == "LSTM" else hx[0])
    states = hidden if isinstance(hidden, tuple) else (hidden,)
    g = torch.Generator().manual_seed(7)
    grads = [torch.randn(t.shape, generator=g, dtype=dtype) for t in (out, *states)]
    params = list(module.parameters())
    derivs = torch.autograd.grad((out, *states), [x, *hx, *params], grads, allow_unused=True)
    return [out, *states, *derivs]


def same_pattern(actual, expected, name, dtype):
    assert actual.shape == expected.shape, name
    for what, mask_a, mask_e in (("NaN", actual.isnan(), expected.isnan()),
                                 ("+inf", actual == float("inf"), expected == float("inf")),
                                 ("-inf", actual == float("-inf"), expected == float("-inf"))):
        if not torch.equal(mask_a, mask_e):
            raise AssertionError(f"{name}: {what} at {int(mask_a.sum())} places, torch.nn at "
                                 f"{int(mask_e.sum())} (differ at {int((mask_a ^ mask_e).sum())})")
    finite = expected.isfinite()
    if finite.any():
        # (huge values: the absolute tolerance scales in float64 too)
        assert_close(actual[finite], expected[finite].detach(), f"{name} (finite values)", scaled=True)


@pytest.mark.parametrize("mode, kw, where, value, dtype", list(cases()))
def test_special_value_propagates_like_torch(mode, kw, where, value, dtype):
    torch.manual_seed(11)
    ref = getattr(torch.nn, mode)(4, 6, dtype=dtype, **kw)
    fast = getattr(rnnfast, mode)(4, 6, dtype=dtype, **kw)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(5, 3, 4, dtype=dtype)
    hx = [torch.randn(1, 3, 6, dtype=dtype)] + ([torch.randn(1, 3, 6, dtype=dtype)] if mode == "LSTM" else [])
    v = VALUES[value]
    if where == "input":
        x[2, 1, 3] = v
    elif where in ("h0", "c0"):
        hx[0 if where == "h0" else 1][0, 1, 2] = v
    else:
        with torch.no_grad():
            for m in (ref, fast):
                getattr(m, where).view(-1)[5] = v
    expected = run(ref, x, hx, dtype)
    actual = run(fast, x, hx, dtype)
    names = ["output", "h_n", "c_n"][: 2 + (mode == "LSTM")] + ["d input", "d h0", "d c0"][: 2 + (mode == "LSTM")]
    names += [n for n, _ in fast.named_parameters()]
    for name, a, e in zip(names, actual, expected):
        same_pattern(a, e, name, dtype)
