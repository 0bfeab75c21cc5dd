"""Memory layouts of the same values, for the tests that feed rnnfast non-contiguous tensors
(the operators copy where their kernels need rows; results must not change)."""

import torch


def strided(t: torch.Tensor) -> torch.Tensor:
    """Same values, every other element of a twice-as-wide buffer along the last dim."""
    buffer = torch.full((*t.shape[:-1], 2 * t.shape[-1]), float("nan"), dtype=t.dtype)
    view = buffer[..., ::2]
    view.copy_(t)
    return view


def transposed(t: torch.Tensor) -> torch.Tensor:
    """Same values, first two dims swapped in memory (a 2-D tensor: column-major)."""
    return t.transpose(0, 1).contiguous().transpose(0, 1)


def offset(t: torch.Tensor) -> torch.Tensor:
    """Same values, contiguous but at a nonzero storage offset."""
    buffer = torch.full((t.numel() + 7,), float("nan"), dtype=t.dtype)
    view = buffer[7:].view(t.shape)
    view.copy_(t)
    return view
