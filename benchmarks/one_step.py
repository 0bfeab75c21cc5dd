#!/usr/bin/env python
"""Per-call overhead: one-step calls (T=1, B=1, I=H) of rnnfast.LSTM and GRU, inference and
training (forward + backward of the output), in µs per module call.

Usage:
    python benchmarks/one_step.py [--threads 1] [--hidden 64,128]

Medians of 7 rounds of 3000 calls (inference) or 1000 calls (training). To compare two builds,
run it once with PYTHONPATH pointing at each (e.g. a git worktree of an older commit built in
place), alternating a few times: the README's before/after numbers were taken that way.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402
import timing  # noqa: E402


def median_us(fn, calls: int, rounds: int = 7) -> float:
    for _ in range(300):
        fn()
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(samples)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--hidden", default="64,128")
    a = p.parse_args(argv)
    timing.setup_device("cpu", a.threads)
    rnnfast = provenance.load_rnnfast()
    torch.manual_seed(0)
    parts = []
    for mode in ("LSTM", "GRU"):
        for H in (int(h) for h in a.hidden.split(",")):
            m = getattr(rnnfast, mode)(H, H)
            x = torch.randn(1, 1, H)
            with torch.no_grad():
                infer = median_us(lambda: m(x), 3000)
            xg = x.clone().requires_grad_()

            def train():
                out, _ = m(xg)
                out.sum().backward()

            parts.append(f"{mode} H{H} infer={infer:.1f} train={median_us(train, 1000):.1f}")
    print(f"rnnfast from {os.path.dirname(rnnfast.__file__)}, {a.threads} thread(s), µs per call: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
