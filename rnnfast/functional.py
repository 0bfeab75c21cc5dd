"""Multi-layer recurrent networks on the fused kernels of ``rnnfast._C``.

Everything here works on the time-major packed layout of ``PackedSequence``:
``x: [N, I]`` rows of all time steps plus ``batch_sizes: [T]`` (int64, CPU,
non-increasing). A padded ``[T, B, I]`` input is the case ``batch_sizes = [B]*T``.

One autograd node per layer (:class:`_FusedLayer`) runs both directions of
the layer; each direction is one call into the extension, which writes its
half of the layer's ``[N, D*P]`` output in place (no concatenation). Layers,
inter-layer dropout and the stacking of final states are orchestrated here.
When no gradient is needed the kernels are called directly and save nothing.
"""

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._extension import require_extension

# Gradients returned by the extension's *_backward, in this order.
_GRAD_NAMES = ("dh0", "dc0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr")


class LayerSpec:
    """Static description of one layer (both directions). A plain class: it is
    built on every call, and a frozen dataclass costs microseconds."""

    __slots__ = ("mode", "batch_sizes", "num_directions", "has_bias", "has_proj",
                 "weights_per_direction", "forward_fn", "backward_fn", "empty")

    def __init__(self, mode: str, batch_sizes: Tensor, num_directions: int, has_bias: bool,
                 has_proj: bool):
        C = require_extension()
        self.mode = mode  # "LSTM" or "GRU"
        self.batch_sizes = batch_sizes  # [T] int64 CPU
        self.num_directions = num_directions
        self.has_bias = has_bias
        self.has_proj = has_proj
        self.weights_per_direction = 2 + 2 * has_bias + has_proj
        lstm = mode == "LSTM"
        self.forward_fn = C.lstm_forward if lstm else C.gru_forward
        self.backward_fn = C.lstm_backward if lstm else C.gru_backward
        # Large outputs and input gradients come from the extension's buffer
        # pool (freed and reallocated every step otherwise: page faults).
        self.empty = C.empty

    def direction_weights(self, weights: Sequence[Tensor], d: int) -> Tuple[Optional[Tensor], ...]:
        """(w_ih, w_hh, b_ih, b_hh, w_hr) of direction d, None where absent."""
        k = self.weights_per_direction
        w = weights[d * k:(d + 1) * k]
        b_ih, b_hh = (w[2], w[3]) if self.has_bias else (None, None)
        return w[0], w[1], b_ih, b_hh, (w[-1] if self.has_proj else None)

    def grad_slots(self) -> List[str]:
        """Names of the weight gradients of one direction, in parameter order."""
        names = ["w_ih", "w_hh"] + (["b_ih", "b_hh"] if self.has_bias else [])
        return names + (["w_hr"] if self.has_proj else [])


def _forward_direction(spec: LayerSpec, d: int, x, h0, c0, weights, training: bool,
                       y, h_n, c_n) -> List[Tensor]:
    """Run direction d of a layer, writing its outputs into the given views."""
    w_ih, w_hh, b_ih, b_hh, w_hr = spec.direction_weights(weights, d)
    if spec.num_directions == 1:
        y_d = y
    else:
        P = h0.size(-1)
        y_d = y[:, d * P:(d + 1) * P]
    if spec.mode == "LSTM":
        return spec.forward_fn(x, spec.batch_sizes, h0[d], c0[d], w_ih, w_hh, b_ih, b_hh, w_hr,
                               d == 1, training, y_d, h_n[d], c_n[d])
    return spec.forward_fn(x, spec.batch_sizes, h0[d], w_ih, w_hh, b_ih, b_hh, d == 1, training,
                           y_d, h_n[d])


def _layer_outputs(spec: LayerSpec, x: Tensor, h0: Tensor, c0: Optional[Tensor]):
    """Allocate y [N, D*P], h_n [D, B, P] and c_n [D, B, H] (LSTM) for one layer."""
    D = spec.num_directions
    y = spec.empty([x.size(0), D * h0.size(-1)], x)
    h_n = torch.empty_like(h0)
    c_n = torch.empty_like(c0) if c0 is not None else None
    return y, h_n, c_n


class _FusedLayer(torch.autograd.Function):
    """One layer, both directions: (x, h0, c0, *weights) -> (y, h_n[, c_n])."""

    @staticmethod
    def forward(ctx, spec: LayerSpec, x, h0, c0, *weights):
        y, h_n, c_n = _layer_outputs(spec, x, h0, c0)
        saved = [_forward_direction(spec, d, x, h0, c0, weights, True, y, h_n, c_n)
                 for d in range(spec.num_directions)]
        ctx.spec = spec
        ctx.saved_counts = [len(s) for s in saved]
        ctx.save_for_backward(x, h0, c0, y, *weights, *[t for s in saved for t in s])
        return (y, h_n, c_n) if spec.mode == "LSTM" else (y, h_n)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_n, dc_n=None):
        spec: LayerSpec = ctx.spec
        x, h0, c0, y, *rest = ctx.saved_tensors
        nw = spec.weights_per_direction * spec.num_directions
        weights, saved_flat = rest[:nw], rest[nw:]
        need_x, need_h0, need_c0 = ctx.needs_input_grad[1:4]
        need_w = any(ctx.needs_input_grad[4:])
        # The kernels take unit-column-stride rows; incoming gradients can be
        # expanded or transposed views.
        dy = dy.contiguous()
        dh_n = dh_n.contiguous()
        dc_n = dc_n.contiguous() if dc_n is not None else None
        dx = spec.empty(list(x.shape), x) if need_x else None
        P = h0.size(-1)
        dh0, dc0, dweights = [], [], []
        start = 0
        for d in range(spec.num_directions):
            saved = list(saved_flat[start:start + ctx.saved_counts[d]])
            start += ctx.saved_counts[d]
            w_ih, w_hh, b_ih, b_hh, w_hr = spec.direction_weights(weights, d)
            y_d, dy_d = y[:, d * P:(d + 1) * P], dy[:, d * P:(d + 1) * P]
            if spec.mode == "LSTM":
                grads = spec.backward_fn(x, spec.batch_sizes, h0[d], c0[d], w_ih, w_hh, b_ih, b_hh,
                                         w_hr, d == 1, y_d, saved, dy_d, dh_n[d], dc_n[d], dx,
                                         d > 0, need_w)
            else:
                grads = spec.backward_fn(x, spec.batch_sizes, h0[d], w_ih, w_hh, b_ih, b_hh, d == 1,
                                         y_d, saved, dy_d, dh_n[d], dx, d > 0, need_w)
            named = dict(zip(_GRAD_NAMES, grads))
            dh0.append(named["dh0"])
            dc0.append(named["dc0"])
            dweights.extend(named[n] if need_w else None for n in spec.grad_slots())
        dh0_out = torch.stack(dh0) if need_h0 else None
        dc0_out = torch.stack(dc0) if (need_c0 and c0 is not None) else None
        return (None, dx, dh0_out, dc0_out, *dweights)


def _layer_needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _run_layer(spec: LayerSpec, x, h0, c0, weights):
    if _layer_needs_grad(x, h0, c0, *weights):
        out = _FusedLayer.apply(spec, x, h0, c0, *weights)
        return out if spec.mode == "LSTM" else (out[0], out[1], None)
    # Inference: nothing is saved for backward (and the extension records no
    # autograd history of its own).
    y, h_n, c_n = _layer_outputs(spec, x, h0, c0)
    for d in range(spec.num_directions):
        _forward_direction(spec, d, x, h0, c0, weights, False, y, h_n, c_n)
    return y, h_n, c_n


def rnn_packed(mode: str, x: Tensor, batch_sizes: Tensor, h0: Tensor, c0: Optional[Tensor],
               flat_weights: Sequence[Tensor], has_bias: bool, num_layers: int,
               dropout: float, train: bool, bidirectional: bool, proj_size: int):
    """A stacked (bi)directional LSTM or GRU on packed rows.

    Args:
        x: ``[N, I]`` rows of all steps (time-major packed layout).
        batch_sizes: ``[T]`` int64 CPU tensor, non-increasing, summing to N.
        h0: ``[L*D, B, P]`` initial hidden states; c0: ``[L*D, B, H]`` (LSTM) or None.
        flat_weights: the module's ``_flat_weights`` (torch.nn order).
        dropout, train: inter-layer dropout probability, applied when ``train``.

    Returns:
        ``(y [N, D*P], h_n [L*D, B, P], c_n [L*D, B, H] or None)``.
    """
    D = 2 if bidirectional else 1
    spec = LayerSpec(mode, batch_sizes, D, has_bias, proj_size > 0)
    per_layer = spec.weights_per_direction * D
    if not all(w.is_contiguous() for w in flat_weights):
        flat_weights = [w.contiguous() for w in flat_weights]
    h0 = h0.contiguous()
    c0 = c0.contiguous() if c0 is not None else None
    layer_input = x.contiguous()
    h_n, c_n = [], []
    for layer in range(num_layers):
        if num_layers == 1:
            weights, h0_l, c0_l = flat_weights, h0, c0
        else:
            weights = flat_weights[layer * per_layer:(layer + 1) * per_layer]
            h0_l = h0[layer * D:(layer + 1) * D]
            c0_l = c0[layer * D:(layer + 1) * D] if c0 is not None else None
        y, hn_l, cn_l = _run_layer(spec, layer_input, h0_l, c0_l, weights)
        h_n.append(hn_l)
        c_n.append(cn_l)
        layer_input = y
        if dropout > 0 and train and layer < num_layers - 1:
            layer_input = F.dropout(y, p=dropout, training=True)
    stack = (lambda ts: ts[0]) if num_layers == 1 else (lambda ts: torch.cat(ts, 0))
    return layer_input, stack(h_n), (stack(c_n) if c0 is not None else None)
