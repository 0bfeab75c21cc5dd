"""Drop-in replacements for ``torch.nn.LSTM / GRU / RNN`` and ``LSTMCell / GRUCell / RNNCell``.

The recurrent networks subclass ``torch.nn.RNNBase`` and the cells subclass torch's cell classes,
so constructor arguments and their validation, parameter names, shapes, initialisation,
``state_dict`` keys, ``repr`` and pickling are torch's own. Only ``forward`` is replaced: it walks
through torch.nn's argument handling step by step (same checks, same messages, same order) and
then calls rnnfast's operators instead of ``torch._VF``.

Why ``RNNBase`` and not ``torch.nn.LSTM``: TorchDynamo refuses to trace any instance of
``torch.nn.RNN``, ``GRU`` or ``LSTM`` ("Dynamo does not support RNN, GRU, or LSTM"), so a subclass
of those could never run inside ``torch.compile(fullgraph=True)``. ``isinstance(m,
torch.nn.LSTM)`` is therefore False for ``rnnfast.LSTM``; ``isinstance(m, torch.nn.RNNBase)`` is
True, and ``m.mode`` says which network it is. The cells are not refused by Dynamo and subclass
torch's cells, so ``isinstance(m, torch.nn.LSTMCell)`` holds.

ONNX export: the graph an exporter records is the specification of the model, not the kernels
that run it, and ONNX has its own LSTM/GRU/RNN operators. While ``torch.onnx.export`` runs (either
exporter), ``forward`` runs torch.nn's own ``forward`` on the same parameters, so the exported
graph has exactly the nodes torch.nn exports.
"""

import weakref

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from . import _ops, functional
from ._cells import CELLS
from ._extension import build_info, cuda_error, cuda_loaded, require_extension
from ._tf32 import allow_tf32

_SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

try:  # torch.onnx.is_in_onnx_export() without its two imports per call
    from torch.onnx._internal.exporter import _flags as _onnx_flags
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS as _onnx_globals

    def _exporting_to_onnx() -> bool:
        if torch.compiler.is_compiling():
            # Dynamo refuses to trace anything under torch/onnx ("marked as skipped"): a graph
            # break in every forward. torch.onnx.is_in_onnx_export() is one it handles.
            return torch.onnx.is_in_onnx_export()
        return _onnx_globals.in_onnx_export or _onnx_flags._is_onnx_exporting
except ImportError:  # another torch layout
    _exporting_to_onnx = torch.onnx.is_in_onnx_export

_MISSING = object()
# The mode (cell of csrc/cells.h) of torch.nn.RNN's and RNNCell's nonlinearity.
_RNN_MODES = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}


def _storage_range(weight):
    """(data_ptr, nbytes) of a CPU weight's storage; None for None, other devices, and tensors
    without real storage (fake or wrapper tensors)."""
    if weight is None or weight.device.type != "cpu":
        return None
    try:
        storage = weight.untyped_storage()
        return storage.data_ptr(), storage.nbytes()
    except (NotImplementedError, RuntimeError):
        return None


def _release_panels(parameters: dict):
    """Drops the packed weight panels rnnfast's CPU kernels keep for these parameters (the panel
    cache, csrc/cpu/panel_cache.h). Called when the module owning them is garbage-collected."""
    extension = require_extension()
    for weight in parameters.values():
        where = _storage_range(weight)
        if where is not None:
            extension._release_panels(*where)


def _release_panels_when_collected(module):
    """The module's panels go with it: a finalizer over its parameter dict (not the module, which
    it must not keep alive)."""
    finalizer = weakref.finalize(module, _release_panels, module._parameters)
    finalizer.atexit = False


class _ReleasesPanels:
    """Drops the panel-cache entries of a module's weights when the weights go: with the module
    (a finalizer, on copies made by pickle or deepcopy too), and when a weight is replaced
    (assigned, or converted by .to(), .double(), ...). The build on torch's C++ API drops the
    entries of any freed weight at the cache's next lookup as well (a weak reference to its
    storage); the stable-ABI build, which has no such reference, relies on these releases, on
    eviction and on rnnfast.empty_cache() (csrc/cpu/panel_cache.h)."""

    def __setstate__(self, state):
        super().__setstate__(state)
        _release_panels_when_collected(self)

    def register_parameter(self, name, param):
        parameters = self.__dict__.get("_parameters")
        before = _storage_range(parameters.get(name)) if parameters is not None else None
        super().register_parameter(name, param)
        if before is not None and before != _storage_range(param):
            require_extension()._release_panels(*before)

    def _apply(self, fn, *args, **kwargs):
        before = {name: _storage_range(p) for name, p in self._parameters.items()}
        module = super()._apply(fn, *args, **kwargs)
        for name, where in before.items():
            if where is not None and where != _storage_range(self._parameters.get(name)):
                require_extension()._release_panels(*where)
        return module


def _parameters(module, names):
    """The current values of the named parameters (None for an absent bias). Eager calls read
    ``_parameters`` directly (a ``getattr`` per weight is a visible cost of a one-step call);
    torch.compile, parametrizations and anything else that moved a weight take ``getattr``."""
    if not torch.compiler.is_compiling():
        params = module._parameters
        values = [params.get(name, _MISSING) for name in names]
        if not any(v is _MISSING for v in values):  # (`in` would call Tensor.__eq__)
            return values
    return [getattr(module, name) for name in names]


def _check_dtype_and_device(module, input, weight, states, names=("hx", "cx")):
    """What torch.nn leaves to its kernels: dtype and device agreement, and what rnnfast runs on.

    ``states``: the hidden states in torch's order, named ``names``. Returns them, with an LSTM
    cell state of a lower floating precision promoted to the input's dtype (torch's kernels
    promote it too)."""
    dtype = input.dtype
    if dtype not in _SUPPORTED_DTYPES:
        raise NotImplementedError(
            f"rnnfast.{type(module).__name__} supports float32, float64, bfloat16 and float16 inputs, got {dtype}")
    # Device checks: Tensor.is_cpu is a flag, Tensor.device an object per read (a one-step call's cost).
    if not (input.is_cpu and weight.is_cpu) and input.device != weight.device:  # torch.nn's check (RNN.cpp)
        raise RuntimeError(
            f"Input and parameter tensors are not at the same device, found input tensor at "
            f"{input.device} and parameter tensor at {weight.device}"
        )
    if not input.is_cpu and not (input.is_cuda and cuda_loaded()):
        if cuda_loaded():
            where = "on the CPU and CUDA devices"
        elif build_info()["cuda"]:
            where = f"on the CPU only (its CUDA library is not loaded: {cuda_error()})"
        else:
            where = ("on the CPU only (built without its CUDA kernels: build with a CUDA torch and nvcc "
                     "on CUDA_HOME, RNNFAST_FORCE_CUDA=1 to fail loudly otherwise)")
        raise NotImplementedError(
            f"rnnfast.{type(module).__name__}: this build runs {where} "
            f"(input on {input.device}, weights on {weight.device}); see rnnfast.backend()"
        )
    out = list(states)
    for k, h in enumerate(out):
        if not (h.is_cpu and input.is_cpu) and h.device != input.device:
            raise RuntimeError(
                f"Input and hidden tensors are not at the same device, found input tensor at "
                f"{input.device} and hidden tensor at {h.device}"
            )
        if h.dtype != dtype:
            if names[k] == "cx" and torch.promote_types(h.dtype, dtype) == dtype:
                out[k] = h.to(dtype)
            else:
                raise RuntimeError(f"{names[k]} dtype ({h.dtype}) does not match input dtype ({dtype})")
    return out


def _autocast_dtype(input):
    """The lower-precision dtype of an enabled ``torch.autocast`` region of the input's device (CPU
    or CUDA) for a float32 input, else None (float64 and already-lower inputs are left alone, as
    autocast does)."""
    if input.dtype != torch.float32 or not torch._C._is_any_autocast_enabled():  # (flags: the common call)
        return None
    device = input.device.type
    if device not in ("cpu", "cuda") or not torch.is_autocast_enabled(device):
        return None
    return torch.get_autocast_dtype(device)


# ---- LSTM, GRU, RNN -----------------------------------------------------------------------------


# torch.nn's own hidden-state checks (RNNBase's; LSTM's pair check).
_TORCH_HIDDEN_CHECKS = {
    "check_forward_args": (nn.RNNBase.check_forward_args, nn.LSTM.check_forward_args),
    "get_expected_hidden_size": (nn.RNNBase.get_expected_hidden_size,),
    "get_expected_cell_size": (nn.LSTM.get_expected_cell_size, None),  # (LSTM only)
    "check_hidden_size": (nn.RNNBase.check_hidden_size,),
}
_HIDDEN_CHECKS_OF_CLASS: dict = {}


def _torch_hidden_checks(cls) -> bool:
    """Whether cls checks hidden states with torch.nn's own methods, which module-made zero states
    always pass (a subclass that overrides one gets it called, as torch.nn calls it)."""
    known = _HIDDEN_CHECKS_OF_CLASS.get(cls)
    if known is None:
        known = _HIDDEN_CHECKS_OF_CLASS[cls] = all(
            getattr(cls, name, None) in own for name, own in _TORCH_HIDDEN_CHECKS.items())
    return known


class _RecurrentBase(_ReleasesPanels, nn.RNNBase):
    """The ``forward`` shared by rnnfast.LSTM, GRU and RNN."""

    # torch.nn's own forward of the class (run while an ONNX exporter traces the module).
    _torch_forward = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _release_panels_when_collected(self)

    def _current_weights(self):
        """The weights in torch.nn's flat order, re-read if they were replaced (e.g. by
        ``torch.func.functional_call`` or a parametrization). In eager mode plain parameters are
        read straight from ``_parameters``: a ``getattr`` per weight is a visible cost of a
        one-step call."""
        if torch.compiler.is_compiling():
            return [getattr(self, name) for name in self._flat_weights_names]
        params = self._parameters
        for ref, name in zip(self._flat_weight_refs, self._flat_weights_names):
            weight = params.get(name)
            if weight is None:
                self._update_flat_weights()
                break
            if ref is not None and ref() is not weight:
                self._init_flat_weights()
                break
        return self._flat_weights

    def _out_size(self) -> int:
        """Width of the output and of h: proj_size with a projection, else hidden_size."""
        return self.proj_size if self.proj_size > 0 else self.hidden_size

    def _zeros_hidden(self, input, batch):
        num_directions = 2 if self.bidirectional else 1
        out_size = self._out_size()
        shape = (self.num_layers * num_directions, batch)
        h = torch.zeros(*shape, out_size, dtype=input.dtype, device=input.device)
        if self.mode != "LSTM":
            return h
        return h, torch.zeros(*shape, self.hidden_size, dtype=input.dtype, device=input.device)

    def _unbatched_hidden(self, hx, is_batched):
        """torch.nn's rank checks of a given hx for unpacked input (unsqueezed if unbatched)."""
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
        RuntimeError (IndexError for a hidden state of the wrong rank); rnnfast raises the same
        types, with torch.nn's readable messages."""
        for name, h in zip(("hx", "cx"), hx):
            if h.dim() != 3:
                raise IndexError(f"For PackedSequence input, {name} should be 3-D but got {h.dim()}-D tensor")
        try:
            self.check_forward_args(input, hx, batch_sizes)
        except ValueError as exc:
            raise RuntimeError(str(exc)) from None

    def _check_packed_args_traced(self, input, hx, batch_sizes):
        """torch.nn's checks of PackedSequence input, traceable (torch.compile, torch.export).

        torch.nn reads the batch as ``int(batch_sizes[0])``: a data-dependent value, a fresh
        unbacked symbol at each read, which Dynamo cannot compare with hx's batch ("Could not
        guard on data-dependent expression"). Here the batch is hx's, and ``batch_sizes[0]``
        equal to it is a run-time assertion of the compiled graph."""
        is_lstm = self.mode == "LSTM"
        states = hx if is_lstm else (hx,)
        for name, h in zip(("hx", "cx"), states):
            if h.dim() != 3:
                raise IndexError(f"For PackedSequence input, {name} should be 3-D but got {h.dim()}-D tensor")
        try:
            self.check_input(input, batch_sizes)
        except ValueError as exc:
            if not is_lstm:
                raise
            raise RuntimeError(str(exc)) from None
        batch = states[0].size(1)
        # (Dynamo wants a message closure without free variables.)
        torch._check(int(batch_sizes[0]) == batch, lambda: "PackedSequence batch size does not match hx's")
        shape = (self.num_layers * (2 if self.bidirectional else 1), batch)
        out_size = self._out_size()
        if not is_lstm:
            self.check_hidden_size(hx, (*shape, out_size))
            return
        self.check_hidden_size(hx[0], (*shape, out_size), "Expected hidden[0] size {}, got {}")
        self.check_hidden_size(hx[1], (*shape, self.hidden_size), "Expected hidden[1] size {}, got {}")

    def _autocast_lowers(self, packed: bool, device: str) -> bool:
        """Whether torch.nn runs this call in the lower precision under torch.autocast. CUDA:
        always (autocast casts every cuDNN RNN call). CPU (measured, torch 2.13, bfloat16 and
        float16): autocast lowers ``lstm`` (the padded overload, and the packed one with a
        projection) and ``rnn_tanh`` / ``rnn_relu``, whose results are then lower precision; GRU,
        and packed LSTM without projection, run their pointwise math on float32 states and return
        float32, so rnnfast runs them in float32."""
        if device == "cuda":
            return True
        if self.mode == "GRU":
            return False
        if self.mode == "LSTM":
            return self.proj_size > 0 or not packed
        return True

    def _input_dim_error(self, input):
        tail = "D tensor instead" if self.mode.startswith("RNN") else "D instead"
        name = "RNN" if self.mode.startswith("RNN") else self.mode
        return ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}{tail}")

    def forward(self, input, hx=None):
        if _exporting_to_onnx():
            return type(self)._torch_forward(self, input, hx)
        require_extension()
        weights = self._current_weights()
        is_lstm = self.mode == "LSTM"
        orig_input = input
        zeros = hx is None  # the initial states are made here
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            is_batched = True
            if hx is None:
                if sorted_indices is not None:
                    batch = sorted_indices.numel()
                else:
                    batch = int(batch_sizes[0])
                    if torch.compiler.is_compiling():
                        # A data-dependent (unbacked) size under torch.compile / export: say it is
                        # positive (a PackedSequence holds a sequence), so that `B == 0` is decidable.
                        torch._check(batch > 0)
                    elif batch < 1:
                        raise RuntimeError("rnnfast: a PackedSequence's batch_sizes must be positive, "
                                           f"got {batch_sizes.tolist()}")
                hx = self._zeros_hidden(input, batch)
            else:
                hx = self.permute_hidden(hx, sorted_indices)
        else:
            batch_sizes = sorted_indices = unsorted_indices = None
            if input.dim() not in (2, 3):
                raise self._input_dim_error(input)
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            if zeros:
                hx = self._zeros_hidden(input, input.size(0) if self.batch_first else input.size(1))
            else:
                hx = self._unbatched_hidden(hx, is_batched)
        if batch_sizes is not None and torch.compiler.is_compiling():
            self._check_packed_args_traced(input, hx, batch_sizes)
        elif is_lstm and batch_sizes is not None:
            self._check_packed_lstm_args(input, hx, batch_sizes)
        elif batch_sizes is None and zeros and _torch_hidden_checks(type(self)):
            # hx made above has the sizes check_forward_args expects of it: only the input's
            # checks can fail (torch.nn's, its messages), a micro-second less per one-step call.
            self.check_input(input, batch_sizes)
        else:
            self.check_forward_args(input, hx, batch_sizes)
        states = _check_dtype_and_device(self, input, weights[0], hx if is_lstm else (hx,))
        h0, c0 = (states[0], states[1]) if is_lstm else (states[0], None)

        if batch_sizes is None:
            x = input.transpose(0, 1) if self.batch_first else input
            T, B = x.size(0), x.size(1)
            if T == 0:
                raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
            rows = x.reshape(T * B, x.size(2))
        else:
            rows, B = input, h0.size(1)
            if B == 0:  # pack_padded_sequence never makes one; the operators check the rest
                raise RuntimeError("rnnfast: a PackedSequence's batch_sizes must be positive, got "
                                   f"{batch_sizes.tolist()}")

        low = _autocast_dtype(rows)
        c_dtype = None  # LSTM with projection under autocast: torch keeps c in float32
        if low is not None and self._autocast_lowers(batch_sizes is not None, rows.device.type):
            if is_lstm and self.proj_size > 0 and rows.is_cpu:
                c_dtype = torch.promote_types(low, c0.dtype)
            rows, h0 = rows.to(low), h0.to(low)
            c0 = c0.to(low) if c0 is not None else None
            weights = [w.to(low) for w in weights]

        if B == 0:
            y, h_n, c_n = self._empty_batch_result(rows, h0, c0, weights)
        else:
            y, h_n, c_n = functional.rnn(
                self.mode, rows, batch_sizes, h0, c0, weights, self.bias, self.num_layers,
                self.dropout, self.training, self.bidirectional, self.proj_size,
            )
        if c_dtype is not None:
            c_n = c_n.to(c_dtype)
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

    def _empty_batch_result(self, rows, h0, c0, weights):
        """Batch size 0: empty outputs, still connected to the graph like torch's."""
        D = 2 if self.bidirectional else 1
        out_size = self._out_size()
        anchor = rows.sum() * 0
        for w in weights:
            anchor = anchor + w.sum() * 0
        y = rows.new_zeros(rows.size(0), D * out_size) + anchor
        return y, h0 + anchor, (c0 + anchor if c0 is not None else None)


def _docstring(torch_class, note=""):
    return (
        f"Drop-in replacement for :class:`torch.nn.{torch_class.__name__}` running rnnfast's fused "
        f"kernels.\n\nSame arguments, parameters, state_dict and outputs as "
        f"torch.nn.{torch_class.__name__}.{note}\n\n" + (torch_class.__doc__ or "")
    )


_NOT_AN_INSTANCE = (
    " A torch.nn.RNNBase, not a torch.nn.{0} (Dynamo refuses every torch.nn.{0} instance); "
    "``isinstance(m, torch.nn.{0})`` is False."
)


class LSTM(_RecurrentBase):
    __doc__ = _docstring(nn.LSTM, _NOT_AN_INSTANCE.format("LSTM"))
    _torch_forward = nn.LSTM.forward
    # torch.nn.LSTM's own checks of the (h, c) pair (they use only methods of RNNBase).
    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_forward_args = nn.LSTM.check_forward_args
    permute_hidden = nn.LSTM.permute_hidden

    def __init__(self, *args, **kwargs):
        require_extension()
        super().__init__("LSTM", *args, **kwargs)


class GRU(_RecurrentBase):
    __doc__ = _docstring(nn.GRU, _NOT_AN_INSTANCE.format("GRU"))
    _torch_forward = nn.GRU.forward

    def __init__(self, *args, **kwargs):
        require_extension()
        if "proj_size" in kwargs:  # torch.nn.GRU's check, same message
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)


class RNN(_RecurrentBase):
    __doc__ = _docstring(nn.RNN, _NOT_AN_INSTANCE.format("RNN"))
    _torch_forward = nn.RNN.forward

    def __init__(self, *args, **kwargs):
        require_extension()
        # torch.nn.RNN's handling of `nonlinearity` (4th positional argument or keyword).
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        mode = _RNN_MODES.get(self.nonlinearity)
        if mode is None:
            raise ValueError(f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__(mode, *args, **kwargs)


# ---- cells --------------------------------------------------------------------------------------


def _check_cell_sizes(input, states, input_size, hidden_size):
    """ATen's checks of a cell call (torch's messages): input features, then each state's batch
    and width."""
    if input.size(1) != input_size:
        raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} expected {input_size}")
    for k, h in enumerate(states):
        if input.size(0) != h.size(0):
            raise RuntimeError(f"Input batch size {input.size(0)} doesn't match hidden{k} batch size {h.size(0)}")
        if h.size(1) != hidden_size:
            raise RuntimeError(f"hidden{k} has inconsistent hidden_size: got {h.size(1)}, expected {hidden_size}")


def _empty_cell_result(input, states, weights):
    """Batch size 0 or hidden_size 0: h' (and c') of shape [B, hidden_size], zero where not empty,
    connected to the graph like torch's result (zero gradients for every input)."""
    anchor = input.sum() * 0
    for t in (*states, *weights):
        if t is not None:
            anchor = anchor + t.sum() * 0
    h = states[0] * 0 + anchor
    return h, (states[1] * 0 + anchor if len(states) == 2 else None)


class _CellForward(_ReleasesPanels):
    """The ``forward`` shared by rnnfast.LSTMCell, GRUCell and RNNCell (mixed into torch's cells)."""

    _torch_forward = None
    _PARAMETER_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")

    def __init__(self, *args, **kwargs):
        require_extension()
        super().__init__(*args, **kwargs)
        _release_panels_when_collected(self)

    def _mode(self) -> str:
        return self._cell_mode

    def _common_step(self, input, hx):
        """The operator's arguments for the common call of a decoding loop, or None: a 2-D input,
        hx given in full, every shape, dtype and device as the module expects, eager mode, no
        autocast. Exactly the calls that _step_arguments' checks pass without converting anything
        (tests/test_errors.py::test_common_step_agrees_with_the_checks compares the two over the
        calls that come here); it only decides faster (one call per token in a decoder)."""
        if hx is None or input.dim() != 2 or torch.compiler.is_compiling() or torch._C._is_any_autocast_enabled():
            return None
        params = self._parameters  # (read directly: see _parameters; a moved weight takes the full checks)
        try:
            w_ih, w_hh, b_ih, b_hh = params["weight_ih"], params["weight_hh"], params["bias_ih"], params["bias_hh"]
        except KeyError:
            return None
        dtype = input.dtype
        if dtype not in _SUPPORTED_DTYPES or w_ih is None or w_ih.dtype != dtype:
            return None
        if self._cell_mode == "LSTM":
            if type(hx) is not tuple or len(hx) != 2:
                return None
            h, c = hx
            if not isinstance(c, torch.Tensor) or c.dtype != dtype:
                return None
        else:
            h, c = hx, None
        if not isinstance(h, torch.Tensor) or h.dtype != dtype:  # (torch.nn's checks say what else hx is)
            return None
        # Every tensor on the input's device: Tensor.is_cpu is a flag, input.device an object per read.
        if input.is_cpu:
            if not (w_ih.is_cpu and h.is_cpu and (c is None or c.is_cpu)):
                return None
        elif input.is_cuda and cuda_loaded():
            device = input.device
            if w_ih.device != device or h.device != device or (c is not None and c.device != device):
                return None
        else:
            return None
        batch, features = input.shape
        shape = (batch, self.hidden_size)
        if h.shape != shape or (c is not None and c.shape != shape):
            return None
        if features != self.input_size or batch == 0 or self.hidden_size == 0:
            return None
        return (self._mode(), input, h, c, w_ih, w_hh, b_ih, b_hh)

    def _step_arguments(self, input, hx):
        """torch.nn's checks and input forms of a cell call, in its order. Returns the operator's
        arguments (mode, x [B, I], h [B, H], c [B, H] or None, w_ih, w_hh, b_ih, b_hh) and whether
        the input was batched."""
        is_lstm = isinstance(self, nn.LSTMCell)
        if input.dim() not in (1, 2):
            raise ValueError(f"{type(self).__name__}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            if is_lstm:
                for idx, value in enumerate(hx):
                    if value.dim() not in (1, 2):
                        raise ValueError(
                            f"{type(self).__name__}: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead")
            elif hx.dim() not in (1, 2):
                raise ValueError(f"{type(self).__name__}: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
            states = (zeros, zeros) if is_lstm else (zeros,)
        elif is_lstm:
            if not is_batched:  # torch.nn.LSTMCell indexes hx[0], hx[1]: IndexError, extra states ignored
                states = (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
            else:  # torch passes hx as is to _VF.lstm_cell, whose parser wants a sequence of tensors
                if not isinstance(hx, (tuple, list)):
                    raise TypeError(
                        f"lstm_cell(): argument 'hx' (position 2) must be tuple of Tensors, not {type(hx).__name__}"
                    )
                if len(hx) != 2:
                    raise RuntimeError("lstm_cell expects two hidden states")
                states = (hx[0], hx[1])
        else:
            states = (hx if is_batched else hx.unsqueeze(0),)
        mode = self._mode()  # RNNCell: an unknown nonlinearity fails after the rank checks, as in torch
        _check_cell_sizes(input, states, self.input_size, self.hidden_size)
        w_ih, w_hh, b_ih, b_hh = _parameters(self, self._PARAMETER_NAMES)
        if input.dtype != w_ih.dtype:
            raise RuntimeError(f"input dtype ({input.dtype}) does not match weight dtype ({w_ih.dtype})")
        if is_lstm and input.dtype in _SUPPORTED_DTYPES and states[0].dtype == input.dtype:
            wide = torch.promote_types(input.dtype, states[1].dtype)
            if wide != input.dtype and wide in _SUPPORTED_DTYPES:
                # torch's lstm_cell computes c' = f * cx + i * g with type promotion: a float64 cx
                # with a float32 module gives float64 h' and c'. Run the step in that dtype.
                input, states = input.to(wide), (states[0].to(wide), states[1])
                w_ih, w_hh, b_ih, b_hh = (None if w is None else w.to(wide) for w in (w_ih, w_hh, b_ih, b_hh))
        states = _check_dtype_and_device(self, input, w_ih, states)
        low = _autocast_dtype(input)
        if low is not None and (input.is_cuda or mode.startswith("RNN")):
            # torch.autocast("cpu") lowers rnn_tanh_cell / rnn_relu_cell (measured, torch 2.13);
            # LSTMCell and GRUCell return float32 there, and run in float32 here. CUDA autocast
            # lowers every cell.
            input, states = input.to(low), tuple(h.to(low) for h in states)
            w_ih, w_hh, b_ih, b_hh = (None if w is None else w.to(low) for w in (w_ih, w_hh, b_ih, b_hh))
        return (mode, input, states[0], states[1] if is_lstm else None, w_ih, w_hh, b_ih, b_hh), is_batched

    def forward(self, input, hx=None):
        if _exporting_to_onnx():
            return type(self)._torch_forward(self, input, hx)
        require_extension()
        is_lstm = self._cell_mode == "LSTM"
        args = self._common_step(input, hx)
        common = args is not None  # (its batch and hidden size are not 0)
        is_batched = True
        if not common:
            args, is_batched = self._step_arguments(input, hx)
        mode, x, h, c, w_ih, w_hh, b_ih, b_hh = args
        if not common and (x.size(0) == 0 or self.hidden_size == 0):  # torch's cells accept both
            h, c = _empty_cell_result(x, (h, c) if is_lstm else (h,), (w_ih, w_hh, b_ih, b_hh))
        else:  # one fused operator call (functional.cell_step, inlined: a decoder calls it per token)
            _, h, c = _ops.module_layer_forward(CELLS[mode].code, x, None, h, c, w_ih, w_hh, b_ih, b_hh, None, False,
                                                allow_tf32(x))
        if not is_batched:
            h = h.squeeze(0)
            c = c.squeeze(0) if c is not None else None
        return (h, c) if is_lstm else h


class LSTMCell(_CellForward, nn.LSTMCell):
    __doc__ = _docstring(nn.LSTMCell)
    _torch_forward = nn.LSTMCell.forward
    _cell_mode = "LSTM"


class GRUCell(_CellForward, nn.GRUCell):
    __doc__ = _docstring(nn.GRUCell)
    _torch_forward = nn.GRUCell.forward
    _cell_mode = "GRU"


class RNNCell(_CellForward, nn.RNNCell):
    __doc__ = _docstring(nn.RNNCell)
    _torch_forward = nn.RNNCell.forward
    _cell_mode = "RNN"  # RNN_TANH or RNN_RELU by the nonlinearity: see _mode

    def _mode(self) -> str:
        mode = _RNN_MODES.get(self.nonlinearity)
        if mode is None:  # torch.nn.RNNCell's message (its check runs at call time)
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        return mode
