"""rnnfast's CUDA kernels on a real GPU: parity with torch.nn (cuDNN) and with rnnfast on the CPU.

Skipped, with the reason, where no CUDA device is present. On a machine with a GPU, an rnnfast
built without its CUDA kernels fails here (it must not skip quietly).

Covered: the option matrix (all six modules; padded, batch_first, unbatched and unsorted packed
input; bidirectional, multi-layer, no bias, proj_size) against cuDNN and against rnnfast on the CPU;
TF32 (torch's default for cuDNN RNNs) against float64; gradcheck / gradgradcheck in float64;
bfloat16 / float16 within test_low_precision.LOW_TOL; torch.autocast("cuda") result dtypes; a
non-default stream; CUDA-graph capture of a training step; bitwise-repeatable results; opcheck;
no host synchronisation (torch.cuda.set_sync_debug_mode("error")); backward in eval mode and
double backward (both refused by cuDNN); torch.nn's errors for mixed devices.

``RNNFAST_TEST_DEVICE=cpu`` runs the same tests on the CPU with the GPU algorithm emulated
(rnnfast._C._set_gpu_emulation): a dry run of this file's own logic on a machine without a GPU
(tests of CUDA-only features skip).
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

import rnnfast
from rnnfast import _extension

from cases import TOL, Case, assert_all_close, flatten
from test_low_precision import LOW_TOL, big, low_precision_setup, relative_error

DEVICE = os.environ.get("RNNFAST_TEST_DEVICE", "cuda")
DRY_RUN = DEVICE == "cpu"

if not DRY_RUN and not torch.cuda.is_available():
    pytest.skip("no CUDA device (torch.cuda.is_available() is False)", allow_module_level=True)

C = _extension.require_extension()
cuda_only = pytest.mark.skipif(DRY_RUN, reason="a CUDA feature (dry run on the CPU)")


@pytest.fixture(autouse=True, params=["cublas", "persistent"])
def device_setup(request):
    """Every test under both GPU paths of the recurrence (the per-step cuBLAS loop and the
    persistent kernels, forward and backward, gpu/path.h); full-precision fp32 on both sides (TF32
    has its own test); the emulation in a dry run."""
    was_path = rnnfast.gpu_path()
    rnnfast.set_gpu_path(request.param)
    if DRY_RUN:
        C._set_gpu_emulation(True)
        yield request.param
        C._set_gpu_emulation(False)
        rnnfast.set_gpu_path(was_path)
        return
    cudnn_tf32, matmul_tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield request.param
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn_tf32, matmul_tf32
    rnnfast.set_gpu_path(was_path)


def test_forced_path_runs(device_setup):
    """The forced path is the one that runs: the persistent forward launches (this GPU supports
    cooperative launches and the block slices of w_hh fit), the cuBLAS loop does not launch it."""
    launches = _extension.persistent_launches()
    for module in (rnnfast.LSTM(16, 256), rnnfast.GRU(16, 256), rnnfast.RNN(16, 256)):
        with torch.no_grad():
            to_device(module)(torch.randn(7, 3, 16, device=DEVICE))
    ran = _extension.persistent_launches() - launches
    assert ran == (3 if device_setup == "persistent" else 0), ran


def test_build_has_cuda_kernels():
    """On a GPU machine the build must hold the CUDA kernels for this GPU's architecture."""
    if DRY_RUN:
        pytest.skip("dry run")
    info = rnnfast.backend()
    assert info["cuda"], "rnnfast was built without its CUDA kernels on a machine with a GPU: rebuild " \
                         "with a CUDA torch and nvcc (RNNFAST_FORCE_CUDA=1)"
    assert info["cuda_loaded"], f"rnnfast's CUDA library did not load: {info['cuda_error']}"
    major, minor = torch.cuda.get_device_capability()
    arches = info["cuda_arches"]
    exact = f"{major}.{minor}" in [a.replace("+PTX", "") for a in arches]
    ptx = any(a.endswith("+PTX") and float(a[:-4]) <= major + minor / 10 for a in arches)
    assert exact or ptx, f"no code for sm_{major}{minor} in {arches}"


def to_device(module, dtype=None):
    return module.to(device=DEVICE, dtype=dtype)


def run_on(case, module, inputs, lengths, upstream, device):
    """Outputs and gradients (inputs, then parameters) on `device`, returned on the CPU."""
    inputs = [t.detach().to(device).requires_grad_() for t in inputs]
    for p in module.parameters():
        p.grad = None
    outs = case.call(module, *inputs, lengths=lengths)
    torch.autograd.backward(outs, [g.to(device=device, dtype=o.dtype) for g, o in zip(upstream, outs)])
    grads = [t.grad for t in inputs] + [p.grad for p in module.parameters()]
    return [t.detach().cpu() for t in outs], [g.detach().cpu() for g in grads]


MATRIX = [
    big(Case("LSTM")),
    big(Case("LSTM", num_layers=2, bidirectional=True, batch_first=True)),
    big(Case("LSTM", bidirectional=True, form="packed_unsorted")),
    big(Case("LSTM", proj_size=9, num_layers=2, form="packed_unsorted")),
    big(Case("LSTM", bias=False, form="unbatched")),
    big(Case("GRU", num_layers=2, bidirectional=True, form="packed_unsorted")),
    big(Case("GRU", bias=False, batch_first=True)),
    big(Case("RNN", nonlinearity="tanh", bidirectional=True)),
    big(Case("RNN", nonlinearity="relu", form="packed_unsorted")),
    big(Case("LSTMCell")),
    big(Case("GRUCell", bias=False)),
    big(Case("RNNCell", nonlinearity="tanh", form="unbatched")),
    big(Case("LSTM", num_layers=3), hidden_size=256, input_size=128, batch=33, seq_len=64),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", MATRIX, ids=lambda c: c.id.rsplit("-", 1)[0])
def test_parity_with_cudnn_and_cpu(case, dtype):
    """rnnfast on the GPU against torch.nn on the GPU (cuDNN) and against rnnfast on the CPU."""
    case = dataclasses.replace(case, dtype=dtype)
    reference, fast = case.build_pair()
    fast_cpu = case.build(rnnfast)
    fast_cpu.load_state_dict(reference.state_dict())
    inputs = case.tensors(requires_grad=False)
    lengths = case.make_lengths()
    with torch.no_grad():
        shapes = [o.shape for o in case.call(reference, *inputs, lengths=lengths)]
    upstream = [torch.randn(s, dtype=dtype) for s in shapes]
    want = run_on(case, to_device(reference), inputs, lengths, upstream, DEVICE)
    got = run_on(case, to_device(fast), inputs, lengths, upstream, DEVICE)
    assert_matches_cudnn_and_cpu(case, got, want, fast_cpu, inputs, lengths, upstream)


def assert_matches_cudnn_and_cpu(case, got, cudnn, fast_cpu, inputs, lengths, upstream):
    """rnnfast's GPU outputs and gradients `got` against torch.nn's on the GPU and rnnfast's on
    the CPU (the same inputs and upstream gradients)."""
    if DRY_RUN:
        C._set_gpu_emulation(False)
    cpu = run_on(case, fast_cpu, inputs, lengths, upstream, "cpu")
    for name, other in (("torch.nn on " + DEVICE, cudnn), ("rnnfast on the CPU", cpu)):
        assert_all_close(got[0], other[0], f"output vs {name}")
        assert_all_close(got[1], other[1], f"gradient vs {name}")


def lstm_fp32_on_gpu_and_float64():
    """A 2-layer fp32 LSTM's outputs: torch.nn in float64 on the same values (CPU), rnnfast and
    torch.nn (cuDNN) on the GPU."""
    case = big(Case("LSTM", num_layers=2), hidden_size=128, input_size=64, seq_len=50, dtype=torch.float32)
    reference, fast = case.build_pair()
    exact = dataclasses.replace(case, dtype=torch.float64).build(torch.nn)
    exact.load_state_dict({k: v.double() for k, v in reference.state_dict().items()})
    x, h0, c0 = case.tensors(requires_grad=False)
    with torch.no_grad():
        want = flatten(exact(x.double(), (h0.double(), c0.double())))
        got = flatten(to_device(fast)(x.to(DEVICE), (h0.to(DEVICE), c0.to(DEVICE))))
        cudnn = flatten(to_device(reference)(x.to(DEVICE), (h0.to(DEVICE), c0.to(DEVICE))))
    return want, got, cudnn


@cuda_only
def test_tf32_default_against_float64():
    """With TF32 allowed (torch's default for cuDNN RNNs) fp32 GEMMs round their inputs to 10
    mantissa bits: within 10 * 2^-11 of float64, as cuDNN's own TF32 result."""
    torch.backends.cudnn.allow_tf32 = True
    want, got, cudnn = lstm_fp32_on_gpu_and_float64()
    for g, c, w in zip(got, cudnn, want):
        assert relative_error(g.cpu(), w) <= 10 * 2.0**-11
        assert relative_error(c.cpu(), w) <= 10 * 2.0**-11  # (the bound holds for cuDNN too)


def test_persistent_partial_last_block(device_setup):
    """H=1001 (an H100 plans 8 units per block, 126 blocks, a last block of one unit), 17 rows
    (two tiles; the backward's 4004-long columns: tiles of 4 rows), training, against cuDNN and
    rnnfast on the CPU; the persistent kernels must have run it under the persistent path (in a
    dry run the emulated device falls back)."""
    case = big(Case("LSTM"), hidden_size=1001, input_size=64, batch=17, seq_len=9, dtype=torch.float32)
    reference, fast = case.build_pair()
    fast_cpu = case.build(rnnfast)
    fast_cpu.load_state_dict(reference.state_dict())
    inputs = case.tensors(requires_grad=False)
    upstream = [torch.randn(o.shape) for o in case.call(reference, *inputs)]
    launches = _extension.persistent_launches()
    got = run_on(case, to_device(fast), inputs, None, upstream, DEVICE)
    if device_setup == "persistent" and not DRY_RUN:
        assert _extension.persistent_launches() - launches == 2, "forward and backward: one launch each"
    want = run_on(case, to_device(reference), inputs, None, upstream, DEVICE)
    assert_matches_cudnn_and_cpu(case, got, want, fast_cpu, inputs, None, upstream)


@cuda_only
def test_tf32_switch_reaches_the_gemms():
    """torch's RNN TF32 switch, read in Python and passed to the operators, changes the fp32 result
    on the GPU: the same module and input give different outputs with TF32 on (the default) and
    off, both close to each other."""
    torch.manual_seed(0)
    module = to_device(rnnfast.LSTM(64, 128, num_layers=2))
    x = torch.randn(50, 8, 64, device=DEVICE)
    cudnn = torch.backends.cudnn

    def switch(allow_tf32):
        return cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                           allow_tf32=allow_tf32)

    with torch.no_grad():
        with switch(True):
            tf32 = module(x)[0]
        with switch(False):
            full = module(x)[0]
    assert not torch.equal(tf32, full), "TF32 on and off gave the same fp32 result"
    torch.testing.assert_close(tf32, full, rtol=2e-2, atol=2e-2)


@cuda_only
def test_matmul_tf32_switch_does_not_apply():
    """RNNs follow torch.backends.cudnn.allow_tf32, as torch.nn's: with it off, fp32 stays full
    fp32 even when torch.backends.cuda.matmul.allow_tf32 (the cuBLAS handle's math mode) is on.
    TF32 would give errors near 1e-3; full fp32 stays below 1e-5."""
    torch.backends.cuda.matmul.allow_tf32 = True
    want, got, _ = lstm_fp32_on_gpu_and_float64()
    for g, w in zip(got, want):
        assert relative_error(g.cpu(), w) <= 1e-5


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_gradcheck_and_gradgradcheck_float64(kind):
    case = Case(kind, bidirectional=True, form="packed_unsorted", input_size=3, hidden_size=4, batch=3, seq_len=4,
                dtype=torch.float64)
    fast = to_device(case.build(rnnfast))
    lengths = case.make_lengths()
    function, _ = case.params_function(fast, lengths=lengths)
    args = [t.to(DEVICE).requires_grad_() for t in case.tensors(requires_grad=False)]
    args += [p.detach().clone().requires_grad_() for p in fast.parameters()]
    assert torch.autograd.gradcheck(function, args)
    assert torch.autograd.gradgradcheck(function, args)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("case", MATRIX[:4] + MATRIX[5:6] + MATRIX[9:10], ids=lambda c: c.id.rsplit("-", 1)[0])
def test_low_precision(case, dtype):
    """Against float64 on the same rounded values (LOW_TOL), and against cuDNN in the same dtype
    (twice that)."""
    case = dataclasses.replace(case, dtype=dtype)
    st = low_precision_setup(case)
    want = (st.want_out, st.want_grads)
    got = run_on(case, to_device(st.fast), st.inputs, st.lengths, st.upstream, DEVICE)
    cudnn = run_on(case, to_device(st.reference), st.inputs, st.lengths, st.upstream, DEVICE)
    for k, (g, w, c) in enumerate(zip(got[0] + got[1], want[0] + want[1], cudnn[0] + cudnn[1])):
        assert g.dtype == dtype
        assert relative_error(g, w) <= LOW_TOL[dtype], f"#{k} vs float64: {relative_error(g, w):.3g}"
        assert relative_error(g, c) <= 2 * LOW_TOL[dtype], f"#{k} vs torch.nn: {relative_error(g, c):.3g}"


@cuda_only
@pytest.mark.parametrize("case", [MATRIX[0], MATRIX[3], MATRIX[5], MATRIX[8], MATRIX[9], MATRIX[10]],
                         ids=lambda c: c.id.rsplit("-", 1)[0])
def test_autocast_result_dtypes_match_torch(case):
    case = dataclasses.replace(case, dtype=torch.float32)
    reference, fast = case.build_pair()
    inputs = [t.to(DEVICE) for t in case.tensors(requires_grad=False)]
    lengths = case.make_lengths()
    with torch.autocast("cuda", dtype=torch.float16):
        want = case.call(to_device(reference), *inputs, lengths=lengths)
        got = case.call(to_device(fast), *inputs, lengths=lengths)
    assert [t.dtype for t in got] == [t.dtype for t in want]
    for g, w in zip(got, want):
        assert relative_error(g.float().cpu(), w.float().cpu()) <= 2 * LOW_TOL[torch.float16]


def training_step(module, x, h0, c0, upstream):
    """Outputs and parameter gradients of one forward + backward."""
    for p in module.parameters():
        p.grad = None
    y, (h, c) = module(x, (h0, c0))
    torch.autograd.backward([y, h, c], upstream)
    return [y.detach().clone(), h.detach().clone(), c.detach().clone()] + [p.grad.clone() for p in module.parameters()]


def lstm_setup(seed=0):
    torch.manual_seed(seed)
    m = to_device(rnnfast.LSTM(16, 32, num_layers=2, bidirectional=True))
    x = torch.randn(20, 5, 16, device=DEVICE)
    h0 = torch.randn(4, 5, 32, device=DEVICE)
    c0 = torch.randn(4, 5, 32, device=DEVICE)
    upstream = [torch.randn(20, 5, 64, device=DEVICE), torch.randn(4, 5, 32, device=DEVICE),
                torch.randn(4, 5, 32, device=DEVICE)]
    return m, x, h0, c0, upstream


def test_bitwise_repeatable():
    m, x, h0, c0, upstream = lstm_setup()
    first = training_step(m, x, h0, c0, upstream)
    second = training_step(m, x, h0, c0, upstream)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@cuda_only
def test_non_default_stream():
    m, x, h0, c0, upstream = lstm_setup()
    want = training_step(m, x, h0, c0, upstream)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = training_step(m, x, h0, c0, upstream)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@cuda_only
def test_cuda_graph_capture_of_a_training_step():
    m, x, h0, c0, upstream = lstm_setup()
    static = [x.clone(), h0.clone(), c0.clone()]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as torch.cuda.graph requires
        for _ in range(3):
            training_step(m, *static, upstream)
    torch.cuda.current_stream().wait_stream(side)
    for p in m.parameters():
        p.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y, (h, c) = m(static[0], (static[1], static[2]))
        torch.autograd.backward([y, h, c], upstream)
    static_grads = [p.grad for p in m.parameters()]  # written by every replay
    for seed in (1, 2):
        _, x2, h2, c2, _ = lstm_setup(seed)
        for dst, src in zip(static, (x2, h2, c2)):
            dst.copy_(src)
        graph.replay()
        replayed = [y.clone(), h.clone(), c.clone()] + [g.clone() for g in static_grads]
        eager = training_step(m, x2, h2, c2, upstream)
        for a, b in zip(replayed, eager):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@cuda_only
def test_no_host_synchronisation():
    """torch.cuda.set_sync_debug_mode("error") raises on any synchronising CUDA call."""
    m, x, h0, c0, upstream = lstm_setup()
    gru = to_device(rnnfast.GRU(16, 32, bidirectional=True))
    lengths = torch.tensor([20, 17, 12, 9, 3])
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        training_step(m, x, h0, c0, upstream)
        out, h = gru(packed)
        torch.autograd.backward([out.data, h], [torch.ones_like(out.data), torch.ones_like(h)])
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN_TANH"])
def test_opcheck(cell):
    from test_ops import opcheck_forward_and_backward

    opcheck_forward_and_backward(cell, torch.float64, DEVICE)


def test_backward_in_eval_mode_and_double_backward():
    """cuDNN refuses both ("cudnn RNN backward can only be called in training mode"; double
    backward: NotImplementedError); rnnfast runs them, equal to rnnfast on the CPU."""
    results = []
    for device in (DEVICE, "cpu"):
        if DRY_RUN and device == "cpu":
            C._set_gpu_emulation(False)
        torch.manual_seed(0)
        m = rnnfast.GRU(4, 6, num_layers=2).double().to(device).eval()
        x = torch.randn(5, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
        y, h = m(x)
        (gx,) = torch.autograd.grad((y * y).sum() + h.sum(), x, create_graph=True)
        (ggx,) = torch.autograd.grad((gx * gx).sum(), x)
        results.append((gx.detach().cpu(), ggx.cpu()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@cuda_only
def test_mixed_devices_raise_torch_errors():
    for kind in ("LSTM", "GRU"):
        reference = getattr(torch.nn, kind)(4, 5).to(DEVICE)
        fast = getattr(rnnfast, kind)(4, 5).to(DEVICE)
        x = torch.randn(3, 2, 4)  # on the CPU
        for module in (reference, fast):
            with pytest.raises(RuntimeError) as err:
                module(x)
            if module is reference:
                expected = str(err.value)
            else:
                assert str(err.value).splitlines()[0] == expected.splitlines()[0]


@cuda_only
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="one GPU")
def test_second_device():
    m, x, h0, c0, upstream = lstm_setup()
    want = training_step(m, x, h0, c0, upstream)
    m1 = m.to("cuda:1")
    got = training_step(m1, x.to("cuda:1"), h0.to("cuda:1"), c0.to("cuda:1"), [u.to("cuda:1") for u in upstream])
    for a, b in zip(got, want):
        assert torch.equal(a.cpu(), b.cpu())
