"""Multi-layer recurrent networks and single cell steps over the rnnfast operators.

Everything here works on the time-major packed layout of ``PackedSequence``: ``x: [N, I]`` rows of
all time steps plus ``batch_sizes: [T]`` (int64, CPU, non-increasing), or ``batch_sizes=None`` for
a padded input (``T = N / B`` steps of ``B`` rows each). Each layer-direction is one call of
``rnnfast::layer_forward`` (see ``_ops.py``), whose registered autograd runs the fused backward;
this module only stacks layers, joins directions, and applies inter-layer dropout. It calls
operators and plain torch functions only, so torch.compile, export and autograd see through it.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _ops
from ._tf32 import allow_tf32
from ._cells import CELLS


def _direction_weights(weights: Sequence[Tensor], has_bias: bool, has_proj: bool):
    """(w_ih, w_hh, b_ih, b_hh, w_hr) of one direction's slice of torch.nn's flat weights."""
    b_ih, b_hh = (weights[2], weights[3]) if has_bias else (None, None)
    return weights[0], weights[1], b_ih, b_hh, (weights[-1] if has_proj else None)


def rnn(mode: str, x: Tensor, batch_sizes: Optional[Tensor], h0: Tensor, c0: Optional[Tensor],
        flat_weights: Sequence[Tensor], has_bias: bool, num_layers: int, dropout: float,
        train: bool, bidirectional: bool, proj_size: int):
    """A stacked, optionally bidirectional recurrent network on packed rows.

    Args:
        mode: "LSTM", "GRU", "RNN_TANH" or "RNN_RELU".
        x: ``[N, I]`` rows of all steps (time-major packed layout).
        batch_sizes: ``[T]`` int64 CPU tensor, non-increasing, summing to N; or None: padded input,
            ``T = N / B`` steps of ``B = h0.size(1)`` rows.
        h0: ``[L*D, B, P]`` initial hidden states; c0: ``[L*D, B, H]`` (LSTM) or None.
        flat_weights: the module's weights in torch.nn's ``_flat_weights`` order.
        dropout, train: inter-layer dropout probability, applied when ``train``.

    Returns:
        ``(y [N, D*P], h_n [L*D, B, P], c_n [L*D, B, H] or None)``.
    """
    cell = CELLS[mode]
    D = 2 if bidirectional else 1
    has_proj = proj_size > 0
    per_direction = 2 + 2 * has_bias + has_proj
    layer_input = x
    tf32 = allow_tf32(x)
    h_n, c_n = [], []
    for layer in range(num_layers):
        outputs = []
        for d in range(D):
            k = layer * D + d
            w = _direction_weights(flat_weights[k * per_direction:(k + 1) * per_direction], has_bias, has_proj)
            y, h, c = _ops.module_layer_forward(cell.code, layer_input, batch_sizes, h0[k],
                                         c0[k] if cell.cell_state else None, *w, d == 1, tf32)
            outputs.append(y)
            h_n.append(h)
            c_n.append(c)
        layer_input = outputs[0] if D == 1 else torch.cat(outputs, 1)
        if dropout > 0 and train and layer < num_layers - 1:
            layer_input = F.dropout(layer_input, p=dropout, training=True)
    stack = (lambda ts: ts[0].unsqueeze(0)) if len(h_n) == 1 else torch.stack
    return layer_input, stack(h_n), (stack(c_n) if cell.cell_state else None)


def cell_step(mode: str, x: Tensor, h: Tensor, c: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
              b_ih: Optional[Tensor], b_hh: Optional[Tensor]):
    """One step of a cell: ``x: [B, I]``, ``h: [B, H]``, ``c: [B, H]`` (LSTM) or None.

    One fused operator call (both GEMMs and the gate math): a one-step layer-direction. Returns
    ``(h' [B, H], c' [B, H] or None)``.
    """
    _, h_next, c_next = _ops.module_layer_forward(CELLS[mode].code, x, None, h, c, w_ih, w_hh, b_ih, b_hh, None, False,
                                                  allow_tf32(x))
    return h_next, (c_next if CELLS[mode].cell_state else None)
