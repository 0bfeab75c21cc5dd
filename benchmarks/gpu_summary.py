"""The speed tables of scripts/gpu_check.sh, from the files its benchmarks wrote.

    python benchmarks/gpu_summary.py RESULTS_DIR

Reads RESULTS_DIR/targets_fp32.json, targets_bf16.json (benchmarks/targets.py --device cuda),
targets_persistent.json (--table persistent) and seq_scaling.json (benchmarks/seq_scaling.py
--device cuda). Prints, per row: cuDNN (torch.nn) ms, rnnfast ms (the cuBLAS loop), their ratio
against its minimum (issue 8: 0.9, 1.5 with proj_size), the ratio to torch's non-cuDNN CUDA path
(minimum 3) and the persistent kernel's ratio to cuDNN (issue 9's minima in its own table). Exits 1
if a file is missing or a row misses a target.
"""

from __future__ import annotations

import json
import os
import sys

MIN_RATIO = 0.9        # cuDNN time / rnnfast time, every seq_scaling row
NATIVE_MIN_RATIO = 3.0  # torch's non-cuDNN CUDA path time / rnnfast time


def _row(name: str, cudnn_ms: float, ours_ms: float, need: float, native_ms, persistent_ms=None,
         ok=None) -> tuple[str, bool]:
    ratio = cudnn_ms / ours_ms
    native = None if native_ms is None else native_ms / ours_ms
    if ok is None:
        ok = ratio >= need and (native is None or native >= NATIVE_MIN_RATIO)
    native_txt = "-" if native is None else f"{native:.2f}x"
    persistent_txt = "-" if persistent_ms is None else f"{cudnn_ms / persistent_ms:.2f}x"
    return (f"{name:36s} {cudnn_ms:9.3f} {ours_ms:9.3f} {ratio:6.2f}x {need:5.2f} {native_txt:>8} "
            f"{persistent_txt:>10} {'pass' if ok else 'FAIL'}"), ok


def targets_table(path: str) -> tuple[list[str], bool]:
    with open(path) as f:
        data = json.load(f)
    lines, all_ok = [], True
    for r in data["results"]:
        line, ok = _row(r["case"], r["torch_ms"], r["rnnfast_ms"], r["required"], r.get("native_ms"),
                        r.get("persistent_ms"), r["pass"])
        lines.append(line)
        all_ok &= ok
    return lines, all_ok


def seq_table(path: str) -> tuple[list[str], bool]:
    with open(path) as f:
        records = json.load(f)
    rows: dict = {}
    for r in records:
        rows.setdefault((r["cell"], r["mode"], r["T"], r["B"], r["H"]), {})[r["impl"]] = r
    lines, all_ok = [], True
    for (cell, mode, T, B, H), d in rows.items():
        native = d.get("torch_native", {}).get("ms_median")
        persistent = d.get("rnnfast_persistent", {}).get("ms_median")
        line, ok = _row(f"{cell} {mode} T{T} B{B} H{H}", d["torch"]["ms_median"],
                        d["rnnfast"]["ms_median"], MIN_RATIO, native, persistent)
        lines.append(line + f"  ({d['rnnfast']['us_per_step']:.1f} vs {d['torch']['us_per_step']:.1f} us/step)")
        all_ok &= ok
    return lines, all_ok


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    res = argv[0]
    header = (f"{'case':36s} {'cuDNN ms':>9} {'rnnfast':>9} {'ratio':>7} {'need':>5} {'vs native':>8} "
              f"{'persistent':>10}")
    all_ok = True
    for title, name, fn in (("targets, float32 (TF32 as torch's default)", "targets_fp32.json", targets_table),
                            ("targets, bfloat16", "targets_bf16.json", targets_table),
                            ("persistent kernel vs cuDNN (issue 9; pass: the persistent ratio, or the "
                             "cuBLAS loop's on fallback rows)", "targets_persistent.json", targets_table),
                            ("seq_scaling --quick, float32", "seq_scaling.json", seq_table)):
        path = os.path.join(res, name)
        print(f"\n-- {title} ({name})")
        if not os.path.exists(path):
            print("   MISSING: the benchmark did not finish")
            all_ok = False
            continue
        lines, ok = fn(path)
        print(header)
        print("\n".join(lines))
        all_ok &= ok
    print(f"\nspeed targets: {'all met' if all_ok else 'NOT all met'}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
