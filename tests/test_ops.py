"""The dispatcher operators below the modules: ``torch.ops.rnnfast.layer_forward``,
``layer_forward_train`` and ``layer_backward``.

* ``torch.library.opcheck`` (schema, autograd registration, fake kernels against the real ones,
  AOT dispatch with dynamic shapes) on a grid of samples: every cell, padded and packed,
  both directions, with and without bias and projection, float32 and float64;
* values against ``rnnfast.reference`` (the equations in plain PyTorch);
* the C++ and Python cell tables agree;
* the operators' own argument checks (they raise, never crash);
* what the workspace and the output mask mean.
"""

import itertools

import pytest
import torch
from torch.library import opcheck

import rnnfast
from rnnfast import _extension, reference
from rnnfast._cells import CELL_OF_CODE, CELLS

from cases import TOL

C = _extension.require_extension()
OPS = torch.ops.rnnfast
I, H, B = 3, 5, 3
BATCH_SIZES = [3, 3, 2, 1]  # packed: N = 9 rows over T = 4 steps


def layer_args(cell, packed=False, reverse=False, proj=False, bias=True, dtype=torch.float64,
               requires_grad=False, T=4):
    """Random arguments of the layer ops (the schema's order)."""
    G = CELLS[cell].gates
    P = 2 if proj else H
    batch_sizes = torch.tensor(BATCH_SIZES) if packed else None
    N = sum(BATCH_SIZES) if packed else T * B

    def r(*shape):
        return torch.randn(*shape, dtype=dtype, requires_grad=requires_grad)

    return (
        CELLS[cell].code, r(N, I), batch_sizes, r(B, P), r(B, H) if CELLS[cell].cell_state else None,
        r(G * H, I), r(G * H, P), r(G * H) if bias else None, r(G * H) if bias else None,
        r(P, H) if proj else None, reverse,
    )


def layer_variants():
    for cell, packed, reverse, bias in itertools.product(CELLS, (False, True), (False, True), (True, False)):
        yield cell, packed, reverse, False, bias
    for packed, reverse in itertools.product((False, True), (False, True)):
        yield "LSTM", packed, reverse, True, True


VARIANTS = list(layer_variants())
VARIANT_IDS = [f"{c}-{'packed' if p else 'padded'}-{'rev' if r else 'fwd'}{'-proj' if j else ''}{'' if b else '-nobias'}"
               for c, p, r, j, b in VARIANTS]


def test_cell_tables_agree():
    """csrc/cells.h and rnnfast/_cells.py describe the same cells."""
    table = {entry["name"]: entry for entry in C.cell_table()}
    assert list(table) == list(CELLS)
    for name, cell in CELLS.items():
        entry = table[name]
        assert entry["code"] == cell.code, name
        assert entry["gates"] == cell.gates, name
        assert entry["cell_state"] == cell.cell_state, name
        assert entry["projection"] == cell.projection, name
        assert entry["separate_hidden"] == cell.separate_hidden, name
        assert tuple(entry["saved"]) == cell.saved, name


def test_every_cell_is_complete():
    """Every cell of the C++ table (csrc/cells.h lists the places a cell touches) has the Python
    mirror (above), a module of rnnfast that runs it, and reference equations; the operators run
    it forward and backward against those equations (test_forward_matches_reference and
    test_backward_matches_reference run every cell of _cells.CELLS)."""
    modes = {rnnfast.LSTM(2, 3).mode, rnnfast.GRU(2, 3).mode, rnnfast.RNN(2, 3).mode,
             rnnfast.RNN(2, 3, nonlinearity="relu").mode}
    for name in (entry["name"] for entry in C.cell_table()):
        assert name in modes, f"no rnnfast module runs the cell {name}"
        args = layer_args(name)
        y = OPS.layer_forward(*args)[0]
        torch.testing.assert_close(y, reference_layer(args)[0], **TOL[torch.float64])


@pytest.mark.parametrize("op_name", ["layer_forward", "layer_forward_train"])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_opcheck_forward(op_name, variant):
    cell, packed, reverse, proj, bias = variant
    op = getattr(OPS, op_name).default
    for dtype, requires_grad in ((torch.float64, True), (torch.float32, False)):
        args = layer_args(cell, packed, reverse, proj, bias, dtype, requires_grad)
        opcheck(op, args)


def forward_train(args):
    detached = tuple(a.detach() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    return OPS.layer_forward_train(*detached)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_opcheck_backward(variant):
    cell, packed, reverse, proj, bias = variant
    args = layer_args(cell, packed, reverse, proj, bias)
    y, h_n, c_n, workspace = forward_train(args)
    grads = (torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n) if CELLS[cell].cell_state else None)
    for mask in ([True, True, True], [False, True, False], [True, False, True]):
        opcheck(OPS.layer_backward.default, (*args, y, workspace, *grads, mask))
    # Differentiable inputs (a double backward). torch.compile does not support double backward,
    # so AOT dispatch is not checked here; tests/test_double_backward.py checks it in eager mode.
    args = layer_args(cell, packed, reverse, proj, bias, requires_grad=True)
    y, h_n, c_n, workspace = forward_train(args)
    grads = tuple(g.requires_grad_() if g is not None else None for g in grads)
    opcheck(OPS.layer_backward.default, (*args, y, workspace, *grads, [True, True, True]),
            test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def opcheck_forward_and_backward(cell, dtype, device="cpu"):
    """opcheck of the three ops on a padded call and a packed one (with proj_size for LSTM), for
    the dtype and device tests outside this file cover (bf16 on the CPU, the CUDA kernels)."""
    for packed, proj in ((False, False), (True, cell == "LSTM")):
        args = [a.to(device) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                for a in layer_args(cell, packed=packed, proj=proj, dtype=dtype)]
        opcheck(OPS.layer_forward.default, args)
        y, h_n, c_n, workspace = OPS.layer_forward_train(*args)
        grads = (torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n) if c_n.numel() else None)
        opcheck(OPS.layer_backward.default, (*args, y, workspace, *grads, [True, True, True]),
                test_utils=("test_schema", "test_faketensor"))


def reference_layer(args):
    """rnnfast.reference.layer_direction on the same arguments: (y, h_n, c_n or None)."""
    code, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse = args
    cell = CELL_OF_CODE[code].name
    steps = batch_sizes.tolist() if batch_sizes is not None else [h0.size(0)] * (x.size(0) // h0.size(0))
    state0 = (h0, c0) if CELLS[cell].cell_state else (h0,)
    weights = dict(w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, w_hr=w_hr)
    y, state = reference.layer_direction(cell, x, steps, state0, weights, reverse=reverse)
    return y, state[0], (state[1] if len(state) > 1 else None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_forward_matches_reference(variant, dtype):
    cell, packed, reverse, proj, bias = variant
    args = layer_args(cell, packed, reverse, proj, bias, dtype)
    expected = reference_layer(args)
    for op in (OPS.layer_forward, OPS.layer_forward_train):
        y, h_n, c_n = op(*args)[:3]
        torch.testing.assert_close(y, expected[0], **TOL[dtype])
        torch.testing.assert_close(h_n, expected[1], **TOL[dtype])
        if CELLS[cell].cell_state:
            torch.testing.assert_close(c_n, expected[2], **TOL[dtype])
        else:
            assert c_n.shape == (0,)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_backward_matches_reference(variant):
    """layer_backward's gradients against autograd through rnnfast.reference, float64."""
    cell, packed, reverse, proj, bias = variant
    args = layer_args(cell, packed, reverse, proj, bias, requires_grad=True)
    tensors = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    expected_out = reference_layer(args)
    grads = [torch.randn_like(t) for t in expected_out if t is not None]
    expected = torch.autograd.grad([t for t in expected_out if t is not None], tensors, grads)
    y, h_n, c_n, workspace = forward_train(args)
    detached = tuple(a.detach() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    dc_n = grads[2] if CELLS[cell].cell_state else None
    result = OPS.layer_backward(*detached, y, workspace, grads[0], grads[1], dc_n, [True, True, True])
    actual = [g for g, a in zip(result, (args[1], args[3], args[4], *args[5:10])) if a is not None]
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, **TOL[torch.float64])


@pytest.mark.parametrize("cell", list(CELLS))
def test_workspace_holds_the_saved_activations(cell):
    """Inference saves nothing; a training forward returns [N * saved_width] (cells.h)."""
    for proj in ((False, True) if CELLS[cell].projection else (False,)):
        args = layer_args(cell, packed=True, proj=proj)
        assert len(OPS.layer_forward(*args)) == 3
        workspace = OPS.layer_forward_train(*args)[3]
        assert workspace.shape == (sum(BATCH_SIZES) * CELLS[cell].saved_width(H, proj),)


def test_output_mask_selects_the_gradients():
    args = layer_args("LSTM", packed=True, proj=True)
    y, h_n, c_n, workspace = forward_train(args)
    common = (*args, y, workspace, torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n))
    full = OPS.layer_backward(*common, [True, True, True])
    assert [tuple(g.shape) for g in full] == [
        (9, I), (B, 2), (B, H), (4 * H, I), (4 * H, 2), (4 * H,), (4 * H,), (2, H)]
    for mask in itertools.product((False, True), repeat=3):
        grads = OPS.layer_backward(*common, list(mask))
        wanted = [mask[0], mask[1], mask[1]] + [mask[2]] * 5
        for k, (g, want) in enumerate(zip(grads, wanted)):
            if want:
                torch.testing.assert_close(g, full[k], rtol=0, atol=0)
            else:
                assert g.shape == (0,), (mask, k)


def test_gru_has_no_cell_state_gradient():
    args = layer_args("GRU", packed=True)
    y, h_n, c_n, workspace = forward_train(args)
    assert c_n.shape == (0,)
    grads = OPS.layer_backward(*args, y, workspace, torch.randn_like(y), torch.randn_like(h_n), None,
                               [True, True, True])
    assert grads[2].shape == (0,) and grads[7].shape == (0,)


def test_non_contiguous_operands_are_accepted():
    """The ops take any strides (they copy where the kernels need rows)."""
    args = list(layer_args("GRU", packed=False))
    expected = OPS.layer_forward(*args)
    args[1] = args[1].t().contiguous().t()  # x: column-major
    args[5] = args[5].t().contiguous().t()  # w_ih: column-major
    actual = OPS.layer_forward(*args)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


# ---- the operators' own argument checks --------------------------------------------------------


def lstm_args(**override):
    """Valid LSTM arguments by name (N=5 rows: batch_sizes [3, 2]), with overrides."""
    Hh, Ii, Bb = 4, 3, 3
    args = dict(
        cell=CELLS["LSTM"].code, x=torch.randn(5, Ii), batch_sizes=torch.tensor([3, 2]), h0=torch.randn(Bb, Hh),
        c0=torch.randn(Bb, Hh), w_ih=torch.randn(4 * Hh, Ii), w_hh=torch.randn(4 * Hh, Hh),
        b_ih=torch.randn(4 * Hh), b_hh=torch.randn(4 * Hh), w_hr=None, reverse=False,
    )
    args.update(override)
    return args


BAD_FORWARD_ARGS = {
    "unknown cell": (dict(cell=7), "unknown cell code 7"),
    "x rank": (dict(x=torch.randn(5, 3, 1)), "x must be a 2-D"),
    "x dtype": (dict(x=torch.randint(0, 3, (5, 3))), "only float32, float64, bfloat16 and float16"),
    "batch_sizes increasing": (dict(batch_sizes=torch.tensor([2, 3])), "non-increasing"),
    "batch_sizes zero": (dict(batch_sizes=torch.tensor([5, 0])), "must be positive"),
    "batch_sizes sum": (dict(batch_sizes=torch.tensor([3, 1])), "sum to 4 but x has 5 rows"),
    "batch_sizes dtype": (dict(batch_sizes=torch.tensor([3.0, 2.0])), "int64 CPU tensor"),
    "batch_sizes empty": (dict(batch_sizes=torch.zeros(0, dtype=torch.int64)), "at least one"),
    "batch_sizes vs h0": (dict(h0=torch.randn(2, 4), c0=torch.randn(2, 4)), "h0 has 2 rows but the first step has 3"),
    "padded rows": (dict(batch_sizes=None, h0=torch.randn(2, 4), c0=torch.randn(2, 4)), "not a positive multiple"),
    "empty batch": (dict(batch_sizes=None, h0=torch.randn(0, 4), c0=torch.randn(0, 4)), "must not be empty"),
    "c0 shape": (dict(c0=torch.randn(3, 5)), r"c0 must have shape \[3, 4\]"),
    "c0 missing": (dict(c0=None), "c0 is required for LSTM"),
    "h0 dtype": (dict(h0=torch.randn(3, 4).double()), "h0 has dtype"),
    "w_ih shape": (dict(w_ih=torch.randn(16, 2)), r"w_ih must have shape \[16, 3\]"),
    "w_ih not 4H": (dict(w_ih=torch.randn(15, 3)), r"w_ih must be \[4\*H, I\]"),
    "w_hh shape": (dict(w_hh=torch.randn(16, 5)), r"w_hh must have shape \[16, 4\]"),
    "bias shape": (dict(b_ih=torch.randn(15)), r"b_ih must have shape \[16\]"),
    "one bias": (dict(b_hh=None), "both biases or neither"),
    "w_hr shape": (dict(w_hr=torch.randn(2, 5), w_hh=torch.randn(16, 2), h0=torch.randn(3, 2)),
                   r"w_hr must have shape \[2, 4\]"),
    "w_hr for GRU": (dict(cell=CELLS["GRU"].code, c0=None, w_ih=torch.randn(12, 3), w_hh=torch.randn(12, 2),
                          b_ih=None, b_hh=None, w_hr=torch.randn(2, 4), h0=torch.randn(3, 2)),
                     "w_hr is only valid for LSTM"),
    "c0 for GRU": (dict(cell=CELLS["GRU"].code, w_ih=torch.randn(12, 3), w_hh=torch.randn(12, 4), b_ih=None,
                        b_hh=None), "GRU has no cell state: c0 must be None"),
}


@pytest.mark.parametrize("case", list(BAD_FORWARD_ARGS), ids=list(BAD_FORWARD_ARGS))
def test_forward_checks_its_arguments(case):
    override, message = BAD_FORWARD_ARGS[case]
    for op in (OPS.layer_forward, OPS.layer_forward_train):
        with pytest.raises(RuntimeError, match=message):
            op(**lstm_args(**override))


def test_backward_checks_its_arguments():
    args = lstm_args()
    y, h_n, c_n, workspace = OPS.layer_forward_train(**args)
    good = dict(args, y=y, workspace=workspace, dy=torch.randn(5, 4), dh_n=torch.randn(3, 4),
                dc_n=torch.randn(3, 4), output_mask=[True, True, True])
    OPS.layer_backward(**good)
    bad = {
        "workspace size": (dict(workspace=workspace[:-1]), "workspace must be the one"),
        "inference workspace": (dict(workspace=torch.empty(0)), "workspace must be the one"),
        "y shape": (dict(y=torch.randn(5, 3)), "y must have shape"),
        "dy shape": (dict(dy=torch.randn(5, 3)), "dy must have shape"),
        "dh_n shape": (dict(dh_n=torch.randn(2, 4)), "dh_n must have shape"),
        "dc_n missing": (dict(dc_n=None), "dc_n is required for LSTM"),
        "dy dtype": (dict(dy=torch.randn(5, 4).double()), "dy has dtype"),
    }
    for name, (override, message) in bad.items():
        with pytest.raises(RuntimeError, match=message):
            OPS.layer_backward(**dict(good, **override))


def test_operators_are_registered_for_cpu_and_autograd():
    for name in ("layer_forward", "layer_forward_train", "layer_backward"):
        op = getattr(OPS, name).default
        for key in ("CPU", "Autograd"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), key), (name, key)
    assert rnnfast.backend()["compiled"]
