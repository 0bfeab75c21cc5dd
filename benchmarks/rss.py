#!/usr/bin/env python
"""Resident memory over many calls: RSS after a warm-up and after --calls more training calls.

Usage:
    python benchmarks/rss.py [--calls 100000] [--threads 2]

LSTM(32 -> 128) training calls (forward + backward) on a [16, 8, 32] input, whose time loops run
on --threads threads (enough work for every build's threshold): the kind of call that leaked the
per-step barrier's flags before the fix (~500 B per call at 2 threads). Prints
RSS (VmRSS) and glibc's heap bytes in use (mallinfo2) before and after, and the growth per call.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402
import timing  # noqa: E402


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def heap_in_use() -> int:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=100_000)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    timing.setup_device("cpu", a.threads)
    rnnfast = provenance.load_rnnfast()
    model = rnnfast.LSTM(32, 128)
    x = torch.randn(16, 8, 32, requires_grad=True)

    def call():
        out, _ = model(x)
        out.sum().backward()

    for _ in range(1000):
        call()
    rss0, heap0 = rss(), heap_in_use()
    for _ in range(a.calls):
        call()
    rss1, heap1 = rss(), heap_in_use()
    print(f"rnnfast from {os.path.dirname(rnnfast.__file__)}, {a.threads} threads, {a.calls} training calls: "
          f"RSS {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB ({(rss1 - rss0) / a.calls:+.1f} B/call); "
          f"heap in use {heap0 / 2**20:.1f} -> {heap1 / 2**20:.1f} MiB ({(heap1 - heap0) / a.calls:+.1f} B/call)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
