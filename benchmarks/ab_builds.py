#!/usr/bin/env python
"""A/B of rnnfast builds: the same LSTM and GRU calls timed in separate processes, one per build
(repository root with an in-place build), interleaved round by round; minima per build.

Usage: python benchmarks/ab_builds.py ROOT [ROOT ...] [--capability default] [--T 64] [--B 32]
       [--H 256] [--threads 1] [--rounds 4]

For changes whose effect is a few per cent on a noisy host: minima of interleaved rounds are what
survive another process's load (docs/results/zen3-avx2/generic_inline_ab.txt used it with
--capability default to compare the generic build before and after a change).
"""
from __future__ import annotations

import argparse
import ast
import subprocess
import sys

CHILD = r'''
import sys, time, torch
root, capability, T, B, H, threads = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
sys.path.insert(0, root)
import rnnfast
if capability:
    rnnfast._C.set_cpu_capability(capability)
torch.set_num_threads(threads)
torch.manual_seed(0)
res = {}
for mode in ("LSTM", "GRU"):
    m = getattr(rnnfast, mode)(H, H)
    x = torch.randn(T, B, H)
    xg = x.clone().requires_grad_()
    with torch.no_grad():
        for _ in range(3):
            m(x)
        t = []
        for _ in range(15):
            t0 = time.perf_counter(); m(x); t.append(time.perf_counter() - t0)
    res[mode + " infer"] = min(t)
    t = []
    for _ in range(10):
        t0 = time.perf_counter(); out, _ = m(xg); out.sum().backward(); t.append(time.perf_counter() - t0)
    res[mode + " train"] = min(t)
print(repr(res))
'''


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("roots", nargs="+")
    p.add_argument("--capability", default="", help="instruction set to force (default: the best)")
    p.add_argument("--T", type=int, default=64)
    p.add_argument("--B", type=int, default=32)
    p.add_argument("--H", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=4)
    a = p.parse_args(argv)
    times: dict[str, dict[str, list[float]]] = {r: {} for r in a.roots}
    for _ in range(a.rounds):
        for root in a.roots:
            run = subprocess.run([sys.executable, "-c", CHILD, root, a.capability, str(a.T), str(a.B), str(a.H),
                                  str(a.threads)], capture_output=True, text=True, check=True)
            for key, seconds in ast.literal_eval(run.stdout.strip().splitlines()[-1]).items():
                times[root].setdefault(key, []).append(seconds * 1e3)
    print(f"T={a.T} B={a.B} I=H={a.H}, {a.threads} thread(s), capability {a.capability or 'best'}, "
          f"minima of {a.rounds} interleaved rounds, ms per call")
    for key in times[a.roots[0]]:
        print(f"{key:12s}", "  ".join(f"{root}: {min(times[root][key]):.4g}" for root in a.roots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
