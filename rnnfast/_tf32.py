"""Whether an RNN's fp32 GEMMs may use TF32 tensor cores: the ops' ``allow_tf32`` argument.

torch.nn's RNNs on the GPU (cuDNN) follow torch's switch for RNNs,
``torch.backends.cudnn.rnn.fp32_precision`` ("tf32" by default; ``torch.backends.cudnn.allow_tf32 =
False`` or ``"ieee"`` turn it off), not ``torch.backends.cuda.matmul.allow_tf32``. rnnfast's CUDA
kernels do the same, but the stable ABI they are built on cannot read that switch, so the modules
read it here and pass it to every op call. Only the CUDA kernels look at the argument; for other
devices and dtypes it is False and the switch is not read.

Under torch.compile the switch is read once, when the graph is traced, and is a constant of that
graph (a later change of the switch does not recompile it). Eager calls read it on every call, as
cuDNN does.
"""

from __future__ import annotations

import torch


@torch.compiler.assume_constant_result
def _cudnn_rnn_tf32() -> bool:
    rnn = getattr(torch.backends.cudnn, "rnn", None)
    if rnn is None:  # a torch without the per-operation switches
        return bool(torch.backends.cudnn.allow_tf32)
    return rnn.fp32_precision == "tf32"


def allow_tf32(x: torch.Tensor) -> bool:
    """The ``allow_tf32`` argument of an op call on ``x``: torch's RNN switch for fp32 CUDA
    tensors, False for everything else."""
    return x.is_cuda and x.dtype == torch.float32 and _cudnn_rnn_tf32()
