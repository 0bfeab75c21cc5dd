"""The extension's layer entry points, below the modules.

* every instruction-set build of the CPU kernels against torch.nn, at thread
  counts that do and do not split the hidden units across threads;
* the chunked input projection of long inference runs;
* the C++ layer's own argument checks (it must raise, never crash);
* bitwise determinism of the threaded time loop.
"""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast
from rnnfast import _extension

from conftest import TOL

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


def assert_all_close(ref, fast, dtype):
    assert len(ref) == len(fast)
    for i, (a, b) in enumerate(zip(ref, fast)):
        torch.testing.assert_close(b, a, **TOL[dtype], msg=lambda m: f"tensor #{i}: {m}")


@pytest.mark.parametrize("capability", CAPABILITIES, indirect=True)
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_every_instruction_set(capability, threads, mode):
    # H=40 with B=9 splits into slices at 2 threads (unaligned boundary, partial
    # vectors); packed + bidirectional covers the rows that start from h0.
    for dtype in (torch.float32, torch.float64):
        ref, fast = run_both(mode, 6, 9, 5, 40, dtype, packed=True, bidirectional=True,
                             num_layers=2)
        assert_all_close(ref, fast, dtype)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_small_hidden_is_not_split(threads, mode):
    ref, fast = run_both(mode, 5, 3, 4, 3, torch.float64, packed=True, bidirectional=True)
    assert_all_close(ref, fast, torch.float64)


def test_projection_split_across_threads(threads):
    ref, fast = run_both("LSTM", 7, 6, 9, 48, torch.float64, packed=True, bidirectional=True,
                         proj_size=35)
    assert_all_close(ref, fast, torch.float64)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("packed", [False, True])
def test_long_inference_uses_several_input_chunks(mode, packed):
    # 8192 rows per chunk: T*B = 12800 rows gives two chunks (both directions).
    ref, fast = run_both(mode, 400, 32, 3, 8, torch.float64, packed=packed, infer=True,
                         bidirectional=True)
    assert_all_close(ref, fast, torch.float64)


@pytest.mark.parametrize("proj_size", [0, 5])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_training_over_several_row_chunks(threads, mode, proj_size):
    # The time-parallel products (input projection, weight gradients, dx) run
    # per chunk of ~1024 rows: 150 steps x 16 rows span three chunks, with
    # ragged packed lengths and both directions.
    if mode == "GRU" and proj_size:
        pytest.skip("projection is LSTM-only")
    kwargs = dict(bidirectional=True, proj_size=proj_size) if proj_size else dict(bidirectional=True)
    ref, fast = run_both(mode, 150, 16, 7, 33, torch.float64, packed=True, **kwargs)
    assert_all_close(ref, fast, torch.float64)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
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


def test_inference_saves_nothing():
    x = torch.randn(6, 4)
    bs = torch.tensor([2, 2, 1, 1], dtype=torch.int64)
    w_ih, w_hh, b = torch.randn(9, 4), torch.randn(9, 3), torch.randn(9)  # GRU, H=3
    y, h_n = torch.empty(6, 3), torch.empty(2, 3)
    saved = C.gru_forward(x, bs, torch.randn(2, 3), w_ih, w_hh, b, b, False, False, y, h_n)
    assert saved == []
    saved = C.gru_forward(x, bs, torch.randn(2, 3), w_ih, w_hh, b, b, False, True, y, h_n)
    assert [t.shape for t in saved] == [(6, 9), (6, 3)]


# --- the C++ layer's own argument checks ------------------------------------------------
def lstm_args(**override):
    """Valid arguments of C.lstm_forward (N=5 rows: batch_sizes [3, 2]), with overrides."""
    H, I, B = 4, 3, 3
    args = dict(
        x=torch.randn(5, I), batch_sizes=torch.tensor([3, 2]), h0=torch.randn(B, H),
        c0=torch.randn(B, H), w_ih=torch.randn(4 * H, I), w_hh=torch.randn(4 * H, H),
        b_ih=torch.randn(4 * H), b_hh=torch.randn(4 * H), w_hr=None, reverse=False,
        training=True, y=torch.empty(5, H), h_n=torch.empty(B, H), c_n=torch.empty(B, H),
    )
    args.update(override)
    return args


BAD_FORWARD_ARGS = {
    "x rank": (dict(x=torch.randn(5, 3, 1)), "x must be a 2-D"),
    "x dtype": (dict(x=torch.randn(5, 3).half()), "only float32 and float64"),
    "x non-contiguous": (dict(x=torch.randn(3, 5).t()), "x must be contiguous"),
    "batch_sizes increasing": (dict(batch_sizes=torch.tensor([2, 3])), "non-increasing"),
    "batch_sizes zero": (dict(batch_sizes=torch.tensor([5, 0])), "must be positive"),
    "batch_sizes sum": (dict(batch_sizes=torch.tensor([3, 1])), "sum to 4 but x has 5 rows"),
    "batch_sizes dtype": (dict(batch_sizes=torch.tensor([3.0, 2.0])), "int64 CPU tensor"),
    "batch_sizes empty": (dict(batch_sizes=torch.zeros(0, dtype=torch.int64)), "at least one"),
    "h0 shape": (dict(h0=torch.randn(2, 4)), "h0 must have shape [3, 4]"),
    "c0 shape": (dict(c0=torch.randn(3, 5)), "c0 must have shape [3, 4]"),
    "h0 dtype": (dict(h0=torch.randn(3, 4).double()), "h0 has dtype"),
    "w_ih shape": (dict(w_ih=torch.randn(16, 2)), "w_ih must have shape [16, 3]"),
    "w_ih not 4H": (dict(w_ih=torch.randn(15, 3)), "w_ih must be [4*H, I]"),
    "w_hh shape": (dict(w_hh=torch.randn(16, 5)), "w_hh must have shape [16, 4]"),
    "bias shape": (dict(b_ih=torch.randn(15)), "b_ih must have shape [16]"),
    "one bias": (dict(b_hh=None), "both biases or neither"),
    "w_hr shape": (dict(w_hr=torch.randn(2, 5), w_hh=torch.randn(16, 2), h0=torch.randn(3, 2),
                        y=torch.empty(5, 2), h_n=torch.empty(3, 2)), "w_hr must have shape [2, 4]"),
    "y shape": (dict(y=torch.empty(4, 4)), "y must have shape [5, 4]"),
    "y column stride": (dict(y=torch.empty(4, 5).t()), "unit column stride"),
    "h_n shape": (dict(h_n=torch.empty(3, 3)), "h_n must have shape [3, 4]"),
    "c_n shape": (dict(c_n=torch.empty(3, 5)), "c_n must have shape [3, 4]"),
}


@pytest.mark.parametrize("case", list(BAD_FORWARD_ARGS), ids=list(BAD_FORWARD_ARGS))
def test_forward_checks_its_arguments(case):
    override, message = BAD_FORWARD_ARGS[case]
    with pytest.raises(RuntimeError, match=message.replace("[", r"\[").replace("*", r"\*")):
        C.lstm_forward(**lstm_args(**override))


def test_backward_checks_its_arguments():
    args = lstm_args()
    saved = C.lstm_forward(**args)
    common = {k: args[k] for k in ("x", "batch_sizes", "h0", "c0", "w_ih", "w_hh", "b_ih",
                                   "b_hh", "w_hr", "reverse", "y")}
    good = dict(common, saved=saved, dy=torch.randn(5, 4), dh_n=torch.randn(3, 4),
                dc_n=torch.randn(3, 4), dx=torch.empty(5, 3), accumulate_dx=False,
                need_weight_grads=True)
    grads = C.lstm_backward(**good)
    assert [g is None for g in grads] == [False] * 6 + [True]
    bad = {
        "saved count": (dict(saved=saved[:1]), "expected 2 saved tensors"),
        "saved shape": (dict(saved=[saved[0][:4], saved[1]]), "saved gates must have shape"),
        "dy shape": (dict(dy=torch.randn(5, 3)), "dy must have shape"),
        "dh_n shape": (dict(dh_n=torch.randn(2, 4)), "dh_n must have shape"),
        "dx shape": (dict(dx=torch.empty(5, 4)), "dx must have shape"),
    }
    for name, (override, message) in bad.items():
        with pytest.raises(RuntimeError, match=message):
            C.lstm_backward(**dict(good, **override))


def test_unknown_capability_is_rejected():
    with pytest.raises(RuntimeError, match="unknown CPU capability"):
        C.set_cpu_capability("sse9")
