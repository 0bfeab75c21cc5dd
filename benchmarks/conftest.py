"""pytest configuration for benchmarks/ (speed benchmarks, not tests).

test_speed.py is collected only when benchmarks/ (or a file in it) is named on the command line,
e.g. `pytest benchmarks/ --benchmark-only`; a bare `pytest` or `pytest tests/` never collects it,
so the test suite stays fast and does not need pytest-benchmark or a built rnnfast.
"""
from pathlib import Path

HERE = Path(__file__).resolve().parent


def pytest_addoption(parser):
    parser.addoption("--bench-threads", type=int, default=2,
                     help="torch.set_num_threads for benchmarks/test_speed.py (default 2)")


def _named_on_command_line(config) -> bool:
    root = Path(config.invocation_params.dir)
    for arg in config.invocation_params.args:
        if arg.startswith("-"):
            continue
        p = (root / arg.split("::")[0]).resolve()
        if p == HERE or HERE in p.parents:
            return True
    return False


def pytest_ignore_collect(collection_path, config):
    if Path(collection_path).resolve().parent == HERE and not _named_on_command_line(config):
        return True
    return None
