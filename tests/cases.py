"""The suite's one case model: a module under test, its random inputs, and the comparisons.

Every concern file (parity, errors, state_dict, gradcheck, double backward, compile, export, low
precision, ...) describes what it runs as a ``Case``: one of the six modules (LSTM, GRU, RNN and
the three cells) with its options, an input form and sizes.  A case builds the torch.nn module
and the rnnfast module with identical weights (``build_pair`` -> ``(reference, fast)``, always in
that order), draws fresh random inputs (never zeros), and calls a module as a function of plain
tensors.  ``assert_close`` is the one tolerance rule; ``check_parity`` compares outputs and every
gradient (input, states, each parameter) of a pair.

Fixtures live in ``conftest.py``; this module is imported by tests as a library.
"""

from __future__ import annotations

import dataclasses
import linecache
import threading

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

# Relative / absolute tolerance of a comparison, per dtype.  float64 is tight: rnnfast and torch do
# the same arithmetic up to summation order.  The float32 numbers were calibrated on torch float32
# vs torch float64 (LSTM/GRU, T=300, 3 layers, gradients included): torch's own float32 error
# reaches rtol ~3e-5 at atol 1e-5, and torch float32 vs reference.py float32 (two independent
# float32 implementations) ~6e-5 in the largest gradients; 1e-4 is the tightest bound that does not
# flag an equally accurate implementation.  Against rnnfast, 400 random configs (a third with
# T in 100..300) used at most 32% of the float32 and 0.03% of the float64 tolerance.
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    # Against torch.nn's own module in that dtype: both round, each within 5 unit roundoffs of
    # the largest value (calibrated in test_low_precision.py), so 10u of the largest value.
    torch.bfloat16: dict(rtol=0.0, atol=10 * 2.0**-8),
    torch.float16: dict(rtol=0.0, atol=10 * 2.0**-11),
}

MODES = ("LSTM", "GRU", "RNN")
CELL_KINDS = ("LSTMCell", "GRUCell", "RNNCell")
# Every recurrence as (kind, nonlinearity): RNN with each of its nonlinearities.
KINDS = (("LSTM", "tanh"), ("GRU", "tanh"), ("RNN", "tanh"), ("RNN", "relu"))
CELLS = tuple((kind + "Cell", nonlinearity) for kind, nonlinearity in KINDS)


def kind_id(kind) -> str:
    """"LSTM", "GRU", "RNN_tanh", "RNN_relu" (and the cells' likewise) for a (kind, nonlinearity)
    pair of KINDS or CELLS."""
    name, nonlinearity = kind
    return f"{name}_{nonlinearity}" if name.startswith("RNN") else name


# Input forms: a padded tensor, one unbatched sequence (or one unbatched cell input), a
# PackedSequence of descending or of unsorted lengths (networks only).
FORMS = ("padded", "unbatched", "packed_sorted", "packed_unsorted")

# The sizes of the cheapest cases (double backward, hygiene, every-module sweeps).
SMALL = dict(input_size=2, hidden_size=3, batch=2, seq_len=3)


def fast_module_class(kind: str) -> type:
    """The rnnfast module class under test, e.g. ``rnnfast.LSTM`` for "LSTM"."""
    import rnnfast  # here: the benchmarks import this module before they import rnnfast

    return getattr(rnnfast, kind)


def torch_module_class(kind: str) -> type:
    return getattr(torch.nn, kind)


def random_lengths(batch: int, seq_len: int, sort: bool) -> torch.Tensor:
    """[B] int64 lengths in 1..seq_len, the longest = seq_len, one of length 1 when B >= 2;
    in descending order, or (with not `sort`) in an order that is not descending."""
    lengths = torch.randint(1, seq_len + 1, (batch,))
    lengths[0] = seq_len
    if batch >= 2:
        lengths[1] = 1
    if sort:
        return lengths.sort(descending=True).values
    perm = torch.randperm(batch)
    if torch.equal(perm, torch.arange(batch)):  # make sure the order is not the sorted one
        perm = perm.flip(0)
    return lengths[perm]


@dataclasses.dataclass
class Inputs:
    """What to call a module with, and the tensors to differentiate with respect to."""

    input: torch.Tensor | PackedSequence
    hx: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None
    leaves: list[torch.Tensor]  # inputs of the graph that require grad (x, h0, c0 as applicable)
    leaf_names: list[str]


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@dataclasses.dataclass(frozen=True)
class Case:
    """One point of the option matrix: a module kind with its options, an input form, sizes."""

    kind: str = "LSTM"  # LSTM, GRU, RNN, LSTMCell, GRUCell, RNNCell
    nonlinearity: str = "tanh"  # RNN / RNNCell
    dtype: torch.dtype = torch.float64
    num_layers: int = 1
    bidirectional: bool = False
    batch_first: bool = False
    bias: bool = True
    proj_size: int = 0
    form: str = "padded"  # one of FORMS
    with_hx: bool = True  # pass initial states (else the module's zeros)
    input_requires_grad: bool = True
    input_size: int = 3
    hidden_size: int = 5
    batch: int = 3
    seq_len: int = 4  # networks only
    dropout: float = 0.0

    def __post_init__(self):
        assert self.kind in MODES + CELL_KINDS, self.kind
        assert self.form in FORMS, self.form
        assert not (self.is_cell and self.form.startswith("packed")), "cells take no PackedSequence"

    @property
    def id(self) -> str:
        parts = [kind_id((self.kind, self.nonlinearity)), str(self.dtype).removeprefix("torch.")]
        if not self.is_cell:
            parts.append(f"L{self.num_layers}")
            parts += ["bi"] * self.bidirectional + ["bf"] * self.batch_first
            if self.proj_size:
                parts.append(f"proj{self.proj_size}")
        parts += ["nobias"] * (not self.bias) + [self.form]
        parts += ["nohx"] * (not self.with_hx) + ["noxgrad"] * (not self.input_requires_grad)
        sizes = f"I{self.input_size}H{self.hidden_size}B{self.batch}"
        parts.append(sizes if self.is_cell else f"{sizes}T{self.seq_len}")
        if self.dropout:
            parts.append(f"drop{self.dropout}")
        return "-".join(parts)

    @property
    def is_cell(self) -> bool:
        return self.kind in CELL_KINDS

    @property
    def mode(self) -> str:
        """The recurrence: "LSTM", "GRU" or "RNN" (for a network and for its cell)."""
        return self.kind.removesuffix("Cell")

    @property
    def has_cell_state(self) -> bool:
        return self.mode == "LSTM"

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def out_size(self) -> int:
        return self.proj_size if self.proj_size else self.hidden_size

    @property
    def layer_calls(self) -> int:
        """rnnfast layer operator calls one network forward makes (one per layer and direction)."""
        return 1 if self.is_cell else self.num_layers * self.num_directions

    # ---- modules -----------------------------------------------------------------------------

    def kwargs(self) -> dict:
        """The constructor's keyword arguments (all but input_size and hidden_size)."""
        kwargs = dict(bias=self.bias, dtype=self.dtype)
        if self.mode == "RNN":
            kwargs["nonlinearity"] = self.nonlinearity
        if not self.is_cell:
            kwargs.update(num_layers=self.num_layers, bidirectional=self.bidirectional,
                          batch_first=self.batch_first, dropout=self.dropout)
            if self.kind == "LSTM":
                kwargs["proj_size"] = self.proj_size
        return kwargs

    def build(self, library) -> torch.nn.Module:
        """The module of ``library`` (torch.nn or rnnfast), freshly initialised."""
        return getattr(library, self.kind)(self.input_size, self.hidden_size, **self.kwargs())

    def build_pair(self, training: bool = True) -> tuple[torch.nn.Module, torch.nn.Module]:
        """(torch.nn module, rnnfast module): the rnnfast one loaded from the torch one's
        state_dict (strict), both in the same train/eval mode."""
        import rnnfast

        reference = self.build(torch.nn)
        fast = self.build(rnnfast)
        fast.load_state_dict(reference.state_dict(), strict=True)
        return reference.train(training), fast.train(training)

    # ---- inputs ------------------------------------------------------------------------------

    def input_shape(self) -> tuple[int, ...]:
        if self.is_cell:
            return (self.input_size,) if self.form == "unbatched" else (self.batch, self.input_size)
        if self.form == "unbatched":
            return (self.seq_len, self.input_size)
        if self.batch_first:
            return (self.batch, self.seq_len, self.input_size)
        return (self.seq_len, self.batch, self.input_size)

    def state_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of h0 (and c0) as the module takes them."""
        batch = () if self.form == "unbatched" else (self.batch,)
        if self.is_cell:
            return [(*batch, self.hidden_size)] * (2 if self.has_cell_state else 1)
        layers = self.num_layers * self.num_directions
        shapes = [(layers, *batch, self.out_size)]
        if self.has_cell_state:
            shapes.append((layers, *batch, self.hidden_size))
        return shapes

    def make_lengths(self) -> torch.Tensor | None:
        """The sequence lengths of a packed case, else None."""
        if not self.form.startswith("packed"):
            return None
        return random_lengths(self.batch, self.seq_len, sort=self.form == "packed_sorted")

    def pack(self, x: torch.Tensor, lengths: torch.Tensor | None):
        """x itself, or x packed with `lengths`."""
        if lengths is None:
            return x
        return pack_padded_sequence(x, lengths, batch_first=self.batch_first,
                                    enforce_sorted=self.form == "packed_sorted")

    def inputs(self, layout=_same) -> Inputs:
        """Fresh random inputs in the case's form (standard normal, never zeros).  `layout` maps
        each tensor to the one actually passed (a non-contiguous copy, say); it must keep values
        and shape."""
        x = layout(torch.randn(self.input_shape(), dtype=self.dtype)).requires_grad_(self.input_requires_grad)
        leaves, names = ([x], ["input"]) if self.input_requires_grad else ([], [])
        module_input = self.pack(x, self.make_lengths())
        hx = None
        if self.with_hx:
            states = [layout(torch.randn(shape, dtype=self.dtype)).requires_grad_() for shape in self.state_shapes()]
            leaves += states
            names += ["h0", "c0"][: len(states)]
            hx = tuple(states) if self.has_cell_state else states[0]
        return Inputs(module_input, hx, leaves, names)

    def tensors(self, requires_grad: bool = True) -> tuple[torch.Tensor, ...]:
        """Fresh random ``(x, *states)`` as plain tensors, for ``call``: a packed case's x is
        padded and packed inside the call, so gradients w.r.t. x are defined."""
        tensors = [torch.randn(self.input_shape(), dtype=self.dtype)]
        tensors += [torch.randn(shape, dtype=self.dtype) for shape in self.state_shapes()]
        return tuple(t.requires_grad_(requires_grad) for t in tensors)

    # ---- calls -------------------------------------------------------------------------------

    def call(self, module, x, *states, lengths=None, params=None) -> tuple[torch.Tensor, ...]:
        """``module`` as a function of ``(x, *states)`` returning a flat tuple of tensors, with
        ``params`` (a name -> tensor dict) substituted by ``torch.func.functional_call`` when
        given.  No states: the module's zeros."""
        x = self.pack(x, lengths)
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


# One representative case per module and nonlinearity (what the "for every module" tests run).
EVERY_MODULE = [
    Case("LSTM", **SMALL),
    Case("LSTM", proj_size=2, **SMALL),
    Case("GRU", **SMALL),
    Case("RNN", nonlinearity="tanh", **SMALL),
    Case("RNN", nonlinearity="relu", **SMALL),
    Case("LSTMCell", **SMALL),
    Case("GRUCell", **SMALL),
    Case("RNNCell", nonlinearity="tanh", **SMALL),
    Case("RNNCell", nonlinearity="relu", **SMALL),
]


def ids(cases) -> list[str]:
    return [case.id for case in cases]


def flatten(result) -> tuple[torch.Tensor, ...]:
    """A module's result as a flat tuple of tensors (a PackedSequence contributes its data):
    ``(output, h_n[, c_n])`` of a network, ``(h[, c])`` of a cell."""
    if isinstance(result, PackedSequence):
        return (result.data,)
    if isinstance(result, torch.Tensor):
        return (result,)
    return tuple(t for item in result for t in flatten(item))


def detached_params(module, requires_grad: bool = True) -> list[torch.Tensor]:
    return [p.detach().clone().requires_grad_(requires_grad) for p in module.parameters()]


# ---- comparisons ---------------------------------------------------------------------------------

OUTPUT_NAMES = ("output", "h_n", "c_n")  # the flat results of a network
CELL_OUTPUT_NAMES = ("h", "c")  # of a cell


def assert_same_structure(expected, actual) -> None:
    """Same output type, PackedSequence metadata, tuple nesting, shapes and dtypes."""
    assert type(actual) is type(expected), f"result type {type(actual)} != {type(expected)}"
    if isinstance(expected, tuple) and not isinstance(expected, PackedSequence):  # (a namedtuple)
        assert len(actual) == len(expected), f"{len(actual)} results, expected {len(expected)}"
        for e, a in zip(expected, actual):
            assert_same_structure(e, a)
        return
    if isinstance(expected, PackedSequence):
        for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            e, a = getattr(expected, field), getattr(actual, field)
            assert (e is None) == (a is None), f"PackedSequence.{field}: {a} != {e}"
            if e is not None:
                assert torch.equal(a, e), f"PackedSequence.{field}: {a} != {e}"
        expected, actual = expected.data, actual.data
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    assert actual.requires_grad == expected.requires_grad, f"requires_grad {actual.requires_grad} != {expected.requires_grad}"


def assert_close(actual: torch.Tensor, expected: torch.Tensor, name: str, scaled: bool | None = None,
                 **kwargs) -> None:
    """The suite's one comparison: TOL of the expected dtype, the absolute tolerance scaled by the
    largest expected value (where `scaled`; by default for every dtype but float64)."""
    tol = dict(TOL[expected.dtype])
    if scaled is None:
        scaled = expected.dtype != torch.float64
    if scaled and expected.numel() and expected.isfinite().all():
        # A float32 element that is a small sum of large terms (a weight gradient summed over
        # hundreds of steps) carries an absolute rounding error proportional to those terms,
        # whatever its own size: the absolute tolerance scales with the tensor's magnitude.
        tol["atol"] *= max(1.0, expected.abs().max().item())
    torch.testing.assert_close(
        actual, expected, **tol, **kwargs, msg=lambda m: f"{name} differs from torch.nn:\n{m}"
    )


def assert_all_close(actual, expected, names) -> None:
    """assert_close over parallel sequences of the same length; `names` names each pair, or is
    one label that each pair gets with its index."""
    actual, expected = list(actual), list(expected)
    names = [f"{names}[{k}]" for k in range(len(expected))] if isinstance(names, str) else list(names)
    assert len(actual) == len(expected) == len(names), (len(actual), len(expected), len(names))
    for a, e, n in zip(actual, expected, names):
        assert_close(a, e, n)


def assert_outputs_close(expected, actual, names=OUTPUT_NAMES) -> None:
    """Two module results (a network's ``(output, h_n[, c_n])``, a cell's ``h`` or ``(h, c)``
    with CELL_OUTPUT_NAMES): same structure, values within tolerance."""
    assert_same_structure(expected, actual)
    flat = flatten(expected)
    assert_all_close(flatten(actual), flat, names[: len(flat)])


def gradients(module: torch.nn.Module, outputs, grad_outputs, inputs: Inputs, params: bool = True) -> dict:
    """d(sum(outputs * grad_outputs)) w.r.t. every leaf of `inputs` and (with `params`) every
    parameter, by name."""
    params = dict(module.named_parameters()) if params else {}
    grads = torch.autograd.grad(
        list(outputs),
        [*inputs.leaves, *params.values()],
        grad_outputs,
        retain_graph=True,  # a packing step in front of the module is shared by both runs
        allow_unused=True,
        materialize_grads=True,
    )
    return dict(zip([*inputs.leaf_names, *params], grads))


def check_parity(reference: torch.nn.Module, fast: torch.nn.Module, inputs: Inputs, backward: bool = True,
                 fast_forward=None):
    """Run both modules on the same inputs; compare outputs and, with `backward`, the gradients
    of a random projection of all outputs w.r.t. input, h0, c0 and every parameter.
    `fast_forward(input, hx)` replaces `fast(input, hx)` when given (fast's parameters are still
    the ones differentiated)."""
    expected = reference(inputs.input, inputs.hx)
    actual = (fast_forward or fast)(inputs.input, inputs.hx)
    assert_outputs_close(expected, actual, CELL_OUTPUT_NAMES if isinstance(reference, torch.nn.RNNCellBase) else OUTPUT_NAMES)
    if not backward:
        return expected, actual
    exp_flat, act_flat = flatten(expected), flatten(actual)
    grad_outputs = [torch.randn_like(t) for t in exp_flat]
    exp_grads = gradients(reference, exp_flat, grad_outputs, inputs)
    act_grads = gradients(fast, act_flat, grad_outputs, inputs)
    assert act_grads.keys() == exp_grads.keys()
    for name in exp_grads:
        assert act_grads[name].dtype == exp_grads[name].dtype, f"gradient of {name}: dtype {act_grads[name].dtype}"
        assert_close(act_grads[name], exp_grads[name], f"gradient of {name}")
    return expected, actual


# ---- errors --------------------------------------------------------------------------------------


def capture(fn):
    """fn() -> ("ok", result) or ("raised", exception); never hides the outcome."""
    try:
        return "ok", fn()
    except Exception as exc:  # noqa: BLE001 - the caller compares the exception itself
        return "raised", exc


def origin(exc: BaseException) -> str:
    """"python" if torch raised `exc` with a raise statement in torch/nn/modules/rnn.py, else "aten"
    (an ATen kernel, an argument parser, or a Python error such as an out-of-range index)."""
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename
    line = linecache.getline(filename, tb.tb_lineno).strip()
    if filename.replace("\\", "/").endswith("torch/nn/modules/rnn.py") and line.startswith("raise"):
        return "python"
    return "aten"


def assert_same_error(expected: tuple, actual: tuple, compare_message: bool) -> None:
    """`expected`, `actual`: capture() results of torch.nn and rnnfast. Both must have raised the
    same exception type, and with `compare_message` the same message."""
    assert expected[0] == "raised", f"torch.nn did not raise (returned {type(expected[1])}): the case is wrong"
    assert actual[0] == "raised", f"rnnfast did not raise; torch raised {type(expected[1]).__name__}: {expected[1]}"
    exp, act = expected[1], actual[1]
    assert type(act) is type(exp), f"rnnfast raised {type(act).__name__}: {act}\ntorch raised {type(exp).__name__}: {exp}"
    if compare_message:
        assert str(act) == str(exp)


def assert_raises_like_torch(torch_call, fast_call, where: str, compare_message: bool) -> None:
    """torch_call() must raise (from `where`: "python" or "aten", the case's claim about torch) and
    fast_call() the same type (and message where asked)."""
    expected = capture(torch_call)
    actual = capture(fast_call)
    assert expected[0] == "raised", "torch.nn did not raise: the case is wrong"
    assert origin(expected[1]) == where, (
        f"torch raises this from {origin(expected[1])}, the case says {where}: {expected[1]}"
    )
    assert_same_error(expected, actual, compare_message=compare_message)


# ---- threads -------------------------------------------------------------------------------------


def run_concurrently(worker, count: int) -> None:
    """worker(k) for k in range(count), each on its own Python thread, all at once; re-raises the
    first exception any of them raised."""
    errors = []

    def guarded(k):
        try:
            worker(k)
        except Exception as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
