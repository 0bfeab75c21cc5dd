"""Check that a CUDA library of rnnfast (rnnfast._C_cuda) holds device code for every kernel, dtype and arch.

    python scripts/check_device_code.py path/to/_C_cuda.so [ARCH_LIST]

ARCH_LIST is TORCH_CUDA_ARCH_LIST's syntax (default "8.0;9.0+PTX"). Every listed arch must have a
cubin holding each entry kernel (the per-step forward and backward kernels, the conversion,
row-add kernels, the persistent forward and backward) for every storage dtype (float32, float64, bfloat16, float16);
an arch with +PTX must also have PTX. Uses cuobjdump from PATH, CUDA_HOME/bin or triton's bundle.
Exit 1 with the missing entries listed.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

KERNELS = ("step_forward_kernel", "step_backward_kernel", "convert_kernel", "add_rows_kernel",
           "persistent_forward_kernel", "persistent_backward_kernel")
# Itanium-mangled template arguments of the storage dtypes.
DTYPES = {"float32": "If", "float64": "Id", "bfloat16": "IN3c108BFloat16E", "float16": "IN3c104HalfE"}


def find_cuobjdump() -> str:
    found = shutil.which("cuobjdump")
    if found:
        return found
    candidates = [os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump")]
    try:
        import triton  # the CUDA torch wheels bring triton, which bundles cuobjdump
        candidates += glob.glob(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                                             "cuobjdump"))
    except ImportError:
        pass
    for c in candidates:
        if os.path.exists(c):
            return c
    raise SystemExit("cuobjdump not found (PATH, CUDA_HOME/bin, triton's bundle)")


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    so = argv[0]
    arch_list = argv[1] if len(argv) > 1 else os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    tool = find_cuobjdump()
    symbols = subprocess.run([tool, "--dump-elf-symbols", so], capture_output=True, text=True, check=True).stdout
    ptx = subprocess.run([tool, "--list-ptx", so], capture_output=True, text=True, check=True).stdout
    # One block per cubin: "arch = sm_XX" then its symbols.
    entries: dict[str, set[str]] = {}
    arch = None
    for line in symbols.splitlines():
        m = re.match(r"arch = (sm_\d+a?)", line.strip())
        if m:
            arch = m.group(1)
            entries.setdefault(arch, set())
        elif arch and "STO_ENTRY" in line:
            entries[arch].add(line.split()[-1])
    missing = []
    for item in re.split(r"[;\s]+", arch_list.strip()):
        if not item:
            continue
        sm = "sm_" + item.replace("+PTX", "").replace(".", "")
        names = entries.get(sm, set())
        for kernel in KERNELS:
            for dtype, mangled in DTYPES.items():
                pattern = f"{len(kernel)}{kernel}{mangled}"
                if not any(pattern in n for n in names):
                    missing.append(f"{sm}: {kernel} for {dtype}")
        if item.endswith("+PTX") and f".{sm}.ptx" not in ptx:
            missing.append(f"{sm}: PTX")
        print(f"{sm}: {len(names)} entry kernels" + (" + PTX" if f".{sm}.ptx" in ptx else ""))
    if missing:
        print("MISSING device code:\n  " + "\n  ".join(missing))
        return 1
    print(f"device code complete: {len(KERNELS)} kernels x {len(DTYPES)} dtypes for {arch_list} ({tool})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
