"""The fused kernels are what runs: torch's own recurrent kernels are blocked.

Two layers of blocking: the Python entry points torch.nn calls (torch._VF.lstm,
gru, ...) are replaced by functions that raise, and the ATen operators
themselves get raising kernels through torch.library, so that nothing below
Python can reach them either. torch.nn must then fail (proving the block
works) while rnnfast trains forward and backward.
"""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast

VF_FUNCTIONS = ["lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_cell", "gru_cell",
                "rnn_tanh_cell", "rnn_relu_cell"]
# ATen operators of torch's RNN implementations, with the dispatch key to block.
ATEN_OPS = [
    ("lstm.input", "CompositeImplicitAutograd"), ("lstm.data", "CompositeImplicitAutograd"),
    ("gru.input", "CompositeImplicitAutograd"), ("gru.data", "CompositeImplicitAutograd"),
    ("lstm_cell", "CompositeImplicitAutograd"), ("gru_cell", "CompositeImplicitAutograd"),
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
    lib = torch.library.Library("aten", "IMPL")
    for op, key in ATEN_OPS:
        lib.impl(op, _raiser(f"aten::{op}"), key)
    yield
    lib._destroy()


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch.library warns about overriding aten kernels
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_fused_path_runs_with_torch_kernels_blocked(torch_rnn_kernels_blocked, mode):
    kwargs = dict(num_layers=2, bidirectional=True)
    if mode == "LSTM":
        kwargs["proj_size"] = 3
    fast = getattr(rnnfast, mode)(5, 6, **kwargs)
    reference = getattr(torch.nn, mode)(5, 6, **kwargs)
    x = torch.randn(7, 4, 5, requires_grad=True)
    packed = pack_padded_sequence(x, torch.tensor([7, 2, 5, 1]), enforce_sorted=False)

    # The block is effective: torch.nn cannot run, at the Python or the ATen level.
    with pytest.raises(TorchKernelCalled):
        reference(x)
    h = torch.zeros(4, 4, 6)
    with pytest.raises(TorchKernelCalled):
        if mode == "LSTM":
            torch.ops.aten.lstm.input(x, [h, h], [], True, 2, 0.0, False, True, False)
        else:
            torch.ops.aten.gru.input(x, h, [], True, 2, 0.0, False, True, False)
    # rnnfast runs every input form, forward and backward.
    for inp in (x, packed, x[:, 0]):
        out, _ = fast(inp)
        (out.data if inp is packed else out).sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in fast.parameters())
