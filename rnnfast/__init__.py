"""rnnfast: fused recurrent kernels as drop-in replacements for torch.nn.

    import rnnfast
    lstm = rnnfast.LSTM(input_size, hidden_size, num_layers=2)   # was torch.nn.LSTM

``rnnfast.LSTM / GRU / RNN / LSTMCell / GRUCell / RNNCell`` take torch.nn's arguments and return
torch.nn's outputs. The kernels are dispatcher operators (``torch.ops.rnnfast.*``, see
``rnnfast._ops``) with registered autograd and fake kernels, so ``torch.compile``, ``torch.export``
and double backward work through them. ``rnnfast.backend()`` reports what the compiled extension
contains; ``rnnfast.reference`` holds the readable pure-PyTorch equations the tests compare against.
"""

from . import reference
from ._extension import backend, cached_bytes, empty_cache, gpu_path, set_gpu_path
from ._version import __version__
from . import _ops  # noqa: F401  (registers the fake kernels of the operators)
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

__all__ = [
    "LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell",
    "backend", "cached_bytes", "empty_cache", "gpu_path", "set_gpu_path", "reference", "__version__",
]
