#!/usr/bin/env python
"""The bf16 GEMM behind rnnfast's time loops: its own packed-panel kernel against ATen's exported
oneDNN micro-kernel ``at::native::cpublas::brgemm`` on prepacked (VNNI) weights.

Usage:
    python benchmarks/bf16_gemm.py [--reps 200] [--json OUT.json]

Single thread (each thread of the time loop runs its own slice's GEMM). Shapes: the per-step
recurrent GEMM of a slice ([B, P] x [P, G*H/threads]) and a chunk's input projection
([512, I] x [I, G*H/threads]) of the target configurations. Both candidates read bf16 A and B and
write fp32 C; each result is checked against ATen's fp32 matmul of the same values. Where the CPU
has no AMX, ``could_pack`` is false and brgemm falls back to ATen's plain GEMM on unpacked B (the
variant column says which ran). GFLOP/s relative to the bf16 dot-product peak of one core
(``rnnfast._C.fma_peak_gflops(1, "bfloat16")``).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402

SHAPES = [  # (what, M, N, K)
    ("LSTM step B64 H512 (2 slices)", 64, 1024, 512),
    ("LSTM chunk 512 rows I=H=512", 512, 1024, 512),
    ("GRU step B64 H512 (2 slices)", 64, 768, 512),
    ("LSTM step B32 H256 (2 slices)", 32, 512, 256),
    ("LSTM step B8 H512", 8, 1024, 512),
    ("LSTM step B1 H256", 1, 1024, 256),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rnnfast = provenance.load_rnnfast()
    C = rnnfast._C
    peak = C.fma_peak_gflops(1, "bfloat16")
    print(f"cpu: {provenance.cpu_model()}, rnnfast capability {C.cpu_capability()}, bf16 peak (1 core) {peak:.0f} GFLOP/s")
    rows = []
    hdr = f"{'shape':32} {'M':>4} {'N':>5} {'K':>4} | {'rnnfast us':>10} {'GFLOP/s':>7} {'peak':>5} | {'brgemm us':>9} {'GFLOP/s':>7} | {'ratio':>6} | brgemm variant"
    print(hdr)
    print("-" * len(hdr))
    for what, M, N, K in SHAPES:
        res = {impl: C.time_bf16_gemm(impl, M, N, K, a.reps) for impl in ("rnnfast", "brgemm")}
        flops = 2.0 * M * N * K
        g = {k: flops / v["seconds"] / 1e9 for k, v in res.items()}
        rows.append({"shape": what, "M": M, "N": N, "K": K, "peak_gflops": peak,
                     **{f"{k}_{f}": v[f] for k, v in res.items() for f in ("seconds", "max_error", "variant")}})
        print(f"{what:32} {M:>4} {N:>5} {K:>4} | {res['rnnfast']['seconds'] * 1e6:>10.1f} {g['rnnfast']:>7.0f} "
              f"{g['rnnfast'] / peak:>5.0%} | {res['brgemm']['seconds'] * 1e6:>9.1f} {g['brgemm']:>7.0f} | "
              f"{res['brgemm']['seconds'] / res['rnnfast']['seconds']:>5.1f}x | {res['brgemm']['variant']}")
        for k, v in res.items():
            if v["max_error"] > 1e-4:
                print(f"ERROR: {k} differs from the fp32 matmul by {v['max_error']:.2e}", file=sys.stderr)
                return 1
    if a.json:
        provenance.write_json(a.json, {"meta": provenance.machine_info(rnnfast, 1, torch.device("cpu")), "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
