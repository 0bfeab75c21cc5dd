"""Shared fixtures and helpers of the correctness suite.

The suite compares ``rnnfast`` modules against ``torch.nn`` (the contract) and ``rnnfast.reference``
(the readable equations).  Helpers here build a torch module and an rnnfast module with identical
weights, make random inputs in every form ``torch.nn`` accepts, and compare outputs and *all*
gradients (input, h0, c0, every parameter) with a per-dtype tolerance.
"""

from __future__ import annotations

import dataclasses
import linecache
import os
import zlib

import pytest
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
# Every recurrence as (mode, nonlinearity): RNN with each of its nonlinearities.
KINDS = (("LSTM", "tanh"), ("GRU", "tanh"), ("RNN", "tanh"), ("RNN", "relu"))


def kind_id(kind) -> str:
    """"LSTM", "GRU", "RNN_tanh", "RNN_relu" for a (mode, nonlinearity) pair of KINDS."""
    mode, nonlinearity = kind
    return f"{mode}_{nonlinearity}" if mode == "RNN" else mode


FORMS = ("padded", "unbatched", "packed_sorted", "packed_unsorted")

# Tiny recurrent GEMMs run far slower with OpenMP threads when the cores are shared (pytest-xdist
# workers, a benchmark running alongside): a 5x9x27 matmul measured 16 ms instead of 10 us.  Tests
# run single-threaded unless OMP_NUM_THREADS says otherwise; tests of threaded code paths ask for
# the `two_threads` fixture.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)


@pytest.fixture
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def seed(request):
    """Seed torch's global RNG per test from the test's name, so every test (and every
    parametrization) gets its own reproducible random inputs, independent of test order."""
    value = zlib.crc32(request.node.name.encode())
    torch.manual_seed(value)
    return value


def fast_module_class(mode: str) -> type:
    """The rnnfast module class under test, e.g. ``rnnfast.LSTM`` for mode "LSTM"."""
    import rnnfast

    return getattr(rnnfast, mode)


def torch_module_class(mode: str) -> type:
    return getattr(torch.nn, mode)


def make_pair(mode: str, *args, training: bool = True, **kwargs) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A torch.nn module and an rnnfast module built with the same arguments, the rnnfast one
    loaded from the torch one's state_dict (strict), both in the same train/eval mode."""
    reference = torch_module_class(mode)(*args, **kwargs)
    fast = fast_module_class(mode)(*args, **kwargs)
    fast.load_state_dict(reference.state_dict(), strict=True)
    reference.train(training)
    fast.train(training)
    return reference, fast


@dataclasses.dataclass(frozen=True)
class Config:
    """One point of the option matrix: module options + input form + sizes."""

    mode: str = "LSTM"  # LSTM, GRU or RNN
    nonlinearity: str = "tanh"  # RNN only
    dtype: torch.dtype = torch.float64
    num_layers: int = 1
    bidirectional: bool = False
    batch_first: bool = False
    bias: bool = True
    proj_size: int = 0
    form: str = "padded"
    with_hx: bool = True
    input_requires_grad: bool = True
    input_size: int = 3
    hidden_size: int = 5
    batch: int = 3
    seq_len: int = 4
    dropout: float = 0.0

    @property
    def id(self) -> str:
        parts = [
            self.mode + (f"_{self.nonlinearity}" if self.mode == "RNN" else ""),
            str(self.dtype).removeprefix("torch."),
            f"L{self.num_layers}",
            "bi" if self.bidirectional else "uni",
            "bf" if self.batch_first else "tm",
            "bias" if self.bias else "nobias",
            f"proj{self.proj_size}",
            self.form,
            "hx" if self.with_hx else "nohx",
            "xgrad" if self.input_requires_grad else "noxgrad",
            f"I{self.input_size}H{self.hidden_size}B{self.batch}T{self.seq_len}",
        ]
        if self.dropout:
            parts.append(f"drop{self.dropout}")
        return "-".join(parts)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def out_size(self) -> int:
        return self.proj_size if self.proj_size > 0 else self.hidden_size

    def module_args(self) -> tuple[tuple, dict]:
        kwargs = dict(
            num_layers=self.num_layers,
            bias=self.bias,
            batch_first=self.batch_first,
            dropout=self.dropout,
            bidirectional=self.bidirectional,
            dtype=self.dtype,
        )
        if self.mode == "LSTM":
            kwargs["proj_size"] = self.proj_size
        if self.mode == "RNN":
            kwargs["nonlinearity"] = self.nonlinearity
        return (self.input_size, self.hidden_size), kwargs


def build_pair(cfg: Config, training: bool = True) -> tuple[torch.nn.Module, torch.nn.Module]:
    args, kwargs = cfg.module_args()
    return make_pair(cfg.mode, *args, training=training, **kwargs)


def random_lengths(batch: int, seq_len: int, sort: bool) -> torch.Tensor:
    """[B] int64 lengths in 1..seq_len, the longest = seq_len, one of length 1 when B >= 2;
    sorted descending or in random order."""
    lengths = torch.randint(1, seq_len + 1, (batch,))
    lengths[0] = seq_len
    if batch >= 2:
        lengths[1] = 1
    if sort:
        return lengths.sort(descending=True).values
    return lengths[torch.randperm(batch)]


@dataclasses.dataclass
class Inputs:
    """What to call a module with, and the tensors to differentiate with respect to."""

    input: torch.Tensor | PackedSequence
    hx: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None
    leaves: list[torch.Tensor]  # inputs of the graph that require grad (x, h0, c0 as applicable)
    leaf_names: list[str]


def make_inputs(cfg: Config, layout=lambda t: t) -> Inputs:
    """Random inputs in cfg.form.  `layout` maps each freshly made tensor to the tensor actually
    passed (e.g. a non-contiguous copy); it must preserve values and shape."""
    dt = cfg.dtype
    if cfg.form == "unbatched":
        x = torch.randn(cfg.seq_len, cfg.input_size, dtype=dt)
        state_batch: tuple[int, ...] = ()
    elif cfg.batch_first:
        x = torch.randn(cfg.batch, cfg.seq_len, cfg.input_size, dtype=dt)
        state_batch = (cfg.batch,)
    else:
        x = torch.randn(cfg.seq_len, cfg.batch, cfg.input_size, dtype=dt)
        state_batch = (cfg.batch,)
    x = layout(x).requires_grad_(cfg.input_requires_grad)
    leaves, names = ([x], ["input"]) if cfg.input_requires_grad else ([], [])

    module_input: torch.Tensor | PackedSequence = x
    if cfg.form.startswith("packed"):
        lengths = random_lengths(cfg.batch, cfg.seq_len, sort=cfg.form == "packed_sorted")
        module_input = pack_padded_sequence(
            x, lengths, batch_first=cfg.batch_first, enforce_sorted=cfg.form == "packed_sorted"
        )

    hx = None
    if cfg.with_hx:
        num_states = cfg.num_layers * cfg.num_directions
        h0 = layout(torch.randn(num_states, *state_batch, cfg.out_size, dtype=dt)).requires_grad_()
        leaves.append(h0)
        names.append("h0")
        hx = h0
        if cfg.mode == "LSTM":
            c0 = layout(torch.randn(num_states, *state_batch, cfg.hidden_size, dtype=dt)).requires_grad_()
            leaves.append(c0)
            names.append("c0")
            hx = (h0, c0)
    return Inputs(module_input, hx, leaves, names)


def flat_outputs(result) -> list[torch.Tensor]:
    """(output, h_n) or (output, (h_n, c_n)) -> [output (data of a PackedSequence), h_n, (c_n)]."""
    output, hidden = result
    data = output.data if isinstance(output, PackedSequence) else output
    return [data, *(hidden if isinstance(hidden, tuple) else (hidden,))]


def assert_same_structure(expected, actual) -> None:
    """Same output type, PackedSequence metadata, tuple nesting, shapes and dtypes."""
    exp_out, exp_hidden = expected
    act_out, act_hidden = actual
    assert type(act_out) is type(exp_out), f"output type {type(act_out)} != {type(exp_out)}"
    if isinstance(exp_out, PackedSequence):
        for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            e, a = getattr(exp_out, field), getattr(act_out, field)
            assert (e is None) == (a is None), f"PackedSequence.{field}: {a} != {e}"
            if e is not None:
                assert torch.equal(a, e), f"PackedSequence.{field}: {a} != {e}"
    assert isinstance(act_hidden, tuple) == isinstance(exp_hidden, tuple), "hidden state nesting differs"
    for name, e, a in zip(("output", "h_n", "c_n"), flat_outputs(expected), flat_outputs(actual)):
        assert a.shape == e.shape, f"{name} shape {tuple(a.shape)} != {tuple(e.shape)}"
        assert a.dtype == e.dtype, f"{name} dtype {a.dtype} != {e.dtype}"


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


def assert_outputs_close(expected, actual) -> None:
    assert_same_structure(expected, actual)
    for name, e, a in zip(("output", "h_n", "c_n"), flat_outputs(expected), flat_outputs(actual)):
        assert_close(a, e, name)


def gradients(module: torch.nn.Module, outputs: list[torch.Tensor], grad_outputs, inputs: Inputs, params: bool = True) -> dict:
    """d(sum(outputs * grad_outputs)) w.r.t. every leaf of `inputs` and (with `params`) every
    parameter, by name."""
    params = dict(module.named_parameters()) if params else {}
    grads = torch.autograd.grad(
        outputs,
        [*inputs.leaves, *params.values()],
        grad_outputs,
        retain_graph=True,  # a packing step in front of the module is shared by both runs
        allow_unused=True,
        materialize_grads=True,
    )
    return dict(zip([*inputs.leaf_names, *params], grads))


def check_parity(reference: torch.nn.Module, fast: torch.nn.Module, inputs: Inputs, backward: bool = True, fast_forward=None):
    """Run both modules on the same inputs; compare outputs and, with `backward`, the gradients
    of a random projection of all outputs w.r.t. input, h0, c0 and every parameter.
    `fast_forward(input, hx)` replaces `fast(input, hx)` when given (fast's parameters are still
    the ones differentiated)."""
    expected = reference(inputs.input, inputs.hx)
    actual = (fast_forward or fast)(inputs.input, inputs.hx)
    assert_outputs_close(expected, actual)
    if not backward:
        return expected, actual
    exp_flat, act_flat = flat_outputs(expected), flat_outputs(actual)
    grad_outputs = [torch.randn_like(t) for t in exp_flat]
    exp_grads = gradients(reference, exp_flat, grad_outputs, inputs)
    act_grads = gradients(fast, act_flat, grad_outputs, inputs)
    assert act_grads.keys() == exp_grads.keys()
    for name in exp_grads:
        assert_close(act_grads[name], exp_grads[name], f"gradient of {name}")
    return expected, actual


def run_concurrently(worker, count: int) -> None:
    """worker(k) for k in range(count), each on its own Python thread, all at once; re-raises the
    first exception any of them raised."""
    import threading

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


def pytest_sessionfinish(session, exitstatus):
    """With RNNFAST_GPU_EMULATION=1 (scripts/cuda_build_check.sh), the run must really have gone
    through the emulated GPU algorithm: fail a run in which no call did."""
    if os.environ.get("RNNFAST_GPU_EMULATION") != "1" or exitstatus != 0:
        return
    from rnnfast import _extension
    C = _extension.require_extension()
    calls = C._gpu_emulated_calls()
    print(f"\nRNNFAST_GPU_EMULATION=1: {calls} operator calls ran the emulated GPU algorithm")
    if calls == 0 or not C._gpu_emulation():
        print("ERROR: the GPU emulation was not in effect for this run")
        session.exitstatus = 1
