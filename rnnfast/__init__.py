"""rnnfast: fused LSTM and GRU kernels as drop-in replacements for torch.nn.

    import rnnfast
    lstm = rnnfast.LSTM(input_size, hidden_size, num_layers=2)   # was torch.nn.LSTM

``rnnfast.backend()`` reports what the compiled extension contains;
``rnnfast.reference`` holds the readable pure-PyTorch equations the tests
compare against.
"""

from . import reference
from ._extension import backend, cached_bytes, empty_cache
from ._version import __version__
from .modules import GRU, LSTM

__all__ = ["LSTM", "GRU", "backend", "cached_bytes", "empty_cache", "reference", "__version__"]
