"""The extension's layer entry points, below the modules.

* every instruction-set build of the CPU kernels against torch.nn, at thread
  counts that do and do not split the hidden units across threads;
* the chunked input projection of long inference runs;
* bitwise determinism of the threaded time loop.
"""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast
from rnnfast import _extension

from cases import assert_all_close

C = _extension.require_extension()
CAPABILITIES = rnnfast.backend()["cpu_capabilities"]


@pytest.fixture
def capability(request):
    previous = C.cpu_capability()
    C.set_cpu_capability(request.param)
    yield request.param
    C.set_cpu_capability(previous)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    previous = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(previous)


def run_both(mode, T, B, I, H, dtype, packed=False, infer=False, **kwargs):
    """Outputs (and gradients unless infer) of torch.nn and rnnfast on the same data."""
    ref = getattr(torch.nn, mode)(I, H, dtype=dtype, **kwargs)
    fast = getattr(rnnfast, mode)(I, H, dtype=dtype, **kwargs)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, dtype=dtype)
    lengths = torch.randint(1, T + 1, (B,))
    lengths[torch.randint(0, B, ())] = T
    results = []
    for module in (ref, fast):
        inp = x.clone().requires_grad_(not infer)
        arg = pack_padded_sequence(inp, lengths, enforce_sorted=False) if packed else inp
        with torch.set_grad_enabled(not infer):
            out, hidden = module(arg)
        out = out.data if packed else out
        h = hidden[0] if mode == "LSTM" else hidden
        tensors = [out, h] + ([hidden[1]] if mode == "LSTM" else [])
        if not infer:
            weights = torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out)
            loss = (out * weights).sum() + (h * h).sum()
            loss.backward()
            tensors += [inp.grad] + [p.grad for p in module.parameters()]
        results.append([t.detach().clone() for t in tensors])
    return results


@pytest.mark.parametrize("capability", CAPABILITIES, indirect=True)
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_every_instruction_set(capability, threads, mode):
    # H=40 with B=9 splits into slices at 2 threads (unaligned boundary, partial
    # vectors); packed + bidirectional covers the rows that start from h0.
    for dtype in (torch.float32, torch.float64):
        ref, fast = run_both(mode, 6, 9, 5, 40, dtype, packed=True, bidirectional=True,
                             num_layers=2)
        assert_all_close(fast, ref, "tensor")


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_small_hidden_is_not_split(threads, mode):
    ref, fast = run_both(mode, 5, 3, 4, 3, torch.float64, packed=True, bidirectional=True)
    assert_all_close(fast, ref, "tensor")


def test_projection_split_across_threads(threads):
    ref, fast = run_both("LSTM", 7, 6, 9, 48, torch.float64, packed=True, bidirectional=True,
                         proj_size=35)
    assert_all_close(fast, ref, "tensor")


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("packed", [False, True])
def test_long_inference_uses_several_input_chunks(mode, packed):
    # 8192 rows per chunk: T*B = 12800 rows gives two chunks (both directions).
    ref, fast = run_both(mode, 400, 32, 3, 8, torch.float64, packed=packed, infer=True,
                         bidirectional=True)
    assert_all_close(fast, ref, "tensor")


@pytest.mark.parametrize("proj_size", [0, 5])
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_training_over_several_row_chunks(threads, mode, proj_size):
    # The time-parallel products (input projection, weight gradients, dx) run
    # per chunk of ~1024 rows: 150 steps x 16 rows span three chunks, with
    # ragged packed lengths and both directions.
    if mode != "LSTM" and proj_size:
        pytest.skip("projection is LSTM-only")
    kwargs = dict(bidirectional=True, proj_size=proj_size) if proj_size else dict(bidirectional=True)
    ref, fast = run_both(mode, 150, 16, 7, 33, torch.float64, packed=True, **kwargs)
    assert_all_close(fast, ref, "tensor")


@pytest.mark.parametrize("capability", CAPABILITIES, indirect=True)
@pytest.mark.parametrize("mode,kwargs", [("LSTM", {}), ("GRU", {}), ("RNN", {"bias": False}),
                                         ("LSTM", {"proj_size": 7})], ids=["LSTM", "GRU", "RNN-nobias", "LSTM-proj"])
def test_weight_gradients_of_calls_of_a_few_rows(capability, threads, split_small_calls, mode, kwargs):
    # Calls of up to 8 rows in all sum outer products for the weight gradients
    # (backward_loop.cpp, kMaxOuterProductRows); 9 rows and more transpose and
    # pack. Both sides, with rows that start from h0 among rows that continue
    # (packed, ragged: 5-8 rows), and thread slices; H=41 leaves tiles of 1-3
    # rows of the gradients.
    for T, B, packed in [(1, 1, False), (1, 8, False), (2, 4, True), (1, 9, False), (3, 3, False), (3, 4, False)]:
        ref, fast = run_both(mode, T, B, 11, 41, torch.float64, packed=packed, **kwargs)
        assert_all_close(fast, ref, "tensor")


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_threaded_loop_is_bitwise_deterministic(mode):
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    runs = []
    try:
        for _ in range(3):
            torch.manual_seed(7)  # same weights and data every run
            runs.append(run_both(mode, 20, 16, 32, 64, torch.float32, packed=True,
                                 bidirectional=True)[1])
    finally:
        torch.set_num_threads(previous)
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other))


def test_unknown_capability_is_rejected():
    with pytest.raises(RuntimeError, match="unknown CPU capability"):
        C.set_cpu_capability("sse9")
