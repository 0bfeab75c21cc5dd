"""What a benchmark case computes: the GEMM flop count of a recurrent network's forward (and
backward), and this machine's torch.mm/addmm rate on the same shapes (``roofline()``), and
torch.mm at 2048^3 (``peak_sgemm_gflops()``) for reference.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable


import torch  # noqa: E402

from provenance import load_rnnfast  # noqa: E402
from timing import sync  # noqa: E402



def gates(cell: str) -> int:
    """Gate blocks of a module's cell ("LSTM", "GRUCell", ...), from rnnfast's C++ cell table
    (csrc/cells.h, exported as rnnfast._C.cell_table()): no copy of the table here."""
    table = {entry["name"]: entry["gates"] for entry in load_rnnfast()._C.cell_table()}
    mode = cell.removesuffix("Cell")
    return table["RNN_TANH" if mode == "RNN" else mode]


def gemm_flops(cell: str, T: int, B: int, I: int, H: int, mode: str, proj_size: int = 0,
               num_layers: int = 1, bidirectional: bool = False, steps_rows: int | None = None) -> float:
    """GEMM flops of one call: forward 2*N*G*H*(I+Hr) per layer-direction, training 3x forward.

    N = rows processed = T*B (or sum(batch_sizes) for packed input, via ``steps_rows``);
    Hr = the recurrent input width (proj_size if set, else H). With proj_size the projection
    GEMM 2*N*H*P is added. Pointwise work is not counted.
    """
    G = gates(cell)
    N = steps_rows if steps_rows is not None else T * B
    D = 2 if bidirectional else 1
    Hr = proj_size or H
    total = 0.0
    for layer in range(num_layers):
        in_w = I if layer == 0 else Hr * D
        per = 2.0 * N * G * H * (in_w + Hr)
        if proj_size:
            per += 2.0 * N * H * proj_size
        total += per * D
    return total * (3.0 if mode == "train" else 1.0)


def _time_call(fn: Callable[[], object], device: torch.device, min_time: float = 0.05,
               samples: int = 5) -> float:
    """Median seconds per call of fn, each sample looping fn long enough to last >= min_time."""
    fn()
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    one = max(time.perf_counter() - t0, 1e-7)
    k = max(1, min(10000, math.ceil(min_time / one)))
    res = []
    for _ in range(samples):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(k):
            fn()
        sync(device)
        res.append((time.perf_counter() - t0) / k)
    return statistics.median(res)


_GEMM_CACHE: dict = {}


def forget_gemm_timings() -> None:
    """Drop the cached torch.mm timings (taken while the machine was busy)."""
    _GEMM_CACHE.clear()



def _gemm_seconds(m: int, k: int, n: int, a_t: bool, b_t: bool, device: torch.device,
                  min_time: float, dtype: torch.dtype = torch.float32) -> float:
    """Fastest of torch.mm(A, B, out=C) and torch.addmm(C, A, B, out=C), C [m, n], with A [m,k] given as
    a transposed view of a [k,m] tensor if a_t (likewise B), and with A, B made contiguous."""
    key = (m, k, n, a_t, b_t, device.type, torch.get_num_threads(), dtype)
    if key not in _GEMM_CACHE:
        g = torch.Generator().manual_seed(0)
        a = torch.randn((k, m) if a_t else (m, k), generator=g).to(device, dtype)
        b = torch.randn((n, k) if b_t else (k, n), generator=g).to(device, dtype)
        a = a.t() if a_t else a
        b = b.t() if b_t else b
        ac, bc = a.contiguous(), b.contiguous()
        out = torch.zeros(m, n, device=device, dtype=dtype)
        _GEMM_CACHE[key] = min(
            _time_call(lambda: torch.mm(a, b, out=out), device, min_time),
            _time_call(lambda: torch.addmm(out, a, b, out=out), device, min_time),
            _time_call(lambda: torch.mm(ac, bc, out=out), device, min_time))
        del a, b, ac, bc, out
    return _GEMM_CACHE[key]


def roofline(cell: str, T: int, B: int, I: int, H: int, mode: str, device: torch.device,
             min_time: float = 0.05, dtype: torch.dtype = torch.float32) -> dict:
    """This machine's GEMM rate on the shapes one layer-direction needs (torch.mm/addmm with out=, same threads).

    forward : Gx = X W_ih^T  ([T*B, I] x [I, G*H], once)  +  T x  h W_hh^T ([B, H] x [H, G*H])
    backward: T x dG_t W_hh ([B, G*H] x [G*H, H])  +  dX = dG W_ih  +  dW_ih = dG^T X  +  dW_hh = dG^T H
    Returns the summed GEMM time and flops / time as ``gflops``. It includes torch.mm's per-call
    overhead (~µs), which is what an implementation calling ATen per step pays; a kernel that avoids
    that overhead can exceed 100 % of this "roofline" at tiny batches.
    """
    G = gates(cell)
    GH = G * H
    N = T * B
    t_in = _gemm_seconds(N, I, GH, False, True, device, min_time, dtype)
    t_step = _gemm_seconds(B, H, GH, False, True, device, min_time, dtype)
    secs = t_in + T * t_step
    if mode == "train":
        t_step_b = _gemm_seconds(B, GH, H, False, False, device, min_time, dtype)
        t_dx = _gemm_seconds(N, GH, I, False, False, device, min_time, dtype)
        t_dwih = _gemm_seconds(GH, N, I, True, False, device, min_time, dtype)
        t_dwhh = _gemm_seconds(GH, N, H, True, False, device, min_time, dtype)
        secs += T * t_step_b + t_dx + t_dwih + t_dwhh
    flops = gemm_flops(cell, T, B, I, H, mode)
    return {"roofline_ms": secs * 1e3, "roofline_gflops": flops / secs / 1e9,
            "step_gemm_gflops": 2.0 * B * H * GH / t_step / 1e9,
            "input_gemm_gflops": 2.0 * N * I * GH / t_in / 1e9}


def peak_sgemm_gflops(device: torch.device, n: int = 2048, dtype: torch.dtype = torch.float32) -> float:
    """torch's large-GEMM rate on this machine: torch.mm on [n, n] x [n, n] fp32. A reference, not a
    hardware bound: torch's MKL sgemm may not use the CPU's widest vectors (on this AMD Zen 4 it
    reached ~92 GFLOP/s per core), so a hand-written kernel can exceed it."""
    return 2.0 * n ** 3 / _gemm_seconds(n, n, n, False, False, device, 0.2, dtype) / 1e9
