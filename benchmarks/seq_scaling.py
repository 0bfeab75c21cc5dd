#!/usr/bin/env python
"""Sequence-length scaling of rnnfast vs torch.nn: time, GFLOP/s against this machine's GEMM roofline, memory.

Usage:
    python benchmarks/seq_scaling.py --out results/            # LSTM,GRU x train,infer x T=16..4096
    python benchmarks/seq_scaling.py --quick --out results/    # 4 lengths, fewer repeats (~2-3 min on 2 cores)
    python benchmarks/seq_scaling.py --dtype bfloat16 --out results/bf16/   # both in bfloat16

For every (cell, mode, T): torch.nn.<cell> and rnnfast.<cell> get identical weights (load_state_dict)
and the same input (torch.randn, time-major [T, B, I]) in --dtype (default float32); zero initial
state.
  train: forward, then backward of (output, h_n[, c_n]) with fixed random upstream gradients;
         parameter and input .grad set to None before every run (so the time includes .grad allocation).
  infer: eval() + torch.no_grad() forward.

Timing: one warm-up run per implementation, then --repeats rounds that alternate the implementations
(torch, rnnfast, then rnnfast, torch, ...). Each sample averages `inner` back-to-back runs so a sample
lasts >= --min-sample seconds (same `inner` for both); the reported time is the median sample.
The warm-up outputs of the two implementations are compared (max_abs_diff in the JSON).

Memory (separate runs, never timed): peak bytes allocated through torch's CPU allocator during one run,
above the level at entry. torch 2.13 has no CPU allocator statistics, so the profiler with
profile_memory=True records every c10 allocation/free (signed size + timestamp, all threads); sorted by
time and summed, their running maximum is the peak. It cannot see malloc/new done directly by an
extension or library (e.g. std::vector buffers, oneDNN-internal scratchpads). The method is checked at
start-up: a known 100 MiB allocation must read as 100 MiB. A rough resident-set cross-check
(peak_rss_delta_bytes: VmHWM after a clear_refs reset, minus VmRSS at entry) is stored alongside; it
counts touched pages only and is affected by malloc reuse. On CUDA, torch.cuda.max_memory_allocated.

GFLOP/s: GEMM flops only, forward 2*T*B*G*H*(I+H) (G = 4 LSTM, 3 GRU), training 3x forward.
Roofline: the same GEMM shapes timed with torch.mm / torch.addmm (out=, fastest of a few operand
layouts) at the same thread count
(input [T*B,I]x[I,G*H] once + T x step [B,H]x[H,G*H]; training adds the backward shapes); see
flop_model.roofline; peak_frac relates GFLOP/s to torch.mm 2048^3 (meta: peak_sgemm_gflops).
The roofline includes ATen's per-call overhead, so >100 % is possible, notably at tiny
shapes (a fused kernel that skips that overhead or a better GEMM, e.g. oneDNN's, beats it).

Busy machine: the CPU time other processes use while a configuration is timed is recorded
(other_load_cores, "bg load" in the table); a timing round during which others used more than 0.25
cores is discarded and, after waiting for quiet, redone (--max-discards, --wait-quiet); a warning
lists configurations where busy rounds had to be kept.

Outputs: DIR/seq_scaling.json (one record per cell, mode, impl, T), DIR/seq_scaling_meta.json
(machine/provenance), DIR/seq_scaling.png; a table on stdout. Fails if rnnfast or its compiled
extension cannot be imported: it never benchmarks torch against itself.
"""
from __future__ import annotations

import argparse
import json
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

QUICK_LENGTHS = "16,64,256,1024"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", default="LSTM,GRU")
    p.add_argument("--modes", default="train,infer")
    p.add_argument("--lengths", default=None, help="comma list (default 16,64,256,1024,4096; "
                   f"--quick: {QUICK_LENGTHS})")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--input", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"],
                   help="dtype of both modules and the input (the roofline GEMMs too)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 7; --quick: 5)")
    p.add_argument("--min-sample", type=float, default=None,
                   help="min seconds per timing sample (default 0.1; --quick: 0.03)")
    p.add_argument("--quick", action="store_true", help="4 lengths, fewer repeats (~3 min on 2 cores)")
    p.add_argument("--no-memory", action="store_true", help="skip the (profiled) memory runs")
    p.add_argument("--max-discards", type=int, default=None,
                   help="timing rounds during which other processes used CPU are discarded and redone, "
                        "at most this many per configuration (default: --repeats)")
    p.add_argument("--wait-quiet", type=float, default=120.0,
                   help="before redoing a busy round, wait up to this many seconds for quiet")
    p.add_argument("--out", required=True, help="output directory")
    a = p.parse_args(argv)
    a.lengths = [int(x) for x in (a.lengths or (QUICK_LENGTHS if a.quick else "16,64,256,1024,4096")).split(",")]
    a.cells = [c.strip().upper() for c in a.cells.split(",") if c.strip()]
    a.modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    for c in a.cells:
        if c not in provenance.CELLS:
            p.error(f"unknown cell {c!r} (choose from {','.join(provenance.CELLS)})")
    for m in a.modes:
        if m not in ("train", "infer"):
            p.error(f"unknown mode {m!r} (train, infer)")
    if a.repeats is None:
        a.repeats = 5 if a.quick else 7
    if a.min_sample is None:
        a.min_sample = 0.03 if a.quick else 0.1
    return a


def run(args) -> tuple[list, dict]:
    device = timing.setup_device(args.device, args.threads)
    rnnfast = provenance.load_rnnfast()
    print(f"torch {torch.__version__}, threads pinned: torch.get_num_threads() = {torch.get_num_threads()}, "
          f"device {device}, rnnfast backend: {provenance.rnnfast_backend(rnnfast)}", flush=True)
    meta = provenance.machine_info(rnnfast, args.threads, device)
    meta["rnnfast_backend_short"] = provenance.rnnfast_backend_short(rnnfast)
    if not args.no_memory:
        meta["memory_method_check"] = memory_use.validate_peak_alloc(device)
        print(f"memory method check: 100 MiB allocation measured as "
              f"{meta['memory_method_check']['measured_bytes'] / 2**20:.2f} MiB", flush=True)
    startup_load = machine_load.LoadMonitor()
    time.sleep(1.0)
    meta["other_load_cores_at_start"] = startup_load.other_cores()
    if (meta["other_load_cores_at_start"] or 0) > machine_load.BUSY_CORES:
        print(f"WARNING: other processes are using {meta['other_load_cores_at_start']:.2f} cores: timings "
              "on a 2-core machine will be disturbed (busy configurations are retried).", file=sys.stderr)
    dtype = getattr(torch, args.dtype)
    meta["dtype"] = args.dtype
    meta["peak_sgemm_gflops"] = machine_load.measure_quiet(lambda: flop_model.peak_sgemm_gflops(device, dtype=dtype))[0]
    print(f"reference GEMM rate: torch.mm 2048^3 ({args.dtype}) = {meta['peak_sgemm_gflops']:.0f} GFLOP/s",
          flush=True)
    if device.type == "cpu" and args.dtype in ("float32", "float64", "bfloat16"):
        import rnnfast._C as C
        meta["peak_fma_gflops"] = C.fma_peak_gflops(args.threads, args.dtype)
    meta.update(repeats=args.repeats, min_sample_s=args.min_sample, quick=args.quick,
                lengths=args.lengths, B=args.batch, I=args.input, H=args.hidden)

    from tqdm import tqdm

    configs = [(c, m, T) for c in args.cells for m in args.modes for T in args.lengths]
    records = []
    B, I, H = args.batch, args.input, args.hidden
    bar = tqdm(configs, desc="seq_scaling", unit="cfg", file=sys.stderr, dynamic_ncols=True)
    t_start = time.perf_counter()
    busy = []
    # On CUDA, torch.nn is timed twice: through cuDNN ("torch") and through its own non-cuDNN
    # CUDA kernels ("torch_native", cuDNN disabled); rnnfast twice: its per-step cuBLAS loop
    # ("rnnfast") and its persistent kernel ("rnnfast_persistent").
    impls = timing.IMPLS + (("rnnfast_persistent", "torch_native") if timing.gpu_series(device) else ())
    for cell, mode, T in bar:
        bar.set_postfix_str(f"{cell} {mode} T={T}")
        case = bench_cases.build_case(cell, mode, T, B, I, H, rnnfast, device, dtype=dtype)
        tm = timing.time_interleaved(case, args.repeats, warmup=1, min_sample_s=args.min_sample,
                                 device=device, max_discards=args.max_discards,
                                 wait_quiet_s=args.wait_quiet, impls=impls)
        other = tm["other_load_cores"]
        roof, _, _ = machine_load.measure_quiet(
            lambda: flop_model.roofline(cell, T, B, I, H, mode, device, min_time=min(0.05, args.min_sample),
                                dtype=dtype),
            retries=2, max_wait_s=args.wait_quiet)
        mem = {} if args.no_memory else memory_use.measure_memory(case, device)
        flops = case.flops
        torch_ms = tm["torch"]["ms_median"]
        for impl in impls:
            ms = tm[impl]["ms_median"]
            gflops = flops / (ms / 1e3) / 1e9
            rec = {
                "cell": cell, "mode": mode, "impl": impl, "T": T, "B": B, "I": I, "H": H,
                "ms_median": ms, "us_per_step": ms * 1e3 / T,
                "peak_mem_bytes": mem.get(impl, {}).get("peak_mem_bytes"),
                "gflops": gflops,
                "roofline_gflops": roof["roofline_gflops"],
                "roofline_frac": gflops / roof["roofline_gflops"],
                "roofline_ms": roof["roofline_ms"],
                "peak_sgemm_gflops": meta["peak_sgemm_gflops"],
                "peak_frac": gflops / meta["peak_sgemm_gflops"],
                "step_gemm_gflops": roof["step_gemm_gflops"],
                "input_gemm_gflops": roof["input_gemm_gflops"],
                "speedup_vs_torch": torch_ms / ms,
                "peak_rss_delta_bytes": mem.get(impl, {}).get("peak_rss_delta_bytes"),
                "ms_all": tm[impl]["ms_all"], "inner": tm["inner"], "repeats": args.repeats,
                "threads": args.threads, "device": str(device), "dtype": args.dtype,
                "layers": 1, "gemm_flops": flops, "other_load_cores": other,
                "other_load_max": tm["other_load_max"], "discarded_rounds": tm["discarded_rounds"],
            }
            if impl == "rnnfast":
                rec["max_abs_diff_vs_torch"] = tm["max_abs_diff"]
                rec["round_ratios"] = tm["round_ratios"]
            records.append(rec)
        _warn_odd(records[-len(impls):][:2])
        if tm["other_load_max"] is not None and tm["other_load_max"] > machine_load.BUSY_CORES:
            busy.append(f"{cell} {mode} T={T}: {tm['other_load_max']:.2f}")
        del case
    meta["wall_seconds"] = time.perf_counter() - t_start
    meta["busy_configs"] = busy
    bar.close()
    if busy:
        print(f"WARNING: other processes used CPU while timing ({len(busy)} configs; cores busy: "
              f"{'; '.join(busy)}). On 2 cores these timings are not trustworthy: rerun on a quiet "
              "machine.", file=sys.stderr)
    return records, meta


def _warn_odd(pair):
    t, f = pair
    d = f.get("max_abs_diff_vs_torch")
    limit = 1e-3 if f["dtype"] in ("float32", "float64") else 0.05  # (16-bit: a few output ulp)
    if d is not None and d > limit:
        print(f"WARNING {f['cell']} {f['mode']} T={f['T']}: rnnfast output differs from torch by "
              f"max abs {d:.3g}", file=sys.stderr)
    for r in pair:
        pm, rss = r.get("peak_mem_bytes"), r.get("peak_rss_delta_bytes")
        if pm is not None and rss is not None and rss > 2 * pm + 64 * 2**20:
            print(f"NOTE {r['impl']} {r['cell']} {r['mode']} T={r['T']}: resident memory grew "
                  f"{rss / 2**20:.0f} MiB vs {pm / 2**20:.0f} MiB seen by torch's allocator "
                  "(allocations outside c10?)", file=sys.stderr)


def table(records) -> str:
    rows = {}
    for r in records:
        rows.setdefault((r["cell"], r["mode"], r["T"]), {})[r["impl"]] = r
    hdr = (f"{'cell':4} {'mode':5} {'T':>5} | {'torch ms':>9} {'rnnfast ms':>10} {'speedup':>7} | "
           f"{'GFLOP/s t':>9} {'GFLOP/s r':>9} {'roof':>6} {'%roof t':>7} {'%roof r':>7} | "
           f"{'peak MB t':>9} {'peak MB r':>9} | {'bg load':>7}")
    native = any("torch_native" in d for d in rows.values())
    if native:
        hdr += f" | {'native ms':>9} {'vs native':>9} | {'persist ms':>10} {'speedup':>7}"
    lines = [hdr, "-" * len(hdr)]
    for (cell, mode, T), d in rows.items():
        t, f = d["torch"], d["rnnfast"]
        extra = ""
        if native:
            n = d["torch_native"]
            p = d["rnnfast_persistent"]
            extra = (f" | {n['ms_median']:>9.3f} {n['ms_median'] / f['ms_median']:>8.2f}x | "
                     f"{p['ms_median']:>10.3f} {t['ms_median'] / p['ms_median']:>6.2f}x")
        lines.append(
            f"{cell:4} {mode:5} {T:>5} | {t['ms_median']:>9.3f} {f['ms_median']:>10.3f} "
            f"{t['ms_median'] / f['ms_median']:>6.2f}x | {t['gflops']:>9.1f} {f['gflops']:>9.1f} "
            f"{t['roofline_gflops']:>6.0f} {100 * t['roofline_frac']:>6.0f}% {100 * f['roofline_frac']:>6.0f}% | "
            f"{provenance.fmt_mb(t['peak_mem_bytes']):>9} {provenance.fmt_mb(f['peak_mem_bytes']):>9} | "
            f"{_fmt_load(t.get('other_load_max')):>7}{extra}")
    return "\n".join(lines)


def _fmt_load(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def plot(records, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for r in records:
        if (r["cell"], r["mode"]) not in panels:
            panels.append((r["cell"], r["mode"]))
    has_mem = any(r.get("peak_mem_bytes") is not None for r in records)
    nrows = 3 if has_mem else 2
    fig, axes = plt.subplots(nrows, len(panels), figsize=(4.6 * len(panels), 3.4 * nrows),
                             squeeze=False)
    style = {"torch": dict(color="tab:blue", marker="o"), "rnnfast": dict(color="tab:red", marker="s"),
             "rnnfast_persistent": dict(color="tab:orange", marker="D"),
             "torch_native": dict(color="tab:gray", marker="^", ls=":")}
    on_gpu = any(r.get("device", "cpu").startswith("cuda") for r in records)
    labels = {"torch": "torch.nn (cuDNN)" if on_gpu else "torch.nn",
              "rnnfast": "rnnfast (cuBLAS loop)" if on_gpu else "rnnfast",
              "rnnfast_persistent": "rnnfast (persistent)", "torch_native": "torch.nn without cuDNN"}
    impls = [i for i in style if any(r["impl"] == i for r in records)]
    for j, (cell, mode) in enumerate(panels):
        sel = {impl: sorted((r for r in records if (r["cell"], r["mode"], r["impl"]) == (cell, mode, impl)),
                            key=lambda r: r["T"]) for impl in impls}
        Ts = [r["T"] for r in sel["torch"]]
        ax = axes[0][j]
        for impl in impls:
            ax.plot(Ts, [r["us_per_step"] for r in sel[impl]], label=labels[impl], **style[impl])
        # (torch's non-cuDNN path is left out of the scale: it can be many times slower)
        ymax = max(r["us_per_step"] for impl in impls if impl != "torch_native" for r in sel[impl])
        for t, f in zip(sel["torch"], sel["rnnfast"]):
            ax.annotate(f"{t['ms_median'] / f['ms_median']:.2f}x", (t["T"], max(t["us_per_step"], f["us_per_step"])),
                        textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
        ax.set_ylim(0, ymax * 1.25)
        ax.set_title(f"{cell} {mode}  (speedup torch/rnnfast)")
        ax.set_ylabel("µs per time step")
        ax = axes[1][j]
        for impl in impls:
            ax.plot(Ts, [r["ms_median"] for r in sel[impl]], label=labels[impl], **style[impl])
        ax.plot(Ts, [r["roofline_ms"] for r in sel["torch"]], label="GEMM roofline", color="gray",
                ls="--", lw=1)
        ax.set_yscale("log")
        ax.set_ylabel("total ms per call")
        if has_mem:
            ax = axes[2][j]
            for impl in timing.IMPLS:
                ax.plot(Ts, [(r["peak_mem_bytes"] or 0) / 2**20 for r in sel[impl]], label=labels[impl],
                        **style[impl])
            ax.set_yscale("log")
            ax.set_ylabel("peak allocated MiB")
        for i in range(nrows):
            axes[i][j].set_xscale("log", base=2)
            axes[i][j].set_xticks(Ts, [str(t) for t in Ts])
            axes[i][j].grid(True, which="both", alpha=0.3)
            axes[i][j].legend(fontsize=8)
        axes[nrows - 1][j].set_xlabel("sequence length T")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    records, meta = run(args)
    with open(os.path.join(args.out, "seq_scaling.json"), "w") as f:
        json.dump(records, f, indent=1)
    with open(os.path.join(args.out, "seq_scaling_meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    where = (f"{meta['gpu']}, CUDA events" if "gpu" in meta else f"{meta['cpu_model']}, {args.threads} threads")
    title = (f"rnnfast vs torch.nn: B={args.batch} I={args.input} H={args.hidden}, {args.dtype}, "
             f"median of {args.repeats} interleaved rounds\n{where}, torch {torch.__version__}, "
             f"{meta['rnnfast_backend_short']}, {meta['date']}")
    plot(records, os.path.join(args.out, "seq_scaling.png"), title)
    print()
    print(table(records))
    n_configs = len({(r["cell"], r["mode"], r["T"]) for r in records})
    print(f"\n{n_configs} configurations in {meta['wall_seconds']:.0f} s; wrote "
          f"{args.out}/seq_scaling.json, seq_scaling_meta.json, seq_scaling.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
