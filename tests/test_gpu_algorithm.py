"""The GPU algorithm (csrc/gpu/layer_loop.h), run on the CPU by the emulated executor.

The CUDA build runs ``GpuForwardLoop`` / ``GpuBackwardLoop`` with cuBLAS and one-thread-per-element
kernels; ``rnnfast._C._set_gpu_emulation(True)`` makes the CPU operators run the same loops with
column-major GEMMs as plain loops (cuBLAS's argument conventions) and host loops over the same per-element
functions.  So, without a GPU, this checks everything of the CUDA path but the CUDA runtime itself:
the GEMM arguments (row-major to column-major), the row bookkeeping of padded and packed input in
both directions, the chunking of the time-parallel GEMMs (small chunks here), the weight-gradient
and bias accumulations, the conversions between storage and accumulation types.

References: torch.nn (float64: to rounding; float32: cases.TOL), and for bfloat16 / float16
float64 on the same rounded values within test_low_precision.LOW_TOL.  The same loops also run
under the whole parity suite in CI (``RNNFAST_GPU_EMULATION=1``, scripts/test.sh).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

import pytest
import torch

import rnnfast
from rnnfast import _extension

from cases import TOL, assert_close
from cases import Case
from test_low_precision import LOW_TOL, big, low_precision_setup, relative_error, run

C = _extension.require_extension()


# (chunk rows, GPU path, emulated SMs): the cuBLAS loop with automatic chunks (one per call at test
# sizes) or chunks of about 7 rows (a step or two each: every chunk boundary and the contiguous
# h_{t-1} shortcut of later chunks); the persistent forward on devices of 6 SMs (7 units per block
# at H=40, a partial last block) and 3 SMs with 7-row chunks (14 units per block, a launch per chunk).
EMULATIONS = {
    "cublas-auto_chunks": (0, "cublas", 6),
    "cublas-chunks_of_7_rows": (7, "cublas", 6),
    "persistent-6sms": (0, "persistent", 6),
    "persistent-3sms-chunks_of_7_rows": (7, "persistent", 3),
}


@contextlib.contextmanager
def emulating(chunk_rows: int, path: str, sms: int, smem_per_block: int = 227 * 1024):
    was_on, was_path = C._gpu_emulation(), C._gpu_path()
    C._set_gpu_emulation(True)
    C._set_gpu_chunk_rows(chunk_rows)
    C._set_gpu_path(path)
    C._set_emulated_device(sms, smem_per_block)
    try:
        yield
    finally:
        C._set_gpu_emulation(was_on)
        C._set_gpu_chunk_rows(0)
        C._set_gpu_path(was_path)
        C._set_emulated_device(8, 227 * 1024)


@pytest.fixture(params=list(EMULATIONS.values()), ids=list(EMULATIONS))
def emulated(request):
    """The GPU algorithm on the CPU; yields the GPU path in use."""
    with emulating(*request.param):
        yield request.param[1]


CASES = [
    big(Case("LSTM", num_layers=2, bidirectional=True)),
    big(Case("LSTM", batch_first=True, bias=False)),
    big(Case("LSTM", bidirectional=True, form="packed_unsorted")),
    big(Case("LSTM", proj_size=9, bidirectional=True, form="packed_unsorted")),
    big(Case("LSTM", proj_size=9)),
    big(Case("LSTM", form="unbatched")),
    big(Case("GRU", num_layers=2, bidirectional=True, form="packed_unsorted")),
    big(Case("GRU", bias=False)),
    big(Case("RNN", nonlinearity="tanh", bidirectional=True, form="packed_unsorted")),
    big(Case("RNN", nonlinearity="relu", num_layers=2)),
    big(Case("LSTMCell")),
    big(Case("GRUCell", form="unbatched")),
    big(Case("RNNCell", nonlinearity="relu")),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id.rsplit("-", 1)[0])
def test_matches_torch(case, dtype, emulated):
    case = dataclasses.replace(case, dtype=dtype)
    reference, fast = case.build_pair()
    inputs = case.tensors(requires_grad=False)
    lengths = case.make_lengths()
    with torch.no_grad():
        shapes = [o.shape for o in case.call(reference, *inputs, lengths=lengths)]
    upstream = [torch.randn(s, dtype=dtype) for s in shapes]
    calls, launches = C._gpu_emulated_calls(), C._gpu_persistent_launches()
    want = run(case, reference, inputs, lengths, upstream)
    got = run(case, fast, inputs, lengths, upstream)
    assert C._gpu_emulated_calls() > calls, "the emulated GPU loops did not run"
    # The persistent forward covers every cell but LSTM with proj_size (the cuBLAS loop runs it).
    persistent = emulated == "persistent" and not case.proj_size
    assert (C._gpu_persistent_launches() > launches) == persistent, "persistent launches"
    for what, g_list, w_list in (("output", got[0], want[0]), ("gradient", got[1], want[1])):
        for k, (g, w) in enumerate(zip(g_list, w_list)):
            assert_close(g, w, f"{what} #{k}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("case", CASES[:3] + CASES[6:8] + CASES[10:11], ids=lambda c: c.id.rsplit("-", 1)[0])
def test_low_precision_matches_float64(case, dtype, emulated):
    case = dataclasses.replace(case, dtype=dtype)
    setup = low_precision_setup(case)
    out, grads = run(case, setup.fast, setup.inputs, setup.lengths, setup.upstream)
    for k, (g, w) in enumerate(zip(out + grads, setup.want_out + setup.want_grads)):
        assert g.dtype == dtype
        err = relative_error(g, w)
        assert err <= LOW_TOL[dtype], f"#{k}: relative error {err:.3g} > {LOW_TOL[dtype]:.3g}"


def assert_float64_training_matches_torch(case: Case, context=contextlib.nullcontext, launches=None):
    """Outputs and every gradient of rnnfast (run inside `context()`) against torch.nn, float64.
    `launches`: the persistent launches the rnnfast run must make."""
    reference, fast = case.build_pair()
    inputs = case.tensors(requires_grad=False)
    lengths = case.make_lengths()
    upstream = [torch.randn(o.shape, dtype=torch.float64)
                for o in case.call(reference, *inputs, lengths=lengths)]
    want = run(case, reference, inputs, lengths, upstream)
    with context():
        before = C._gpu_persistent_launches()
        got = run(case, fast, inputs, lengths, upstream)
        if launches is not None:
            assert C._gpu_persistent_launches() - before == launches
    for g, w in zip(got[0] + got[1], want[0] + want[1]):
        torch.testing.assert_close(g, w, **TOL[torch.float64])


def test_long_sequence_many_chunks(emulated):
    """T=300 with the chunk override: hundreds of chunk boundaries, packed and reversed."""
    assert_float64_training_matches_torch(
        big(Case("LSTM", bidirectional=True, form="packed_unsorted"), seq_len=300, batch=4, dtype=torch.float64))


@pytest.mark.skipif(os.environ.get("RNNFAST_GPU_EMULATION") == "1", reason="emulation switched on for the run")
def test_emulation_switch_is_off_by_default():
    assert not C._gpu_emulation()
    x = torch.randn(3, 2, 4)
    calls = C._gpu_emulated_calls()
    rnnfast.GRU(4, 5)(x)
    assert C._gpu_emulated_calls() == calls


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_persistent_tiles_launches_and_partial_blocks(cell):
    """The persistent forward and backward over 37 rows (tiles of 16, 16, 5), T=600 (two launches
    of at most 512 steps each way), packed and reversed, on 5 emulated SMs (H=23: 5 units per
    block, a last block of 3), float64, against torch.nn (outputs and every gradient)."""
    case = big(Case(cell, bidirectional=True, form="packed_unsorted"), seq_len=600, batch=37, hidden_size=23,
               dtype=torch.float64)
    # forward and backward of each direction: 2 launches each (600 steps)
    assert_float64_training_matches_torch(case, lambda: emulating(0, "persistent", 5), launches=2 * 2 * 2)


def test_persistent_falls_back_where_the_weights_do_not_fit():
    """On an emulated device with too little shared memory for the smallest block slice, the
    persistent setting runs the cuBLAS loop (never a failure), with the same result."""
    case = big(Case("GRU"), dtype=torch.float64)
    reference, fast = case.build_pair()
    inputs = case.tensors(requires_grad=False)
    with torch.no_grad():
        want = case.call(reference, *inputs)
        with emulating(0, "persistent", 8, smem_per_block=1024):
            launches = C._gpu_persistent_launches()
            got = case.call(fast, *inputs)
            assert C._gpu_persistent_launches() == launches
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOL[torch.float64])


def test_gpu_path_setting():
    assert C._gpu_path() in ("auto", "cublas", "persistent")
    before = C._gpu_path()
    with pytest.raises(ValueError, match="'auto', 'cublas' or 'persistent'"):
        C._set_gpu_path("fast")
    assert C._gpu_path() == before


def _layer_args(cell, I, packed, reverse, H=7, B=4, T=5, P=None):
    """Random float64 arguments of the layer ops (the schema's order); P: proj_size or None."""
    from rnnfast._cells import CELLS
    G = CELLS[cell].gates
    out = P or H
    batch_sizes = torch.tensor([4, 4, 3, 2, 1]) if packed else None
    N = int(batch_sizes.sum()) if packed else T * B
    r = lambda *shape: torch.randn(*shape, dtype=torch.float64)  # noqa: E731
    return (CELLS[cell].code, r(N, I), batch_sizes, r(B, out), r(B, H) if CELLS[cell].cell_state else None,
            r(G * H, I), r(G * H, out), r(G * H), r(G * H), r(out, H) if P else None, reverse)


def _on_the_cpu_path(fn):
    """fn() with the emulation switched off: the CPU loops, the independent reference here."""
    was = C._gpu_emulation()
    C._set_gpu_emulation(False)
    try:
        return fn()
    finally:
        C._set_gpu_emulation(was)


@pytest.mark.parametrize("cell,proj", [("LSTM", None), ("LSTM", 3), ("GRU", None), ("RNN_TANH", None)])
@pytest.mark.parametrize("packed,reverse", [(False, False), (True, True)], ids=["padded", "packed-rev"])
def test_backward_reads_y_through_its_row_stride(cell, proj, packed, reverse, emulated):
    """A direct layer_backward call whose y is a column slice of a wider buffer (the op lets such a
    view through: its rows are P apart only in the slice's columns) gets the same gradients as with
    a contiguous y, and as the CPU loops. The GPU loop once indexed y as if its row stride were P."""
    args = _layer_args(cell, 6, packed, reverse, P=proj)
    y, h_n, c_n, workspace = torch.ops.rnnfast.layer_forward_train(*args)
    wide = torch.randn(y.size(0), y.size(1) + 5, dtype=y.dtype)
    wide[:, 2:2 + y.size(1)] = y
    y_view = wide[:, 2:2 + y.size(1)]
    assert y_view.stride(0) != y.size(1) and y_view.stride(1) == 1
    grads = (torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n) if c_n.numel() else None)
    call = lambda y_: torch.ops.rnnfast.layer_backward(*args, y_, workspace, *grads, [True, True, True])  # noqa: E731
    got = call(y_view)
    want_cpu = _on_the_cpu_path(lambda: call(y))
    want_gpu = call(y)
    for k, (g, w, w2) in enumerate(zip(got, want_cpu, want_gpu)):
        torch.testing.assert_close(g, w, **TOL[torch.float64], msg=lambda m: f"gradient #{k} vs CPU: {m}")
        torch.testing.assert_close(g, w2, rtol=0, atol=0, msg=lambda m: f"gradient #{k} vs contiguous y: {m}")


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN_RELU"])
def test_input_size_zero_is_an_empty_product(cell, emulated):
    """input_size 0: x @ w_ih^T is an empty product (zeros), which the GPU loop writes itself; the
    emulated executor refuses a k == 0 GEMM, so this fails if one reaches cuBLAS. Forward and every
    gradient against the CPU loops."""
    args = _layer_args(cell, 0, packed=True, reverse=False)
    got = torch.ops.rnnfast.layer_forward_train(*args)
    want = _on_the_cpu_path(lambda: torch.ops.rnnfast.layer_forward_train(*args))
    for g, w in zip(got[:3], want[:3]):
        torch.testing.assert_close(g, w, **TOL[torch.float64])
    y, h_n, c_n, workspace = got
    grads = (torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n) if c_n.numel() else None)
    got_g = torch.ops.rnnfast.layer_backward(*args, y, workspace, *grads, [True, True, True])
    want_g = _on_the_cpu_path(
        lambda: torch.ops.rnnfast.layer_backward(*args, want[0], want[3], *grads, [True, True, True]))
    for k, (g, w) in enumerate(zip(got_g, want_g)):
        assert g.shape == w.shape, k
        torch.testing.assert_close(g, w, **TOL[torch.float64], msg=lambda m: f"gradient #{k}: {m}")


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cells_with_input_size_zero(kind, emulated):
    """torch's cells accept input_size 0; under the GPU loop the input GEMM is an empty product."""
    reference = getattr(torch.nn, kind)(0, 4, dtype=torch.float64)
    fast = getattr(rnnfast, kind)(0, 4, dtype=torch.float64)
    fast.load_state_dict(reference.state_dict())
    x = torch.randn(3, 0, dtype=torch.float64)
    hx = torch.randn(3, 4, dtype=torch.float64)
    state = (hx, torch.randn(3, 4, dtype=torch.float64)) if kind == "LSTMCell" else hx
    want, got = reference(x, state), fast(x, state)
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        torch.testing.assert_close(g, w, **TOL[torch.float64])


def _float32(args):
    return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


def _forward_and_grads(forward, args, allow_tf32, cotangents):
    """(y, h_n, c_n) of a differentiable forward and the gradients of every input that has one."""
    args = tuple(a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                 for a in args)
    outputs = forward(*args, allow_tf32)
    inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    used = [(o, c) for o, c in zip(outputs, cotangents) if c is not None]
    grads = torch.autograd.grad([o for o, _ in used], inputs, [c for _, c in used])
    return [o.detach() for o in outputs], list(grads)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("autograd", ["registered", "python"])
def test_allow_tf32_reaches_the_gemms_forward_and_backward(cell, autograd, emulated):
    """The ops' allow_tf32 (torch's RNN TF32 switch, read in Python: the stable ABI cannot) reaches
    the GPU algorithm's GEMMs in the forward, and through either autograd (the registered one and
    rnnfast/_autograd.py's) in the backward. The emulated executor rounds fp32 GEMM inputs to TF32
    where the CUDA executor would ask cuBLAS for TF32. So: with it, the forward and the gradients
    differ from full fp32, stay within TF32's error of float64, and equal a direct layer_backward
    call with the flag bit for bit; without it, nothing is rounded."""
    from rnnfast import _autograd

    forward = torch.ops.rnnfast.layer_forward if autograd == "registered" else _autograd.layer_forward
    args64 = _layer_args(cell, 6, packed=True, reverse=True, H=24)
    args = _float32(args64)
    y, h_n, c_n = torch.ops.rnnfast.layer_forward(*args64)
    cotangents = (torch.randn_like(y).float(), torch.randn_like(h_n).float(),
                  torch.randn_like(c_n).float() if c_n.numel() else None)
    full, full_grads = _forward_and_grads(forward, args, False, cotangents)
    tf32, tf32_grads = _forward_and_grads(forward, args, True, cotangents)
    for k, (a, b, ref) in enumerate(zip(full, tf32, (y, h_n, c_n))):
        if not ref.numel():
            continue
        torch.testing.assert_close(a.double(), ref, **TOL[torch.float32], msg=lambda m: f"output {k}, fp32: {m}")
        torch.testing.assert_close(b.double(), ref, rtol=2e-2, atol=2e-2, msg=lambda m: f"output {k}, TF32: {m}")
        assert not torch.equal(a, b), f"output {k}: allow_tf32=True changed nothing"
    for k, (a, b) in enumerate(zip(full_grads, tf32_grads)):
        torch.testing.assert_close(b, a, rtol=5e-2, atol=5e-2, msg=lambda m: f"gradient {k}: {m}")
    assert any(not torch.equal(a, b) for a, b in zip(full_grads[1:], tf32_grads[1:])), \
        "allow_tf32=True changed no gradient"
    # The backward the autograd ran is layer_backward with the forward's flag.
    _, _, _, workspace = torch.ops.rnnfast.layer_forward_train(*args, True)
    direct = torch.ops.rnnfast.layer_backward(*args, tf32[0], workspace, *cotangents[:2],
                                              cotangents[2], [True, True, True], True)
    x_grad, h0_grad = tf32_grads[0], tf32_grads[1]
    torch.testing.assert_close(x_grad, direct[0], rtol=0, atol=0)
    torch.testing.assert_close(h0_grad, direct[1], rtol=0, atol=0)
    # Other dtypes are never rounded.
    torch.testing.assert_close(torch.ops.rnnfast.layer_forward(*args64, True)[0], y, rtol=0, atol=0)


def test_allow_tf32_is_read_for_fp32_cuda_tensors_only(monkeypatch):
    """The modules read torch's RNN switch for fp32 CUDA inputs only (rnnfast/_tf32.py): for CPU
    tensors the argument is False without reading it, so a CPU call costs nothing and a CPU graph
    holds no such constant."""
    from rnnfast import _tf32

    def refuse():
        raise AssertionError("the switch was read for a CPU tensor")

    monkeypatch.setattr(_tf32, "_cudnn_rnn_tf32", refuse)
    assert _tf32.allow_tf32(torch.randn(2, 3)) is False
    m = rnnfast.GRU(3, 4)
    m(torch.randn(5, 2, 3))
    rnnfast.LSTMCell(3, 4)(torch.randn(2, 3))


def test_allow_tf32_follows_torchs_rnn_switch():
    """_cudnn_rnn_tf32 is torch's switch for cuDNN's RNNs (torch.backends.cudnn.rnn.fp32_precision,
    "tf32" by default; torch.backends.cudnn.allow_tf32 = False turns it off), the switch torch.nn's
    cuDNN RNNs follow; torch.backends.cuda.matmul.allow_tf32 is not one of them. (The cudnn flags
    go through their context manager: torch's test utilities freeze direct assignment.)"""
    from rnnfast import _tf32

    cudnn = torch.backends.cudnn

    def switch(allow_tf32):
        return cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                           allow_tf32=allow_tf32)

    matmul_before = torch.backends.cuda.matmul.allow_tf32
    try:
        for matmul in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = matmul
            with switch(True):
                assert _tf32._cudnn_rnn_tf32() is True and cudnn.rnn.fp32_precision == "tf32"
            with switch(False):
                assert _tf32._cudnn_rnn_tf32() is False and cudnn.rnn.fp32_precision != "tf32"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_before


def test_allow_tf32_default_and_parent_switch():
    """In a fresh process (no flag touched) torch's RNN switch is TF32, as cuDNN's default. After
    the global fp32_precision = "ieee" (the parent of the cuDNN and RNN switches) rnnfast reads what
    torch's RNN getter reports: off from torch 2.13 on; torch 2.11 and 2.12 keep the RNN switch's own
    "tf32" (their getter says so, and cuDNN reads the same setting)."""
    import subprocess
    import sys

    code = ("import torch; from rnnfast import _tf32\n"
            "assert _tf32._cudnn_rnn_tf32() is True, torch.backends.cudnn.rnn.fp32_precision\n"
            "torch.backends.fp32_precision = 'ieee'\n"
            "rnn = torch.backends.cudnn.rnn.fp32_precision\n"
            "assert _tf32._cudnn_rnn_tf32() is (rnn == 'tf32'), rnn\n"
            "if tuple(int(v) for v in torch.__version__.split('+')[0].split('.')[:2]) >= (2, 13):\n"
            "    assert _tf32._cudnn_rnn_tf32() is False, rnn\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("kind", ["LSTM", "LSTMCell"])
def test_modules_pass_allow_tf32_to_the_operators(kind, monkeypatch, emulated):
    """The modules hand rnnfast/_tf32.py's answer to the operators: with it forced to True (what a
    CUDA input gets by default), the emulated GPU algorithm's fp32 result changes (TF32-rounded
    GEMM inputs) and stays within TF32's error of the full fp32 result."""
    from rnnfast import functional, modules

    torch.manual_seed(0)
    module = getattr(rnnfast, kind)(12, 24)
    x = torch.randn(9, 3, 12) if kind == "LSTM" else torch.randn(3, 12)
    with torch.no_grad():
        full = module(x)[0]
        monkeypatch.setattr(functional, "allow_tf32", lambda t: True)
        monkeypatch.setattr(modules, "allow_tf32", lambda t: True)
        tf32 = module(x)[0]
    assert not torch.equal(full, tf32), "allow_tf32 did not reach the operators"
    torch.testing.assert_close(tf32, full, rtol=2e-2, atol=2e-2)
