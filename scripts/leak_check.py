"""Repeated calls for LeakSanitizer (run by scripts/sanitize.sh under an ASan build).

LeakSanitizer reports at exit every block still allocated and unreachable, including the Python
interpreter's and torch's own (never freed at exit, by design); sanitize.sh fails on a report whose
stack has a frame of rnnfast. The calls cover inference and training, LSTM/GRU/RNN and a cell, at 1
and 2 threads, with the work split across the threads (every parallel region used to leak its
barrier's flags). Everything the calls made is released before exit (objects only Python still
refers to would read as leaks: LeakSanitizer does not see pointers held in Python's arenas).
"""
import gc
import sys

import torch

import rnnfast


def calls(threads: int) -> int:
    """Returns the most threads a call ran on."""
    torch.set_num_threads(threads)
    most = 0
    for cls in (rnnfast.LSTM, rnnfast.GRU, rnnfast.RNN):
        model = cls(8, 64, bidirectional=True)
        x = torch.randn(12, 4, 8, requires_grad=True)
        for _ in range(50):
            rnnfast._C.reset_thread_policy()  # an instrumented build is slow: no contention back-off
            out, _ = model(x)
            out.sum().backward()
            with torch.no_grad():
                model(x)
            most = max(most, rnnfast._C.last_call_plan()["slices"])
    cell = rnnfast.LSTMCell(8, 64)
    h = c = torch.zeros(4, 64)
    for _ in range(20):
        h, c = cell(torch.randn(4, 8), (h, c))
    (h.sum() + c.sum()).backward()
    return most


def main() -> int:
    expected_dir = sys.argv[1] if len(sys.argv) > 1 else None
    if expected_dir:
        assert rnnfast._C.__file__.startswith(expected_dir), f"not the instrumented build: {rnnfast._C.__file__}"
    rnnfast._C.set_min_parallel_macs(0)
    for threads in (1, 2):
        most = calls(threads)
        assert most == threads, f"at {threads} threads no call ran on {threads} threads"
    gc.collect()
    rnnfast.empty_cache()
    print("leak_check: calls done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
