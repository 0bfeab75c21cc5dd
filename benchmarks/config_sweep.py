#!/usr/bin/env python
"""Is rnnfast ever slower than torch.nn? A sweep over configurations a user could plausibly run.

Usage:
    python benchmarks/config_sweep.py [--threads 2] [--repeats 7] [--only SUBSTR] [--json OUT.json]

The speed-target table (targets.py) and the sequence-length scan (seq_scaling.py) look at a few
large shapes; this sweep covers the corners: one-step calls (decoding loops), batch 1, tiny and
large hidden sizes, large batch with a small hidden size, input size != hidden size, float64,
PackedSequence. Same method as targets.py (bench_cases.build_case / time_interleaved: identical
weights, interleaved rounds, median; rounds disturbed by other processes are redone). Prints one
row per configuration with the ratio torch/rnnfast and marks the rows below 1.0; exit status 0
either way (a row below 1.0 within the noise of the per-round ratios is reported, not hidden).
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

# (T, B, I, H, extra) for each cell and mode
SHAPES = [
    (1, 1, 64, 64, {}),          # one decoding step, tiny model
    (1, 32, 256, 256, {}),       # one step of a batch
    (8, 1, 32, 32, {}),
    (16, 4, 64, 64, {}),
    (32, 8, 128, 128, {}),
    (50, 16, 512, 128, {}),      # input wider than hidden
    (200, 8, 64, 256, {}),
    (100, 128, 256, 256, {}),
    (20, 256, 128, 128, {}),     # large batch, small hidden
    (50, 32, 1024, 1024, {}),    # large hidden
    (64, 16, 128, 128, {"dtype": torch.float64}),
    (64, 16, 128, 128, {"packed": True}),
]
MODES = ["infer", "train"]
CELLS = ["LSTM", "GRU"]


def case_name(cell, mode, T, B, I, H, extra) -> str:
    tags = [f"{cell} {mode} T{T} B{B} I{I} H{H}"]
    if extra.get("dtype") == torch.float64:
        tags.append("f64")
    if extra.get("packed"):
        tags.append("packed")
    return " ".join(tags)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--min-sample", type=float, default=0.05)
    p.add_argument("--only", default=None, help="run the rows whose name contains this")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    rnnfast = provenance.load_rnnfast()
    device = timing.setup_device("cpu", a.threads)
    print(f"torch {torch.__version__}, {provenance.rnnfast_backend_short(rnnfast)}, "
          f"threads {torch.get_num_threads()}, {provenance.cpu_model()}")
    rows = []
    header = f"{'configuration':42s} | {'torch ms':>9s} {'rnnfast ms':>10s} | {'ratio':>6s} {'range':>11s}"
    print(header)
    print("-" * len(header))
    for cell in CELLS:
        for mode in MODES:
            for T, B, I, H, extra in SHAPES:
                name = case_name(cell, mode, T, B, I, H, extra)
                if a.only and a.only.lower() not in name.lower():
                    continue
                case = bench_cases.build_case(cell, mode, T, B, I, H, rnnfast, device, **extra)
                tm = timing.time_interleaved(case, a.repeats, warmup=1, min_sample_s=a.min_sample,
                                         device=device, wait_quiet_s=30.0)
                t_ms, f_ms = tm["torch"]["ms_median"], tm["rnnfast"]["ms_median"]
                ratio = t_ms / f_ms
                lo, hi = min(tm["round_ratios"]), max(tm["round_ratios"])
                mark = "  <- slower" if ratio < 1.0 else ""
                print(f"{name:42s} | {t_ms:9.3f} {f_ms:10.3f} | {ratio:5.2f}x {lo:5.2f}-{hi:4.2f}{mark}",
                      flush=True)
                rows.append({"case": name, "cell": cell, "mode": mode, "T": T, "B": B, "I": I, "H": H,
                             "dtype": str(extra.get("dtype", torch.float32)),
                             "packed": bool(extra.get("packed")), "torch_ms": t_ms, "rnnfast_ms": f_ms,
                             "ratio": ratio, "round_ratio_min": lo, "round_ratio_max": hi,
                             "max_abs_diff_vs_torch": tm["max_abs_diff"],
                             "other_load_cores": tm["other_load_max"]})
                del case
    slower = [r["case"] for r in rows if r["ratio"] < 1.0]
    print(f"\n{len(rows)} configurations; slower than torch.nn (median ratio < 1): "
          f"{', '.join(slower) if slower else 'none'}")
    if a.json:
        provenance.write_json(a.json, {"meta": provenance.machine_info(rnnfast, a.threads, device), "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
