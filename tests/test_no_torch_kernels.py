"""The fused kernels are what runs: torch's own recurrent kernels are blocked.

Two layers of blocking: the Python entry points torch.nn calls (torch._VF.lstm,
gru, rnn_tanh, rnn_relu and the four cell functions, plus the table
torch.nn.modules.rnn keeps of rnn_tanh / rnn_relu) are replaced by functions
that raise, and the ATen operators themselves get raising kernels through
torch.library, so that nothing below Python can reach them either. torch.nn
must then fail (proving the block works) while rnnfast trains forward and
backward, for every network and every cell.
"""

import pytest
import torch
import torch.nn.modules.rnn as torch_rnn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast

VF_FUNCTIONS = ["lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_cell", "gru_cell",
                "rnn_tanh_cell", "rnn_relu_cell"]
# ATen operators of torch's RNN implementations, with the dispatch key to block.
ATEN_OPS = [
    ("lstm.input", "CompositeImplicitAutograd"), ("lstm.data", "CompositeImplicitAutograd"),
    ("gru.input", "CompositeImplicitAutograd"), ("gru.data", "CompositeImplicitAutograd"),
    ("rnn_tanh.input", "CompositeImplicitAutograd"), ("rnn_tanh.data", "CompositeImplicitAutograd"),
    ("rnn_relu.input", "CompositeImplicitAutograd"), ("rnn_relu.data", "CompositeImplicitAutograd"),
    ("lstm_cell", "CompositeImplicitAutograd"), ("gru_cell", "CompositeImplicitAutograd"),
    ("rnn_tanh_cell", "CompositeImplicitAutograd"), ("rnn_relu_cell", "CompositeImplicitAutograd"),
    ("mkldnn_rnn_layer", "CPU"), ("_thnn_fused_lstm_cell", "CPU"),
    ("_thnn_fused_gru_cell", "CPU"),
]


class TorchKernelCalled(RuntimeError):
    pass


def _raiser(name):
    def blocked(*args, **kwargs):
        raise TorchKernelCalled(f"torch's own RNN kernel {name} was called")
    return blocked


@pytest.fixture
def torch_rnn_kernels_blocked(monkeypatch):
    for name in VF_FUNCTIONS:
        monkeypatch.setattr(torch._VF, name, _raiser(f"_VF.{name}"), raising=False)
    for mode in ("RNN_TANH", "RNN_RELU"):  # torch.nn.modules.rnn's own table of _VF functions
        monkeypatch.setitem(torch_rnn._rnn_impls, mode, _raiser(f"_rnn_impls[{mode}]"))
    lib = torch.library.Library("aten", "IMPL")
    for op, key in ATEN_OPS:
        lib.impl(op, _raiser(f"aten::{op}"), key)
    yield
    lib._destroy()


# (module name, nonlinearity) of every network
NETWORKS = [("LSTM", None), ("GRU", None), ("RNN", "tanh"), ("RNN", "relu")]
CELLS = [("LSTMCell", None), ("GRUCell", None), ("RNNCell", "tanh"), ("RNNCell", "relu")]


def _ids(kinds):
    return [name + (f"_{nl}" if nl else "") for name, nl in kinds]


def _aten_op_of(mode, nonlinearity, cell):
    """torch.ops.aten's operator for this network or cell."""
    name = {"LSTM": "lstm", "GRU": "gru", "RNN": f"rnn_{nonlinearity}"}[mode]
    return getattr(torch.ops.aten, name + "_cell") if cell else getattr(torch.ops.aten, name).input


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch.library warns about overriding aten kernels
@pytest.mark.parametrize("mode, nonlinearity", NETWORKS, ids=_ids(NETWORKS))
def test_fused_path_runs_with_torch_kernels_blocked(torch_rnn_kernels_blocked, mode, nonlinearity):
    kwargs = dict(num_layers=2, bidirectional=True)
    if mode == "LSTM":
        kwargs["proj_size"] = 3
    if nonlinearity:
        kwargs["nonlinearity"] = nonlinearity
    fast = getattr(rnnfast, mode)(5, 6, **kwargs)
    reference = getattr(torch.nn, mode)(5, 6, **kwargs)
    x = torch.randn(7, 4, 5, requires_grad=True)
    packed = pack_padded_sequence(x, torch.tensor([7, 2, 5, 1]), enforce_sorted=False)

    # The block is effective: torch.nn cannot run, at the Python or the ATen level.
    for inp in (x, packed, x[:, 0]):
        with pytest.raises(TorchKernelCalled):
            reference(inp)
    h = torch.zeros(4, 4, 6)
    with pytest.raises(TorchKernelCalled):
        hx = [h, h] if mode == "LSTM" else h
        _aten_op_of(mode, nonlinearity, cell=False)(x, hx, [], True, 2, 0.0, False, True, False)
    # rnnfast runs every input form, forward and backward.
    for inp in (x, packed, x[:, 0]):
        out, _ = fast(inp)
        (out.data if inp is packed else out).sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in fast.parameters())


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch.library warns about overriding aten kernels
@pytest.mark.parametrize("name, nonlinearity", CELLS, ids=_ids(CELLS))
def test_cells_run_with_torch_kernels_blocked(torch_rnn_kernels_blocked, name, nonlinearity):
    kwargs = dict(nonlinearity=nonlinearity) if nonlinearity else {}
    fast = getattr(rnnfast, name)(5, 6, **kwargs)
    reference = getattr(torch.nn, name)(5, 6, **kwargs)
    x = torch.randn(4, 5, requires_grad=True)
    h = torch.randn(4, 6, requires_grad=True)
    hx = (h, torch.randn(4, 6)) if name == "LSTMCell" else h

    # The block is effective: torch.nn's cell cannot run, at the Python or the ATen level.
    with pytest.raises(TorchKernelCalled):
        reference(x, hx)
    mode = name.removesuffix("Cell")
    with pytest.raises(TorchKernelCalled):
        _aten_op_of(mode, nonlinearity, cell=True)(x, list(hx) if name == "LSTMCell" else hx,
                                                     reference.weight_ih, reference.weight_hh)
    # rnnfast runs batched and unbatched, with and without hx, forward and backward, and a loop.
    for inp, given in ((x, hx), (x, None), (x[0], tuple(t[0] for t in hx) if name == "LSTMCell" else hx[0])):
        out = fast(inp, given)
        sum(t.sum() for t in (out if isinstance(out, tuple) else (out,))).backward()
    state = None
    for _ in range(3):
        state = fast(x, state)
    (state[0] if isinstance(state, tuple) else state).sum().backward()
    assert x.grad is not None and h.grad is not None and all(p.grad is not None for p in fast.parameters())
