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
def split_small_calls():
    """Every call with enough units per thread splits across threads, however small."""
    from rnnfast import _extension

    C = _extension.require_extension()
    previous = C.min_parallel_macs()
    C.set_min_parallel_macs(0)
    C.reset_thread_policy()
    yield
    C.set_min_parallel_macs(previous)
    C.reset_thread_policy()


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


# Tests that set the emulation switch themselves: their calls do not show that the environment's
# switch (RNNFAST_GPU_EMULATION=1) was in effect, so the session's check below leaves them out.
# (Old-style hooks and plain module state: tests/cuda runs on the GPU machine's own pytest.)
_SETS_ITS_OWN_EMULATION = "test_gpu_algorithm.py"
_emulation_counts = {"calls": 0, "worker_reports": []}


def _emulation_state():
    """(operator calls that ran the emulated GPU algorithm in this process, whether it is on)."""
    from rnnfast import _extension

    C = _extension.require_extension()
    return C._gpu_emulated_calls(), bool(C._gpu_emulation())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """With RNNFAST_GPU_EMULATION=1: count the emulated calls of each test that does not set the
    switch itself."""
    counted = (os.environ.get("RNNFAST_GPU_EMULATION") == "1"
               and os.path.basename(item.nodeid.split("::")[0]) != _SETS_ITS_OWN_EMULATION)
    before = _emulation_state()[0] if counted else 0
    yield
    if counted:
        _emulation_counts["calls"] += _emulation_state()[0] - before


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """pytest-xdist's controller: keep each worker's report of the emulation (below)."""
    report = getattr(node, "workeroutput", {}).get("gpu_emulation")
    if report is not None:
        _emulation_counts["worker_reports"].append(report)


def pytest_sessionfinish(session, exitstatus):
    """With RNNFAST_GPU_EMULATION=1 (scripts/cuda_build_check.sh), the run must really have gone
    through the emulated GPU algorithm: fail a run in which no call of the tests that leave the
    switch to the environment did. Under pytest-xdist the tests ran in the workers: each reports
    its count, and the controller adds them up."""
    if os.environ.get("RNNFAST_GPU_EMULATION") != "1":
        return
    own = (_emulation_counts["calls"], _emulation_state()[1])
    if hasattr(session.config, "workeroutput"):  # a pytest-xdist worker
        session.config.workeroutput["gpu_emulation"] = own
        return
    if exitstatus != 0:
        return
    reports = _emulation_counts["worker_reports"] or [own]
    calls, emulated = sum(c for c, _ in reports), all(on for _, on in reports)
    workers = f" ({len(reports)} worker processes)" if len(reports) > 1 else ""
    print(f"\nRNNFAST_GPU_EMULATION=1: {calls} operator calls ran the emulated GPU algorithm in the tests "
          f"that leave the switch to the environment{workers}")
    if calls == 0 or not emulated:
        print("ERROR: the GPU emulation was not in effect for this run")
        session.exitstatus = 1
