#!/usr/bin/env python
"""The speed-target table: rnnfast vs torch.nn on the project's target configurations, PASS/FAIL.

Usage:
    python benchmarks/targets.py [--repeats 9] [--threads 2] [--only SUBSTR] [--json OUT.json]
    python benchmarks/targets.py --dtype bfloat16    # the bf16 table (issue 10), and bf16 vs fp32
    python benchmarks/targets.py --device cuda [--dtype bfloat16]   # issue 8's table vs cuDNN
    python benchmarks/targets.py --device cuda --table persistent   # issue 9's table

Each row: --dtype (default float32), torch.set_num_threads(--threads), torch.nn.<cell> and rnnfast.<cell> with identical
weights and input (see bench_cases.build_case), one warm-up each, then --repeats interleaved rounds
(ABBA order), median time per implementation. ratio = median torch ms / median rnnfast ms; the row
passes when ratio >= the required minimum. `ratio range` is the min..max of the per-round ratios
(each round times both implementations back to back), a direct view of the noise; rounds during
which other processes used > 0.25 cores are discarded and redone after waiting for quiet, and
`bg load` is the worst other-process load among the kept rounds; `min/min` is the
ratio of the fastest samples (noise only ever adds time, so it is a second, less noisy estimate;
PASS/FAIL uses the medians). On the CPU in float32, `%peak` is rnnfast's GEMM flops per second
over the machine's FMA peak (rnnfast._C.fma_peak_gflops, probed before every case; the fastest
probe counts, since a shared host's speed drifts), and `bound` the
ratio a kernel at 100 % of that peak would reach against torch's measured time: where torch.nn
itself runs near the peak, no implementation can reach a large ratio.
Training = forward + backward of output and final states; inference = eval() + no_grad forward.
With --dtype bfloat16 or float16 the rows are LOWP_TARGETS (torch.nn and rnnfast both in that
dtype), followed by SELF_TARGETS: rnnfast in that dtype against rnnfast in float32, interleaved the
same way (speed ratio) and peak training memory through torch's allocator (memory_use.measure_memory).
The same rows exist as pytest-benchmark tests in test_speed.py (pytest benchmarks/ --benchmark-only).
Fails if rnnfast or its compiled extension cannot be imported.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_cases  # noqa: E402
import flop_model  # noqa: E402
import machine_load  # noqa: E402
import memory_use  # noqa: E402
import provenance  # noqa: E402
import timing  # noqa: E402

# name, cell, mode, T, B, I=H, extra, required minimum ratio torch/rnnfast
TARGETS = [
    ("LSTM train T100 B64 H512", "LSTM", "train", 100, 64, 512, {}, 1.15),
    ("LSTM train T1024 B32 H256", "LSTM", "train", 1024, 32, 256, {}, 1.25),
    ("LSTM infer T100 B64 H512", "LSTM", "infer", 100, 64, 512, {}, 1.0),
    ("LSTM infer T256 B1 H128", "LSTM", "infer", 256, 1, 128, {}, 2.0),
    ("GRU infer T256 B1 H128", "GRU", "infer", 256, 1, 128, {}, 2.0),
    ("GRU train T100 B64 H512", "GRU", "train", 100, 64, 512, {}, 1.6),
    ("GRU train T1024 B32 H256", "GRU", "train", 1024, 32, 256, {}, 1.6),
    ("GRU infer T100 B64 H512", "GRU", "infer", 100, 64, 512, {}, 1.4),
    ("LSTM train packed T256 B32 H256", "LSTM", "train", 256, 32, 256, {"packed": True}, 2.5),
    ("LSTM train proj128 T256 B32 H256", "LSTM", "train", 256, 32, 256, {"proj_size": 128}, 1.4),
    ("RNN train T100 B64 H512", "RNN", "train", 100, 64, 512, {}, 1.5),
    ("RNN relu train T100 B64 H512", "RNN", "train", 100, 64, 512, {"nonlinearity": "relu"}, 1.5),
    # Cells: a decoder-style Python loop of T steps (bench_cases._cell_loop).
    ("LSTMCell infer T32 B1 H128", "LSTMCell", "infer", 32, 1, 128, {}, 2.0),
    ("LSTMCell train T32 B1 H128", "LSTMCell", "train", 32, 1, 128, {}, 2.0),
    ("LSTMCell infer T8 B64 H512", "LSTMCell", "infer", 8, 64, 512, {}, 1.3),
    ("LSTMCell train T8 B64 H512", "LSTMCell", "train", 8, 64, 512, {}, 1.3),
    ("GRUCell infer T32 B1 H128", "GRUCell", "infer", 32, 1, 128, {}, 2.0),
    ("GRUCell train T32 B1 H128", "GRUCell", "train", 32, 1, 128, {}, 2.0),
    ("GRUCell infer T8 B64 H512", "GRUCell", "infer", 8, 64, 512, {}, 1.3),
    ("GRUCell train T8 B64 H512", "GRUCell", "train", 8, 64, 512, {}, 1.3),
    ("RNNCell infer T32 B1 H128", "RNNCell", "infer", 32, 1, 128, {}, 2.0),
    ("RNNCell train T32 B1 H128", "RNNCell", "train", 32, 1, 128, {}, 2.0),
    ("RNNCell infer T8 B64 H512", "RNNCell", "infer", 8, 64, 512, {}, 1.3),
    ("RNNCell train T8 B64 H512", "RNNCell", "train", 8, 64, 512, {}, 1.3),
]

# --dtype bfloat16 / float16: torch.nn and rnnfast in that dtype. The first five rows and minima
# are issue 10's; the rows with 1.0 are extra coverage (not slower than torch.nn).
LOWP_TARGETS = [
    ("LSTM train T100 B64 H512", "LSTM", "train", 100, 64, 512, {}, 1.3),
    ("LSTM infer T100 B64 H512", "LSTM", "infer", 100, 64, 512, {}, 1.3),
    ("GRU train T100 B64 H512", "GRU", "train", 100, 64, 512, {}, 1.6),
    ("GRU infer T100 B64 H512", "GRU", "infer", 100, 64, 512, {}, 1.6),
    ("LSTM 2-layer bidir train T256 B32 H256", "LSTM", "train", 256, 32, 256,
     {"num_layers": 2, "bidirectional": True}, 1.3),
    ("RNN train T100 B64 H512", "RNN", "train", 100, 64, 512, {}, 1.0),
    ("LSTM train proj128 T256 B32 H256", "LSTM", "train", 256, 32, 256, {"proj_size": 128}, 1.0),
    ("LSTM train packed T256 B32 H256", "LSTM", "train", 256, 32, 256, {"packed": True}, 1.0),
    ("LSTM infer T256 B1 H128", "LSTM", "infer", 256, 1, 128, {}, 1.0),
    ("GRUCell train T8 B64 H512", "GRUCell", "train", 8, 64, 512, {}, 1.0),
]

# --device cuda: issue 8's table, against torch.nn on the same GPU (cuDNN; TF32 allowed, torch's
# default), plus torch.nn with cuDNN disabled ("native"). Minimum ratios: cuDNN / rnnfast 0.9
# (1.5 with proj_size), native / rnnfast 3 (where torch's native path exists for the case).
GPU_TARGETS = [
    ("LSTM train T100 B64 H512", "LSTM", "train", 100, 64, 512, {}, 0.9),
    ("LSTM infer T100 B64 H512", "LSTM", "infer", 100, 64, 512, {}, 0.9),
    ("GRU train T100 B64 H512", "GRU", "train", 100, 64, 512, {}, 0.9),
    ("GRU infer T100 B64 H512", "GRU", "infer", 100, 64, 512, {}, 0.9),
    ("LSTM train T1024 B32 H256", "LSTM", "train", 1024, 32, 256, {}, 0.9),
    ("LSTM infer T1024 B32 H256", "LSTM", "infer", 1024, 32, 256, {}, 0.9),
    ("LSTM infer T256 B1 H128", "LSTM", "infer", 256, 1, 128, {}, 0.9),
    ("LSTM train T100 B256 H1024", "LSTM", "train", 100, 256, 1024, {}, 0.9),
    ("LSTM train proj128 T256 B32 H256", "LSTM", "train", 256, 32, 256, {"proj_size": 128}, 1.5),
]
NATIVE_MIN_RATIO = 3.0

# --device cuda --table persistent: issue 9's table, cuDNN (torch.nn) time over rnnfast's persistent
# kernels (RNNFAST_GPU_PATH=persistent: the forward and backward recurrences). A row
# marked "fallback" is one where the persistent kernel is not expected to win: it checks the
# cuBLAS path (what "auto" runs) instead.
PERSISTENT_TARGETS = [
    ("LSTM infer T1024 B32 H256", "LSTM", "infer", 1024, 32, 256, {}, 3.0),
    ("LSTM train T1024 B32 H256", "LSTM", "train", 1024, 32, 256, {}, 2.5),
    ("GRU infer T1024 B32 H256", "GRU", "infer", 1024, 32, 256, {}, 3.0),
    ("GRU train T1024 B32 H256", "GRU", "train", 1024, 32, 256, {}, 2.5),
    ("LSTM infer T100 B64 H512", "LSTM", "infer", 100, 64, 512, {}, 2.5),
    ("LSTM train T100 B64 H512", "LSTM", "train", 100, 64, 512, {}, 2.0),
    ("LSTM train T256 B16 H768 bf16", "LSTM", "train", 256, 16, 768, {"dtype": "bfloat16"}, 2.0),
    ("LSTM infer T256 B1 H128", "LSTM", "infer", 256, 1, 128, {}, 1.5),
    ("GRU infer T256 B1 H128", "GRU", "infer", 256, 1, 128, {}, 1.0),
    ("LSTM train T100 B256 H1024 bf16", "LSTM", "train", 100, 256, 1024,
     {"dtype": "bfloat16", "fallback": True}, 1.0),
]

# rnnfast in the low precision dtype against rnnfast in float32, training: minimum speed ratio
# (fp32 ms / low ms) and maximum peak-memory ratio (low / fp32).
SELF_TARGETS = [
    ("LSTM train T100 B64 H512", "LSTM", 100, 64, 512, {}, 1.6, 0.60),
    ("GRU train T100 B64 H512", "GRU", 100, 64, 512, {}, 1.6, 0.60),
    ("LSTM 2-layer bidir train T256 B32 H256", "LSTM", 256, 32, 256,
     {"num_layers": 2, "bidirectional": True}, 1.6, 0.60),
]


def run_targets(rnnfast, device, repeats: int, min_sample: float, only: str | None = None,
                progress: bool = True, max_discards: int | None = None,
                wait_quiet: float = 120.0, dtype: torch.dtype = torch.float32,
                persistent_table: bool = False) -> list:
    if persistent_table:
        table_rows = PERSISTENT_TARGETS
    elif timing.gpu_series(device):
        table_rows = GPU_TARGETS
    else:
        table_rows = TARGETS if dtype == torch.float32 else LOWP_TARGETS
    rows = [t for t in table_rows if not only or only.lower() in t[0].lower()]
    peak_probes.clear()
    it = rows
    if progress:
        from tqdm import tqdm
        it = tqdm(rows, desc="targets", unit="case", file=sys.stderr, dynamic_ncols=True)
    results = []
    for name, cell, mode, T, B, H, extra, need in it:
        if progress:
            it.set_postfix_str(name)
        extra = dict(extra)
        row_dtype = getattr(torch, extra.pop("dtype")) if "dtype" in extra else dtype
        fallback = extra.pop("fallback", False)
        if device.type == "cpu":  # the machine's FMA peak, probed before every case (max kept: main)
            peak_probes.append(rnnfast._C.fma_peak_gflops(torch.get_num_threads(), "float32", 300_000))
        case = bench_cases.build_case(cell, mode, T, B, H, H, rnnfast, device, dtype=row_dtype, **extra)
        if not timing.gpu_series(device):
            impls = timing.IMPLS
        elif persistent_table:
            impls = ("torch", "rnnfast", "rnnfast_persistent")
        else:
            impls = ("torch", "rnnfast", "rnnfast_persistent", "torch_native")
        tm = timing.time_interleaved(case, repeats, warmup=1, min_sample_s=min_sample, device=device,
                                 impls=impls, max_discards=max_discards, wait_quiet_s=wait_quiet)
        other = tm["other_load_max"]
        t_ms, f_ms = tm["torch"]["ms_median"], tm["rnnfast"]["ms_median"]
        ratio = t_ms / f_ms
        native = None
        if "torch_native" in tm:
            native = tm["torch_native"]["ms_median"] / f_ms
        p_ms = tm["rnnfast_persistent"]["ms_median"] if "rnnfast_persistent" in tm else None
        if persistent_table and not fallback:
            passed = t_ms / p_ms >= need
        else:
            passed = ratio >= need and (native is None or native >= NATIVE_MIN_RATIO)
        results.append({
            "case": name, "cell": cell, "mode": mode, "T": T, "B": B, "I": H, "H": H,
            "packed": bool(extra.get("packed")), "proj_size": extra.get("proj_size", 0),
            "nonlinearity": extra.get("nonlinearity"), "dtype": str(row_dtype).replace("torch.", ""),
            "num_layers": extra.get("num_layers", 1), "bidirectional": extra.get("bidirectional", False),
            "torch_ms": t_ms, "rnnfast_ms": f_ms, "ratio": ratio, "required": need,
            "native_ms": tm["torch_native"]["ms_median"] if native is not None else None,
            "native_ratio": native,
            "persistent_ms": p_ms, "persistent_ratio": None if p_ms is None else t_ms / p_ms,
            "persistent_vs_cublas": None if p_ms is None else f_ms / p_ms,
            "table": "persistent" if persistent_table else "main", "fallback": fallback,
            "pass": passed,
            "ratio_of_mins": min(tm["torch"]["ms_all"]) / min(tm["rnnfast"]["ms_all"]),
            "round_ratio_min": min(tm["round_ratios"]), "round_ratio_max": max(tm["round_ratios"]),
            "torch_ms_all": tm["torch"]["ms_all"], "rnnfast_ms_all": tm["rnnfast"]["ms_all"],
            "inner": tm["inner"], "repeats": repeats,
            "torch_gflops": case.flops / t_ms / 1e6, "rnnfast_gflops": case.flops / f_ms / 1e6,
            "max_abs_diff_vs_torch": tm["max_abs_diff"], "other_load_cores": other,
            "other_load_mean": tm["other_load_cores"], "discarded_rounds": tm["discarded_rounds"],
        })
        del case
    return results


def run_self_targets(rnnfast, device, dtype: torch.dtype, repeats: int, min_sample: float,
                     only: str | None = None, max_discards: int | None = None,
                     wait_quiet: float = 120.0) -> list:
    """rnnfast in `dtype` against rnnfast in float32 (SELF_TARGETS): training time and peak memory."""
    low = str(dtype).replace("torch.", "")
    results = []
    for name, cell, T, B, H, extra, need_speed, max_mem in SELF_TARGETS:
        if only and only.lower() not in name.lower():
            continue
        cases = {"float32": bench_cases.build_case(cell, "train", T, B, H, H, rnnfast, device, **extra),
                 low: bench_cases.build_case(cell, "train", T, B, H, H, rnnfast, device, dtype=dtype, **extra)}
        both = bench_cases.TimedCase(cases["float32"].spec, "train")
        both.runs = {k: c.runs["rnnfast"] for k, c in cases.items()}
        tm = timing.time_interleaved(both, repeats, warmup=1, min_sample_s=min_sample, device=device,
                                 impls=("float32", low), max_discards=max_discards,
                                 wait_quiet_s=wait_quiet)
        mem = {k: memory_use.measure_memory(c, device, impls=("rnnfast",), rss=False)["rnnfast"]["peak_mem_bytes"]
               for k, c in cases.items()}
        speed = tm["float32"]["ms_median"] / tm[low]["ms_median"]
        mem_ratio = mem[low] / mem["float32"]
        results.append({
            "case": name, "dtype": low, "fp32_ms": tm["float32"]["ms_median"], "low_ms": tm[low]["ms_median"],
            "speed_ratio": speed, "need_speed": need_speed, "fp32_peak_bytes": mem["float32"],
            "low_peak_bytes": mem[low], "memory_ratio": mem_ratio, "max_memory_ratio": max_mem,
            "pass": speed >= need_speed and mem_ratio <= max_mem,
            "fp32_ms_all": tm["float32"]["ms_all"], "low_ms_all": tm[low]["ms_all"],
            "other_load_cores": tm["other_load_max"], "discarded_rounds": tm["discarded_rounds"],
        })
        del cases, both
    return results


def self_table(results) -> str:
    if not results:
        return ""
    low = results[0]["dtype"]
    hdr = (f"{'rnnfast ' + low + ' vs rnnfast float32, training':42} | {'fp32 ms':>8} {low + ' ms':>9} | "
           f"{'speed':>6} {'need':>5} | {'fp32 MiB':>8} {low + ' MiB':>9} | {'mem':>5} {'max':>5} | ")
    lines = [hdr, "-" * len(hdr)]
    for r in results:
        lines.append(
            f"{r['case']:42} | {r['fp32_ms']:>8.1f} {r['low_ms']:>9.1f} | {r['speed_ratio']:>5.2f}x "
            f"{r['need_speed']:>5.2f} | {r['fp32_peak_bytes'] / 2**20:>8.1f} {r['low_peak_bytes'] / 2**20:>9.1f} | "
            f"{r['memory_ratio']:>5.2f} {r['max_memory_ratio']:>5.2f} | {'PASS' if r['pass'] else 'FAIL'}")
    lines.append(f"{sum(r['pass'] for r in results)}/{len(results)} targets met")
    return "\n".join(lines)


# FMA-peak probes of the last run_targets (a shared host's speed drifts: one probe at the start can
# catch a slow minute, so the fastest of the probes before every case is the machine's peak).
peak_probes: list = []


def table(results) -> str:
    gpu = any(r.get("native_ratio") is not None for r in results)
    native_hdr = f" {'native ms':>9} {'ratio':>6} |" if gpu else ""
    persistent = any(r.get("persistent_ms") is not None for r in results)
    if persistent:
        native_hdr += f" {'persist ms':>10} {'ratio':>6} {'vs cuBLAS':>9} |"
    peak = any(r.get("bound") is not None for r in results)
    peak_hdr = f" {'%peak':>5} {'bound':>6} |" if peak else ""
    hdr = (f"{'case':34} | {'torch ms':>9} {'rnnfast ms':>10} | {'ratio':>6} {'range':>11} "
           f"{'need':>5} |{native_hdr} {'':4} |{peak_hdr} {'min/min':>7} {'maxdiff':>8} {'bg load':>7}")
    lines = [hdr, "-" * len(hdr)]
    for r in results:
        load = "-" if r["other_load_cores"] is None else f"{r['other_load_cores']:.2f}"
        diff = "-" if r["max_abs_diff_vs_torch"] is None else f"{r['max_abs_diff_vs_torch']:.1e}"
        native = (f" {r['native_ms']:>9.3f} {r['native_ratio']:>5.2f}x |" if r.get("native_ratio") is not None
                  else (f" {'-':>9} {'-':>6} |" if gpu else ""))
        if persistent:
            native += (f" {r['persistent_ms']:>10.3f} {r['persistent_ratio']:>5.2f}x "
                       f"{r['persistent_vs_cublas']:>8.2f}x |")
        frac = (f" {100 * r['rnnfast_peak_frac']:>4.0f}% {r['bound']:>5.2f}x |" if r.get("bound") is not None
                else (f" {'-':>5} {'-':>6} |" if peak else ""))
        lines.append(
            f"{r['case']:34} | {r['torch_ms']:>9.3f} {r['rnnfast_ms']:>10.3f} | {r['ratio']:>5.2f}x "
            f"{r['round_ratio_min']:>5.2f}-{r['round_ratio_max']:<5.2f} {r['required']:>5.2f} |{native} "
            f"{'PASS' if r['pass'] else 'FAIL':4} |{frac} {r['ratio_of_mins']:>6.2f}x {diff:>8} {load:>7}")
    n_pass = sum(r["pass"] for r in results)
    lines.append(f"{n_pass}/{len(results)} targets met")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--min-sample", type=float, default=0.1, help="min seconds per timing sample")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--only", default=None, help="run only cases whose name contains this")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="float32: the main table; bfloat16/float16: LOWP_TARGETS and SELF_TARGETS")
    p.add_argument("--json", default=None, help="write results + machine info here")
    p.add_argument("--max-discards", type=int, default=None,
                   help="timing rounds during which other processes used CPU are discarded and redone, "
                        "at most this many per case (default: --repeats)")
    p.add_argument("--wait-quiet", type=float, default=120.0,
                   help="before redoing a busy round, wait up to this many seconds for quiet")
    p.add_argument("--strict", action="store_true", help="exit 1 if any target fails")
    p.add_argument("--table", default="main", choices=["main", "persistent"],
                   help="persistent (--device cuda): issue 9's table, cuDNN vs the persistent kernel")
    a = p.parse_args(argv)
    if a.table == "persistent" and a.device != "cuda":
        p.error("--table persistent needs --device cuda")
    device = timing.setup_device(a.device, a.threads)
    rnnfast = provenance.load_rnnfast()
    print(f"torch {torch.__version__}, threads pinned: torch.get_num_threads() = {torch.get_num_threads()}, "
          f"rnnfast backend: {provenance.rnnfast_backend(rnnfast)}, cpu: {provenance.cpu_model()}", flush=True)
    meta = provenance.machine_info(rnnfast, a.threads, device)
    meta["peak_sgemm_gflops"] = machine_load.measure_quiet(lambda: flop_model.peak_sgemm_gflops(device))[0]
    dtype = getattr(torch, a.dtype)
    meta["dtype"] = a.dtype
    if dtype == torch.bfloat16:
        meta["peak_bf16_gflops"] = rnnfast._C.fma_peak_gflops(a.threads, "bfloat16")
    t0 = time.perf_counter()
    results = run_targets(rnnfast, device, a.repeats, a.min_sample, a.only,
                          max_discards=a.max_discards, wait_quiet=a.wait_quiet, dtype=dtype,
                          persistent_table=a.table == "persistent")
    self_results = []
    if dtype != torch.float32 and device.type == "cpu":
        self_results = run_self_targets(rnnfast, device, dtype, a.repeats, a.min_sample, a.only,
                                        max_discards=a.max_discards, wait_quiet=a.wait_quiet)
    meta["wall_seconds"] = time.perf_counter() - t0
    if device.type == "cpu" and dtype == torch.float32 and peak_probes:
        meta["peak_fma_gflops"] = max(peak_probes)
        meta["peak_fma_probes"] = list(peak_probes)
    if "peak_fma_gflops" in meta:
        # %peak: rnnfast's GEMM flops per second over the machine's FMA peak; bound: the ratio a
        # kernel at 100 % of that peak would reach against this torch time (GEMM flops only).
        fastest = max((r.get("rnnfast_gflops") or 0 for r in results), default=0)
        if fastest > meta["peak_fma_gflops"]:
            # A case ran faster than the probed peak: every probe caught a slow spell of the host
            # (seen once on a shared 2-core VM: all probes at one core's rate). No %peak from it.
            print(f"WARNING: rnnfast ran at {fastest:.0f} GFLOP/s, above the probed FMA peak "
                  f"({meta['peak_fma_gflops']:.0f}): the probes under-measured; %peak and bound "
                  "are left out.", file=sys.stderr)
            meta["peak_fma_under_measured"] = meta.pop("peak_fma_gflops")
        else:
            for r in results:
                r["rnnfast_peak_frac"] = r["rnnfast_gflops"] / meta["peak_fma_gflops"]
                r["bound"] = meta["peak_fma_gflops"] / r["torch_gflops"]
    print()
    print(f"dtype {a.dtype}" + (f", FMA peak {meta['peak_fma_gflops']:.0f} GFLOP/s ({a.threads} threads)"
                                if "peak_fma_gflops" in meta else ""))
    print(table(results))
    if self_results:
        print()
        print(self_table(self_results))
    results_all = results + self_results
    busy = [r["case"] for r in results if (r["other_load_cores"] or 0) > machine_load.BUSY_CORES]
    if busy:
        print(f"WARNING: other processes used CPU while timing {busy}: rerun on a quiet machine.",
              file=sys.stderr)
    if a.json:
        provenance.write_json(a.json, {"meta": meta, "results": results, "self_results": self_results})
    return 1 if a.strict and not all(r["pass"] for r in results_all) else 0


if __name__ == "__main__":
    sys.exit(main())
