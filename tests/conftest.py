"""Fixtures of the correctness suite.

The case model, the input builders and the comparisons the tests share live in ``cases.py`` (an
ordinary module the tests import); this file holds only what pytest itself calls: fixtures and
session hooks.
"""

from __future__ import annotations

import os
import zlib

import pytest
import torch

# Tiny recurrent GEMMs run far slower with OpenMP threads when the cores are shared (pytest-xdist
# workers, a benchmark running alongside): a 5x9x27 matmul measured 16 ms instead of 10 us.  Tests
# run single-threaded unless OMP_NUM_THREADS says otherwise; tests of threaded code paths ask for
# the `two_threads` fixture.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)


@pytest.fixture
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def seed(request):
    """Seed torch's global RNG per test from the test's name, so every test (and every
    parametrization) gets its own reproducible random inputs, independent of test order."""
    value = zlib.crc32(request.node.name.encode())
    torch.manual_seed(value)
    return value


def pytest_sessionfinish(session, exitstatus):
    """With RNNFAST_GPU_EMULATION=1 (scripts/cuda_build_check.sh), the run must really have gone
    through the emulated GPU algorithm: fail a run in which no call did."""
    if os.environ.get("RNNFAST_GPU_EMULATION") != "1" or exitstatus != 0:
        return
    from rnnfast import _extension
    C = _extension.require_extension()
    calls = C._gpu_emulated_calls()
    print(f"\nRNNFAST_GPU_EMULATION=1: {calls} operator calls ran the emulated GPU algorithm")
    if calls == 0 or not C._gpu_emulation():
        print("ERROR: the GPU emulation was not in effect for this run")
        session.exitstatus = 1
