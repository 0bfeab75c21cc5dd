"""Drop-in replacements for ``torch.nn.LSTM`` and ``torch.nn.GRU``.

Each class subclasses its torch.nn counterpart, so constructor arguments and
their validation, parameter names, shapes, initialisation, ``state_dict`` keys,
``repr`` and pickling are torch's own. Only ``forward`` is replaced: it walks
through torch.nn's argument handling step by step (same checks, same messages,
same order) and then runs the fused kernels instead of ``torch._VF``.
"""

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from . import functional
from ._extension import require_extension

_SUPPORTED_DTYPES = (torch.float32, torch.float64)

# batch_sizes of padded input ([T] int64, all B), kept per (T, B): building it
# is a measurable part of a one-step call. Only read, never handed to users.
_STEPS_CACHE = {}


def _padded_batch_sizes(T: int, B: int):
    if torch.compiler.is_compiling():  # no side effects while being traced
        return torch.full((T,), B, dtype=torch.int64, device="cpu")
    steps = _STEPS_CACHE.get((T, B))
    if steps is None:
        steps = torch.full((T,), B, dtype=torch.int64, device="cpu")
        # Only a plain CPU tensor is kept: not a fake or functional tensor made
        # under a tracing mode, which would break every later call.
        if type(steps) is torch.Tensor and steps.is_cpu:
            if len(_STEPS_CACHE) > 256:
                _STEPS_CACHE.clear()
            _STEPS_CACHE[(T, B)] = steps
    return steps


class _FusedForward:
    """The ``forward`` shared by the fused LSTM and GRU (mixed into torch's classes)."""

    def __init__(self, *args, **kwargs):
        require_extension()
        super().__init__(*args, **kwargs)

    # -- torch.nn's argument handling -------------------------------------------------
    def _refresh_flat_weights(self):
        """torch.nn's ``_update_flat_weights`` (re-read the weights if they were replaced,
        e.g. by ``torch.func.functional_call``), reading plain parameters straight from
        ``_parameters`` instead of a ``hasattr`` and a ``getattr`` per weight, a visible
        cost of a one-step call. Anything else (parametrized weights, ...) takes torch's path."""
        params = self._parameters
        for ref, name in zip(self._flat_weight_refs, self._flat_weights_names):
            weight = params.get(name)
            if weight is None:
                self._update_flat_weights()
                return
            if ref is not None and ref() is not weight:
                self._init_flat_weights()
                return

    def _zeros_hidden(self, input, max_batch_size):
        num_directions = 2 if self.bidirectional else 1
        real_hidden_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        shape = (self.num_layers * num_directions, max_batch_size)
        h = torch.zeros(*shape, real_hidden_size, dtype=input.dtype, device=input.device)
        if self.mode != "LSTM":
            return h
        c = torch.zeros(*shape, self.hidden_size, dtype=input.dtype, device=input.device)
        return h, c

    def _unbatched_hidden(self, hx, is_batched):
        """torch.nn's rank checks of a user-given hx for unpacked input (unsqueezed if unbatched)."""
        want = 3 if is_batched else 2
        kind = "batched 3-D" if is_batched else "unbatched 2-D"
        if self.mode == "LSTM":
            if hx[0].dim() != want or hx[1].dim() != want:
                raise RuntimeError(
                    f"For {kind} input, hx and cx should also be {want}-D but got "
                    f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                )
            return hx if is_batched else (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        if hx.dim() != want:
            raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got {hx.dim()}-D tensor")
        return hx if is_batched else hx.unsqueeze(1)

    def _check_packed_lstm_args(self, input, hx, batch_sizes):
        """torch.nn.LSTM leaves PackedSequence input to its C++ kernels, which fail with
        RuntimeError (IndexError for a hidden state of the wrong rank); rnnfast raises the
        same types, with torch.nn's readable messages."""
        for name, h in zip(("hx", "cx"), hx):
            if h.dim() != 3:
                raise IndexError(
                    f"For PackedSequence input, {name} should be 3-D but got {h.dim()}-D tensor"
                )
        try:
            self.check_forward_args(input, hx, batch_sizes)
        except ValueError as exc:
            raise RuntimeError(str(exc)) from None

    def _prepare_kernel_args(self, input, hx):
        """What torch.nn leaves to its C++ kernels: dtype, device and length checks.

        Returns hx, with an LSTM cell state of a lower floating precision promoted to
        the input's dtype, as torch's kernels promote it."""
        weight = self._flat_weights[0]
        if input.dtype not in _SUPPORTED_DTYPES:
            raise NotImplementedError(
                f"rnnfast.{type(self).__name__} supports float32 and float64 inputs, got {input.dtype}"
            )
        if not (input.is_cpu and weight.is_cpu):
            raise NotImplementedError(
                f"rnnfast.{type(self).__name__}: this build runs on the CPU only "
                f"(input on {input.device}, weights on {weight.device}); see rnnfast.backend()"
            )
        hiddens = list(hx) if self.mode == "LSTM" else [hx]
        for i, (name, h) in enumerate(zip(("hx", "cx"), hiddens)):
            if not h.is_cpu:
                raise RuntimeError(
                    f"Input and hidden tensors are not at the same device, found input tensor at "
                    f"{input.device} and hidden tensor at {h.device}"
                )
            if h.dtype == input.dtype:
                continue
            if name == "cx" and h.is_floating_point() and torch.promote_types(h.dtype, input.dtype) == input.dtype:
                hiddens[i] = h.to(input.dtype)
                continue
            raise RuntimeError(f"{name} dtype ({h.dtype}) does not match input dtype ({input.dtype})")
        return tuple(hiddens) if self.mode == "LSTM" else hiddens[0]

    # -- forward -------------------------------------------------------------------------
    def forward(self, input, hx=None):
        require_extension()
        self._refresh_flat_weights()
        is_lstm = self.mode == "LSTM"
        orig_input = input
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            is_batched = True
            if hx is None:
                hx = self._zeros_hidden(input, int(batch_sizes[0]))
            else:
                hx = self.permute_hidden(hx, sorted_indices)
        else:
            batch_sizes = sorted_indices = unsorted_indices = None
            if input.dim() not in (2, 3):
                raise ValueError(
                    f"{self.mode}: Expected input to be 2D or 3D, got {input.dim()}D instead"
                )
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            if hx is None:
                max_batch_size = input.size(0) if self.batch_first else input.size(1)
                hx = self._zeros_hidden(input, max_batch_size)
            else:
                hx = self._unbatched_hidden(hx, is_batched)
        if is_lstm and batch_sizes is not None:
            self._check_packed_lstm_args(input, hx, batch_sizes)
        else:
            self.check_forward_args(input, hx, batch_sizes)
        hx = self._prepare_kernel_args(input, hx)

        if batch_sizes is None:
            x = input.transpose(0, 1) if self.batch_first else input
            T, B = x.size(0), x.size(1)
            if T == 0:
                raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
            rows = x.reshape(T * B, x.size(2))
            steps = _padded_batch_sizes(T, B)
        else:
            rows, steps = input, batch_sizes
            B = int(batch_sizes[0])

        h0, c0 = (hx[0], hx[1]) if is_lstm else (hx, None)
        if B == 0:
            y, h_n, c_n = self._empty_batch_result(rows, h0, c0)
        else:
            y, h_n, c_n = functional.rnn_packed(
                self.mode, rows, steps, h0, c0, self._flat_weights, self.bias, self.num_layers,
                self.dropout, self.training, self.bidirectional, self.proj_size,
            )
        hidden = (h_n, c_n) if is_lstm else h_n

        if isinstance(orig_input, PackedSequence):
            output = PackedSequence(y, batch_sizes, sorted_indices, unsorted_indices)
            return output, self.permute_hidden(hidden, unsorted_indices)
        output = y.view(T, B, y.size(-1))
        if self.batch_first:
            output = output.transpose(0, 1)
        if not is_batched:
            output = output.squeeze(batch_dim)
            hidden = (h_n.squeeze(1), c_n.squeeze(1)) if is_lstm else h_n.squeeze(1)
        return output, hidden

    def _empty_batch_result(self, rows, h0, c0):
        """Batch size 0: empty outputs, still connected to the graph like torch's."""
        D = 2 if self.bidirectional else 1
        real_hidden_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        anchor = rows.sum() * 0
        for w in self._flat_weights:
            anchor = anchor + w.sum() * 0
        y = rows.new_zeros(rows.size(0), D * real_hidden_size) + anchor
        h_n = h0 + anchor
        c_n = c0 + anchor if c0 is not None else None
        return y, h_n, c_n


class LSTM(_FusedForward, nn.LSTM):
    __doc__ = (
        "Drop-in replacement for :class:`torch.nn.LSTM` running rnnfast's fused kernels.\n\n"
        "Same arguments, parameters, state_dict and outputs as torch.nn.LSTM.\n\n"
        + (nn.LSTM.__doc__ or "")
    )


class GRU(_FusedForward, nn.GRU):
    __doc__ = (
        "Drop-in replacement for :class:`torch.nn.GRU` running rnnfast's fused kernels.\n\n"
        "Same arguments, parameters, state_dict and outputs as torch.nn.GRU.\n\n"
        + (nn.GRU.__doc__ or "")
    )
