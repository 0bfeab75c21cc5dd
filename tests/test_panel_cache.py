"""The panel cache (csrc/cpu/panel_cache.h): packed weight panels kept across calls.

* reuse: a second call with the same weights packs nothing, and gives the same bits;
* invalidation by every way a weight can change: in-place ops, ``.data`` and numpy writes (which
  do not bump torch's version counter), ``load_state_dict``, the optimizers (foreach, and fused
  Adam, whose step does not bump the version counter either), the smallest change (one element
  by one ulp); after each, rnnfast matches torch.nn on the new weights;
* training: several optimizer steps, every output and gradient against torch.nn;
* memory: the capacity bounds what is kept (0 disables it), a module's entries go with it;
* concurrency: threads sharing a module, a fork() child.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import pickle
from copy import deepcopy

import pytest
import torch

import rnnfast
from rnnfast import _extension
from rnnfast.reference import layer_direction

from build_kind import STABLE_ABI
from cases import assert_close, run_concurrently

C = _extension.require_extension()


def stats():
    return C.panel_cache_stats()


@contextlib.contextmanager
def capacity(nbytes):
    previous = C._set_panel_cache_capacity(nbytes)
    try:
        yield
    finally:
        C._set_panel_cache_capacity(previous)


def pair(kind, *args, **kwargs):
    torch.manual_seed(0)
    fast = getattr(rnnfast, kind)(*args, **kwargs)
    reference = getattr(torch.nn, kind)(*args, **kwargs)
    reference.load_state_dict(fast.state_dict())
    return reference, fast


def infer(module, x):
    with torch.no_grad():
        out = module(x)
    return out[0] if isinstance(out, tuple) else out


def two_chunks(input_size):
    """An input of 550 rows: two chunks of the input projection, so w_ih goes through the cache
    like w_hh (a single chunk multiplies it once and streams it instead:
    test_weights_used_once_are_streamed)."""
    return torch.randn(110, 5, input_size)


# Calls of more than 4 rows pack their weights (fewer read them in place).
MODULES = [
    ("LSTM", (12, 40), dict(num_layers=2, bidirectional=True)),
    ("LSTM", (12, 40), dict(proj_size=9)),
    ("GRU", (12, 40), dict(num_layers=2)),
    ("RNN", (12, 40), dict(nonlinearity="relu")),
]
IDS = ["lstm-2layer-bidir", "lstm-proj", "gru-2layer", "rnn-relu"]


@pytest.mark.parametrize("kind,args,kwargs", MODULES, ids=IDS)
def test_second_call_reuses_the_panels(kind, args, kwargs):
    _, fast = pair(kind, *args, **kwargs)
    x = torch.randn(6, 5, args[0])
    first = infer(fast, x)
    before = stats()
    second = infer(fast, x)
    after = stats()
    assert after["hits"] > before["hits"] and after["packs"] == before["packs"], (before, after)
    torch.testing.assert_close(second, first, rtol=0, atol=0)


def _inplace(module):
    with torch.no_grad():
        module.weight_hh_l0.mul_(0.5)


def _data(module):
    module.weight_hh_l0.data[3, 2] += 1.0


def _numpy(module):
    module.weight_ih_l0.detach().numpy()[0, 0] += 1.0


def _like_init(t):
    """New values on the scale of torch's initialisation (uniform in +-1/sqrt(hidden)): weights of
    unit variance saturate the gates and make float32 comparisons ill-conditioned."""
    return (torch.rand_like(t) * 2 - 1) / t.shape[-1] ** 0.5


def _copy(module):
    with torch.no_grad():
        module.weight_ih_l0.copy_(_like_init(module.weight_ih_l0))


def _one_ulp(module):
    w = module.weight_hh_l0.data
    w[-1, -1] = torch.nextafter(w[-1, -1], torch.tensor(float("inf")))


def _load_state_dict(module):
    state = {k: _like_init(v) for k, v in module.state_dict().items()}
    module.load_state_dict(state)


CHANGES = {"inplace": _inplace, "data": _data, "numpy": _numpy, "copy_": _copy, "one_ulp": _one_ulp,
           "load_state_dict": _load_state_dict}


@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("kind,args,kwargs", MODULES[:3], ids=IDS[:3])
def test_any_change_of_a_weight_packs_again(kind, args, kwargs, change):
    reference, fast = pair(kind, *args, **kwargs)
    x = two_chunks(args[0])
    infer(fast, x)
    infer(fast, x)  # cached now
    CHANGES[change](fast)
    reference.load_state_dict(fast.state_dict())
    before = stats()
    got = infer(fast, x)
    assert stats()["packs"] > before["packs"]
    # Bitwise what the same call computes without the cache, and torch.nn to rounding.
    with capacity(0):
        uncached = infer(fast, x)
    torch.testing.assert_close(got, uncached, rtol=0, atol=0)
    assert_close(got, infer(reference, x), "output")


@pytest.mark.parametrize("optimizer", ["sgd-foreach", "adam-fused", "adamw"])
@pytest.mark.parametrize("kind,args,kwargs", MODULES, ids=IDS)
def test_training_steps_match_torch(kind, args, kwargs, optimizer):
    """Forward, backward and an optimizer step, four times (panels of both directions of the
    training loop cached and invalidated each step), plus inference between steps."""
    reference, fast = pair(kind, *args, **kwargs)

    def make(module):
        params = list(module.parameters())
        if optimizer == "sgd-foreach":
            return torch.optim.SGD(params, lr=0.1, momentum=0.9, foreach=True)
        if optimizer == "adam-fused":
            return torch.optim.Adam(params, lr=0.05, fused=True)
        return torch.optim.AdamW(params, lr=0.05)

    opts = [make(reference), make(fast)]
    for step in range(4):
        x = two_chunks(args[0])
        outs = []
        for module, opt in zip((reference, fast), opts):
            opt.zero_grad()
            out = module(x)[0]
            # (mean: SGD's steps on a sum over 550 rows would blow the weights up)
            out.square().mean().backward()
            outs.append((out.detach(), [p.grad.clone() for p in module.parameters()]))
            opt.step()
        assert_close(outs[1][0], outs[0][0], f"step {step} output")
        for k, (g, w) in enumerate(zip(outs[1][1], outs[0][1])):
            assert_close(g, w, f"step {step} gradient {k}")
        assert_close(infer(fast, x), infer(reference, x), f"step {step} inference after the update")


def test_cells_reuse_and_invalidate():
    """A cell's step whose x @ w_ih^T has an A operand past the streaming bound (120 rows x 1200
    inputs: 576 KB > 512 KB) caches w_ih and reuses its panels (w_hh, K = 24, is streamed); a
    fused Adam step is seen."""
    reference, fast = pair("LSTMCell", 1200, 24)
    x, h, c = torch.randn(120, 1200), torch.randn(120, 24), torch.randn(120, 24)
    with torch.no_grad():
        fast(x, (h, c))
        before = stats()
        fast(x, (h, c))
        assert C.last_call_plan()["streamed"] == 1, C.last_call_plan()
        assert stats()["hits"] > before["hits"]
    opt = torch.optim.Adam(fast.parameters(), lr=0.1, fused=True)
    fast(x, (h, c))[0].sum().backward()
    opt.step()
    reference.load_state_dict(fast.state_dict())
    with torch.no_grad():
        for g, w in zip(fast(x, (h, c)), reference(x, (h, c))):
            assert_close(g, w, "cell output after a fused Adam step")


# Rows of a one-step call -> whether its forward reads the weights as the GEMM's A operand, per
# instruction set (gemm_impl.h, streams_weight_as_a; 16- and 32-wide panels of rows).
WEIGHT_AS_A = {
    "default": {19: False, 26: False, 32: False},  # no weight-as-A path
    "avx2": {19: False, 26: False, 32: True},  # past one panel, whole panels only
    "avx512": {19: False, 26: True, 32: True},  # from 24 rows, at most a quarter of the padded rows empty
}


@pytest.mark.parametrize("rows", [19, 26, 32])
@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
def test_weights_used_once_are_streamed(kind, rows):
    """A one-step call of 5+ rows multiplies each weight once: it is packed panel by panel as the
    GEMM goes (streamed), never fingerprinted or cached, so every change is seen, those that skip
    the version counter included. Odd sizes: panels cross the gate blocks of a slice. Some row
    counts read the forward's k-contiguous weights in place as the GEMM's A operand instead
    (WEIGHT_AS_A; never in the generic build): 19 rows in no build (with AVX2's 16-wide panels, a
    last panel less than three quarters full), 26 with AVX-512 only, 32 with both."""
    reference, fast = pair(kind, 13, 37)
    x = torch.randn(rows, 13, requires_grad=True)
    h = torch.randn(rows, 37)
    hx = (h, torch.randn(rows, 37)) if kind == "LSTMCell" else h
    isa = rnnfast.backend()["cpu_capability"]
    as_a = 2 if WEIGHT_AS_A["avx512" if isa.startswith("avx512") else isa][rows] else 0  # (a new ISA: KeyError)
    for change in range(3):
        before = stats()
        out = fast(x, hx)
        plan = C.last_call_plan()
        assert plan["streamed"] == 2 and not plan["unpacked"], plan  # w_ih and w_hh
        assert plan["weight_as_a"] == as_a, plan
        after = stats()
        assert (after["packs"], after["hits"]) == (before["packs"], before["hits"]), (before, after)
        ref = reference(x, hx)
        outs = out if isinstance(out, tuple) else (out,)
        refs = ref if isinstance(ref, tuple) else (ref,)
        for a, b in zip(outs, refs):
            assert_close(a, b, f"output after change {change}")
        loss = sum(o.square().sum() for o in outs)
        grads = torch.autograd.grad(loss, [x, *fast.parameters()])
        # (GRU's backward multiplies by w_ih's last gate block apart from the others)
        streamed = 3 if kind == "GRUCell" else 2
        assert C.last_call_plan()["backward"] and C.last_call_plan()["streamed"] == streamed, C.last_call_plan()
        assert C.last_call_plan()["weight_as_a"] == 0, C.last_call_plan()  # row-major there: panels
        ref_grads = torch.autograd.grad(sum(o.square().sum() for o in refs), [x, *reference.parameters()])
        for k, (a, b) in enumerate(zip(grads, ref_grads)):
            assert_close(a, b, f"gradient {k} after change {change}")
        # Writes that leave the version counter as it was.
        fast.weight_ih.data.mul_(0.9)
        fast.weight_hh.detach().numpy()[1, 2] += 0.5
        reference.load_state_dict(fast.state_dict())


def test_a_single_chunk_streams_w_ih_only():
    """A sequence of one chunk multiplies w_ih once (streamed) and w_hh every step (cached)."""
    reference, fast = pair("GRU", 12, 40, num_layers=2)
    x = torch.randn(6, 5, 12)
    infer(fast, x)
    before = stats()
    got = infer(fast, x)
    assert C.last_call_plan()["streamed"] == 1, C.last_call_plan()
    assert stats()["hits"] > before["hits"] and stats()["packs"] == before["packs"]
    assert_close(got, infer(reference, x), "output")


def test_capacity_bounds_the_cache_and_zero_disables_it():
    _, fast = pair("LSTM", 16, 64)
    x = torch.randn(6, 5, 16)
    panels = 4 * 64 * 64 * 4  # one packed weight of this module is about this large
    with capacity(panels * 3):
        for _ in range(3):
            infer(rnnfast.LSTM(16, 64), x)
            assert stats()["bytes"] <= panels * 3
    with capacity(0):
        before = stats()
        infer(fast, x)
        infer(fast, x)
        after = stats()
        assert after["entries"] == 0 and after["bytes"] == 0
        assert after["uncached"] >= before["uncached"] + 2 and after["hits"] == before["hits"]


def test_converted_weights_lose_their_entries():
    """.double() moves the weights to new storages: the module releases the float32 panels at once
    (its _apply; before any lookup, in either build)."""
    C.empty_cache()
    reference, fast = pair("GRU", 12, 48)
    x = two_chunks(12)
    infer(fast, x)
    assert stats()["entries"] == 2
    fast.float()  # no conversion: the weights and their entries stay
    assert stats()["entries"] == 2
    fast.double()
    assert stats()["entries"] == 0
    reference.double()
    assert_close(infer(fast, x.double()), infer(reference, x.double()), "after .double()")
    assert stats()["entries"] == 2
    C.empty_cache()


def test_functional_call_with_fresh_weights():
    """torch.func.functional_call with fresh tensors per call: right every call, and the entries of
    freed weights go (at most the live calls' stay). The stable-ABI build has no weak reference to
    a weight's storage: there such entries stay until eviction or rnnfast.empty_cache()."""
    C.empty_cache()
    reference, fast = pair("LSTM", 12, 40)
    x = two_chunks(12)
    for k in range(6):
        torch.manual_seed(100 + k)
        params = {n: torch.randn_like(p) * 0.3 for n, p in fast.named_parameters()}
        with torch.no_grad():
            got = torch.func.functional_call(fast, params, (x,))[0]
            want = torch.func.functional_call(reference, params, (x,))[0]
        assert_close(got, want, f"functional_call {k}")
        del params
        if STABLE_ABI:
            assert stats()["entries"] <= 2 * (k + 1)
        else:
            assert stats()["entries"] <= 4  # this call's w_ih and w_hh, and the previous call's
    C.empty_cache()
    assert stats()["entries"] == 0


def test_a_new_weight_at_a_used_address_is_packed_again():
    """The operators called directly (no module): a weight freed and another allocated at the same
    address with other values must not reuse the panels packed for the first (the entry's weak
    reference drops them; without one, in the stable-ABI build, the fingerprint check catches
    them). Weights are allocated until one lands at an address used before (at most 64 tries: the
    allocator decides; one allocation per try keeps reuse likely)."""
    C.empty_cache()
    torch.manual_seed(0)
    steps = 70  # 560 rows: two chunks, so w_ih is cached (one chunk streams it)
    x, h0, c0 = torch.randn(8 * steps, 12), torch.randn(8, 32), torch.randn(8, 32)
    w_hh = torch.randn(4 * 32, 32) * 0.2
    hits_before = stats()["hits"]
    addresses = []
    for k in range(64):
        w_ih = torch.empty(4 * 32, 12).normal_().mul_(0.2)
        reused = w_ih.data_ptr() in addresses
        addresses.append(w_ih.data_ptr())
        with torch.no_grad():
            got = torch.ops.rnnfast.layer_forward(0, x, None, h0, c0, w_ih, w_hh, None, None, None, False)[0]
        want, _ = layer_direction("LSTM", x, [8] * steps, (h0, c0), {"w_ih": w_ih, "w_hh": w_hh,
                                            "b_ih": None, "b_hh": None, "w_hr": None})
        assert_close(got, want, f"call {k}")
        del w_ih
        if reused and k >= 3:
            break
    assert stats()["hits"] > hits_before  # w_hh's panels were reused meanwhile
    assert len(set(addresses)) < len(addresses), "no address was reused in 64 tries: the test proves nothing"
    C.empty_cache()


def test_entries_go_with_a_copy():
    C.empty_cache()
    fast = rnnfast.GRU(12, 48)
    x = two_chunks(12)
    copy = pickle.loads(pickle.dumps(fast))
    twin = deepcopy(fast)
    for module in (fast, copy, twin):
        infer(module, x)
    assert stats()["entries"] == 6
    del copy, twin, module
    gc.collect()
    assert stats()["entries"] == 2  # the copies' finalizers released theirs (pickle, deepcopy)
    infer(fast, x)
    assert stats()["entries"] == 2
    C.empty_cache()


def test_entries_go_with_their_module():
    C.empty_cache()
    fast = rnnfast.GRU(12, 48, num_layers=2)
    infer(fast, two_chunks(12))
    assert stats()["entries"] == 4  # w_ih and w_hh of two layers
    del fast
    gc.collect()
    assert stats()["entries"] == 0 and stats()["bytes"] == 0
    # A replaced weight's entries are released when it is replaced.
    fast = rnnfast.GRU(12, 48)
    x = two_chunks(12)
    infer(fast, x)
    fast.weight_hh_l0 = torch.nn.Parameter(torch.randn_like(fast.weight_hh_l0))
    assert stats()["entries"] == 1
    infer(fast, x)
    assert stats()["entries"] == 2
    C.empty_cache()
    assert stats()["entries"] == 0


def test_threads_sharing_a_module():
    reference, fast = pair("LSTM", 12, 40)
    xs = [torch.randn(8, 5, 12) for _ in range(4)]
    want = [infer(reference, x) for x in xs]

    def worker(k):
        for _ in range(20):
            assert_close(infer(fast, xs[k]), want[k], f"thread {k}")

    run_concurrently(worker, 4)


def _child(fast, x, want, queue):
    try:
        fast.weight_hh_l0.data.mul_(0.5)  # the child's own copy changes
        got = infer(fast, x)
        queue.put(float((got - want).abs().max()))
    except Exception as e:  # noqa: BLE001 - reported to the parent
        queue.put(repr(e))


def test_fork_child_sees_its_own_weights():
    reference, fast = pair("LSTM", 12, 40)
    x = torch.randn(8, 5, 12)
    infer(fast, x)  # cached in the parent
    with torch.no_grad():
        reference.weight_hh_l0.mul_(0.5)
    want = infer(reference, x)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(fast, x, want, queue))
    child.start()
    result = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0 and isinstance(result, float) and result < 1e-5, result
