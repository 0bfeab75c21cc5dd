"""Every rnnfast module as a function of plain tensors, for the autograd tests.

``test_double_backward.py`` and ``test_autograd_hygiene.py`` run the same checks over all six
modules (LSTM, GRU, RNN and the three cells) in several input forms.  A ``Case`` builds a torch.nn
module and an rnnfast module with identical weights, draws random inputs, and calls a module as a
function of ``(x, *states)`` returning its outputs as a flat tuple of tensors (the data of a
PackedSequence; ``[output, h_n(, c_n)]`` for a network, ``[h(, c)]`` for a cell).  A packed case is
called with a padded ``x`` and packs it inside the call, so gradients w.r.t. ``x`` are defined.
"""

from __future__ import annotations

import dataclasses

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnfast

CELL_KINDS = ("LSTMCell", "GRUCell", "RNNCell")


@dataclasses.dataclass(frozen=True)
class Case:
    kind: str  # LSTM, GRU, RNN, LSTMCell, GRUCell, RNNCell
    nonlinearity: str = "tanh"  # RNN / RNNCell
    num_layers: int = 1
    bidirectional: bool = False
    batch_first: bool = False
    bias: bool = True
    proj_size: int = 0
    form: str = "padded"  # padded, packed (unsorted lengths) or unbatched
    input_size: int = 2
    hidden_size: int = 3
    batch: int = 2
    seq_len: int = 3
    dtype: torch.dtype = torch.float64

    @property
    def id(self) -> str:
        parts = [self.kind + (f"_{self.nonlinearity}" if self.kind.startswith("RNN") else "")]
        if not self.is_cell:
            parts.append(f"L{self.num_layers}")
            if self.bidirectional:
                parts.append("bi")
            if self.batch_first:
                parts.append("bf")
            if self.proj_size:
                parts.append(f"proj{self.proj_size}")
        if not self.bias:
            parts.append("nobias")
        parts.append(self.form)
        parts.append(str(self.dtype).removeprefix("torch."))
        return "-".join(parts)

    @property
    def is_cell(self) -> bool:
        return self.kind in CELL_KINDS

    @property
    def has_cell_state(self) -> bool:
        return self.kind in ("LSTM", "LSTMCell")

    @property
    def out_size(self) -> int:
        return self.proj_size if self.proj_size else self.hidden_size

    def kwargs(self) -> dict:
        kwargs = dict(bias=self.bias, dtype=self.dtype)
        if self.kind.startswith("RNN"):
            kwargs["nonlinearity"] = self.nonlinearity
        if not self.is_cell:
            kwargs.update(num_layers=self.num_layers, bidirectional=self.bidirectional,
                          batch_first=self.batch_first)
            if self.kind == "LSTM":
                kwargs["proj_size"] = self.proj_size
        return kwargs

    def build(self, library) -> torch.nn.Module:
        """The module of ``library`` (torch.nn or rnnfast), freshly initialised."""
        return getattr(library, self.kind)(self.input_size, self.hidden_size, **self.kwargs())

    def build_pair(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """(torch.nn module, rnnfast module) with the same weights, both in training mode."""
        reference = self.build(torch.nn)
        fast = self.build(rnnfast)
        fast.load_state_dict(reference.state_dict(), strict=True)
        return reference, fast

    # ---- inputs ------------------------------------------------------------------------------

    def state_shapes(self) -> list[tuple[int, ...]]:
        batch = () if self.form == "unbatched" else (self.batch,)
        if self.is_cell:
            shapes = [(*batch, self.hidden_size)]
            return shapes * 2 if self.has_cell_state else shapes
        layers = self.num_layers * (2 if self.bidirectional else 1)
        shapes = [(layers, *batch, self.out_size)]
        if self.has_cell_state:
            shapes.append((layers, *batch, self.hidden_size))
        return shapes

    def input_shape(self) -> tuple[int, ...]:
        if self.is_cell:
            return (self.input_size,) if self.form == "unbatched" else (self.batch, self.input_size)
        if self.form == "unbatched":
            return (self.seq_len, self.input_size)
        if self.batch_first:
            return (self.batch, self.seq_len, self.input_size)
        return (self.seq_len, self.batch, self.input_size)

    def make_inputs(self, requires_grad: bool = True) -> tuple[torch.Tensor, ...]:
        """Fresh random ``(x, *states)`` (standard normal, never zeros)."""
        tensors = [torch.randn(self.input_shape(), dtype=self.dtype)]
        tensors += [torch.randn(shape, dtype=self.dtype) for shape in self.state_shapes()]
        return tuple(t.requires_grad_(requires_grad) for t in tensors)

    def make_lengths(self) -> torch.Tensor | None:
        """Unsorted lengths of a packed case (the longest = seq_len, one of length 1), else None."""
        if self.form != "packed":
            return None
        lengths = torch.randint(1, self.seq_len + 1, (self.batch,))
        lengths[0] = self.seq_len
        lengths[1] = 1
        perm = torch.randperm(self.batch)
        if torch.equal(perm, torch.arange(self.batch)):  # make sure the order is unsorted
            perm = perm.flip(0)
        return lengths[perm]

    # ---- calls -------------------------------------------------------------------------------

    def call(self, module, x, *states, lengths=None, params=None) -> tuple[torch.Tensor, ...]:
        """``module`` as a function of ``(x, *states)``, with ``params`` (a name -> tensor dict)
        substituted by ``torch.func.functional_call`` when given.  No states: the module's zeros."""
        if lengths is not None:
            x = pack_padded_sequence(x, lengths, batch_first=self.batch_first, enforce_sorted=False)
        if not states:
            hx = None
        elif self.has_cell_state:
            hx = tuple(states)
        else:
            (hx,) = states
        if params is None:
            result = module(x, hx)
        else:
            result = torch.func.functional_call(module, params, (x, hx))
        return flatten(result)

    def params_function(self, module, lengths=None):
        """(function of ``(x, *states, *weights)`` -> outputs, parameter names): every tensor an
        explicit argument, for gradcheck / gradgradcheck."""
        names = [name for name, _ in module.named_parameters()]
        num_states = len(self.state_shapes())

        def function(x, *rest):
            states, weights = rest[:num_states], rest[num_states:]
            return self.call(module, x, *states, lengths=lengths, params=dict(zip(names, weights)))

        return function, names


def flatten(result) -> tuple[torch.Tensor, ...]:
    """A module's result as a flat tuple of tensors (a PackedSequence contributes its data)."""
    if isinstance(result, PackedSequence):
        return (result.data,)
    if isinstance(result, torch.Tensor):
        return (result,)
    return tuple(t for item in result for t in flatten(item))


def detached_params(module, requires_grad: bool = True) -> list[torch.Tensor]:
    return [p.detach().clone().requires_grad_(requires_grad) for p in module.parameters()]


NETWORK_KINDS = ("LSTM", "GRU", "RNN")

# One representative case per module (what the "for every module" tests run).
EVERY_MODULE = [
    Case("LSTM"),
    Case("LSTM", proj_size=2),
    Case("GRU"),
    Case("RNN", nonlinearity="tanh"),
    Case("RNN", nonlinearity="relu"),
    Case("LSTMCell"),
    Case("GRUCell"),
    Case("RNNCell", nonlinearity="tanh"),
    Case("RNNCell", nonlinearity="relu"),
]
