#!/usr/bin/env python
"""rnnfast's fraction of the machine's FMA peak on the GEMM-bound rows, per instruction set.

Usage:
    python benchmarks/peak_fraction.py [--isa avx2,default] [--rounds 15] [--threads 2] [--json OUT]

Rows: LSTM and GRU, training and inference, B=32, I=H=256, T=64, 256, 1024 (the GEMM-bound rows
of seq_scaling.py). GFLOP/s count the GEMM flops (flop_model.gemm_flops: forward
2*T*B*G*H*(I+H), training 3x).

Why a benchmark of its own: a shared VM's speed drifts (other tenants of the host take cycles
from minute to minute, by up to a third here), so a peak measured once at the start and a time
measured minutes later do not belong together. Each round here times the register-only FMA loop
(rnnfast._C.fma_peak_gflops at the same thread count, ~40 ms) right before and right after one
rnnfast run of the row, and divides the run's GFLOP/s by the mean of the two: the fraction of the
peak the machine had at that moment. Reported: the median fraction over --rounds rounds, with the
min..max, and the median absolute GFLOP/s. --isa forces each instruction-set build in turn
(rnnfast._C.set_cpu_capability; the peak probe runs that build's FMA loop too).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_cases  # noqa: E402
import flop_model  # noqa: E402
import provenance  # noqa: E402
import timing  # noqa: E402

ROWS = [(cell, mode, T) for cell in ("LSTM", "GRU") for mode in ("infer", "train") for T in (64, 256, 1024)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--isa", default=None, help="comma list of instruction sets (default: the best here)")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--B", type=int, default=32)
    p.add_argument("--H", type=int, default=256)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    device = timing.setup_device("cpu", a.threads)
    rnnfast = provenance.load_rnnfast()
    C = rnnfast._C
    isas = a.isa.split(",") if a.isa else [C.cpu_capability()]
    probe_iters = 300_000  # ~40 ms of FMAs per thread on a Zen 3 core

    def peak():
        return C.fma_peak_gflops(a.threads, "float32", probe_iters)

    results = {"meta": provenance.machine_info(rnnfast, a.threads, device), "rows": []}
    print(f"rnnfast fraction of the FMA peak, {a.threads} threads, B={a.B} I=H={a.H}, cpu: {provenance.cpu_model()}")
    print(f"{'isa':8} {'row':18} | {'GFLOP/s':>8} {'peak':>6} | {'fraction':>8} {'min..max':>11}")
    previous = C.cpu_capability()
    try:
        for isa in isas:
            C.set_cpu_capability(isa)
            for cell, mode, T in ROWS:
                case = bench_cases.build_case(cell, mode, T, a.B, a.H, a.H, rnnfast, device)
                run = case.runs["rnnfast"]
                flops = flop_model.gemm_flops(cell, T, a.B, a.H, a.H, mode)
                for _ in range(2):
                    run()
                fractions, gflops, peaks = [], [], []
                for _ in range(a.rounds):
                    before = peak()
                    t0 = time.perf_counter()
                    run()
                    seconds = time.perf_counter() - t0
                    after = peak()
                    g = flops / seconds / 1e9
                    gflops.append(g)
                    peaks.append((before + after) / 2)
                    fractions.append(g / peaks[-1])
                row = {"isa": isa, "cell": cell, "mode": mode, "T": T, "B": a.B, "H": a.H,
                       "fraction_median": statistics.median(fractions), "fraction_min": min(fractions),
                       "fraction_max": max(fractions), "gflops_median": statistics.median(gflops),
                       "peak_median": statistics.median(peaks), "fractions": fractions}
                results["rows"].append(row)
                print(f"{isa:8} {cell + ' ' + mode + ' T' + str(T):18} | {row['gflops_median']:>8.1f} "
                      f"{row['peak_median']:>6.0f} | {100 * row['fraction_median']:>7.0f}% "
                      f"{100 * row['fraction_min']:>4.0f}-{100 * row['fraction_max']:<4.0f}%", flush=True)
    finally:
        C.set_cpu_capability(previous)
    if a.json:
        provenance.write_json(a.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
