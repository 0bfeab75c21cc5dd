#!/usr/bin/env python
"""How often a quiet machine makes the thread policy back off: a loop of one-step backward calls
(the backward of one cell call, its graph kept and run again), with the time per call, the
contended calls (a thread waited for a CPU: at least 1 ms and a quarter of the call's thread time),
the back-offs they started and the calls sent to one thread (csrc/cpu/thread_policy.h).

Usage:
    python benchmarks/stray_preemptions.py [--cell RNNCell] [--batch 64] [--size 512] [--calls 6000]
                                           [--threads 2] [--events] [--busy]

--events prints every contended call as it happens (seconds since the start, its threads' wait);
--busy runs another process spinning on one core meanwhile (real load, for comparison).
A/B of two builds: run each tree's own copy (`cd TREE && PYTHONPATH=TREE python
TREE/benchmarks/stray_preemptions.py`), alternating. Fails if rnnfast or its extension is missing.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine_load  # noqa: E402
import provenance  # noqa: E402
import timing  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cell", default="RNNCell", choices=["RNNCell", "GRUCell", "LSTMCell"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=512, help="input and hidden size")
    ap.add_argument("--calls", type=int, default=6000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--events", action="store_true", help="print each contended call")
    ap.add_argument("--busy", action="store_true", help="another process spins on one core meanwhile")
    args = ap.parse_args()
    rnnfast = provenance.load_rnnfast()  # (raises where the extension is missing)
    from rnnfast import _C

    timing.setup_device("cpu", args.threads)
    print(f"rnnfast from {os.path.dirname(rnnfast.__file__)} ({provenance.rnnfast_backend_short(rnnfast)}); "
          f"load average at the start {machine_load.loadavg()}")
    torch.manual_seed(0)
    cell = getattr(rnnfast, args.cell)(args.size, args.size)
    x = torch.randn(args.batch, args.size, requires_grad=True)
    h = torch.randn(args.batch, args.size, requires_grad=True)
    hx = (h, torch.randn(args.batch, args.size)) if args.cell == "LSTMCell" else h
    out = cell(x, hx)
    outs = out if isinstance(out, tuple) else (out,)
    grads = [torch.randn_like(o) for o in outs]
    inputs = [x, h, *cell.parameters()]

    def call():
        torch.autograd.grad(outs, inputs, grads, retain_graph=True)

    for _ in range(200):
        call()
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    try:
        if hog:
            time.sleep(0.3)
        _C.reset_thread_policy()
        seen = 0
        t0 = time.perf_counter()
        for _ in range(args.calls):
            call()
            if args.events:
                state = _C.thread_policy_state()
                if state["contended_calls"] != seen:
                    seen = state["contended_calls"]
                    waited = _C.last_call_plan()["waited_ns"]  # -1: not read (a call timed only)
                    print(f"{time.perf_counter() - t0:8.3f} s  contended call {seen}: its threads waited "
                          f"{f'{waited / 1e6:.2f} ms' if waited >= 0 else '(not read: timed only)'}; back-offs so far "
                          f"{state.get('backoffs', '?')}")
        elapsed = time.perf_counter() - t0
    finally:
        if hog:
            hog.kill()
            hog.wait()
    state = _C.thread_policy_state()
    print(f"{args.cell} backward B={args.batch} I=H={args.size}, {args.threads} threads, "
          f"{'one core busy' if args.busy else 'quiet'}: {elapsed / args.calls * 1e6:.1f} us per call over "
          f"{args.calls} calls ({elapsed:.1f} s); contended calls {state['contended_calls']}, back-offs "
          f"{state.get('backoffs', '(not counted by this build)')}, calls sent to one thread "
          f"{state['leases_denied']} ({100 * state['leases_denied'] / args.calls:.1f} %); "
          f"cpu: {provenance.cpu_model()}")


if __name__ == "__main__":
    main()
