"""Build of rnnfast: its CPU library rnnfast._C and, with CUDA, its CUDA library rnnfast._C_cuda.

Build against the torch already installed, without build isolation (an
isolated build would fetch a different, multi-GB torch):

    pip install --no-build-isolation .

The CPU gate kernels (csrc/cpu/kernels_<isa>.cpp) are compiled once per
instruction set, each with its own flags, and chosen at run time
(csrc/cpu/dispatch.cpp). Environment switches:
    RNNFAST_MAX_ISA=default|avx2|avx512|avx512_bf16   compile no vector builds above this
    MAX_JOBS=N                            parallel compile jobs (torch's ninja build)
    RNNFAST_SANITIZE=address,undefined    an instrumented build (scripts/sanitize.sh)
    RNNFAST_FORCE_CUDA=1 / RNNFAST_SKIP_CUDA=1   build the CUDA kernels (csrc/cuda/) or not;
                                          default: when torch is a CUDA build and nvcc is found
    TORCH_CUDA_ARCH_LIST="8.0;9.0+PTX"     CUDA architectures (this is the default)
"""

import concurrent.futures
import glob
import os
import platform
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as exc:  # pragma: no cover - build-environment guard
    raise SystemExit(
        "rnnfast builds against the torch already installed: install torch first "
        "(e.g. pip install torch==2.13.0), then pip install --no-build-isolation ."
    ) from exc

ROOT = os.path.dirname(os.path.abspath(__file__))

# Sources still on torch's C++ API: the C++ autograd, the CPU outputs' allocation, the weights'
# weak references and the bf16 GEMM micro-benchmark (csrc/layer_aten.h; issue 16).
COMMON_SOURCES = [
    "csrc/autograd.cpp",
    "csrc/layer_reference.cpp",
    "csrc/cpu/pooled_tensor.cpp",
    "csrc/cpu/weight_owner.cpp",
    "csrc/cpu/gemm_bench.cpp",
]
# RNNFAST_STABLE_ABI=1 (the wheel's build, scripts/build_wheel.sh): the library on the stable ABI
# alone, which loads in every torch from 2.11 on. These replace COMMON_SOURCES: the autograd is
# rnnfast/_autograd.py's, the pooled outputs come from the shim's from_blob (not resizable, not seen
# by the profiler), the panel cache holds no weak reference to a weight's storage, and the bf16
# GEMM micro-benchmark (ATen's brgemm) is absent.
STABLE_ONLY_SOURCES = ["csrc/cpu/pooled_tensor_stable.cpp"]
# Sources on torch's stable ABI alone (issue 16), compiled with STABLE_FLAGS: a header outside
# torch/headeronly and torch/csrc/stable fails their build. The kernels_<isa>.cpp builds too.
STABLE_SOURCES = ["csrc/op_schemas.cpp", "csrc/ops.cpp", "csrc/layer_checks.cpp", "csrc/cpu/ops_cpu.cpp", "csrc/cpu/dispatch.cpp", "csrc/cpu/fma_peak.cpp", "csrc/cpu/thread_policy.cpp",
                  "csrc/cpu/buffer_pool.cpp", "csrc/cpu/panel_cache.cpp", "csrc/cpu/forward_loop.cpp",
                  "csrc/cpu/backward_loop.cpp", "csrc/gpu/emulated.cpp", "csrc/gpu/path.cpp"]
# torch 2.11.0, the oldest release the stable build targets: [major][minor][patch][tag]
STABLE_FLAGS = ["-DTORCH_TARGET_VERSION=0x020b000000000000"]
# The Python bindings include no torch header at all: compiled without torch's include
# directory, beside pybind11's (torch's copy, linked into the build folder alone).
BINDINGS_SOURCE = "csrc/bindings.cpp"

# The CUDA library (rnnfast._C_cuda), on the stable ABI alone in every build: host code (the
# executor, op registration, its controls, the argument glue and checks it shares with the CPU
# library, the GPU algorithm's settings) and one device file per dtype. rnnfast/_extension.py loads
# it where torch is a CUDA build of the same CUDA major.
CUDA_HOST_SOURCES = ["csrc/cuda/ops_cuda.cpp", "csrc/cuda/library_controls.cpp", "csrc/ops.cpp",
                     "csrc/layer_checks.cpp", "csrc/gpu/path.cpp"]
CUDA_DEVICE_SOURCES = [f"csrc/cuda/pointwise_{d}.cu" for d in ("f32", "f64", "bf16", "f16")]
DEFAULT_CUDA_ARCHES = "8.0;9.0+PTX"

# Instruction-set builds of csrc/cpu/kernels_<isa>.cpp: extra flags for each.
ISA_FLAGS = {
    "default": ["-DCPU_CAPABILITY=DEFAULT", "-DCPU_CAPABILITY_DEFAULT"],
    "avx2": ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"],
    "avx512": [
        "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512",
        "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c",
    ],
    # AVX-512 plus the BF16 extension (vdpbf16ps): bfloat16 GEMMs on bf16 k-pair panels.
    "avx512_bf16": [
        "-DCPU_CAPABILITY=AVX512_BF16", "-DCPU_CAPABILITY_AVX512", "-DRNNFAST_NATIVE_BF16",
        "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mavx2", "-mfma",
        "-mf16c",
    ],
}
ISA_ORDER = ["default", "avx2", "avx512", "avx512_bf16"]


def isa_builds():
    """The instruction sets to compile for this machine's architecture."""
    is_x86 = platform.machine().lower() in ("x86_64", "amd64")
    builds = ["default"] + (["avx2", "avx512", "avx512_bf16"] if is_x86 else [])
    cap = os.environ.get("RNNFAST_MAX_ISA", "avx512_bf16").lower()
    if cap not in ISA_ORDER:
        raise ValueError(f"RNNFAST_MAX_ISA must be one of {ISA_ORDER}, got {cap!r}")
    return [b for b in builds if ISA_ORDER.index(b) <= ISA_ORDER.index(cap)]


class BuildWithIsaKernels(BuildExtension):
    """torch's BuildExtension, plus per-file flags: the instruction-set kernels, the sources on
    the stable ABI, and the bindings without torch's headers.

    setuptools compiles all sources of an extension with the same flags, so these objects are
    compiled first, each with its own flags, and linked in as extra objects.
    """

    def build_extension(self, ext):
        if ext.name != "rnnfast._C":  # the CUDA library: its sources, its flags
            super().build_extension(ext)
            return
        cxx_flags = list(ext.extra_compile_args["cxx"]) if isinstance(ext.extra_compile_args, dict) \
            else list(ext.extra_compile_args)
        macros = ext.define_macros
        kernel_headers = ["csrc/cpu/kernels_impl.h", "csrc/cpu/kernels.h", "csrc/cpu/vec_math.h", "csrc/cpu/simd.h",
                          "csrc/cpu/fingerprint_impl.h", "csrc/cpu/gemm_impl.h", "csrc/cpu/cell_rows_impl.h",
                          "csrc/cell_math.h", "csrc/acc_type.h", "csrc/controls.h"]
        pybind_only = os.path.join(os.path.abspath(self.build_temp), "pybind11_only")
        os.makedirs(pybind_only, exist_ok=True)
        link, target = os.path.join(pybind_only, "pybind11"), os.path.join(os.path.dirname(torch.__file__),
                                                                            "include", "pybind11")
        if os.path.islink(link) and os.readlink(link) != target:  # a build folder reused with another torch
            os.remove(link)
        if not os.path.islink(link):
            os.symlink(target, link)
        # One job per source: (source, output folder, include folders, flags, headers it depends on).
        # The instruction-set kernels first: they take longest (7-17 s each on the 2-core Xeon VM).
        jobs = [(f"csrc/cpu/kernels_{isa}.cpp", f"isa_{isa}", ext.include_dirs,
                 cxx_flags + STABLE_FLAGS + ISA_FLAGS[isa], kernel_headers) for isa in reversed(isa_builds())]
        jobs.append((BINDINGS_SOURCE, "bindings", [os.path.join(ROOT, "csrc"), pybind_only], cxx_flags,
                     ["csrc/controls.h", "csrc/cells.h", "csrc/cpu/thread_policy.h"]))
        jobs += [(src, os.path.join("stable", os.path.splitext(src)[0]), ext.include_dirs,
                  cxx_flags + STABLE_FLAGS, kernel_headers) for src in STABLE_SOURCES]

        def compile_one(job):
            source, folder, include_dirs, flags, depends = job
            try:
                return self.compiler.compile([source], output_dir=os.path.join(self.build_temp, folder),
                                             include_dirs=include_dirs, macros=macros, extra_postargs=flags,
                                             depends=depends)
            except Exception as exc:  # torch's message names no file; the compiler's output is above
                raise RuntimeError(f"rnnfast: compiling {source} failed (the compiler's errors are in the "
                                   "output above, after 'FAILED:')") from exc

        # torch's compile runs one ninja per call, and a call of one source keeps one core busy: the
        # calls run side by side, MAX_JOBS at once (as torch reads it), each in its own folder (its
        # own build.ninja). Without ninja, torch's compile swaps the compiler command of the one
        # shared compiler object for each call: one call at a time then.
        max_jobs = os.environ.get("MAX_JOBS", "")
        workers = (int(max_jobs) if max_jobs.isdigit() else os.cpu_count() or 1) if self.use_ninja else 1
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [pool.submit(compile_one, job) for job in jobs]
            try:
                for future in futures:
                    ext.extra_objects.extend(future.result())
            except BaseException:  # the first error ends the build: the queued compiles are dropped
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        super().build_extension(ext)


def sanitizer_flags():
    """RNNFAST_SANITIZE=address,undefined (any -fsanitize= list): an instrumented build for
    scripts/sanitize.sh, with frame pointers and debug info for readable reports."""
    which = os.environ.get("RNNFAST_SANITIZE", "").strip()
    if not which:
        return [], []
    compile_flags = [f"-fsanitize={which}", "-fno-omit-frame-pointer", "-g", "-O1",
                     "-fno-sanitize-recover=all"]
    return compile_flags, [f"-fsanitize={which}"]


def with_cuda() -> bool:
    """Whether to compile the CUDA kernels: RNNFAST_FORCE_CUDA=1 / RNNFAST_SKIP_CUDA=1, else when
    torch is a CUDA build and nvcc is found (CUDA_HOME). Says so loudly either way."""
    if os.environ.get("RNNFAST_SKIP_CUDA") == "1":
        print("rnnfast: RNNFAST_SKIP_CUDA=1: building without the CUDA kernels", file=sys.stderr)
        return False
    forced = os.environ.get("RNNFAST_FORCE_CUDA") == "1"
    have_nvcc = CUDA_HOME is not None and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))
    if forced and not have_nvcc:
        raise SystemExit("rnnfast: RNNFAST_FORCE_CUDA=1 but nvcc was not found (set CUDA_HOME)")
    if forced and torch.version.cuda is None:
        raise SystemExit(f"rnnfast: RNNFAST_FORCE_CUDA=1 but torch {torch.__version__} is not a CUDA build")
    use = forced or (torch.version.cuda is not None and have_nvcc)
    print(f"rnnfast: {'building' if use else 'not building'} the CUDA kernels "
          f"(torch CUDA {torch.version.cuda}, nvcc {'found in ' + CUDA_HOME if have_nvcc else 'not found'})",
          file=sys.stderr)
    return use


def cuda_library_paths():
    """Include and library folders of the CUDA libraries torch uses, and the cuBLAS library to link.

    pip wheels keep cuBLAS's headers and libcublas.so.<major> under site-packages/nvidia/<pkg>/;
    torch's own site-packages is searched first, then every sys.path entry, then CUDA_HOME."""
    torch_site = os.path.dirname(os.path.dirname(torch.__file__))
    sites = [torch_site] + [p for p in sys.path if p and p != torch_site and os.path.isdir(p)]
    nvidia_roots = [os.path.join(s, "nvidia") for s in sites if os.path.isdir(os.path.join(s, "nvidia"))]
    includes = [d for r in nvidia_roots for d in sorted(glob.glob(os.path.join(r, "*", "include")))]
    lib_dirs = [d for r in nvidia_roots for d in sorted(glob.glob(os.path.join(r, "*", "lib")))]
    if CUDA_HOME:
        lib_dirs += [os.path.join(CUDA_HOME, d) for d in ("lib64", "lib", "targets/x86_64-linux/lib")]
    for d in lib_dirs:
        exact = os.path.join(d, "libcublas.so")
        if os.path.exists(exact):
            return includes, [d], ["-lcublas"]
        versioned = sorted(glob.glob(os.path.join(d, "libcublas.so.[0-9]*")))
        if versioned:
            return includes, [d], [f"-l:{os.path.basename(versioned[0])}"]
    raise SystemExit(f"rnnfast: libcublas not found in {lib_dirs}")


def stable_abi_only() -> bool:
    """RNNFAST_STABLE_ABI=1: build on torch's stable ABI alone (STABLE_ONLY_SOURCES). Says so."""
    on = os.environ.get("RNNFAST_STABLE_ABI") == "1"
    print(f"rnnfast: building {'on the stable ABI alone' if on else 'with the C++ API parts'} "
          f"(RNNFAST_STABLE_ABI={os.environ.get('RNNFAST_STABLE_ABI', '')!r})", file=sys.stderr)
    return on


def cxx_flags(sanitize_cxx):
    # -Werror=switch: a new cell (cells.h) missing in a switch over CellType fails the build.
    # -fvisibility=hidden: no symbol of rnnfast's own is exported but PyInit__C (and the CUDA
    # library's C controls). With default visibility every out-of-line inline function and template
    # (transpose_8x8 of the packing, the AVX2 LSTM gate math, the generic build's vector loads) was
    # interposable and called through the PLT. (nvcc's objects keep their default visibility.)
    return ["-O3", "-std=c++20", "-fopenmp", "-Wall", "-Werror=switch", "-Wno-unused-function", "-Wno-unknown-pragmas",
            "-Wno-maybe-uninitialized", "-fvisibility=hidden", "-fvisibility-inlines-hidden"] + sanitize_cxx


def extensions():
    """rnnfast._C (the CPU library: operators, CPU kernels, bindings) and, where CUDA is built,
    rnnfast._C_cuda (the CUDA kernels)."""
    builds = isa_builds()
    macros = [(f"RNNFAST_HAVE_{isa.upper()}", "1") for isa in builds if isa != "default"]
    stable_only = stable_abi_only()
    if stable_only:
        macros.append(("RNNFAST_STABLE_ABI", "1"))
    macros.append(("RNNFAST_BUILT_WITH_TORCH", '"%s"' % torch.__version__.split("+")[0]))
    sanitize_cxx, sanitize_link = sanitizer_flags()
    cxx = cxx_flags(sanitize_cxx)
    include_dirs = [os.path.join(ROOT, "csrc")]
    sources = STABLE_ONLY_SOURCES if stable_only else COMMON_SOURCES
    if stable_only:
        cxx += STABLE_FLAGS
    cuda = with_cuda()
    if cuda:
        arches = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHES)
        # What the bindings report (backend()): the CUDA library built beside, its arches and CUDA.
        macros += [("RNNFAST_WITH_CUDA", "1"), ("RNNFAST_CUDA_ARCHES", f'"{arches}"'),
                   ("RNNFAST_CUDA_VERSION", f'"{torch.version.cuda}"')]
    cpu = CppExtension(
        name="rnnfast._C",
        sources=sources,
        include_dirs=include_dirs,
        define_macros=macros,
        extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"] + sanitize_link,
    )
    if not cuda:
        return [cpu]
    cuda_includes, cuda_lib_dirs, cublas = cuda_library_paths()
    # nvcc sees only csrc/gpu, csrc/cuda and torch's header-only 16-bit types (never
    # torch/extension.h). The host code is on the stable ABI (USE_CUDA: the shim's CUDA calls).
    nvcc = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo"]
    host = cxx_flags(sanitize_cxx) + STABLE_FLAGS + ["-DUSE_CUDA"]
    return [cpu, CUDAExtension(
        name="rnnfast._C_cuda",
        sources=CUDA_HOST_SOURCES + CUDA_DEVICE_SOURCES,
        include_dirs=include_dirs + cuda_includes,
        library_dirs=cuda_lib_dirs,
        define_macros=[("RNNFAST_BUILT_WITH_TORCH", '"%s"' % torch.__version__.split("+")[0])],
        extra_compile_args={"cxx": host, "nvcc": nvcc},
        extra_link_args=["-fopenmp"] + cublas + sanitize_link,
    )]


def version():
    scope = {}
    with open(os.path.join(ROOT, "rnnfast", "_version.py")) as f:
        exec(f.read(), scope)
    return scope["__version__"]


setup(
    name="rnnfast",
    version=version(),
    description="Fused LSTM and GRU kernels, drop-in replacements for torch.nn.LSTM and torch.nn.GRU",
    packages=find_packages(include=["rnnfast", "rnnfast.*"]),
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildWithIsaKernels},
    python_requires=">=3.9",
    # The stable-ABI build (the wheel's) loads in every torch from 2.11 on. The default build is
    # tied to the torch it was compiled against: tested with 2.13.0 (CPU build, CI) and 2.14.1
    # (CUDA 13.0 build; CI compiles against it).
    install_requires=["torch>=2.11" if os.environ.get("RNNFAST_STABLE_ABI") == "1" else "torch>=2.13,<2.15"],
)
