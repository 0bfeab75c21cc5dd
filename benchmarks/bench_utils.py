"""Shared machinery for the rnnfast benchmarks (seq_scaling.py, targets.py, test_speed.py).

Everything that decides what a number means lives here, once:

* ``load_rnnfast()``   -- imports rnnfast and its compiled extension or raises; there is no fallback.
* ``build_case()``     -- a torch.nn module and an rnnfast module with identical weights, one input,
                          and a zero-argument ``run()`` per implementation (one training or inference step).
* ``time_interleaved()`` -- warm-up, then repeats that alternate the implementations, medians;
                          rounds disturbed by other processes (``LoadMonitor``) are redone.
* ``peak_alloc_bytes()`` -- peak allocated bytes of one run (see its docstring for the method).
* ``gemm_flops()`` / ``roofline()`` -- GEMM flop count and this machine's torch.mm/addmm rate on the
                          same shapes; ``peak_sgemm_gflops()`` -- torch.mm at 2048^3 for reference.
* ``machine_info()``   -- provenance for the *_meta.json files.
"""
from __future__ import annotations

import ctypes
import datetime
import gc
import importlib
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

# The profiler used for peak memory (peak_alloc_bytes) logs "USDT: ... profiler_start/stop" to
# stderr on every use; level 6 silences kineto's log (read when the profiler starts).
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

import torch  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CELLS = ("LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell")
IMPLS = ("torch", "rnnfast")


# ----------------------------------------------------------------------------- rnnfast import
def load_rnnfast():
    """Import rnnfast (the in-place build in the repo root is preferred) and its compiled extension.

    Raises with the original error when anything is missing: a benchmark of torch against itself
    must never happen silently.
    """
    if REPO_ROOT not in sys.path:
        sys.path.insert(1, REPO_ROOT)
    try:
        rnnfast = importlib.import_module("rnnfast")
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise RuntimeError(
            f"benchmarks need the rnnfast package: `import rnnfast` failed ({exc!r}). "
            f"Build it first, e.g. `pip install -e {REPO_ROOT}` or "
            f"`python setup.py build_ext --inplace` in {REPO_ROOT}."
        ) from exc
    try:
        importlib.import_module("rnnfast._C")
    except Exception as exc:  # noqa: BLE001
        raise RuntimeError(
            f"rnnfast was imported from {getattr(rnnfast, '__file__', '?')} but its compiled "
            f"extension rnnfast._C is not importable ({exc!r}); rebuild the extension."
        ) from exc
    for name in CELLS:
        cls = getattr(rnnfast, name, None)
        base = getattr(torch.nn, name)
        if cls is None or not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
            raise RuntimeError(f"rnnfast.{name} is missing or not an nn.Module class")
        if cls is base or cls.forward is base.forward:
            raise RuntimeError(f"rnnfast.{name} does not override torch.nn.{name}.forward: "
                               "benchmarking it would time torch against itself")
    return rnnfast


def gates(cell: str) -> int:
    """Gate blocks of a module's cell ("LSTM", "GRUCell", ...), from rnnfast's C++ cell table
    (csrc/cells.h, exported as rnnfast._C.cell_table()): no copy of the table here."""
    table = {entry["name"]: entry["gates"] for entry in load_rnnfast()._C.cell_table()}
    mode = cell.removesuffix("Cell")
    return table["RNN_TANH" if mode == "RNN" else mode]


def rnnfast_backend_short(rnnfast) -> str:
    """One-line summary of rnnfast.backend() for titles (version, ISA, GEMM if reported)."""
    fn = getattr(rnnfast, "backend", None)
    try:
        b = fn() if fn is not None else None
    except Exception:  # noqa: BLE001
        b = None
    if isinstance(b, dict):
        parts = [f"rnnfast {b.get('version', getattr(rnnfast, '__version__', '?'))}"]
        parts += [f"{k}={b[k]}" for k in ("cpu_capability", "step_gemm") if b.get(k) is not None]
        return " ".join(parts)
    return f"rnnfast {getattr(rnnfast, '__version__', '?')} backend={b}"


def rnnfast_backend(rnnfast) -> str | None:
    fn = getattr(rnnfast, "backend", None)
    if fn is None:
        return None
    try:
        return str(fn())
    except Exception as exc:  # noqa: BLE001 - provenance only
        return f"<rnnfast.backend() raised {exc!r}>"


# ----------------------------------------------------------------------------- device / threads
# RNNFAST_BENCH_DRY_RUN=1 with --device cuda on a machine without a GPU: a dry run of the GPU
# benchmarks' own code (series, tables, plots) on the CPU, with rnnfast's GPU algorithm emulated
# (rnnfast._C._set_gpu_emulation). Its timings mean nothing; it exists so that the one prepared
# GPU run (scripts/gpu_check.sh) does not fail on a benchmark bug. Use it with small cases (--only).
DRY_RUN = os.environ.get("RNNFAST_BENCH_DRY_RUN") == "1"


def gpu_series(device: torch.device) -> bool:
    """Whether to time the GPU series (torch without cuDNN, rnnfast's persistent kernel)."""
    return device.type == "cuda" or DRY_RUN


def setup_device(device: str, threads: int) -> torch.device:
    """Pin torch's intra-op thread count and validate the device; raises SystemExit on a bad device."""
    if device not in ("cpu", "cuda"):
        raise SystemExit(f"error: --device must be cpu or cuda, got {device!r}")
    if device == "cuda" and DRY_RUN:
        import rnnfast
        rnnfast._C._set_gpu_emulation(True)
        print("RNNFAST_BENCH_DRY_RUN=1: DRY RUN on the CPU with the GPU algorithm emulated; "
              "the timings mean nothing", file=sys.stderr, flush=True)
        device = "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"error: --device cuda requested but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, built with CUDA: {torch.version.cuda is not None})")
    torch.set_num_threads(threads)
    if torch.get_num_threads() != threads:
        raise SystemExit(f"error: torch.set_num_threads({threads}) left {torch.get_num_threads()} threads")
    return torch.device(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_ms(run: Callable[[], object], inner: int, device: torch.device) -> float:
    """Milliseconds per call of `inner` back-to-back calls: CUDA events on the GPU (the GPU's own
    clock, from the first launch to the last kernel's end), perf_counter on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        for _ in range(inner):
            run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / inner
    t0 = time.perf_counter()
    for _ in range(inner):
        run()
    return (time.perf_counter() - t0) / inner * 1e3


# ----------------------------------------------------------------------------- flops
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


# ----------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One benchmark configuration: per implementation a module and a zero-argument run()."""
    cell: str
    mode: str  # "train" | "infer"
    T: int
    B: int
    I: int
    H: int
    proj_size: int = 0
    packed: bool = False
    rows: int = 0  # rows actually processed (sum of lengths for packed input)
    leaf: torch.Tensor | None = None  # the input tensor (its .grad is cleared like the parameters')
    num_layers: int = 1
    bidirectional: bool = False
    modules: dict = field(default_factory=dict)
    runs: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)

    @property
    def flops(self) -> float:
        return gemm_flops(self.cell, self.T, self.B, self.I, self.H, self.mode,
                          proj_size=self.proj_size, num_layers=self.num_layers,
                          bidirectional=self.bidirectional, steps_rows=self.rows)


def _flat_out(result) -> list:
    """Tensors of an RNN result (output, h_n[, c_n]); PackedSequence output contributes .data."""
    out, state = result
    if isinstance(out, torch.nn.utils.rnn.PackedSequence):
        out = out.data
    states = list(state) if isinstance(state, tuple) else [state]
    return [out] + states


def _cell_loop(mod, x):
    """A decoder-style Python loop of a cell over x [T, B, I]: the hidden state of step t feeds
    step t+1; returns the list of every step's outputs (h, plus c for an LSTMCell)."""
    state = None
    outs = []
    for t in range(x.size(0)):
        state = mod(x[t], state)
        outs.extend(state if isinstance(state, tuple) else (state,))
    return outs


def build_case(cell: str, mode: str, T: int, B: int, I: int, H: int, rnnfast, device: torch.device,
               proj_size: int = 0, packed: bool = False, seed: int = 0,
               dtype: torch.dtype = torch.float32, nonlinearity: str | None = None,
               num_layers: int = 1, bidirectional: bool = False) -> Case:
    """Build torch.nn.<cell> and rnnfast.<cell> with identical weights (load_state_dict, strict) and one input.

    train: forward, then backward of the output and final states with fixed random upstream
           gradients; parameter and input .grad are set to None before every run.
    infer: eval() and torch.no_grad() forward.
    packed: PackedSequence input, enforce_sorted=False, lengths uniform in [T/2, T] (the max is T).
    A cell (LSTMCell, GRUCell, RNNCell) runs T steps in a Python loop (see _cell_loop); training
    back-propagates from every step's outputs.
    """
    torch.manual_seed(seed)
    kw = {"proj_size": proj_size} if proj_size else {}
    if num_layers != 1 or bidirectional:
        kw.update(num_layers=num_layers, bidirectional=bidirectional)
    if nonlinearity is not None:
        kw["nonlinearity"] = nonlinearity
    ref = getattr(torch.nn, cell)(I, H, **kw).to(device=device, dtype=dtype)
    fast = getattr(rnnfast, cell)(I, H, **kw).to(device=device, dtype=dtype)
    fast.load_state_dict(ref.state_dict(), strict=True)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(T, B, I, generator=g, dtype=dtype).to(device)
    rows = T * B
    if packed:
        lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
        lengths[torch.randint(0, B, (1,), generator=g)] = T  # the padded length really is T
        ps = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        rows = int(lengths.sum())
        data = ps.data.detach().clone().requires_grad_(mode == "train")
        inp = torch.nn.utils.rnn.PackedSequence(data, ps.batch_sizes, ps.sorted_indices,
                                                ps.unsorted_indices)
        leaf = data
    else:
        inp = x.requires_grad_(mode == "train")
        leaf = x
    case = Case(cell, mode, T, B, I, H, proj_size, packed, rows, leaf, num_layers, bidirectional)

    is_cell = cell.endswith("Cell")
    flat = (lambda mod: _cell_loop(mod, inp)) if is_cell else (lambda mod: _flat_out(mod(inp)))
    # fixed upstream gradients, shaped like torch's result
    with torch.no_grad():
        shapes = [t.shape for t in flat(ref)]
    grads = [torch.randn(s, generator=g, dtype=dtype).to(device) for s in shapes]

    for impl, mod in (("torch", ref), ("rnnfast", fast)):
        params = list(mod.parameters())
        if mode == "train":
            mod.train()

            def run(mod=mod, params=params):
                for p in params:
                    p.grad = None
                leaf.grad = None
                outs = flat(mod)
                torch.autograd.backward(outs, grads)
                return outs[0]
        else:
            mod.eval()

            def run(mod=mod):
                with torch.no_grad():
                    return flat(mod)[-1 if is_cell else 0]
        case.modules[impl] = mod
        case.runs[impl] = run
    if gpu_series(device):
        # torch.nn's own CUDA path (cuDNN disabled): the same module, its non-cuDNN kernels.
        def run_native(run=case.runs["torch"]):
            with torch.backends.cudnn.flags(enabled=False):
                return run()
        case.modules["torch_native"] = ref
        case.runs["torch_native"] = run_native
        # rnnfast's two GPU paths of the forward: the per-step cuBLAS loop ("rnnfast", what the
        # default "auto" setting runs today) and the persistent kernel ("rnnfast_persistent").
        set_path = rnnfast._C._set_gpu_path

        def run_path(path, run=case.runs["rnnfast"]):
            previous = rnnfast._C._gpu_path()
            set_path(path)
            try:
                return run()
            finally:
                set_path(previous)
        case.runs["rnnfast"] = lambda: run_path("cublas")
        case.modules["rnnfast_persistent"] = fast
        case.runs["rnnfast_persistent"] = lambda: run_path("persistent")
    return case


# ----------------------------------------------------------------------------- timing
def time_interleaved(case: Case, repeats: int, warmup: int = 1, min_sample_s: float = 0.05,
                     device: torch.device = torch.device("cpu"), impls=IMPLS,
                     max_discards: int | None = None, wait_quiet_s: float = 120.0) -> dict:
    """Warm up every implementation, then `repeats` rounds that alternate them (ABBA order).

    One sample = the mean of `inner` back-to-back runs, `inner` chosen from the warm-up so a sample
    lasts >= min_sample_s (the same `inner` for every implementation).
    Busy machine guard: each round is watched with LoadMonitor; a round during which other processes
    used more than BUSY_CORES cores is discarded, and after waiting (up to wait_quiet_s) for quiet it
    is run again, at most `max_discards` times in all (default: `repeats`); after that busy rounds
    are kept and show in other_load_cores.
    Returns per impl the median and all kept samples in ms, the per-round ratios torch/rnnfast,
    other_load_cores (mean over kept rounds) and other_load_max, discarded_rounds, and the max abs
    difference of the warm-up outputs (a cheap guard against timing a wrong kernel).
    """
    if max_discards is None:
        max_discards = repeats
    first = {}
    warm_s = {}
    for impl in impls:
        for w in range(max(1, warmup)):
            sync(device)
            t0 = time.perf_counter()
            out = case.runs[impl]()
            sync(device)
            warm_s[impl] = time.perf_counter() - t0
            if w == 0:
                first[impl] = out.detach().float().cpu()
            del out
    max_abs_diff = None
    if "torch" in first and "rnnfast" in first:
        max_abs_diff = float((first["torch"] - first["rnnfast"]).abs().max())
    inner = max(1, min(1000, math.ceil(min_sample_s / max(min(warm_s.values()), 1e-6))))
    samples = {impl: [] for impl in impls}
    loads = []
    discarded = 0
    gc.collect()
    gc_was = gc.isenabled()
    gc.disable()
    try:
        r = 0
        while r < repeats:
            order = impls if r % 2 == 0 else tuple(reversed(impls))
            mon = LoadMonitor()
            got = {}
            for impl in order:
                got[impl] = timed_ms(case.runs[impl], inner, device)
            other = mon.other_cores()
            if other is not None and other > BUSY_CORES and discarded < max_discards:
                discarded += 1
                wait_quiet(wait_quiet_s)
                continue
            for impl in impls:
                samples[impl].append(got[impl])
            loads.append(other)
            r += 1
    finally:
        if gc_was:
            gc.enable()
    res = {impl: {"ms_median": statistics.median(s), "ms_all": s} for impl, s in samples.items()}
    res["inner"] = inner
    res["max_abs_diff"] = max_abs_diff
    known = [x for x in loads if x is not None]
    res["other_load_cores"] = statistics.mean(known) if known else None
    res["other_load_max"] = max(known) if known else None
    res["discarded_rounds"] = discarded
    if "torch" in samples and "rnnfast" in samples:
        res["round_ratios"] = [a / b for a, b in zip(samples["torch"], samples["rnnfast"])]
    return res


# ----------------------------------------------------------------------------- memory
_libc = None


def _malloc_trim() -> None:
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL("libc.so.6")
        _libc.malloc_trim(0)
    except OSError:
        pass


def _proc_status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_alloc_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated through torch's allocator during one call of fn, above the level at entry.

    CUDA: torch.cuda.reset_peak_memory_stats + max_memory_allocated - memory_allocated at entry.
    CPU : torch 2.13 has no CPU allocator statistics (no torch.cpu.memory). The profiler with
          profile_memory=True records every c10 CPU allocation and free as an Allocation event with
          its signed size and timestamp (torch._C._profiler, experimental_event_tree); the events of
          all threads are sorted by time and summed, and the running maximum is the peak.
          What it sees: every tensor allocated through c10 (ATen ops, at::empty in extensions,
          torch's oneDNN RNN workspace). What it cannot see: memory an extension or library takes
          from malloc/new directly (std::vector, oneDNN-internal scratchpads), or pages the OS maps.
          Frees of blocks allocated before the profiler started are not reported, so callers must
          release such blocks (e.g. set .grad = None) before calling this.
    Validated by validate_peak_alloc(): a known 100 MiB allocation reads as 100 MiB.
    These runs are separate from the timing runs (profiling slows the code down).
    """
    if device.type == "cuda":
        sync(device)
        gc.collect()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = fn()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del out
        return int(peak)
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        if e.tag == _EventType.Allocation and e.extra_fields.device.type == "cpu":
            events.append((e.start_time_ns, e.extra_fields.alloc_size))
        stack.extend(e.children)
    events.sort()
    cur = peak = 0
    for _, size in events:
        cur += size
        peak = max(peak, cur)
    return int(peak)


def peak_rss_delta_bytes(fn: Callable[[], object]) -> int | None:
    """Rough cross-check on Linux: peak resident set (VmHWM, reset via /proc/self/clear_refs) minus
    the resident set at entry, after malloc_trim. Sees malloc'ed memory the profiler cannot, but
    only pages actually touched, and allocator reuse can hide or inflate it: a hint, not the metric."""
    gc.collect()
    _malloc_trim()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    base = _proc_status_bytes("VmRSS")
    out = fn()
    hwm = _proc_status_bytes("VmHWM")
    del out
    if base is None or hwm is None:
        return None
    return hwm - base


def validate_peak_alloc(device: torch.device, tol: float = 0.02) -> dict:
    """Sanity check of peak_alloc_bytes: allocate 100 MiB, free it, allocate 50 MiB -> expect 100 MiB."""
    nbytes = 100 * 2**20

    def region():
        a = torch.ones(nbytes // 4, device=device)
        del a
        b = torch.ones(nbytes // 8, device=device)
        return b

    measured = peak_alloc_bytes(region, device)
    ok = abs(measured - nbytes) <= tol * nbytes
    res = {"expected_bytes": nbytes, "measured_bytes": measured, "ok": ok}
    if not ok:
        raise RuntimeError(f"peak-memory method failed its sanity check: {res}")
    return res


def _clear_grads(case: Case, mod: torch.nn.Module) -> None:
    for p in mod.parameters():
        p.grad = None
    if case.leaf is not None:
        case.leaf.grad = None


def measure_memory(case: Case, device: torch.device, impls=IMPLS, rss: bool = True) -> dict:
    """Per implementation: one profiled run for peak allocated bytes (+ one plain run for the RSS hint)."""
    res = {}
    for impl in impls:
        mod = case.modules[impl]
        run = case.runs[impl]
        _clear_grads(case, mod)  # free blocks allocated before profiling (see peak_alloc_bytes)
        res[impl] = {"peak_mem_bytes": peak_alloc_bytes(run, device)}
        if rss and device.type == "cpu":
            _clear_grads(case, mod)
            res[impl]["peak_rss_delta_bytes"] = peak_rss_delta_bytes(run)
        _clear_grads(case, mod)
    return res


# ----------------------------------------------------------------------------- machine load
class LoadMonitor:
    """CPU time spent by *other* processes while we measure, in cores (busy jiffies of the whole
    machine from /proc/stat minus this process's own CPU time, over wall time).

    On a 2-core VM a compiler or test run in parallel wrecks the timings (OpenMP threads of the
    benchmark wait for a core); this number says whether a result was measured on a quiet machine.
    """

    def __init__(self):
        self._t0 = self._snap()

    @staticmethod
    def _snap():
        busy = None
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            busy = (sum(v) - v[3] - (v[4] if len(v) > 4 else 0)) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError):
            pass
        t = os.times()
        return time.perf_counter(), busy, t.user + t.system

    def other_cores(self, reset: bool = True) -> float | None:
        now = self._snap()
        (w0, b0, o0), (w1, b1, o1) = self._t0, now
        if reset:
            self._t0 = now
        if b0 is None or b1 is None or w1 <= w0:
            return None
        return max(0.0, ((b1 - b0) - (o1 - o0)) / (w1 - w0))


BUSY_CORES = 0.25  # other processes' CPU use above which a measurement is redone


def wait_quiet(max_wait_s: float, threshold: float = 0.1, window_s: float = 1.0) -> float:
    """Sleep in `window_s` slices until other processes use < threshold cores (or max_wait_s passed).
    Returns the seconds waited."""
    t0 = time.perf_counter()
    while True:
        mon = LoadMonitor()
        time.sleep(window_s)
        other = mon.other_cores()
        waited = time.perf_counter() - t0
        if other is None or other < threshold or waited >= max_wait_s:
            return waited


def measure_quiet(fn: Callable[[], object], retries: int = 2, max_wait_s: float = 120.0):
    """Run fn (a measurement) while watching the machine; if other processes used more than
    BUSY_CORES cores meanwhile, wait (up to max_wait_s) for quiet and measure again, at most
    `retries` more times. Returns (result, other_cores, attempts); the last attempt is kept."""
    for attempt in range(1, retries + 2):
        mon = LoadMonitor()
        res = fn()
        other = mon.other_cores()
        if other is None or other <= BUSY_CORES or attempt > retries:
            return res, other, attempt
        _GEMM_CACHE.clear()  # roofline timings taken under load are not kept
        wait_quiet(max_wait_s)


def loadavg() -> list | None:
    try:
        return [float(x) for x in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return None


# ----------------------------------------------------------------------------- provenance
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> list:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    fl = line.split(":", 1)[1].split()
                    return sorted(x for x in fl if x.startswith(("avx", "fma", "amx")))
    except OSError:
        pass
    return []


def _git(*args) -> str | None:
    try:
        return subprocess.run(["git", "-C", REPO_ROOT, *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    except Exception:  # noqa: BLE001
        return None


def machine_info(rnnfast, threads: int, device: torch.device) -> dict:
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv),
        "cpu_model": cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "torch_num_threads": torch.get_num_threads(),
        "device": str(device),
        "torch_version": torch.__version__,
        "torch_parallel_backend": torch.__config__.parallel_info().splitlines()[0:6],
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "rnnfast_file": getattr(rnnfast, "__file__", None),
        "rnnfast_version": getattr(rnnfast, "__version__", None),
        "rnnfast_backend": rnnfast_backend(rnnfast),
        "loadavg_at_start": loadavg(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain")),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def fmt_mb(b) -> str:
    return "-" if b is None else f"{b / 2**20:.1f}"
