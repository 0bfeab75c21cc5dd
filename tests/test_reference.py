"""rnnfast.reference against torch.nn, in float64: validates the spec independently of rnnfast's kernels.

Nothing here needs the compiled extension.
"""

import pathlib
import subprocess
import sys

import pytest
import torch
from cases import Case, assert_close, check_parity

from rnnfast import reference

# (mode, nonlinearity, proj_size): every cell kind, LSTM with and without projection.
CELL_VARIANTS = [("LSTM", "tanh", 0), ("LSTM", "tanh", 2), ("GRU", "tanh", 0), ("RNN", "tanh", 0), ("RNN", "relu", 0)]


def check_reference(cfg: Case, training: bool = True) -> None:
    module = cfg.build(torch.nn).train(training)
    check_parity(module, module, cfg.inputs(), fast_forward=lambda x, hx: reference.forward(module, x, hx))


@pytest.mark.parametrize("with_hx", [False, True], ids=["nohx", "hx"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("form", ["padded", "unbatched", "packed_sorted", "packed_unsorted"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("variant", CELL_VARIANTS, ids=lambda v: f"{v[0]}_{v[1]}_proj{v[2]}")
def test_reference_matches_torch(variant, num_layers, bidirectional, form, batch_first, bias, with_hx):
    mode, nonlinearity, proj_size = variant
    cfg = Case(
        kind=mode,
        nonlinearity=nonlinearity,
        proj_size=proj_size,
        num_layers=num_layers,
        bidirectional=bidirectional,
        form=form,
        batch_first=batch_first,
        bias=bias,
        with_hx=with_hx,
        input_size=3,
        hidden_size=4,
        batch=4,
        seq_len=5,
    )
    check_reference(cfg)


@pytest.mark.parametrize("variant", CELL_VARIANTS, ids=lambda v: f"{v[0]}_{v[1]}_proj{v[2]}")
@pytest.mark.parametrize("form", ["padded", "packed_unsorted"])
def test_reference_long_sequence(variant, form):
    mode, nonlinearity, proj_size = variant
    cfg = Case(
        kind=mode, nonlinearity=nonlinearity, proj_size=proj_size, num_layers=2, bidirectional=True,
        form=form, input_size=7, hidden_size=9, batch=5, seq_len=60,
    )
    check_reference(cfg)


def test_reference_eval_mode_ignores_dropout():
    cfg = Case(kind="LSTM", num_layers=3, dropout=0.5, bidirectional=True, form="packed_unsorted")
    check_reference(cfg, training=False)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_reference_rejects_training_dropout(mode):
    module = Case(kind=mode, num_layers=2, dropout=0.5).build(torch.nn).train()
    with pytest.raises(NotImplementedError, match="dropout"):
        reference.forward(module, torch.randn(4, 3, 3, dtype=torch.float64))


# ---- single cells against torch.nn.*Cell -------------------------------------------------------


def _cell_weights(cell: torch.nn.Module) -> dict:
    return dict(w_ih=cell.weight_ih, w_hh=cell.weight_hh, b_ih=cell.bias_ih, b_hh=cell.bias_hh)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("cell_kind", ["LSTMCell", "GRUCell", "RNNCell_tanh", "RNNCell_relu"])
def test_cells_match_torch(cell_kind, bias):
    name, _, nonlinearity = cell_kind.partition("_")
    extra = dict(nonlinearity=nonlinearity) if nonlinearity else {}
    cell = getattr(torch.nn, name)(3, 5, bias=bias, dtype=torch.float64, **extra)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    w = _cell_weights(cell)
    if name == "LSTMCell":
        expected = cell(x, (h, c))
        actual = reference.lstm_cell(x, h, c, **w)
    elif name == "GRUCell":
        expected = (cell(x, h),)
        actual = (reference.gru_cell(x, h, **w),)
    else:
        expected = (cell(x, h),)
        actual = (reference.rnn_cell(x, h, **w, nonlinearity=nonlinearity),)
    grad_outputs = [torch.randn_like(t) for t in expected]
    wrt = [x, h, c, *cell.parameters()]
    exp_grads = torch.autograd.grad(expected, wrt, grad_outputs, allow_unused=True, materialize_grads=True)
    act_grads = torch.autograd.grad(actual, wrt, grad_outputs, allow_unused=True, materialize_grads=True)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_close(a, e, f"state {i}")
    names = ["x", "h", "c", *(n for n, _ in cell.named_parameters())]
    for n, a, e in zip(names, act_grads, exp_grads):
        assert_close(a, e, f"gradient of {n}")


def test_lstm_cell_projection_is_applied_after_the_output_gate():
    """h' = W_hr (o * tanh(c')): the same cell without w_hr, then the projection."""
    x, h, c = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    w_ih, w_hh, w_hr = (torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64),
                        torch.randn(2, 4, dtype=torch.float64))
    h_proj, c_proj = reference.lstm_cell(x, h, c, w_ih, w_hh, w_hr=w_hr)
    h_full, c_full = reference.lstm_cell(x, h, c, w_ih, w_hh)
    assert torch.equal(c_proj, c_full)
    assert_close(h_proj, h_full @ w_hr.T, "projected h")


# ---- importable without the compiled extension ------------------------------------------------

_BLOCK_EXTENSION = "import sys; sys.modules['rnnfast._C'] = None\n"


def _run_python(code: str) -> subprocess.CompletedProcess:
    root = pathlib.Path(reference.__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)


def test_reference_file_depends_only_on_torch():
    path = pathlib.Path(reference.__file__).resolve()
    code = _BLOCK_EXTENSION + (
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('standalone_reference', {str(path)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "import torch\n"
        "print(module.forward(torch.nn.GRU(2, 3), torch.randn(4, 2))[0].shape)\n"
        "loaded = [m for m, v in sys.modules.items() if m.startswith('rnnfast') and v is not None]\n"
        "assert not loaded, loaded\n"
    )
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    assert "torch.Size([4, 3])" in result.stdout


def test_reference_importable_through_package_without_extension():
    result = _run_python(_BLOCK_EXTENSION + "import rnnfast.reference\n")
    assert result.returncode == 0, result.stderr
