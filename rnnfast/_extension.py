"""Loading of the compiled libraries and what they report.

``rnnfast._C``, the CPU library (operators, CPU kernels, bindings), is imported as a module.
``import rnnfast`` succeeds without it (so that ``rnnfast.reference`` stays usable), but says so
with a warning, and every module refuses to run: rnnfast never falls back to a slow Python path
behind the user's back.

``rnnfast._C_cuda``, the CUDA library (built where the build had CUDA), registers the operators'
CUDA kernels when it is loaded. It is loaded only where torch is a CUDA build of the CUDA major it
was built for; a CPU-only torch never touches it. Where it cannot be loaded, rnnfast says so (a
warning, and ``backend()["cuda_error"]``), and rnnfast's modules raise NotImplementedError for
CUDA tensors, with the reason.
"""

import ctypes
import os
import warnings

import torch

from ._version import __version__

BUILD_HINT = (
    "Build it against the installed torch with `pip install --no-build-isolation .` "
    "(or `python setup.py build_ext --inplace`) from the rnnfast source tree."
)

try:
    from . import _C  # noqa: F401  (the compiled extension)

    _IMPORT_ERROR = None
except ImportError as exc:  # the extension is missing or does not load
    _C = None
    _IMPORT_ERROR = exc
    warnings.warn(
        f"rnnfast's compiled extension rnnfast._C could not be loaded ({exc}). "
        f"rnnfast's modules (LSTM, GRU, RNN and their cells) raise until it is built. {BUILD_HINT} "
        "rnnfast.backend() reports the state of the build.",
        RuntimeWarning,
        stacklevel=2,
    )


def _load_cuda_library():
    """(the loaded CUDA library or None, why not). The library sits beside the CPU library, with
    the same file-name suffix; it registers its kernels only after its build ID (schema revision,
    torch release: csrc/build_id.h) has matched the CPU library's, so a stale copy never does."""
    if _C is None:
        return None, "the CPU library is not loaded"
    build = _C.build_info()
    if not build["cuda"]:
        return None, "this build of rnnfast has no CUDA kernels"

    def refuse(reason):
        warnings.warn(f"{reason}: rnnfast's modules raise for CUDA tensors.", RuntimeWarning, stacklevel=4)
        return None, reason

    folder, name = os.path.split(os.path.abspath(_C.__file__))
    path = os.path.join(folder, "_C_cuda" + name[len("_C"):])
    if not os.path.exists(path):
        return refuse(f"rnnfast's CUDA library {path} is missing")
    if torch.version.cuda is None:
        kind = "a ROCm" if getattr(torch.version, "hip", None) else "a CPU-only"
        return None, f"torch {torch.__version__} is {kind} build"
    built = str(build.get("cuda_version"))
    if built.split(".")[0] != torch.version.cuda.split(".")[0]:
        return refuse(f"rnnfast's CUDA kernels were built for CUDA {built}, torch {torch.__version__} is a "
                      f"CUDA {torch.version.cuda} build")
    try:
        library = ctypes.CDLL(path)
        library.rnnfast_cuda_build_id.restype = ctypes.c_char_p
        library.rnnfast_cuda_register.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        library.rnnfast_cuda_register.restype = ctypes.c_int
        library.rnnfast_cuda_set_gpu_path.argtypes = [ctypes.c_char_p]
        library.rnnfast_cuda_set_gpu_path.restype = ctypes.c_int
        library.rnnfast_cuda_persistent_launches.argtypes = []
        library.rnnfast_cuda_persistent_launches.restype = ctypes.c_int64
    except (OSError, AttributeError) as exc:
        return refuse(f"rnnfast's CUDA library {path} could not be loaded ({exc})")
    theirs, ours = library.rnnfast_cuda_build_id().decode(), build.get("build_id")
    if theirs != ours:
        return refuse(f"rnnfast's CUDA library {path} belongs to another build ({theirs!r}; the CPU library: "
                      f"{ours!r}): rebuild both")
    error = ctypes.create_string_buffer(1024)
    if library.rnnfast_cuda_register(error, len(error)) != 0:
        return refuse(f"rnnfast's CUDA library could not register its kernels ({error.value.decode()})")
    return library, None


_CUDA_LIBRARY, _CUDA_ERROR = _load_cuda_library()


def cuda_loaded() -> bool:
    """Whether the CUDA library is loaded (its kernels registered)."""
    return _CUDA_LIBRARY is not None


def cuda_error():
    """Why the CUDA library is not loaded (None when it is)."""
    return _CUDA_ERROR


def require_extension():
    """Return the compiled extension, or raise an error that says how to build it."""
    if _C is None:
        raise RuntimeError(
            f"rnnfast's compiled extension rnnfast._C is not available: {_IMPORT_ERROR}. {BUILD_HINT}"
        )
    return _C


_BUILD_INFO = None


def build_info() -> dict:
    """The compiled extension's build facts (``_C.build_info()``, read once): e.g. ``cuda``."""
    global _BUILD_INFO
    if _BUILD_INFO is None:
        _BUILD_INFO = dict(require_extension().build_info())
    return _BUILD_INFO


def empty_cache():
    """Free the unused buffers of rnnfast's pool of large CPU buffers.

    Saved activations, layer outputs, gradients and the kernels' scratch (from
    128 KB up) come from a pool: freed blocks are kept for the next call, up to
    ``RNNFAST_POOL_BYTES`` (default 1 GiB, 0 disables the pool), instead of paying
    page faults and page zeroing again. ``cached_bytes()`` tells how much is kept.
    """
    require_extension().empty_cache()


def cached_bytes() -> int:
    """Bytes of unused buffers rnnfast's pool currently keeps (see ``empty_cache``)."""
    return require_extension().cached_bytes()


def backend():
    """What this installation of rnnfast runs on.

    Returns a dict with ``compiled`` (the extension loaded), ``error`` (why not),
    ``version``, ``torch_version`` (runtime) and, when compiled: ``built_with_torch``,
    ``cpu_capability`` (instruction set of the CPU kernels in use),
    ``cpu_capabilities`` (all usable here), ``openmp``, ``cuda`` (CUDA kernels
    built: the CUDA library beside the CPU one), ``cuda_arches``, ``cuda_version`` (the CUDA of the
    torch it was built against), ``cuda_loaded`` (the CUDA library is loaded: its kernels are
    registered), ``cuda_error`` (why not), ``gpu_path`` (see :func:`set_gpu_path`), ``autograd``
    (``"c++"`` or ``"python"``: which autograd kernels the operators run) and ``stable_abi``
    (the library is built on torch's stable ABI alone, as the wheel is: loads in every torch
    from 2.11 on; see the README).
    """
    info = {
        "version": __version__,
        "torch_version": torch.__version__,
        "compiled": _C is not None,
        "error": None if _IMPORT_ERROR is None else str(_IMPORT_ERROR),
    }
    if _C is None:
        return info
    build = _C.build_info()
    info.update(
        built_with_torch=build["torch_version"],
        cpu_capability=_C.cpu_capability(),
        cpu_capabilities=list(build["cpu_capabilities"]),
        openmp=build["openmp"],
        cuda=build["cuda"],
        cuda_arches=list(build["cuda_arches"]),
        cuda_version=build["cuda_version"],
        cuda_loaded=_CUDA_LIBRARY is not None,
        cuda_error=_CUDA_ERROR,
        gpu_path=_C._gpu_path(),
        autograd=_autograd_kind(),
        stable_abi=build["stable_abi"],
    )
    return info


def _autograd_kind() -> str:
    """Which autograd kernels the operators run: "c++" (csrc/autograd.cpp) or "python"
    (rnnfast/_autograd.py: the stable-ABI build's, or RNNFAST_AUTOGRAD=python)."""
    from . import _ops  # noqa: PLC0415  (_ops imports this module)

    return "c++" if _ops.CPP_AUTOGRAD else "python"


def set_gpu_path(path: str) -> None:
    """Which algorithm runs the forward of a layer on a CUDA device (process-wide).

    ``"cublas"``: per step one cuBLAS GEMM and one fused pointwise kernel. ``"persistent"``: for
    the forward and the backward recurrence, one cooperative kernel per run of up to 512 steps that
    keeps each block's slice of ``w_hh`` in shared memory (LSTM without ``proj_size``, GRU, RNN;
    other layers, and shapes whose weights do not fit on the device, run the cuBLAS loop); weight
    gradients stay GEMMs. ``"auto"`` (the default) runs the cuBLAS loop: the persistent kernels
    have not yet been verified or timed on a GPU. The environment variable ``RNNFAST_GPU_PATH``
    sets the starting value. (The CPU library's emulation of the GPU algorithm and the CUDA
    library each keep the setting: this sets both.)
    """
    require_extension()._set_gpu_path(path)  # raises for an unknown name
    if _CUDA_LIBRARY is not None and _CUDA_LIBRARY.rnnfast_cuda_set_gpu_path(path.encode()) != 0:
        raise RuntimeError(f"rnnfast: the CUDA library refused the GPU path {path!r}")


def gpu_path() -> str:
    """The setting of :func:`set_gpu_path`."""
    return require_extension()._gpu_path()


def persistent_launches() -> int:
    """Launches of the persistent kernels so far, on CUDA devices and emulated (the tests'
    counter)."""
    cuda = _CUDA_LIBRARY.rnnfast_cuda_persistent_launches() if _CUDA_LIBRARY is not None else 0
    return require_extension()._gpu_persistent_launches() + cuda
