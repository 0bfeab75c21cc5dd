"""Reliability: no leaks over many calls, the thread policy (plans the tests claim, concurrent
calls, contention), fork-safety, and switching the CPU instruction set while other threads compute.

Every test here either forces the path it means to exercise (``set_min_parallel_macs(0)`` makes
small calls split across threads) or asserts that the path ran (``last_call_plan``).
"""

import ctypes
import multiprocessing
import os
import subprocess
import sys
import threading
import time

import pytest
import torch

import rnnfast
from rnnfast import _extension

from cases import TOL, assert_close, run_concurrently

C = _extension.require_extension()


@pytest.fixture(params=[1, 2, 3, 4], ids=lambda n: f"{n}threads")
def thread_count(request, split_small_calls):
    previous = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(previous)


def _pair(mode, I, H, **kwargs):
    ref = getattr(torch.nn, mode)(I, H, **kwargs)
    fast = getattr(rnnfast, mode)(I, H, **kwargs)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


# ---- plans: the paths the tests claim ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_parity_at_every_thread_count(mode, thread_count):
    """More threads than cores is fine for correctness; the plan never uses more slices than the
    threads asked for or the machine's cores."""
    ref, fast = _pair(mode, 5, 64, bidirectional=True, num_layers=2)
    x = torch.randn(9, 4, 5, requires_grad=True)
    out_ref, _ = ref(x)
    out_fast, _ = fast(x)
    assert_close(out_fast, out_ref, "output")
    # Threads beyond the machine's cores are never leased. How many of those are granted depends on
    # the machine's load (a contention back-off puts calls on one thread, and it can start or end
    # during the call), so that is all this can assert on any machine, busy or quiet; splitting
    # is checked where it is forced (test_small_calls_split_when_forced).
    state = C.thread_policy_state()
    slices = C.last_call_plan()["slices"]
    assert 1 <= slices <= min(thread_count, state["capacity"]), (C.last_call_plan(), state)
    if thread_count == 1:
        assert slices == 1
    (g_ref,) = torch.autograd.grad(out_ref.square().sum(), x)
    (g_fast,) = torch.autograd.grad(out_fast.square().sum(), x)
    assert_close(g_fast, g_ref, "input gradient")
    assert C.last_call_plan()["backward"]


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_batch_split_forward_matches_torch(mode, two_threads):
    """A padded batch of 16+ rows per thread runs its forward split by rows (each thread whole
    steps of its sequences, no barrier per step): outputs and every gradient against torch.nn,
    two layers, both directions, an odd batch (33: 16 + 17 rows)."""
    ref, fast = _pair(mode, 7, 40, bidirectional=True, num_layers=2)
    x = torch.randn(11, 33, 7, requires_grad=True)
    h0 = torch.randn(4, 33, 40)  # (random initial states: each thread's rows start from their own)
    hx = (h0, torch.randn(4, 33, 40)) if mode == "LSTM" else h0
    C.reset_thread_policy()
    out_fast, h_fast = fast(x, hx)
    plan = C.last_call_plan()
    assert plan["batch_split"] == (plan["slices"] == 2), plan  # (a busy machine may run one thread)
    out_ref, h_ref = ref(x, hx)
    assert_close(out_fast, out_ref, "output")
    for a, b in zip(h_fast if isinstance(h_fast, tuple) else (h_fast,), h_ref if isinstance(h_ref, tuple) else (h_ref,)):
        assert_close(a, b, "final state")
    grads_fast = torch.autograd.grad(out_fast.square().sum(), [x, *fast.parameters()])
    grads_ref = torch.autograd.grad(out_ref.square().sum(), [x, *ref.parameters()])
    for k, (a, b) in enumerate(zip(grads_fast, grads_ref)):
        assert_close(a, b, f"gradient {k}")


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_small_calls_split_when_forced(mode, split_small_calls, two_threads):
    ref, fast = _pair(mode, 3, 48)
    x = torch.randn(4, 4, 3)  # 4 rows x 3-4 gates x 48 x 48 per step: enough work per barrier
    with torch.no_grad():
        assert_close(fast(x)[0], ref(x)[0], "output")
    assert C.last_call_plan()["slices"] == 2, C.last_call_plan()


def test_small_calls_stay_on_one_thread_by_default(two_threads):
    C.reset_thread_policy()
    fast = rnnfast.LSTM(3, 48)
    with torch.no_grad():
        fast(torch.randn(4, 2, 3))
    assert C.last_call_plan()["slices"] == 1  # 4*2*192*51 multiply-adds < 2^17


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_one_step_calls_do_not_split_the_batch(mode, two_threads):
    """A one-step call of a batch large enough to split (33 rows) runs sliced by hidden units:
    its weights are streamed (each thread packs its slice once) and it has no per-step barriers to
    save. Outputs and gradients against torch.nn."""
    ref, fast = _pair(mode, 7, 40)
    x = torch.randn(1, 33, 7, requires_grad=True)
    C.reset_thread_policy()
    out_fast, _ = fast(x)
    plan = C.last_call_plan()
    assert not plan["batch_split"] and plan["streamed"] == 2, plan
    out_ref, _ = ref(x)
    assert_close(out_fast, out_ref, "output")
    grads_fast = torch.autograd.grad(out_fast.square().sum(), [x, *fast.parameters()])
    grads_ref = torch.autograd.grad(out_ref.square().sum(), [x, *ref.parameters()])
    for k, (a, b) in enumerate(zip(grads_fast, grads_ref)):
        assert_close(a, b, f"gradient {k}")


def test_long_sequences_use_several_chunks():
    fast = rnnfast.GRU(3, 8)
    with torch.no_grad():
        fast(torch.randn(300, 4, 3))  # 1200 rows: chunks of at most 512
    plan = C.last_call_plan()
    assert plan["chunks"] == 3 and plan["chunk_rows"] <= 512, plan


def test_one_step_of_a_small_batch_reads_weights_in_place():
    fast = rnnfast.LSTMCell(3, 8)
    x = torch.randn(2, 3, requires_grad=True)
    h, c = fast(x)
    assert C.last_call_plan()["unpacked"]
    (h.sum() + c.sum()).backward()
    assert C.last_call_plan()["backward"] and C.last_call_plan()["unpacked"]


# ---- leaks -------------------------------------------------------------------------------------


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _heap_in_use() -> int:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


@pytest.mark.parametrize("threads", [1, 2])
def test_no_leak_over_many_training_calls(threads, split_small_calls):
    """Heap bytes in use (glibc's allocator statistics) stay flat over 3000 training calls whose
    time loops run on `threads` threads (the barrier of every parallel region used to leak its
    flags: ~500 bytes per training call at 2 threads)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fast = rnnfast.LSTM(8, 64)
        x = torch.randn(6, 3, 8, requires_grad=True)

        def call():
            out, _ = fast(x)
            out.sum().backward()

        for _ in range(300):
            call()
        # (a busy machine may have put the warm-up on one thread: the back-off; this call starts clear)
        C.reset_thread_policy()
        call()
        # The backward runs on `threads` slices unless its own forward found the machine busy (the
        # back-off then puts it on one thread: the policy working, seen under a concurrent job).
        assert C.last_call_plan()["slices"] == threads or C.thread_policy_state()["backoffs"] > 0
        before = _heap_in_use()
        for _ in range(3000):
            call()
        growth = _heap_in_use() - before
    finally:
        torch.set_num_threads(previous)
    assert growth < 300_000, f"heap grew by {growth} bytes over 3000 calls"


# ---- concurrency and contention ---------------------------------------------------------------


def test_concurrent_python_threads_get_correct_results(split_small_calls, two_threads):
    """Four Python threads calling at once share the machine's cores (leases); every result is
    the one computed alone."""
    torch.manual_seed(0)
    fast = rnnfast.GRU(8, 64)
    inputs = [torch.randn(12, 3, 8) for _ in range(4)]
    with torch.no_grad():
        expected = [fast(x)[0] for x in inputs]

    def worker(k):
        with torch.no_grad():
            for _ in range(50):
                torch.testing.assert_close(fast(inputs[k])[0], expected[k], rtol=0, atol=0)

    run_concurrently(worker, 4)
    state = C.thread_policy_state()
    assert state["in_use"] == 0, state  # every lease returned


def test_contention_sends_calls_to_one_thread(split_small_calls, two_threads):
    """Other processes busy on every core: either the threads of the parallel calls get preempted
    often and the policy backs off to one thread, or they were not disturbed (this scheduler
    favours them) and the calls stay as fast as when quiet. Results stay the same either way."""
    import statistics

    fast = rnnfast.LSTM(8, 64)
    x = torch.randn(200, 2, 8)

    def timed_call():
        t0 = time.perf_counter()
        out = fast(x)[0]
        return time.perf_counter() - t0, out

    with torch.no_grad():
        expected = fast(x)[0]
        quiet = statistics.median(timed_call()[0] for _ in range(30))
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
        try:
            time.sleep(0.3)
            C.reset_thread_policy()
            busy, deadline = [], time.perf_counter() + 2.0
            while time.perf_counter() < deadline and not C.thread_policy_state()["backoffs"]:
                seconds, out = timed_call()
                busy.append(seconds)
                torch.testing.assert_close(out, expected, rtol=0, atol=0)
            if C.thread_policy_state()["backoffs"]:
                fast(x)
                assert C.last_call_plan()["slices"] == 1, C.last_call_plan()  # backed off
            else:
                assert statistics.median(busy) <= 2 * quiet, (statistics.median(busy), quiet)
        finally:
            for h in hogs:
                h.kill()
                h.wait()


@pytest.fixture
def clean_thread_policy():
    C.reset_thread_policy()
    yield
    C.reset_thread_policy()


def test_one_stray_preemption_does_not_back_off(clean_thread_policy):
    """A parallel call whose threads waited for a CPU (1 ms and a quarter of their time) is
    contended. The back-off starts at a contended call that began within 250 ms of the previous
    contended call's end (a back-off's end counts as one), or that follows another contended call
    (the first parallel call after a back-off follows the one that started it); a lone one does not
    back off. (Calls reported through the policy's own entry point with made-up waits, as the time
    loops report them; no rnnfast call runs in this process meanwhile.)"""
    ms = 1_000_000

    def report(waited_ns, duration_ns=4 * ms):
        C._report_parallel_region(preemptions=1, waited_ns=waited_ns, threads=2, duration_ns=duration_ns)
        return C.thread_policy_state()

    def backed_off(s):
        return s["backoffs"] > 0 and s["serial_until_ns"] > 0

    s = report(3 * ms)  # a lone contended call
    assert (s["contended_calls"], s["backoffs"], s["serial_until_ns"]) == (1, 0, 0), s
    s = report(ms - 1)  # under 1 ms: clean
    assert (s["contended_calls"], s["backoffs"]) == (1, 0), s
    s = report(1 * ms, duration_ns=10 * ms)  # under a quarter of 2 x 10 ms: clean
    assert (s["contended_calls"], s["backoffs"]) == (1, 0), s
    s = report(ms - 1, duration_ns=ms)  # most of the call's time, but under 1 ms: clean
    assert (s["contended_calls"], s["backoffs"]) == (1, 0), s
    time.sleep(0.1)
    s = report(3 * ms)  # ~100 ms after the first one's end, clean calls between: a pair
    assert s["contended_calls"] == 2 and backed_off(s), s
    time.sleep(0.3)  # (the back-off: 250 ms)
    s = report(3 * ms)  # the first parallel call after the back-off, contended: another one
    assert s["backoffs"] == 2, s
    time.sleep(0.6)  # (500 ms)
    report(0)  # a clean call ends the escalation
    s = report(3 * ms)  # within 250 ms of the back-off's end, after a clean call: a pair
    assert s["backoffs"] == 3, s
    time.sleep(0.3)  # (250 ms again: the clean call reset the escalation)
    report(0)
    time.sleep(0.3)
    s = report(3 * ms)  # ~350 ms after the back-off's end, after a clean call: a stray
    assert (s["contended_calls"], s["backoffs"]) == (5, 3), s

    # Two contended calls in a row, far apart (sparse calls on a loaded machine): a pair.
    C.reset_thread_policy()
    report(3 * ms)
    time.sleep(0.3)
    s = report(3 * ms)
    assert (s["contended_calls"], s["backoffs"]) == (2, 1), s

    # Long calls: the window runs from one contended call's end to the next one's start (here
    # 400 ms calls whose ends are 350 ms apart, with a clean call between).
    C.reset_thread_policy()
    report(300 * ms, duration_ns=400 * ms)
    report(0)
    time.sleep(0.35)
    s = report(300 * ms, duration_ns=400 * ms)
    assert (s["contended_calls"], s["backoffs"]) == (2, 1), s


def test_a_short_call_is_judged_by_its_duration(clean_thread_policy):
    """A parallel call too small to read the scheduler's account (thread_policy.h, RegionWatch) is
    contended when it lasted 1 ms or more, under the same pair rule: a lone one does not back off;
    one within 250 ms of the last contended call's end does, and so does one right after another."""
    ms = 1_000_000

    def report(duration_ns):
        C._report_timed_region(duration_ns=duration_ns)
        return C.thread_policy_state()

    s = report(3 * ms)
    assert (s["contended_calls"], s["backoffs"], s["serial_until_ns"]) == (1, 0, 0), s
    s = report(ms - 1)
    assert (s["contended_calls"], s["backoffs"]) == (1, 0), s
    s = report(2 * ms)  # a clean call between, but within 250 ms of the first one's end: a pair
    assert s["contended_calls"] == 2 and s["backoffs"] == 1 and s["serial_until_ns"] > 0, s

    C.reset_thread_policy()
    report(3 * ms)
    report(ms - 1)
    time.sleep(0.3)  # (beyond the 250 ms window)
    s = report(2 * ms)  # after a clean call, far from the last contended one: a stray
    assert (s["contended_calls"], s["backoffs"]) == (2, 0), s
    s = report(ms)  # right after a contended call: a pair
    assert s["contended_calls"] == 3 and s["backoffs"] == 1 and s["serial_until_ns"] > 0, s


@pytest.mark.skipif(not os.path.exists("/proc/thread-self/schedstat"), reason="no schedstat here")
def test_parallel_calls_read_the_scheduler_waits(split_small_calls, two_threads):
    """The contention signal is the kernel's run_delay: a parallel call that may last a millisecond
    knows how long its threads waited for a CPU (never negative where schedstat exists); a smaller
    one, of at most 64 steps and under 2^20 multiply-adds per row of the batch (2^23 in all), is
    timed only (-1: not read)."""
    fast = rnnfast.LSTM(8, 64)
    cases = (
        (100, 4, True),  # 100 steps
        (20, 4, False),  # 20 x 4 rows x 256 x 72 = 1.5M multiply-adds, under 4 x 2^20
        (60, 1, True),  # 60 x 1 x 256 x 72 = 1.1M, over 1 x 2^20: B=1 is memory-bound
        (20, 32, True),  # 11.8M, over 2^23
    )
    with torch.no_grad():
        for steps, batch, read in cases:
            C.reset_thread_policy()
            fast(torch.randn(steps, batch, 8))
            plan = C.last_call_plan()
            if plan["slices"] == 2:  # (a busy machine may keep it on one thread)
                assert (plan["waited_ns"] >= 0) if read else (plan["waited_ns"] == -1), (steps, batch, plan)


# ---- fork --------------------------------------------------------------------------------------


def _child_forward(queue, state_dict, x):
    torch.set_num_threads(2)
    fast = rnnfast.LSTM(8, 64)
    fast.load_state_dict(state_dict)
    with torch.no_grad():
        out = fast(x)[0]
    # Plain lists: a tensor would travel through shared memory owned by this (exiting) process.
    queue.put((out.tolist(), C.thread_policy_state()["forked_child"], C.last_call_plan()["slices"]))


def test_forked_child_computes_and_does_not_hang(split_small_calls, two_threads):
    fast = rnnfast.LSTM(8, 64)
    x = torch.randn(10, 3, 8)
    with torch.no_grad():
        expected = fast(x)[0]  # the parent's OpenMP pool is running
    assert C.last_call_plan()["slices"] == 2
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_forward, args=(queue, fast.state_dict(), x))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung")
    assert child.exitcode == 0
    out, forked, slices = queue.get(timeout=10)
    assert forked and slices == 1
    torch.testing.assert_close(torch.tensor(out), expected, **TOL[torch.float32])


class _Sequences(torch.utils.data.Dataset):
    """Each item runs an rnnfast forward in the DataLoader worker."""

    def __init__(self, model, inputs):
        self.model, self.inputs = model, inputs

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, k):
        with torch.no_grad():
            return self.model(self.inputs[k])[0]


def test_dataloader_fork_workers(split_small_calls, two_threads):
    model = rnnfast.GRU(8, 64)
    inputs = [torch.randn(10, 8) for _ in range(6)]
    with torch.no_grad():
        expected = [model(x)[0] for x in inputs]
    loader = torch.utils.data.DataLoader(_Sequences(model, inputs), batch_size=None, num_workers=2,
                                         multiprocessing_context="fork", timeout=60)
    for got, want in zip(loader, expected):
        torch.testing.assert_close(got, want, **TOL[torch.float32])


# ---- switching the instruction set while others compute -------------------------------------


def test_capability_switch_during_calls(split_small_calls, two_threads):
    capabilities = rnnfast.backend()["cpu_capabilities"]
    if len(capabilities) < 2:
        pytest.skip("one instruction set on this CPU")
    ref, fast = _pair("LSTM", 16, 64)
    x = torch.randn(40, 4, 16)
    with torch.no_grad():
        expected = ref(x)[0]
    original = C.cpu_capability()
    stop = threading.Event()
    errors = []

    def compute():
        try:
            with torch.no_grad():
                while not stop.is_set():
                    torch.testing.assert_close(fast(x)[0], expected, **TOL[torch.float32])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    worker = threading.Thread(target=compute)
    worker.start()
    try:
        for k in range(300):
            C.set_cpu_capability(capabilities[k % len(capabilities)])
    finally:
        stop.set()
        worker.join()
        C.set_cpu_capability(original)
    assert not errors, errors[0]
