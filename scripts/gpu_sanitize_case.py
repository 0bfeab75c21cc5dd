"""A small workload of every rnnfast CUDA kernel, for compute-sanitizer (memcheck, racecheck).

Run by scripts/gpu_check.sh as `compute-sanitizer --tool memcheck python3 scripts/gpu_sanitize_case.py`.
Sizes are odd and small (a sanitizer run is ~100x slower than a plain one); every module, packed
input, proj_size, bidirectional and two layers, training (forward + backward) in float32 and
bfloat16, under both GPU paths of the forward (the per-step cuBLAS loop and the persistent kernel). rnnfast's results are compared with rnnfast on the CPU, so a kernel that reads memory
it should not also shows up as a wrong number. Exits non-zero on a mismatch.
"""

from __future__ import annotations

import copy
import os
import sys

import torch
from torch.nn.utils.rnn import pack_sequence

import rnnfast


def run(module: torch.nn.Module, x, packed: bool, device: str):
    m = module.to(device)
    inp = x.to(device) if not packed else pack_sequence([s.to(device) for s in x], enforce_sorted=False)
    if not packed:
        inp.requires_grad_(True)
    out = m(inp)
    y = out[0] if isinstance(out, tuple) else out
    y = y.data if packed else y
    y.float().square().sum().backward()
    grads = [p.grad.detach().float().cpu() for p in m.parameters()]
    return y.detach().float().cpu(), grads


def main() -> int:
    torch.manual_seed(0)
    torch.backends.cudnn.allow_tf32 = False  # full fp32 on the GPU, to compare with the CPU closely
    device = "cuda"
    if not torch.cuda.is_available():
        # A dry run of this script's own logic: the GPU algorithm emulated on the CPU.
        print("no CUDA device: dry run with the GPU algorithm emulated on the CPU", flush=True)
        rnnfast._C._set_gpu_emulation(True)
        device = "cpu"
    cases = [
        ("LSTM", lambda: rnnfast.LSTM(7, 13, num_layers=2, bidirectional=True), False),
        ("LSTM proj", lambda: rnnfast.LSTM(7, 13, proj_size=5), False),
        ("LSTM packed", lambda: rnnfast.LSTM(7, 13), True),
        ("GRU", lambda: rnnfast.GRU(7, 13, bidirectional=True), False),
        ("GRU packed", lambda: rnnfast.GRU(7, 13), True),
        ("RNN relu", lambda: rnnfast.RNN(7, 13, nonlinearity="relu"), False),
        ("LSTMCell", lambda: rnnfast.LSTMCell(7, 13), False),
        ("GRUCell", lambda: rnnfast.GRUCell(7, 13), False),
        ("RNNCell", lambda: rnnfast.RNNCell(7, 13), False),
    ]
    failures = 0
    # RNNFAST_SANITIZE_PATHS=persistent (gpu_check.sh's racecheck run): one path only.
    paths = os.environ.get("RNNFAST_SANITIZE_PATHS", "cublas,persistent").split(",")
    for path, dtype, tol in [(p, d, t) for p in paths for d, t in ((torch.float32, 1e-4), (torch.bfloat16, 5e-2))]:
        rnnfast.set_gpu_path(path)
        for name, make, packed in cases:
            module = make().to(dtype)
            if "Cell" in name:
                x = torch.randn(3, 7, dtype=dtype)
            elif packed:
                x = [torch.randn(n, 7, dtype=dtype) for n in (4, 6, 2)]
            else:
                x = torch.randn(5, 3, 7, dtype=dtype)
            gpu_module = copy.deepcopy(module)
            emulating = device == "cpu"
            if emulating:
                rnnfast._C._set_gpu_emulation(False)
            y_cpu, g_cpu = run(module, x, packed, "cpu")
            if emulating:
                rnnfast._C._set_gpu_emulation(True)
            y_gpu, g_gpu = run(gpu_module, x, packed, device)
            scale = max(1.0, float(y_cpu.abs().max()))
            err = max([float((y_gpu - y_cpu).abs().max()) / scale] +
                      [float((a - b).abs().max()) / max(1.0, float(b.abs().max())) for a, b in zip(g_gpu, g_cpu)])
            ok = err <= tol and torch.isfinite(y_gpu).all()
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {path:10s} {name:12s} {str(dtype):15s} max rel err {err:.2e} "
                  f"(tol {tol:g})", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
