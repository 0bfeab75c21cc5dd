"""Other processes' load on the machine: ``LoadMonitor`` (CPU time used by other processes while a
measurement runs), waiting for a quiet machine, and redoing a disturbed measurement.
"""
from __future__ import annotations

import os
import time
from typing import Callable





class LoadMonitor:
    """CPU time spent by *other* processes while we measure, in cores (busy jiffies of the whole
    machine from /proc/stat minus this process's own CPU time, over wall time).

    On a 2-core VM a compiler or test run in parallel wrecks the timings (OpenMP threads of the
    benchmark wait for a core); this number says whether a result was measured on a quiet machine.
    """

    def __init__(self):
        self._t0 = self._snap()

    @staticmethod
    def _snap():
        busy = None
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            busy = (sum(v) - v[3] - (v[4] if len(v) > 4 else 0)) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError):
            pass
        t = os.times()
        return time.perf_counter(), busy, t.user + t.system

    def other_cores(self, reset: bool = True) -> float | None:
        now = self._snap()
        (w0, b0, o0), (w1, b1, o1) = self._t0, now
        if reset:
            self._t0 = now
        if b0 is None or b1 is None or w1 <= w0:
            return None
        return max(0.0, ((b1 - b0) - (o1 - o0)) / (w1 - w0))


BUSY_CORES = 0.25  # other processes' CPU use above which a measurement is redone


def wait_quiet(max_wait_s: float, threshold: float = 0.1, window_s: float = 1.0) -> float:
    """Sleep in `window_s` slices until other processes use < threshold cores (or max_wait_s passed).
    Returns the seconds waited."""
    t0 = time.perf_counter()
    while True:
        mon = LoadMonitor()
        time.sleep(window_s)
        other = mon.other_cores()
        waited = time.perf_counter() - t0
        if other is None or other < threshold or waited >= max_wait_s:
            return waited


def measure_quiet(fn: Callable[[], object], retries: int = 2, max_wait_s: float = 120.0):
    """Run fn (a measurement) while watching the machine; if other processes used more than
    BUSY_CORES cores meanwhile, wait (up to max_wait_s) for quiet and measure again, at most
    `retries` more times. Returns (result, other_cores, attempts); the last attempt is kept."""
    for attempt in range(1, retries + 2):
        mon = LoadMonitor()
        res = fn()
        other = mon.other_cores()
        if other is None or other <= BUSY_CORES or attempt > retries:
            return res, other, attempt
        import flop_model  # here, not at the top: flop_model -> timing -> machine_load

        flop_model.forget_gemm_timings()  # roofline timings taken under load are not kept
        wait_quiet(max_wait_s)


def loadavg() -> list | None:
    try:
        return [float(x) for x in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return None
