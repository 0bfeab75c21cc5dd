#!/usr/bin/env python
"""What the operators' autograd costs per call, C++ (csrc/autograd.cpp) against Python
(rnnfast/_autograd.py, the stable-ABI build's), at the operator, in one process.

One LSTM layer-direction, T=--steps, B=--batch, I=H=--hidden (default: one step of one row), on
--threads threads, medians of interleaved rounds, µs per call: ``infer`` (no input requires grad), ``forward`` (inputs require grad: the graph is recorded,
then dropped), ``train`` (forward, then backward of ``y.sum()`` into every weight and the input).
Cases:
  * ``dispatcher``: ``torch.ops.rnnfast.layer_forward`` through the dispatcher, to whichever
    autograd kernel this process registered (C++, or Python under ``RNNFAST_AUTOGRAD=python``);
  * ``python eager``: ``rnnfast._autograd.layer_forward``, the Python autograd's entry that the
    modules call under the Python autograd (plain eager tensors: no round trip through the
    dispatcher into the Python kernel). It runs the Python autograd whichever kernel is registered;
  * ``python floor``: a lower bound of a Python autograd around the same two kernels: an
    ``autograd.Function`` (applied through the C++ ``_FunctionBase.apply``, as ``_autograd.py``
    does) whose forward calls the forward kernel and saves its inputs and outputs, and whose
    backward calls the backward kernel: no checks, no modes, no subclasses, nothing optional.
    Not a reachable design (a correct eager entry needs the checks that make skipping the
    dispatcher safe): ``python eager`` minus this bounds what ``_autograd.py``'s own work costs.

Run it once as is and once with ``RNNFAST_AUTOGRAD=python`` to see every case.

Usage: python benchmarks/autograd_overhead.py [--hidden 64,128] [--steps 1] [--batch 1] [--threads 1]
                                              [--rounds 9]
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


def per_call_us(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def floor_entry(autograd_module):
    """layer_forward's bare Python autograd around the same kernels (the ``python floor`` case):
    LSTM, padded input, gradients of the input and the weights (not of the initial states, which
    the benchmark's do not require), plain CPU tensors only."""
    kernel_keyset = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)
    forward_kernel = autograd_module._redispatch_forward_train
    backward_kernel = autograd_module._redispatch_backward

    class Floor(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
            out = forward_kernel(kernel_keyset, 0, x, None, h0, c0, w_ih, w_hh, b_ih, b_hh, None, False, False)
            ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, out[0], out[3])
            ctx.mark_non_differentiable(out[3])
            return out

        @staticmethod
        def backward(ctx, dy, dh_n, dc_n, _):  # unused output gradients arrive as zeros
            x, h0, c0, w_ih, w_hh, b_ih, b_hh, y, workspace = ctx.saved_tensors
            grads = backward_kernel(kernel_keyset, 0, x, None, h0, c0, w_ih, w_hh, b_ih, b_hh, None, False, y,
                                    workspace, dy, dh_n, dc_n, [True, False, True], False)
            return grads[0], None, None, *grads[3:7]

    apply = torch._C._FunctionBase.__dict__["apply"].__get__(None, Floor)

    def entry(cell, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
        return apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh)[:3]

    return entry


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", default="64,128")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=9)
    a = p.parse_args(argv)
    timing.setup_device("cpu", a.threads)
    rows = a.steps * a.batch
    calls = (3000, 1000) if rows == 1 else (20, 10)  # (inference and forward, training) per round
    rnnfast = provenance.load_rnnfast()
    from rnnfast import _autograd  # noqa: PLC0415  (after the extension is loaded)

    kind = rnnfast.backend()["autograd"]
    entries = {f"dispatcher ({kind})": torch.ops.rnnfast.layer_forward.default, "python eager": _autograd.layer_forward,
               "python floor": floor_entry(_autograd)}
    print(f"{provenance.cpu_model()}; torch {torch.__version__}; registered autograd: {kind}; {a.threads} thread(s); "
          f"LSTM T={a.steps} B={a.batch} I=H; medians of {a.rounds} interleaved rounds, µs per call")
    for hidden in (int(h) for h in a.hidden.split(",")):
        torch.manual_seed(0)
        x = torch.randn(rows, hidden, requires_grad=True)
        h0, c0 = torch.randn(a.batch, hidden), torch.randn(a.batch, hidden)
        weights = [torch.randn(4 * hidden, hidden, requires_grad=True), torch.randn(4 * hidden, hidden, requires_grad=True),
                   torch.randn(4 * hidden, requires_grad=True), torch.randn(4 * hidden, requires_grad=True)]
        grad_args = (0, x, None, h0, c0, *weights, None, False)
        plain_args = (0, x.detach(), None, h0, c0, *[w.detach() for w in weights], None, False)
        cases = {}
        for name, entry in entries.items():
            def train(entry=entry):
                y, _, _ = entry(*grad_args)
                y.sum().backward()

            if name != "python floor":  # (the floor is the training path's only)
                cases[f"{name} infer"] = (lambda entry=entry: entry(*plain_args), calls[0])
            cases[f"{name} forward"] = (lambda entry=entry: entry(*grad_args), calls[0])
            cases[f"{name} train"] = (train, calls[1])
        for fn, n in cases.values():  # warm-up
            per_call_us(fn, max(2, n // 10))
        samples = {name: [] for name in cases}
        for _ in range(a.rounds):  # interleaved: each round times every case once
            for name, (fn, n) in cases.items():
                samples[name].append(per_call_us(fn, n))
        print(f"H={hidden}")
        for name, values in samples.items():
            print(f"  {name:32s} {statistics.median(values):8.1f}  (min {min(values):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
