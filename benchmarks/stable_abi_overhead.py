#!/usr/bin/env python
"""The stable-ABI prototype of issue 16, measured: per-call cost of rnnfast's layer operator on
the LibTorch stable ABI with its autograd in Python, against the same operator on today's C++ API
with autograd in C++.

Both operators (benchmarks/stable_abi/) take rnnfast::layer_forward_train's arguments and
allocate their outputs without computing anything, so the difference is the binding alone:
boxed stable calls (every argument through the C shim) and torch.library.register_autograd
(a Python autograd.Function) instead of an unboxed C++ kernel and a C++ autograd node.

At T=1, B=1, I=H=--hidden (the shapes of benchmarks/one_step.py), one thread, medians of
interleaved rounds, in µs per call:
  * infer: the forward under torch.no_grad(): the C++ operator; the stable operator through its
    Python autograd kernel; the stable operator called below autograd (the inference path an
    rnnfast module can take under no_grad), its outputs made by torch::stable::new_empty (a
    dispatcher call each) or by from_blob over memory of its own with a deleter (as rnnfast's
    buffer pool would);
  * train: forward with inputs that require grad, then backward of all three outputs; the stable
    operator through its registered Python autograd (torch.library.register_autograd) and through
    a plain torch.autograd.Function.

Usage: python benchmarks/stable_abi_overhead.py [--hidden 64] [--rounds 15]
Builds both operators with torch.utils.cpp_extension.load (a compiler is needed; ~1 minute).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch
from torch.utils.cpp_extension import load

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402
import timing  # noqa: E402

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stable_abi")
# torch 2.11.0, the oldest release whose stable surface rnnfast targets: [major][minor][patch][tag]
TARGET_VERSION = "0x020b000000000000"


BUILD = os.path.join(provenance.REPO_ROOT, "build", "stable_abi_prototype")


def build() -> str:
    """Build and load both prototype libraries (rebuilt only when a source changed); returns the
    stable library's path."""
    os.makedirs(BUILD, exist_ok=True)
    flags = ["-O2", "-std=c++20"]
    load(name="rnnfast_stable_layer_op", sources=[os.path.join(HERE, "stable_layer_op.cpp")],
         extra_cflags=[*flags, f"-DTORCH_TARGET_VERSION={TARGET_VERSION}"], is_python_module=False,
         build_directory=BUILD)
    load(name="rnnfast_unstable_layer_op", sources=[os.path.join(HERE, "unstable_layer_op.cpp")],
         extra_cflags=flags, is_python_module=False, build_directory=BUILD)
    return os.path.join(BUILD, "rnnfast_stable_layer_op.so")


def libtorch_cxx_symbols(library: str) -> list[str]:
    """Undefined symbols of libtorch's C++ API (at::, c10::, torch:: mangled names) in a library."""
    out = subprocess.run(["nm", "-D", "--undefined-only", library], capture_output=True, text=True, check=True).stdout
    names = [line.split()[-1] for line in out.splitlines() if line.strip()]
    return [n for n in names if any(tag in n for tag in ("N2at", "N3c10", "N5torch", "_ZN2at", "_ZN3c10", "_ZN5torch"))]


def register_python_autograd() -> None:
    """The stable operator's autograd, the way the port registers it (torch.library)."""
    backward_op = torch.ops.rnnfast_stable_proto.layer_backward.default

    def setup_context(ctx, inputs, output):
        cell, x, _, h0, c0, w_ih, w_hh, b_ih, b_hh, _, _ = inputs
        y, _, _, workspace = output
        ctx.cell = cell
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, y, workspace)
        ctx.mark_non_differentiable(workspace)

    def backward(ctx, dy, dh_n, dc_n, _):
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, y, workspace = ctx.saved_tensors
        dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh = backward_op(ctx.cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, y,
                                                                workspace, dy, dh_n, dc_n)
        return None, dx, None, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, None, None

    torch.library.register_autograd("rnnfast_stable_proto::layer_forward_train", backward,
                                    setup_context=setup_context)


def median_us(fn, calls: int, rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - t0) / calls * 1e6)
    return samples


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--rounds", type=int, default=15)
    a = p.parse_args(argv)
    timing.setup_device("cpu", 1)
    stable_lib = build()
    register_python_autograd()
    stable = torch.ops.rnnfast_stable_proto.layer_forward_train.default
    owned = torch.ops.rnnfast_stable_proto.layer_forward_train_owned.default
    unstable = torch.ops.rnnfast_unstable_proto.layer_forward_train.default

    H = a.hidden
    torch.manual_seed(0)
    x, h0, c0 = torch.randn(1, 1, H), torch.randn(1, H), torch.randn(1, H)
    w_ih, w_hh, b_ih, b_hh = torch.randn(4 * H, H), torch.randn(4 * H, H), torch.randn(4 * H), torch.randn(4 * H)
    leaves = [t.clone().requires_grad_() for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh)]

    def args(tensors):
        x, h0, c0, w_ih, w_hh, b_ih, b_hh = tensors
        return (0, x, None, h0, c0, w_ih, w_hh, b_ih, b_hh, None, False)

    plain = args((x, h0, c0, w_ih, w_hh, b_ih, b_hh))
    grad_args = args(leaves)

    def infer(op):
        def run():
            with torch.no_grad():
                op(*plain)
        return run

    def infer_below_autograd(op):
        def run():
            with torch.no_grad(), torch._C._AutoDispatchBelowAutograd():
                op(*plain)
        return run

    def train(op):
        def run():
            y, h_n, c_n, _ = op(*grad_args)
            torch.autograd.backward([y, h_n, c_n], [y, h_n, c_n])
        return run

    class LayerFunction(torch.autograd.Function):
        """The same autograd as a plain Python autograd.Function that calls the stable operator
        below autograd (what an eager module could call instead of the registered kernel)."""

        @staticmethod
        def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
            with torch._C._AutoDispatchBelowAutograd():
                y, h_n, c_n, workspace = stable(0, x, None, h0, c0, w_ih, w_hh, b_ih, b_hh, None, False)
            ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, y, workspace)
            return y, h_n, c_n

        @staticmethod
        def backward(ctx, dy, dh_n, dc_n):
            return torch.ops.rnnfast_stable_proto.layer_backward.default(0, *ctx.saved_tensors, dy, dh_n, dc_n)

    def train_function():
        y, h_n, c_n = LayerFunction.apply(*leaves)
        torch.autograd.backward([y, h_n, c_n], [y, h_n, c_n])

    cases = {
        "infer C++ API, C++ autograd": (infer(unstable), 3000),
        "infer stable, Python autograd kernel": (infer(stable), 3000),
        "infer stable, called below autograd": (infer_below_autograd(stable), 3000),
        "infer stable, below autograd, from_blob": (infer_below_autograd(owned), 3000),
        "train C++ API, C++ autograd": (train(unstable), 1000),
        "train stable, Python autograd": (train(stable), 1000),
        "train stable, Python autograd.Function": (train_function, 1000),
    }
    for fn, _ in cases.values():  # warm-up
        for _ in range(300):
            fn()
    samples = {name: [] for name in cases}
    for _ in range(a.rounds):  # interleaved: each round times every case once
        for name, (fn, calls) in cases.items():
            samples[name] += median_us(fn, calls, 1)
    print(f"{provenance.cpu_model()}; torch {torch.__version__}; 1 thread; T=1 B=1 I=H={H}; "
          f"medians of {a.rounds} interleaved rounds, µs per call")
    for name, values in samples.items():
        print(f"  {name:40s} {statistics.median(values):7.2f}  (min {min(values):.2f})")
    symbols = libtorch_cxx_symbols(stable_lib)
    print(f"stable library: {len(symbols)} undefined libtorch C++ symbols" + (f": {symbols[:5]}" if symbols else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
