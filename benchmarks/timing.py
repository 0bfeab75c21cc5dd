"""How a benchmark times: the device and thread set-up, one synchronised timed call, and
``time_interleaved()`` -- warm-up, then repeats that alternate the implementations, medians;
rounds disturbed by other processes (machine_load.LoadMonitor) are redone.
"""
from __future__ import annotations

import gc
import math
import os
import statistics
import sys
import time
from typing import TYPE_CHECKING, Callable


import torch  # noqa: E402

from machine_load import BUSY_CORES, LoadMonitor, wait_quiet  # noqa: E402

if TYPE_CHECKING:
    from bench_cases import TimedCase

# The implementations a case times, in the order of every result table.
IMPLS = ("torch", "rnnfast")



# RNNFAST_BENCH_DRY_RUN=1 with --device cuda on a machine without a GPU: a dry run of the GPU
# benchmarks' own code (series, tables, plots) on the CPU, with rnnfast's GPU algorithm emulated
# (rnnfast._C._set_gpu_emulation). Its timings mean nothing; it exists so that the one prepared
# GPU run (scripts/gpu_check.sh) does not fail on a benchmark bug. Use it with small cases (--only).
DRY_RUN = os.environ.get("RNNFAST_BENCH_DRY_RUN") == "1"


def gpu_series(device: torch.device) -> bool:
    """Whether to time the GPU series (torch without cuDNN, rnnfast's persistent kernel)."""
    return device.type == "cuda" or DRY_RUN


def setup_device(device: str, threads: int) -> torch.device:
    """Pin torch's intra-op thread count and validate the device; raises SystemExit on a bad device."""
    if device not in ("cpu", "cuda"):
        raise SystemExit(f"error: --device must be cpu or cuda, got {device!r}")
    if device == "cuda" and DRY_RUN:
        import rnnfast
        rnnfast._C._set_gpu_emulation(True)
        print("RNNFAST_BENCH_DRY_RUN=1: DRY RUN on the CPU with the GPU algorithm emulated; "
              "the timings mean nothing", file=sys.stderr, flush=True)
        device = "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"error: --device cuda requested but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, built with CUDA: {torch.version.cuda is not None})")
    torch.set_num_threads(threads)
    if torch.get_num_threads() != threads:
        raise SystemExit(f"error: torch.set_num_threads({threads}) left {torch.get_num_threads()} threads")
    return torch.device(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_ms(run: Callable[[], object], inner: int, device: torch.device) -> float:
    """Milliseconds per call of `inner` back-to-back calls: CUDA events on the GPU (the GPU's own
    clock, from the first launch to the last kernel's end), perf_counter on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        for _ in range(inner):
            run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / inner
    t0 = time.perf_counter()
    for _ in range(inner):
        run()
    return (time.perf_counter() - t0) / inner * 1e3


def time_interleaved(case: TimedCase, repeats: int, warmup: int = 1, min_sample_s: float = 0.05,
                     device: torch.device = torch.device("cpu"), impls=IMPLS,
                     max_discards: int | None = None, wait_quiet_s: float = 120.0) -> dict:
    """Warm up every implementation, then `repeats` rounds that alternate them (ABBA order).

    One sample = the mean of `inner` back-to-back runs, `inner` chosen from the warm-up so a sample
    lasts >= min_sample_s (the same `inner` for every implementation).
    Busy machine guard: each round is watched with LoadMonitor; a round during which other processes
    used more than BUSY_CORES cores is discarded, and after waiting (up to wait_quiet_s) for quiet it
    is run again, at most `max_discards` times in all (default: `repeats`); after that busy rounds
    are kept and show in other_load_cores.
    Returns per impl the median and all kept samples in ms, the per-round ratios torch/rnnfast,
    other_load_cores (mean over kept rounds) and other_load_max, discarded_rounds, and the max abs
    difference of the warm-up outputs (a cheap guard against timing a wrong kernel).
    """
    if max_discards is None:
        max_discards = repeats
    first = {}
    warm_s = {}
    for impl in impls:
        for w in range(max(1, warmup)):
            sync(device)
            t0 = time.perf_counter()
            out = case.runs[impl]()
            sync(device)
            warm_s[impl] = time.perf_counter() - t0
            if w == 0:
                first[impl] = out.detach().float().cpu()
            del out
    max_abs_diff = None
    if "torch" in first and "rnnfast" in first:
        max_abs_diff = float((first["torch"] - first["rnnfast"]).abs().max())
    inner = max(1, min(1000, math.ceil(min_sample_s / max(min(warm_s.values()), 1e-6))))
    samples = {impl: [] for impl in impls}
    loads = []
    discarded = 0
    gc.collect()
    gc_was = gc.isenabled()
    gc.disable()
    try:
        r = 0
        while r < repeats:
            order = impls if r % 2 == 0 else tuple(reversed(impls))
            mon = LoadMonitor()
            got = {}
            for impl in order:
                got[impl] = timed_ms(case.runs[impl], inner, device)
            other = mon.other_cores()
            if other is not None and other > BUSY_CORES and discarded < max_discards:
                discarded += 1
                wait_quiet(wait_quiet_s)
                continue
            for impl in impls:
                samples[impl].append(got[impl])
            loads.append(other)
            r += 1
    finally:
        if gc_was:
            gc.enable()
    res = {impl: {"ms_median": statistics.median(s), "ms_all": s} for impl, s in samples.items()}
    res["inner"] = inner
    res["max_abs_diff"] = max_abs_diff
    known = [x for x in loads if x is not None]
    res["other_load_cores"] = statistics.mean(known) if known else None
    res["other_load_max"] = max(known) if known else None
    res["discarded_rounds"] = discarded
    if "torch" in samples and "rnnfast" in samples:
        res["round_ratios"] = [a / b for a, b in zip(samples["torch"], samples["rnnfast"])]
    return res
