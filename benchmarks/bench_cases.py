"""A benchmark case: a torch.nn module and an rnnfast module with identical weights, one input,
and a zero-argument ``run()`` per implementation (one training or inference step).

What a module is (kind, options, sizes) is the test suite's case model, tests/cases.py's Case:
the benchmarks time the same modules the tests check, built the same way.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import torch

from flop_model import gemm_flops
from provenance import REPO_ROOT
from timing import gpu_series

sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
import cases  # noqa: E402  (tests/cases.py)


@dataclass
class TimedCase:
    """One benchmark configuration: the modules' case (tests/cases.py), training or inference, and
    per implementation a module and a zero-argument run()."""
    spec: cases.Case
    mode: str  # "train" | "infer"
    packed: bool = False
    rows: int = 0  # rows actually processed (sum of lengths for packed input)
    leaf: torch.Tensor | None = None  # the input tensor (its .grad is cleared like the parameters')
    modules: dict = field(default_factory=dict)
    runs: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)

    @property
    def cell(self) -> str:
        return self.spec.kind

    @property
    def flops(self) -> float:
        s = self.spec
        return gemm_flops(s.kind, s.seq_len, s.batch, s.input_size, s.hidden_size, self.mode,
                          proj_size=s.proj_size, num_layers=s.num_layers,
                          bidirectional=s.bidirectional, steps_rows=self.rows)


def spec_of(cell: str, T: int, B: int, I: int, H: int, dtype: torch.dtype = torch.float32,
            nonlinearity: str | None = None, **options) -> cases.Case:
    """The case model of a benchmark configuration (options: proj_size, num_layers, bidirectional)."""
    return cases.Case(kind=cell, nonlinearity=nonlinearity or "tanh", dtype=dtype, input_size=I, hidden_size=H,
                      batch=B, seq_len=T, **options)


def _flat_out(result) -> list:
    """Tensors of an RNN result (output, h_n[, c_n]); PackedSequence output contributes .data."""
    out, state = result
    if isinstance(out, torch.nn.utils.rnn.PackedSequence):
        out = out.data
    states = list(state) if isinstance(state, tuple) else [state]
    return [out] + states


def _cell_loop(mod, x):
    """A decoder-style Python loop of a cell over x [T, B, I]: the hidden state of step t feeds
    step t+1; returns the list of every step's outputs (h, plus c for an LSTMCell)."""
    state = None
    outs = []
    for t in range(x.size(0)):
        state = mod(x[t], state)
        outs.extend(state if isinstance(state, tuple) else (state,))
    return outs


def build_case(cell: str, mode: str, T: int, B: int, I: int, H: int, rnnfast, device: torch.device,
               proj_size: int = 0, packed: bool = False, seed: int = 0,
               dtype: torch.dtype = torch.float32, nonlinearity: str | None = None,
               num_layers: int = 1, bidirectional: bool = False) -> TimedCase:
    """Build torch.nn.<cell> and rnnfast.<cell> with identical weights (load_state_dict, strict) and one input.

    train: forward, then backward of the output and final states with fixed random upstream
           gradients; parameter and input .grad are set to None before every run.
    infer: eval() and torch.no_grad() forward.
    packed: PackedSequence input, enforce_sorted=False, lengths uniform in [T/2, T] (the max is T).
    A cell (LSTMCell, GRUCell, RNNCell) runs T steps in a Python loop (see _cell_loop); training
    back-propagates from every step's outputs.
    """
    torch.manual_seed(seed)
    spec = spec_of(cell, T, B, I, H, dtype, nonlinearity, proj_size=proj_size, num_layers=num_layers,
                   bidirectional=bidirectional)
    ref, fast = (m.to(device) for m in spec.build_pair(training=mode == "train"))
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(T, B, I, generator=g, dtype=dtype).to(device)
    rows = T * B
    if packed:
        lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
        lengths[torch.randint(0, B, (1,), generator=g)] = T  # the padded length really is T
        ps = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        rows = int(lengths.sum())
        data = ps.data.detach().clone().requires_grad_(mode == "train")
        inp = torch.nn.utils.rnn.PackedSequence(data, ps.batch_sizes, ps.sorted_indices,
                                                ps.unsorted_indices)
        leaf = data
    else:
        inp = x.requires_grad_(mode == "train")
        leaf = x
    case = TimedCase(spec, mode, packed, rows, leaf)

    is_cell = cell.endswith("Cell")
    flat = (lambda mod: _cell_loop(mod, inp)) if is_cell else (lambda mod: _flat_out(mod(inp)))
    # fixed upstream gradients, shaped like torch's result
    with torch.no_grad():
        shapes = [t.shape for t in flat(ref)]
    grads = [torch.randn(s, generator=g, dtype=dtype).to(device) for s in shapes]

    for impl, mod in (("torch", ref), ("rnnfast", fast)):
        params = list(mod.parameters())
        if mode == "train":
            mod.train()

            def run(mod=mod, params=params):
                for p in params:
                    p.grad = None
                leaf.grad = None
                outs = flat(mod)
                torch.autograd.backward(outs, grads)
                return outs[0]
        else:
            mod.eval()

            def run(mod=mod):
                with torch.no_grad():
                    return flat(mod)[-1 if is_cell else 0]
        case.modules[impl] = mod
        case.runs[impl] = run
    if gpu_series(device):
        # torch.nn's own CUDA path (cuDNN disabled): the same module, its non-cuDNN kernels.
        def run_native(run=case.runs["torch"]):
            with torch.backends.cudnn.flags(enabled=False):
                return run()
        case.modules["torch_native"] = ref
        case.runs["torch_native"] = run_native
        # rnnfast's two GPU paths of the forward: the per-step cuBLAS loop ("rnnfast", what the
        # default "auto" setting runs today) and the persistent kernel ("rnnfast_persistent").
        set_path = rnnfast.set_gpu_path

        def run_path(path, run=case.runs["rnnfast"]):
            previous = rnnfast.gpu_path()
            set_path(path)
            try:
                return run()
            finally:
                set_path(previous)
        case.runs["rnnfast"] = lambda: run_path("cublas")
        case.modules["rnnfast_persistent"] = fast
        case.runs["rnnfast_persistent"] = lambda: run_path("persistent")
    return case
