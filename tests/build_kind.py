"""Which build of rnnfast the tests run against, for the few tests whose expectation depends on it.

The build on torch's C++ API (setup.py's default, CI's main build) and the build on the stable ABI
alone (RNNFAST_STABLE_ABI=1: what the wheel ships) differ in documented ways only: the stable one
has no C++ autograd, its large outputs are not resizable, and its panel cache keeps no weak
reference to a weight's storage (README, "One wheel for every torch (stable ABI)")."""
from __future__ import annotations

import os

import rnnfast

STABLE_ABI = bool(rnnfast.backend().get("stable_abi", False))
# The autograd kernels in use: the stable build has only rnnfast/_autograd.py's.
PYTHON_AUTOGRAD = STABLE_ABI or os.environ.get("RNNFAST_AUTOGRAD") == "python"
