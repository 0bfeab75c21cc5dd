"""Readable pure-PyTorch reference for the recurrent layers: the spec the tests compare against.

Nothing here is fast and nothing here is a fallback: rnnfast never calls this module at run time.
It depends on torch only (not on the compiled extension ``rnnfast._C``), so it imports and runs
on a machine where the extension was never built.

Everything is computed in the dtype of the inputs, with the equations written as in the
``torch.nn`` documentation:

LSTM (gate rows ``i, f, g, o``)::

    i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)
    f = sigmoid(W_if x + b_if + W_hf h + b_hf)
    g = tanh   (W_ig x + b_ig + W_hg h + b_hg)
    o = sigmoid(W_io x + b_io + W_ho h + b_ho)
    c' = f * c + i * g
    h' = o * tanh(c')                 (with proj_size > 0: h' = W_hr (o * tanh(c')))

GRU (gate rows ``r, z, n``; the reset gate multiplies *after* the recurrent matmul)::

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h

RNN::

    h' = tanh|relu(W_ih x + b_ih + W_hh h + b_hh)

Shape letters: ``B`` batch, ``T`` time steps, ``I`` input features, ``H`` hidden size,
``P`` projection size (``proj_size``; ``P = H`` when there is no projection), ``G`` number of
gates (4 LSTM, 3 GRU, 1 RNN), ``L`` layers, ``D`` directions (2 if bidirectional else 1),
``N = sum(batch_sizes)`` rows of a time-major packed sequence.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

__all__ = ["lstm_cell", "gru_cell", "rnn_cell", "layer_direction", "forward"]


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x: [B, K], weight: [M, K], bias: [M] or None -> [B, M]"""
    y = x @ weight.T
    return y if bias is None else y + bias


def lstm_cell(
    x: Tensor,
    h: Tensor,
    c: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
    w_hr: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One LSTM step.

    x: [B, I], h: [B, P], c: [B, H], w_ih: [4H, I], w_hh: [4H, P], b_ih, b_hh: [4H],
    w_hr: [P, H] or None (then P = H).  Returns (h': [B, P], c': [B, H]).
    """
    gates = _linear(x, w_ih, b_ih) + _linear(h, w_hh, b_hh)
    i, f, g, o = gates.chunk(4, dim=1)
    i = torch.sigmoid(i)
    f = torch.sigmoid(f)
    g = torch.tanh(g)
    o = torch.sigmoid(o)
    c_next = f * c + i * g
    h_next = o * torch.tanh(c_next)
    if w_hr is not None:
        h_next = h_next @ w_hr.T
    return h_next, c_next


def gru_cell(
    x: Tensor,
    h: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
) -> Tensor:
    """One GRU step.

    x: [B, I], h: [B, H], w_ih: [3H, I], w_hh: [3H, H], b_ih, b_hh: [3H].  Returns h': [B, H].
    """
    x_r, x_z, x_n = _linear(x, w_ih, b_ih).chunk(3, dim=1)
    h_r, h_z, h_n = _linear(h, w_hh, b_hh).chunk(3, dim=1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h


def rnn_cell(
    x: Tensor,
    h: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
    nonlinearity: str = "tanh",
) -> Tensor:
    """One Elman RNN step.

    x: [B, I], h: [B, H], w_ih: [H, I], w_hh: [H, H], b_ih, b_hh: [H],
    nonlinearity: "tanh" or "relu".  Returns h': [B, H].
    """
    pre = _linear(x, w_ih, b_ih) + _linear(h, w_hh, b_hh)
    if nonlinearity == "tanh":
        return torch.tanh(pre)
    if nonlinearity == "relu":
        return torch.relu(pre)
    raise ValueError(f"Unknown nonlinearity: {nonlinearity}")


def _step(mode: str, x: Tensor, state: tuple[Tensor, ...], weights: dict[str, Tensor | None]) -> tuple[Tensor, ...]:
    """x: [B, I], state: (h: [B, P],) or for LSTM (h: [B, P], c: [B, H]) -> the next state, same shapes."""
    w = (weights["w_ih"], weights["w_hh"], weights["b_ih"], weights["b_hh"])
    if mode == "LSTM":
        return lstm_cell(x, *state, *w, w_hr=weights["w_hr"])
    if mode == "GRU":
        return (gru_cell(x, *state, *w),)
    if mode in ("RNN_TANH", "RNN_RELU"):
        return (rnn_cell(x, *state, *w, nonlinearity="tanh" if mode == "RNN_TANH" else "relu"),)
    raise ValueError(f"Unrecognized RNN mode: {mode}")


def layer_direction(
    mode: str,
    x: Tensor,
    batch_sizes: list[int],
    state0: tuple[Tensor, ...],
    weights: dict[str, Tensor | None],
    reverse: bool = False,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Run one layer in one direction over a time-major packed sequence.

    mode: "LSTM", "GRU", "RNN_TANH" or "RNN_RELU".
    x: [N, I] rows of all steps, step t occupying rows offset[t] .. offset[t] + batch_sizes[t]
       (the active sequences of step t are the first batch_sizes[t] sequences of the batch).
    batch_sizes: [T] non-increasing, batch_sizes[0] = B, sum = N.  A padded [T, B, I] input
       is the case batch_sizes = [B] * T.
    state0: (h0: [B, P],) or for LSTM (h0: [B, P], c0: [B, H]).
    weights: "w_ih": [G*H, I], "w_hh": [G*H, P], "b_ih", "b_hh": [G*H] or None,
       "w_hr": [P, H] or None.
    reverse: walk the steps from last to first.
    Returns (out: [N, P] rows laid out like x, final state: same shapes as state0).

    Only the active rows of the state are updated at each step, so in the forward direction
    each sequence keeps the state of its own last valid step, and in the reverse direction each
    sequence starts from its initial state at its own last valid step.
    """
    offsets = [0]
    for bs in batch_sizes:
        offsets.append(offsets[-1] + bs)
    steps = range(len(batch_sizes))
    state = state0
    outputs: list[Tensor | None] = [None] * len(batch_sizes)
    for t in reversed(steps) if reverse else steps:
        bs = batch_sizes[t]
        active = tuple(s[:bs] for s in state)
        new = _step(mode, x[offsets[t] : offsets[t + 1]], active, weights)
        state = tuple(torch.cat([n, s[bs:]]) for n, s in zip(new, state))
        outputs[t] = new[0]
    return torch.cat(outputs), state


def _layer_weights(module: torch.nn.Module, layer: int, direction: int) -> dict[str, Tensor | None]:
    suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
    return {
        "w_ih": getattr(module, "weight_ih" + suffix),
        "w_hh": getattr(module, "weight_hh" + suffix),
        "b_ih": getattr(module, "bias_ih" + suffix) if module.bias else None,
        "b_hh": getattr(module, "bias_hh" + suffix) if module.bias else None,
        "w_hr": getattr(module, "weight_hr" + suffix) if getattr(module, "proj_size", 0) > 0 else None,
    }


def forward(module: torch.nn.Module, input: Tensor | PackedSequence, hx=None):
    """What ``module(input, hx)`` returns, for a ``torch.nn.LSTM / GRU / RNN`` (or an rnnfast one).

    Reads the module's ``mode``, ``num_layers``, ``bidirectional``, ``batch_first``,
    ``proj_size``, ``bias``, ``dropout``, ``training`` and its parameters by name
    (``weight_ih_l{k}{_reverse}``, ...), so ``torch.func.functional_call`` works through it.

    input: [T, B, I] (time-major), [B, T, I] (batch_first), [T, I] (unbatched; batch_first is
       ignored, as in torch) or a PackedSequence (sorted or not) whose data is [N, I].
    hx: None (zeros), or h0: [L*D, B, P] ([L*D, P] unbatched), for LSTM a tuple (h0, c0) with
       c0: [L*D, B, H] ([L*D, H] unbatched).  For a PackedSequence the batch index of hx is the
       user's order (before sorting), as in torch.
    Returns (output, h_n) or for LSTM (output, (h_n, c_n)):
       output: same layout as input with D*P features (a PackedSequence for packed input),
       out[..., :P] the forward direction, out[..., P:] the reverse one;
       h_n[layer*D + direction]: [L*D, B, P], c_n: [L*D, B, H].

    Inter-layer dropout is not supported: a module with dropout > 0, more than one layer and
    training=True raises NotImplementedError (dropout masks are random, so there is nothing to
    compare against; in eval mode dropout does nothing and the module runs as usual).
    Input validation is the module's job: the reference assumes valid shapes and dtypes.
    """
    mode = module.mode
    num_layers = module.num_layers
    num_directions = 2 if module.bidirectional else 1
    proj_size = getattr(module, "proj_size", 0)
    out_size = proj_size if proj_size > 0 else module.hidden_size
    if module.dropout > 0 and module.training and num_layers > 1:
        raise NotImplementedError("reference.forward: inter-layer dropout in training mode is not supported")

    is_packed = isinstance(input, PackedSequence)
    is_batched = True
    if is_packed:
        x, batch_sizes_t, sorted_indices, unsorted_indices = input
        batch_sizes = [int(bs) for bs in batch_sizes_t]
    else:
        sorted_indices = unsorted_indices = None
        is_batched = input.dim() == 3
        if not is_batched:
            input = input.unsqueeze(1)
        elif module.batch_first:
            input = input.transpose(0, 1)
        seq_len, batch = input.shape[:2]
        x = input.reshape(seq_len * batch, input.shape[2])
        batch_sizes = [batch] * seq_len
    batch = batch_sizes[0]

    if hx is None:
        h0 = x.new_zeros(num_layers * num_directions, batch, out_size)
        c0 = x.new_zeros(num_layers * num_directions, batch, module.hidden_size)
    else:
        h0, c0 = hx if mode == "LSTM" else (hx, None)
        if not is_batched:
            h0 = h0.unsqueeze(1)
            c0 = None if c0 is None else c0.unsqueeze(1)
        if sorted_indices is not None:
            h0 = h0.index_select(1, sorted_indices)
            c0 = None if c0 is None else c0.index_select(1, sorted_indices)
    initial = (h0, c0) if mode == "LSTM" else (h0,)

    layer_input = x
    finals: list[tuple[Tensor, ...]] = []
    for layer in range(num_layers):
        direction_outputs = []
        for direction in range(num_directions):
            k = layer * num_directions + direction
            out, final = layer_direction(
                mode,
                layer_input,
                batch_sizes,
                tuple(s[k] for s in initial),
                _layer_weights(module, layer, direction),
                reverse=direction == 1,
            )
            direction_outputs.append(out)
            finals.append(final)
        layer_input = torch.cat(direction_outputs, dim=1)

    h_n = tuple(torch.stack(states) for states in zip(*finals))
    if unsorted_indices is not None:
        h_n = tuple(s.index_select(1, unsorted_indices) for s in h_n)

    if is_packed:
        output = PackedSequence(layer_input, batch_sizes_t, sorted_indices, unsorted_indices)
    else:
        output = layer_input.reshape(len(batch_sizes), batch, -1)
        if not is_batched:
            output = output.squeeze(1)
            h_n = tuple(s.squeeze(1) for s in h_n)
        elif module.batch_first:
            output = output.transpose(0, 1)
    return output, (h_n if mode == "LSTM" else h_n[0])
