#!/usr/bin/env python
"""The fixed-cost ceiling of the batch-1 cell rows of targets.py: how far rnnfast's module path can
get ahead of torch.nn when the arithmetic costs nothing.

Usage:
    python benchmarks/cell_floor.py [--hidden 128] [--floor-hidden 8] [--repeats 9] [--threads 2]
                                    [--min-sample 0.1] [--json OUT.json]

For each cell (LSTMCell, GRUCell, RNNCell) and mode (inference; training = forward and backward of
every step's outputs), the targets.py loop of T=32 steps at B=1 (bench_cases._cell_loop) is timed
for four modules, interleaved (timing.time_interleaved, medians):
  torch, rnnfast        at I=H=--hidden (the target row itself);
  torch_floor,
  rnnfast_floor         at I=H=--floor-hidden, where a step's arithmetic is a few hundred
                        multiply-adds: what is left is the module's Python, the operator call
                        (dispatcher, boxing, allocation) and, in training, autograd.
ratio = torch / rnnfast (the row's ratio); ceiling = torch / rnnfast_floor: about the ratio rnnfast
would reach at --hidden if its size-dependent work took no time (the floor still does a few hundred
multiply-adds per step). A row whose ceiling is below its needed ratio cannot meet it by faster
kernels; only a cheaper path from Python to the kernel could.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_cases  # noqa: E402
import provenance  # noqa: E402
import timing  # noqa: E402

CELLS = ("LSTMCell", "GRUCell", "RNNCell")
MODES = ("infer", "train")
STEPS = 32
IMPLS = ("torch", "rnnfast", "torch_floor", "rnnfast_floor")


def floor_case(cell: str, mode: str, hidden: int, floor_hidden: int, rnnfast, device) -> bench_cases.TimedCase:
    """The target row's case, with the same loop at floor_hidden added as torch_floor and rnnfast_floor."""
    case = bench_cases.build_case(cell, mode, STEPS, 1, hidden, hidden, rnnfast, device)
    small = bench_cases.build_case(cell, mode, STEPS, 1, floor_hidden, floor_hidden, rnnfast, device)
    case.runs["torch_floor"] = small.runs["torch"]
    case.runs["rnnfast_floor"] = small.runs["rnnfast"]
    return case


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--floor-hidden", type=int, default=8)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-sample", type=float, default=0.1, help="min seconds per timing sample")
    p.add_argument("--json", default=None, help="write results + machine info here")
    a = p.parse_args(argv)
    device = timing.setup_device("cpu", a.threads)
    rnnfast = provenance.load_rnnfast()
    meta = provenance.machine_info(rnnfast, a.threads, device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu: {provenance.cpu_model()}, "
          f"rnnfast backend: {provenance.rnnfast_backend_short(rnnfast)}")
    print(f"T={STEPS} B=1 loops, µs per step (medians of {a.repeats} interleaved rounds); "
          f"floor: I=H={a.floor_hidden}")
    head = (f"{'row':22} | {'torch':>7} {'rnnfast':>8} {'ratio':>6} | {'torch_floor':>11} {'rnnfast_floor':>13} "
            f"{'ceiling':>8}")
    print(head)
    print("-" * len(head))
    rows = []
    for cell in CELLS:
        for mode in MODES:
            case = floor_case(cell, mode, a.hidden, a.floor_hidden, rnnfast, device)
            res = timing.time_interleaved(case, a.repeats, min_sample_s=a.min_sample, device=device, impls=IMPLS)
            us = {impl: res[impl]["ms_median"] * 1e3 / STEPS for impl in IMPLS}
            row = {"row": f"{cell} {mode} B1 H{a.hidden}", **{f"{impl}_us_per_step": us[impl] for impl in IMPLS},
                   "ratio": us["torch"] / us["rnnfast"], "ceiling": us["torch"] / us["rnnfast_floor"],
                   "other_load_max": res["other_load_max"], "discarded_rounds": res["discarded_rounds"],
                   "inner": res["inner"], "max_abs_diff": res["max_abs_diff"],
                   "samples_ms": {i: res[i]["ms_all"] for i in IMPLS}}
            rows.append(row)
            print(f"{row['row']:22} | {us['torch']:>7.1f} {us['rnnfast']:>8.1f} {row['ratio']:>5.2f}x | "
                  f"{us['torch_floor']:>11.1f} {us['rnnfast_floor']:>13.1f} {row['ceiling']:>7.2f}x", flush=True)
    if a.json:
        provenance.write_json(a.json, {"meta": meta, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
