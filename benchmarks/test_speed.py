"""pytest-benchmark suite over the speed-target table (benchmarks/targets.py holds the table).

    pytest benchmarks/ --benchmark-only                       # all rows, both implementations
    pytest benchmarks/ --benchmark-only -k GRU --bench-threads 2

One benchmark per (case, impl); `group` = the case, so pytest-benchmark prints torch and rnnfast
side by side in each group. fp32, threads pinned (--bench-threads, default 2). PASS/FAIL against the
required ratios, with interleaved medians, is targets.py's job: pytest-benchmark runs the two
implementations one after the other, which is fine for a comparison table but more exposed to drift.
Importing this module fails if rnnfast or its compiled extension is missing.
"""
import os
import sys

import pytest
import torch

try:
    import pytest_benchmark  # noqa: F401
except ImportError as exc:
    raise ImportError("benchmarks/test_speed.py needs pytest-benchmark (pip install pytest-benchmark)") from exc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_cases  # noqa: E402
import provenance  # noqa: E402
import timing  # noqa: E402
from targets import TARGETS  # noqa: E402

rnnfast = provenance.load_rnnfast()  # raises loudly: never benchmark torch against itself

_CASES = {}


def _case(name):
    """Build each case once (both implementations share weights and input)."""
    if name not in _CASES:
        _CASES.clear()  # keep one case in memory at a time
        _, cell, mode, T, B, H, extra, _need = next(t for t in TARGETS if t[0] == name)
        _CASES[name] = bench_cases.build_case(cell, mode, T, B, H, H, rnnfast, torch.device("cpu"), **extra)
    return _CASES[name]


@pytest.fixture(scope="session", autouse=True)
def _pin_threads(request):
    n = request.config.getoption("--bench-threads", default=2)
    torch.set_num_threads(n)
    assert torch.get_num_threads() == n


@pytest.mark.parametrize("impl", timing.IMPLS)
@pytest.mark.parametrize("name", [t[0] for t in TARGETS], ids=[t[0].replace(" ", "-") for t in TARGETS])
def test_speed(benchmark, name, impl):
    case = _case(name)
    need = next(t[7] for t in TARGETS if t[0] == name)
    benchmark.group = f"{name} (need torch/rnnfast >= {need})"
    benchmark.extra_info.update(impl=impl, gemm_flops=case.flops, threads=torch.get_num_threads(),
                                rnnfast_backend=provenance.rnnfast_backend(rnnfast))
    run = case.runs[impl]
    run()  # warm-up outside the measurement
    benchmark(run)
