"""Memory a benchmark case uses: ``peak_alloc_bytes()`` (peak allocated bytes of one run; see its
docstring for the method) and the peak resident-set growth of a process.
"""
from __future__ import annotations

import ctypes
import gc
import os
from typing import TYPE_CHECKING, Callable


# The profiler used for peak memory (peak_alloc_bytes) logs "USDT: ... profiler_start/stop" to
# stderr on every use; level 6 silences kineto's log (read when the profiler starts).
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

import torch  # noqa: E402

from timing import IMPLS, sync  # noqa: E402

if TYPE_CHECKING:
    from bench_cases import TimedCase



_libc = None


def _malloc_trim() -> None:
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL("libc.so.6")
        _libc.malloc_trim(0)
    except OSError:
        pass


def _proc_status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_alloc_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated through torch's allocator during one call of fn, above the level at entry.

    CUDA: torch.cuda.reset_peak_memory_stats + max_memory_allocated - memory_allocated at entry.
    CPU : torch 2.13 has no CPU allocator statistics (no torch.cpu.memory). The profiler with
          profile_memory=True records every c10 CPU allocation and free as an Allocation event with
          its signed size and timestamp (torch._C._profiler, experimental_event_tree); the events of
          all threads are sorted by time and summed, and the running maximum is the peak.
          What it sees: every tensor allocated through c10 (ATen ops, at::empty in extensions,
          torch's oneDNN RNN workspace). What it cannot see: memory an extension or library takes
          from malloc/new directly (std::vector, oneDNN-internal scratchpads), or pages the OS maps.
          Frees of blocks allocated before the profiler started are not reported, so callers must
          release such blocks (e.g. set .grad = None) before calling this.
    Validated by validate_peak_alloc(): a known 100 MiB allocation reads as 100 MiB.
    These runs are separate from the timing runs (profiling slows the code down).
    """
    if device.type == "cuda":
        sync(device)
        gc.collect()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = fn()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del out
        return int(peak)
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        if e.tag == _EventType.Allocation and e.extra_fields.device.type == "cpu":
            events.append((e.start_time_ns, e.extra_fields.alloc_size))
        stack.extend(e.children)
    events.sort()
    cur = peak = 0
    for _, size in events:
        cur += size
        peak = max(peak, cur)
    return int(peak)


def peak_rss_delta_bytes(fn: Callable[[], object]) -> int | None:
    """Rough cross-check on Linux: peak resident set (VmHWM, reset via /proc/self/clear_refs) minus
    the resident set at entry, after malloc_trim. Sees malloc'ed memory the profiler cannot, but
    only pages actually touched, and allocator reuse can hide or inflate it: a hint, not the metric."""
    gc.collect()
    _malloc_trim()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    base = _proc_status_bytes("VmRSS")
    out = fn()
    hwm = _proc_status_bytes("VmHWM")
    del out
    if base is None or hwm is None:
        return None
    return hwm - base


def validate_peak_alloc(device: torch.device, tol: float = 0.02) -> dict:
    """Sanity check of peak_alloc_bytes: allocate 100 MiB, free it, allocate 50 MiB -> expect 100 MiB."""
    nbytes = 100 * 2**20

    def region():
        a = torch.ones(nbytes // 4, device=device)
        del a
        b = torch.ones(nbytes // 8, device=device)
        return b

    measured = peak_alloc_bytes(region, device)
    ok = abs(measured - nbytes) <= tol * nbytes
    res = {"expected_bytes": nbytes, "measured_bytes": measured, "ok": ok}
    if not ok:
        raise RuntimeError(f"peak-memory method failed its sanity check: {res}")
    return res


def _clear_grads(case: TimedCase, mod: torch.nn.Module) -> None:
    for p in mod.parameters():
        p.grad = None
    if case.leaf is not None:
        case.leaf.grad = None


def measure_memory(case: TimedCase, device: torch.device, impls=IMPLS, rss: bool = True) -> dict:
    """Per implementation: one profiled run for peak allocated bytes (+ one plain run for the RSS hint)."""
    res = {}
    for impl in impls:
        mod = case.modules[impl]
        run = case.runs[impl]
        _clear_grads(case, mod)  # free blocks allocated before profiling (see peak_alloc_bytes)
        res[impl] = {"peak_mem_bytes": peak_alloc_bytes(run, device)}
        if rss and device.type == "cpu":
            _clear_grads(case, mod)
            res[impl]["peak_rss_delta_bytes"] = peak_rss_delta_bytes(run)
        _clear_grads(case, mod)
    return res
