"""rnnfast modules inside ``torch.compile(model, fullgraph=True)``, with torch's default settings.

Every module is embedded in a small user model (a Linear before and after it; the cells in a
decoder-style Python loop) and compiled with ``fullgraph=True``: any graph break is an error.
The compiled model is compared with the same model run eagerly with rnnfast and with torch.nn
(same weights through ``load_state_dict``): outputs and every gradient (input, initial states, all
parameters), float32, cases.TOL.

Dynamic shapes: a second call with a new batch size and a new sequence length may recompile once
(Dynamo's automatic dynamic shapes turn the changed sizes into symbols); further new sizes must
not recompile. Compilations are counted by a backend wrapper (``CountingBackend``).

No Dynamo configuration is changed here; ``torch._dynamo.reset()`` runs around every test.
Most cases use the "aot_eager" backend (Dynamo + AOTAutograd, no code generation: fast); a few run
"inductor", the default backend.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

import rnnfast  # noqa: F401  (registers the operators: this file may run alone)
from cases import Case, assert_all_close, assert_close, flatten, ids

DTYPE = torch.float32
LAYER_FORWARD = torch.ops.rnnfast.layer_forward.default


# torch's own notices (inductor's imports, torch.nn.LSTM's oneDNN fallback), not rnnfast's.
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN:UserWarning"),
]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


class CountingBackend:
    """A torch.compile backend that records every graph Dynamo hands over (one per compilation,
    recompilations included) and compiles it with the named backend."""

    def __init__(self, name: str):
        self.name = name
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return torch._dynamo.lookup_backend(self.name)(gm, example_inputs)

    @property
    def compilations(self) -> int:
        return len(self.graphs)

    def rnnfast_calls(self, graph_index: int = -1) -> int:
        """Calls of rnnfast::layer_forward in a captured graph."""
        graph = self.graphs[graph_index].graph
        return sum(node.op == "call_function" and node.target is LAYER_FORWARD for node in graph.nodes)


# ---- the user models ------------------------------------------------------------------------


def _flat_hidden(hidden) -> tuple[torch.Tensor, ...]:
    return hidden if isinstance(hidden, tuple) else (hidden,)


class SequenceModel(nn.Module):
    """Linear -> recurrent network -> Linear; returns (out, h_n[, c_n])."""

    def __init__(self, rnn: nn.Module):
        super().__init__()
        directions = 2 if rnn.bidirectional else 1
        out_size = rnn.proj_size if rnn.proj_size > 0 else rnn.hidden_size
        self.pre = nn.Linear(rnn.input_size, rnn.input_size, dtype=DTYPE)
        self.rnn = rnn
        self.post = nn.Linear(directions * out_size, rnn.input_size, dtype=DTYPE)

    def forward(self, x, hx=None):
        y, hidden = self.rnn(torch.tanh(self.pre(x)), hx)
        return (self.post(y), *_flat_hidden(hidden))


DECODER_STEPS = 3


class DecoderModel(nn.Module):
    """A decoder loop over a cell: each step's output is fed back as the next step's input."""

    def __init__(self, cell: nn.Module):
        super().__init__()
        self.pre = nn.Linear(cell.input_size, cell.input_size, dtype=DTYPE)
        self.cell = cell
        self.post = nn.Linear(cell.hidden_size, cell.input_size, dtype=DTYPE)

    def forward(self, x, hx=None):
        state = hx
        outputs = []
        for _ in range(DECODER_STEPS):
            state = self.cell(torch.tanh(self.pre(x)), state)
            x = self.post(state[0] if isinstance(state, tuple) else state)
            outputs.append(x)
        return (torch.stack(outputs), *_flat_hidden(state))


def build_models(case: Case, training: bool):
    """(torch.nn model, rnnfast model): the case's modules in a user model, identical weights."""
    reference, fast = case.build_pair(training)
    wrapper = DecoderModel if case.is_cell else SequenceModel
    reference, fast = wrapper(reference), wrapper(fast)
    reference.load_state_dict(fast.state_dict(), strict=True)
    return reference.train(training), fast.train(training)


def layer_calls(case: Case) -> int:
    """rnnfast::layer_forward calls one forward of the case's model makes."""
    return DECODER_STEPS if case.is_cell else case.layer_calls


def model_inputs(case: Case, batch: int, seq_len: int, with_hx: bool, requires_grad: bool):
    """(x, hx, leaves): fresh inputs of the given sizes, the tensors to differentiate."""
    sized = dataclasses.replace(case, batch=batch, seq_len=seq_len, with_hx=with_hx, input_requires_grad=requires_grad)
    inputs = sized.inputs()
    return inputs.input, inputs.hx, inputs.leaves


SIZES = dict(dtype=DTYPE, input_size=4, hidden_size=6)
CASES = [
    Case("LSTM", **SIZES),
    Case("LSTM", proj_size=2, **SIZES),
    Case("LSTM", num_layers=2, bidirectional=True, **SIZES),
    Case("LSTM", batch_first=True, **SIZES),
    Case("GRU", num_layers=2, bidirectional=True, batch_first=True, **SIZES),
    Case("RNN", num_layers=2, nonlinearity="tanh", **SIZES),
    Case("RNN", bidirectional=True, nonlinearity="relu", **SIZES),
    Case("LSTMCell", **SIZES),
    Case("GRUCell", **SIZES),
    Case("RNNCell", nonlinearity="tanh", **SIZES),
    Case("RNNCell", nonlinearity="relu", **SIZES),
]
CASE_IDS = ids(CASES)
ALL_OPTIONS = Case("LSTM", proj_size=2, num_layers=2, bidirectional=True, batch_first=True, **SIZES)

# (batch, seq_len) of successive calls: the second and third change both sizes. Sizes 0 and 1
# are avoided: Dynamo specializes them. Cells run a fixed number of decoder steps (an unrolled
# Python loop), so only their batch size varies.
SHAPES = [(3, 5), (5, 7), (4, 2)]


def forward_and_grads(model, x, hx, leaves, grad_outputs):
    """Outputs, and the gradients of sum(outputs * grad_outputs) w.r.t. leaves + parameters."""
    outputs = model(x, hx)
    grads = torch.autograd.grad(outputs, [*leaves, *model.parameters()], grad_outputs, materialize_grads=True)
    return outputs, grads


def run_and_check(case: Case, backend: str, training: bool, with_hx: bool):
    """Compile case's model, call it on SHAPES, compare each call with eager rnnfast and
    torch.nn, and return the compilation count after each call."""
    reference, fast = build_models(case, training)
    counter = CountingBackend(backend)
    compiled = torch.compile(fast, fullgraph=True, backend=counter)
    counts = []
    for batch, seq_len in SHAPES:
        x, hx, leaves = model_inputs(case, batch, seq_len, with_hx, requires_grad=training)
        if training:
            eager_out = fast(x, hx)
            grad_outputs = [torch.randn_like(t) for t in eager_out]
            eager_grads = torch.autograd.grad(eager_out, [*leaves, *fast.parameters()], grad_outputs)
            ref_out, ref_grads = forward_and_grads(reference, x, hx, leaves, grad_outputs)
            out, grads = forward_and_grads(compiled, x, hx, leaves, grad_outputs)
            names = [f"grad of {n}" for n in ["input", "h0", "c0"][: len(leaves)]]
            names += [f"grad of {n}" for n, _ in fast.named_parameters()]
            assert len(grads) == len(names)
            for name, g, eg, rg in zip(names, grads, eager_grads, ref_grads):
                assert_close(g, eg, f"{name} (compiled vs eager rnnfast)")
                assert_close(g, rg, f"{name} (compiled vs torch.nn)")
        else:
            with torch.no_grad():
                out = compiled(x, hx)
                eager_out = fast(x, hx)
                ref_out = reference(x, hx)
            assert not any(t.requires_grad for t in out)
        assert_all_close(out, eager_out, "output (compiled vs eager rnnfast)")
        assert_all_close(out, ref_out, "output (compiled vs torch.nn)")
        counts.append(counter.compilations)
        # Dynamo's own count agrees with the backend's (no graph was compiled behind its back).
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == counter.compilations
        assert counter.rnnfast_calls() == layer_calls(case), "the compiled graph lost rnnfast::layer_forward"
    return counts


def assert_dynamic_recompiles(counts: list[int]) -> None:
    """First call: one compilation; the second (new batch and sequence length): at most one
    more; the third (new sizes again): none."""
    assert counts[0] == 1, f"compilations after each call: {counts}"
    assert counts[1] <= 2, f"more than one recompilation for new sizes: {counts}"
    assert counts[2] == counts[1], f"recompiled again after the sizes became dynamic: {counts}"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_inference(case):
    """eval() + no_grad; hx=None for the networks (zeros made inside the graph), given for cells."""
    counts = run_and_check(case, "aot_eager", training=False, with_hx=case.is_cell)
    assert_dynamic_recompiles(counts)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_training(case):
    """train(), forward + backward, initial states given (their gradients are compared too)."""
    counts = run_and_check(case, "aot_eager", training=True, with_hx=True)
    assert_dynamic_recompiles(counts)


@pytest.mark.parametrize("case", [ALL_OPTIONS, CASES[8]], ids=ids([ALL_OPTIONS, CASES[8]]))
def test_training_no_hx(case):
    """train(), forward + backward, hx=None: the zero initial states are made inside the graph."""
    counts = run_and_check(case, "aot_eager", training=True, with_hx=False)
    assert_dynamic_recompiles(counts)


def test_training_inductor():
    """The default backend ("inductor"), every LSTM option at once, forward + backward.
    The first inductor compilation of a process is the slow part of this file (14-40 s here)."""
    counts = run_and_check(ALL_OPTIONS, "inductor", training=True, with_hx=True)
    assert_dynamic_recompiles(counts)


def test_inference_inductor():
    """The default backend on a cell decoder loop, eval() + no_grad."""
    counts = run_and_check(CASES[8], "inductor", training=False, with_hx=True)
    assert_dynamic_recompiles(counts)


def test_training_uses_fused_backward():
    """AOTAutograd's joint graph keeps rnnfast's operators: the forward graph saves the
    activations with layer_forward_train and the backward graph runs layer_backward (not a
    decomposition into ATen ops)."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._dynamo.backends.debugging import boxed_nop

    graphs = {}

    def recorder(kind):
        def compiler(gm, example_inputs):
            graphs[kind] = gm
            return boxed_nop(gm, example_inputs)

        return compiler

    _, fast = build_models(ALL_OPTIONS, training=True)
    backend = aot_autograd(fw_compiler=recorder("forward"), bw_compiler=recorder("backward"))
    compiled = torch.compile(fast, fullgraph=True, backend=backend)
    x, hx, leaves = model_inputs(ALL_OPTIONS, 3, 5, with_hx=True, requires_grad=True)
    out = compiled(x, hx)
    torch.autograd.grad(sum(t.sum() for t in out), [*leaves, *fast.parameters()])

    def targets(kind):
        return [n.target for n in graphs[kind].graph.nodes if n.op == "call_function"]

    calls = layer_calls(ALL_OPTIONS)
    assert targets("forward").count(torch.ops.rnnfast.layer_forward_train.default) == calls
    assert targets("backward").count(torch.ops.rnnfast.layer_backward.default) == calls


# ---- compiled autograd ----------------------------------------------------------------------

COMPILED_AUTOGRAD_CASES = [
    ALL_OPTIONS,
    CASES[4],  # GRU, 2 layers, bidirectional, batch_first
    Case("RNN", nonlinearity="relu", with_hx=False, **SIZES),  # zero initial states: no h0 edge
    Case("LSTM", num_layers=2, bidirectional=True, proj_size=2, form="packed_unsorted", **SIZES),
    CASES[8],  # LSTMCell
]


@pytest.mark.parametrize("case", COMPILED_AUTOGRAD_CASES, ids=ids(COMPILED_AUTOGRAD_CASES))
def test_compiled_autograd(case):
    """An eager forward whose backward compiled autograd captures and compiles
    (``torch._dynamo.compiled_autograd``, as torch.compile's ``compiled_autograd`` setting uses
    it; its private ``_enable`` is what torch's own tests use): rnnfast's graph nodes (the C++
    autograd's and the Python one's) must let it trace them, the captured graph must call the fused
    ``layer_backward`` once per layer-direction, every gradient must match eager rnnfast and
    torch.nn, and a second backward of the same shapes must reuse the compiled graph."""
    reference, fast = case.build_pair(training=True)
    inputs = case.inputs()
    x, leaves = inputs.input, list(inputs.leaves)
    if isinstance(x, PackedSequence):
        # The packed rows as a leaf: torch's own PackPaddedSequenceBackward0 fails under compiled
        # autograd (it reads batch_sizes from a fake tensor), and each backward would need the
        # packing's graph again (retain_graph=True, which trips torch 2.13's compiled autograd on
        # any chain of Python Functions that save their outputs).
        x = PackedSequence(x.data.detach().requires_grad_(), x.batch_sizes, x.sorted_indices, x.unsorted_indices)
        leaves = [x.data, *leaves[1:]]
    grad_outputs = None

    def backward(module):
        nonlocal grad_outputs
        for t in [*leaves, *module.parameters()]:
            t.grad = None
        out = flatten(module(x, inputs.hx))
        if grad_outputs is None:
            grad_outputs = [torch.randn_like(t) for t in out]
        torch.autograd.backward(out, grad_outputs)
        return [t.grad.clone() for t in [*leaves, *module.parameters()]]

    ref_grads = backward(reference)
    eager_grads = backward(fast)
    counter = CountingBackend("eager")
    with torch._dynamo.compiled_autograd._enable(torch.compile(backend=counter, fullgraph=True)):
        grads = backward(fast)
        compilations = counter.compilations
        again = backward(fast)
    assert compilations >= 1, "compiled autograd captured no graph"
    assert counter.compilations == compilations, "the same backward was compiled again"
    backward_calls = sum(node.op == "call_function" and node.target is torch.ops.rnnfast.layer_backward.default
                         for gm in counter.graphs for node in gm.graph.nodes)
    expected_calls = 1 if case.is_cell else case.layer_calls
    assert backward_calls == expected_calls, f"{backward_calls} layer_backward calls in the captured graphs"
    assert_all_close(grads, eager_grads, "gradients (compiled autograd vs eager rnnfast)")
    assert_all_close(grads, ref_grads, "gradients (compiled autograd vs torch.nn)")
    assert_all_close(again, grads, "gradients (second compiled-autograd backward vs the first)")


# ---- PackedSequence -------------------------------------------------------------------------

# torch 2.12's Dynamo cannot read an attribute of a PackedSequence built inside the compiled
# function: `PackedSequence(p.data * 2, p.batch_sizes, p.sorted_indices, p.unsorted_indices).data`
# alone, no rnnfast involved, raises InternalTorchDynamoError (IndexError: tuple index out of
# range) under torch.compile(fullgraph=True) in 2.12.1; 2.11 and 2.13 compile it (seen running
# the suite against the wheel, scripts/wheel_other_torches.sh).
_TORCH_2_12 = torch.__version__.startswith("2.12.")


@pytest.mark.xfail(_TORCH_2_12, strict=True, raises=torch._dynamo.exc.InternalTorchDynamoError,
                   reason="torch 2.12's Dynamo fails on PackedSequence(...).data")
@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "nohx"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_packed_sequence_input(mode, with_hx, enforce_sorted):
    """A PackedSequence made outside the compiled function (torch.nn.utils.rnn.pack_padded_sequence
    itself is on Dynamo's skip list, for torch.nn too) passed to the compiled model; outputs and
    gradients compared with eager rnnfast and torch.nn, then new lengths and batch size."""
    case = Case(mode, num_layers=2, bidirectional=True, proj_size=2 if mode == "LSTM" else 0, with_hx=with_hx,
                form="packed_sorted" if enforce_sorted else "packed_unsorted", **SIZES)
    reference, fast = case.build_pair()

    def model(rnn, packed, hx):
        output, hidden = rnn(packed, hx)
        return (output.data, *_flat_hidden(hidden))

    counter = CountingBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    for batch, seq_len in SHAPES:
        inputs = dataclasses.replace(case, batch=batch, seq_len=seq_len).inputs()
        packed, hx, leaves = inputs.input, inputs.hx, inputs.leaves
        expected = model(reference, packed, hx)
        eager = model(fast, packed, hx)
        grad_outputs = [torch.randn_like(t) for t in expected]
        # retain_graph: the packing in front of the modules is shared by the three backward passes.
        ref_grads = torch.autograd.grad(expected, [*leaves, *reference.parameters()], grad_outputs, retain_graph=True)
        eager_grads = torch.autograd.grad(eager, [*leaves, *fast.parameters()], grad_outputs, retain_graph=True)
        actual = compiled(fast, packed, hx)
        assert_all_close(actual, eager, "packed output (compiled vs eager rnnfast)")
        assert_all_close(actual, expected, "packed output (compiled vs torch.nn)")
        grads = torch.autograd.grad(actual, [*leaves, *fast.parameters()], grad_outputs)
        assert_all_close(grads, eager_grads, "packed gradients (compiled vs eager rnnfast)")
        assert_all_close(grads, ref_grads, "packed gradients (compiled vs torch.nn)")
    assert counter.compilations <= 2, f"{counter.compilations} compilations"
