"""Where a benchmark number comes from: the rnnfast under test (imported, never a silent fallback),
the machine (CPU model and flags, threads, versions, git commit), and the result files.

``load_rnnfast()`` imports rnnfast and its compiled extension or raises; ``machine_info()`` is the
provenance written beside every result (*_meta.json); ``write_json()`` writes a result file.
"""
from __future__ import annotations

import datetime
import importlib
import json
import os
import platform
import shlex
import subprocess
import sys


import torch  # noqa: E402

from machine_load import loadavg  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The modules a benchmark may time (all six must be rnnfast's own).
CELLS = ("LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell")


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


def write_json(path: str, obj) -> None:
    """Writes a benchmark's results (its folder created) and says where."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
    print(f"wrote {path}")


def fmt_mb(b) -> str:
    return "-" if b is None else f"{b / 2**20:.1f}"
