#!/usr/bin/env python
"""Where two threads start to pay for a small CPU call: the data behind the thread policy's
min_parallel_macs (csrc/cpu/thread_policy.cpp).

Usage:
    python benchmarks/parallel_threshold.py [--threads 2] [--rounds 9] [--calls 400] [--json OUT.json]

For each small call (cells at B=1 and B=4, one-step and T=8 layers at B=1; I=H from 32 to 256;
inference, and training = forward and backward), the same module is timed with every call forced
onto several threads (rnnfast._C.set_min_parallel_macs(0)) and forced onto one (2^62), alternated
in --rounds rounds of --calls calls each; the medians per call are printed with the call's
multiply-adds (forward: N*G*H*(I+H); training adds the backward's N*G*H*(2I+3H)), sorted by them.
serial / parallel > 1 means two threads were faster. (A call with H < 32 or under 16384
multiply-adds per step runs on one thread whatever the threshold.)
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

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
FORCED = {"parallel": 0, "serial": 1 << 62}


def make_call(rnnfast, cell: str, kind: str, B: int, T: int, H: int, train: bool):
    """A zero-argument callable running one call of the case, and its multiply-adds."""
    if kind == "cell":
        m = getattr(rnnfast, cell + "Cell")(H, H)
        x = torch.randn(B, H, requires_grad=train)
        h = torch.randn(B, H)
        hx = (h, torch.randn(B, H)) if cell == "LSTM" else h

        def forward():
            out = m(x, hx)
            return out[0] if cell == "LSTM" else out
    else:
        m = getattr(rnnfast, cell)(H, H)
        x = torch.randn(T, B, H, requires_grad=train)

        def forward():
            return m(x)[0]
    N = B * (1 if kind == "cell" else T)
    macs = N * GATES[cell] * H * (2 * H) + (N * GATES[cell] * H * (2 * H + 3 * H) if train else 0)
    if train:
        def run():
            forward().sum().backward()
    else:
        def run():
            with torch.no_grad():
                forward()
    return run, macs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--calls", type=int, default=400)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rnnfast = provenance.load_rnnfast()
    from rnnfast import _C

    meta = provenance.machine_info(rnnfast, a.threads, torch.device("cpu"))
    print(f"torch {torch.__version__}, {a.threads} threads, cpu: {provenance.cpu_model()}, "
          f"rnnfast backend: {provenance.rnnfast_backend_short(rnnfast)}")
    cases = []
    for train in (False, True):
        for cell in GATES:
            for H in (32, 48, 64, 96, 128, 192, 256):
                cases.append((cell, "cell", 1, 1, H, train))
                cases.append((cell, "cell", 4, 1, H, train))
                cases.append((cell, "layer", 1, 8, H, train))
    previous = _C.min_parallel_macs()
    rows = []
    try:
        for cell, kind, B, T, H, train in cases:
            run, macs = make_call(rnnfast, cell, kind, B, T, H, train)
            times = {k: [] for k in FORCED}
            for _ in range(a.rounds):
                for k, v in FORCED.items():
                    _C.set_min_parallel_macs(v)
                    _C.reset_thread_policy()
                    run()
                    t0 = time.perf_counter()
                    for _ in range(a.calls):
                        run()
                    times[k].append((time.perf_counter() - t0) / a.calls * 1e6)
            _C.set_min_parallel_macs(0)
            run()
            slices = _C.last_call_plan()["slices"]
            med = {k: statistics.median(v) for k, v in times.items()}
            name = (f"{cell}{'Cell' if kind == 'cell' else ''} {'train' if train else 'infer'} B{B}"
                    f"{'' if kind == 'cell' else f' T{T}'} H{H}")
            rows.append({"case": name, "macs": macs, "threads_when_forced": slices,
                         "parallel_us": med["parallel"], "serial_us": med["serial"],
                         "serial_over_parallel": med["serial"] / med["parallel"],
                         "samples_us": times})
    finally:
        _C.set_min_parallel_macs(previous)
        _C.reset_thread_policy()
    print(f"{'case':34} {'MACs':>10} {'thr':>3} {'parallel us':>11} {'serial us':>10} {'ser/par':>8}")
    for r in sorted(rows, key=lambda r: r["macs"]):
        print(f"{r['case']:34} {r['macs']:>10} {r['threads_when_forced']:>3} {r['parallel_us']:>11.1f} "
              f"{r['serial_us']:>10.1f} {r['serial_over_parallel']:>8.2f}")
    if a.json:
        provenance.write_json(a.json, {"meta": meta, "rounds": a.rounds, "calls": a.calls, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
