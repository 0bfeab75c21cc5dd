"""Property-based fuzzing (hypothesis) of the modules against torch.nn.

Drawn: cell, sizes (including 0 where torch.nn allows), layers, directions, batch_first, bias,
proj_size, input form (padded, unbatched, packed sorted or not), strides (non-contiguous views),
dtype, and perturbations that make the call invalid (a hidden state of the wrong shape, rank or
dtype). Properties:
* rnnfast never crashes the process;
* where torch.nn raises, rnnfast raises the same exception type;
* where torch.nn returns, rnnfast returns the same structure and values (float64: tight);
* a malformed PackedSequence (batch sizes not positive, not non-increasing, or not summing to the
  data's rows), which torch.nn may accept silently, gets a clear error from rnnfast;
* where torch.nn leaves a call unchecked and crashes or returns garbage (torch_unchecked), rnnfast
  raises.
bfloat16 and float16 values compare with the low-precision tolerance of cases.TOL.
"""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from cases import assert_outputs_close, capture

import rnnfast

SETTINGS = settings(max_examples=400, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def module_calls(draw):
    mode = draw(st.sampled_from(["LSTM", "GRU", "RNN_tanh", "RNN_relu"]))
    cls = mode.split("_")[0]
    I = draw(st.integers(1, 6))
    H = draw(st.integers(1, 7))
    kwargs = dict(
        num_layers=draw(st.integers(1, 3)),
        bidirectional=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bias=draw(st.booleans()),
        dtype=draw(st.sampled_from([torch.float64, torch.float64, torch.float32, torch.bfloat16, torch.float16])),
    )
    if cls == "RNN":
        kwargs["nonlinearity"] = mode.split("_")[1]
    if cls == "LSTM" and H > 1 and draw(st.booleans()):
        kwargs["proj_size"] = draw(st.integers(1, H - 1))
    D = 2 if kwargs["bidirectional"] else 1
    P = kwargs.get("proj_size", 0) or H
    form = draw(st.sampled_from(["padded", "unbatched", "packed_sorted", "packed_unsorted"]))
    T = draw(st.integers(0 if form == "padded" else 1, 6))
    B = draw(st.integers(0 if form == "padded" else 1, 4))
    dtype = kwargs["dtype"]
    input_dtype = draw(st.sampled_from([dtype, dtype, dtype, torch.float32, torch.int64]))

    def tensor(*shape, dt=None, strided=False):
        dt = dt or dtype
        if dt.is_floating_point:
            t = torch.randn(*shape, dtype=torch.float64).to(dt)
        else:
            t = torch.randint(-3, 4, shape, dtype=dt)
        if strided and t.dim() >= 2:  # the same values through a non-contiguous view
            t = t.transpose(0, 1).contiguous().transpose(0, 1)
        return t

    strided = draw(st.booleans())
    if form == "unbatched":
        x = tensor(T, I, dt=input_dtype, strided=strided)
    elif kwargs["batch_first"]:
        x = tensor(B, T, I, dt=input_dtype, strided=strided)
    else:
        x = tensor(T, B, I, dt=input_dtype, strided=strided)
    if form.startswith("packed"):
        lengths = torch.tensor([T] + [draw(st.integers(1, T)) for _ in range(B - 1)])
        lengths = lengths[torch.randperm(B)] if form == "packed_unsorted" else lengths.sort(descending=True).values
        x = pack_padded_sequence(x, lengths, batch_first=kwargs["batch_first"],
                                 enforce_sorted=form == "packed_sorted")
    hx = None
    if draw(st.booleans()):
        batch = () if form == "unbatched" else (B,)
        h_shape = [kwargs["num_layers"] * D, *batch, P]
        c_shape = [kwargs["num_layers"] * D, *batch, H]
        perturb = draw(st.sampled_from(["none", "none", "none", "shape", "rank", "dtype"]))
        if perturb == "shape":
            k = draw(st.integers(0, len(h_shape) - 1))
            h_shape[k] += draw(st.sampled_from([-1, 1]))
            h_shape[k] = max(h_shape[k], 0)
        if perturb == "rank":
            h_shape = h_shape[1:] if len(h_shape) > 1 else h_shape + [1]
        h_dtype = torch.float32 if perturb == "dtype" and dtype != torch.float32 else dtype
        h = tensor(*h_shape, dt=h_dtype, strided=strided)
        hx = (h, tensor(*c_shape)) if cls == "LSTM" else h
    return cls, (I, H), kwargs, x, hx


def torch_unchecked(cls, args, kwargs, x, hx) -> bool:
    """torch.nn.LSTM (2.13) checks no hidden state of a PackedSequence call itself: with a
    malformed one its kernel segfaults (h0 with more layers*directions than the module has,
    reproduced without rnnfast), returns a result (h0 with batch 0), or raises whatever its
    indexing hits first. Such a call is not made to torch.nn; rnnfast must raise the error types
    torch.nn gives for a wrong hidden state elsewhere (RuntimeError; IndexError for a wrong rank,
    as torch.nn.LSTM's packed path)."""
    if cls != "LSTM" or not isinstance(x, PackedSequence) or hx is None:
        return False
    H = args[1]
    D = 2 if kwargs["bidirectional"] else 1
    P = kwargs.get("proj_size", 0) or H
    B = int(x.batch_sizes[0])
    layers = kwargs["num_layers"] * D

    def malformed(t, width):
        if t.dim() != 3:
            return True
        # Unsorted input: torch.nn first selects the rows of the permutation (index_select on dim 1,
        # which checks its indices), so only the other dimensions go unchecked.
        batch_ok = x.sorted_indices is not None or t.size(1) == B
        return t.size(0) != layers or t.size(2) != width or not batch_ok

    return malformed(hx[0], P) or malformed(hx[1], H)


@SETTINGS
@given(module_calls())
def test_modules_behave_like_torch(call):
    cls, args, kwargs, x, hx = call
    torch.manual_seed(0)
    reference = getattr(torch.nn, cls)(*args, **kwargs)
    fast = getattr(rnnfast, cls)(*args, **kwargs)
    fast.load_state_dict(reference.state_dict())
    reference.eval()
    fast.eval()
    if torch_unchecked(cls, args, kwargs, x, hx):
        actual = capture(lambda: fast(x, hx))
        assert actual[0] == "raised" and isinstance(actual[1], (RuntimeError, IndexError)), actual
        return
    expected = capture(lambda: reference(x, hx))
    actual = capture(lambda: fast(x, hx))
    if expected[0] == "raised":
        assert actual[0] == "raised", f"torch raised {expected[1]!r}; rnnfast returned"
        assert type(actual[1]) is type(expected[1]), f"rnnfast raised {actual[1]!r}, torch {expected[1]!r}"
        return
    assert actual[0] == "ok", f"rnnfast raised {actual[1]!r} where torch returned"
    assert_outputs_close(expected[1], actual[1])


@st.composite
def malformed_packed(draw):
    T = draw(st.integers(1, 5))
    sizes = draw(st.lists(st.integers(-1, 4), min_size=T, max_size=T))
    valid = all(s >= 1 for s in sizes) and all(a >= b for a, b in zip(sizes, sizes[1:]))
    rows = sum(max(s, 0) for s in sizes) + draw(st.sampled_from([0, 0, -1, 1]))
    return sizes, max(rows, 0), valid and rows == sum(sizes)


@SETTINGS
@given(malformed_packed(), st.sampled_from(["LSTM", "GRU", "RNN"]), st.booleans())
def test_malformed_packed_sequence_is_a_clear_error(case, cls, with_hx):
    sizes, rows, valid = case
    torch.manual_seed(0)
    fast = getattr(rnnfast, cls)(3, 4, dtype=torch.float64)
    data = torch.randn(rows, 3, dtype=torch.float64)
    batch = max(sizes[0], 1)
    packed = PackedSequence(data, torch.tensor(sizes, dtype=torch.int64))
    hx = None
    if with_hx:
        h = torch.randn(1, batch, 4, dtype=torch.float64)
        hx = (h, torch.randn(1, batch, 4, dtype=torch.float64)) if cls == "LSTM" else h
    actual = capture(lambda: fast(packed, hx))
    if valid:
        reference = getattr(torch.nn, cls)(3, 4, dtype=torch.float64)
        reference.load_state_dict(fast.state_dict())
        expected = capture(lambda: reference(packed, hx))
        assert actual[0] == expected[0] == "ok", (actual, expected)
        assert_outputs_close(expected[1], actual[1])
        return
    assert actual[0] == "raised", f"rnnfast accepted batch_sizes {sizes} with {rows} rows"
    assert isinstance(actual[1], (RuntimeError, ValueError, IndexError)), repr(actual[1])
    message = str(actual[1])
    assert any(word in message for word in ("batch_sizes", "batch size", "hidden", "Expected", "rows")), message
