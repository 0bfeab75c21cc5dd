// Python bindings of rnnfast._C for what is not an operator: the build's
// contents, the cell table, the buffer pool and the CPU instruction set. The
// kernels themselves are dispatcher operators (op_schemas.cpp), registered when this
// module is imported.
//
// No torch header: only pybind11 and the library's torch-free headers
// (controls.h and the plain structs of cells.h, cpu/thread_policy.h,
// cpu/gemm_bench.h). setup.py and CMake compile this file without torch's
// include directory, so a torch include fails the build (issue 16: this module
// is to be tied to the Python version only).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "build_id.h"
#include "cells.h"
#include "controls.h"
#include "cpu/gemm_bench.h"
#include "cpu/thread_policy.h"


namespace rnnfast {
namespace {

namespace py = pybind11;

// The cell table of cells.h, for rnnfast/_cells.py to check itself against.
py::list cell_table() {
  static const char* const kBlockNames[kNumSavedBlocks] = {"gates", "cell", "proj_in", "hidden_n"};
  py::list cells;
  for (const CellInfo& c : kCells) {
    py::dict d;
    d["name"] = c.name;
    d["code"] = static_cast<int>(c.type);  // the ops' `int cell`
    d["gates"] = c.gates;
    d["cell_state"] = c.cell_state;
    d["projection"] = c.projection;
    d["separate_hidden"] = c.separate_hidden;
    py::list saved;
    for (int k = 0; k < c.num_saved; ++k) saved.append(kBlockNames[static_cast<int>(c.saved[k])]);
    d["saved"] = saved;
    cells.append(d);
  }
  return cells;
}

// A Python dict of named values (the state structs of the thread policy, the
// panel cache, the last call's plan).
py::dict named(std::initializer_list<std::pair<const char*, py::object>> items) {
  py::dict d;
  for (const auto& [key, value] : items) d[key] = value;
  return d;
}

py::dict build_info() {
  py::dict d;
  d["torch_version"] = RNNFAST_BUILT_WITH_TORCH;
  d["build_id"] = RNNFAST_BUILD_ID;  // what a CUDA library beside it must match (build_id.h)
#ifdef RNNFAST_WITH_CUDA
  d["cuda"] = true;
  py::list arches;  // TORCH_CUDA_ARCH_LIST at build time, e.g. "8.0;9.0+PTX"
  std::string list = RNNFAST_CUDA_ARCHES;
  for (size_t start = 0; start <= list.size();) {
    const size_t end = std::min(list.find_first_of("; ", start), list.size());
    if (end > start) arches.append(list.substr(start, end - start));
    start = end + 1;
  }
  d["cuda_arches"] = arches;
  d["cuda_version"] = RNNFAST_CUDA_VERSION;  // the CUDA of the torch it was built against
#else
  d["cuda"] = false;
  d["cuda_arches"] = py::list();
  d["cuda_version"] = py::none();
#endif
  int n = 0;
  const char* const* caps = cpu::available_cpu_capabilities(&n);
  py::list avail;
  for (int i = 0; i < n; ++i) avail.append(caps[i]);
  d["cpu_capabilities"] = avail;
  d["openmp"] = cpu::built_with_openmp();
  // The library on torch's stable ABI alone (setup.py, RNNFAST_STABLE_ABI=1: the wheel's build).
#ifdef RNNFAST_STABLE_ABI
  d["stable_abi"] = true;
#else
  d["stable_abi"] = false;
#endif
  return d;
}

}  // namespace
}  // namespace rnnfast

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace rnnfast;
  namespace py = pybind11;
  m.doc() = "rnnfast fused recurrent kernels (see csrc/layer.h for the layout)";

  m.def("cell_table", &cell_table, "The cell table of csrc/cells.h.");
  m.def("build_info", &build_info, "What this build of the extension contains.");
  m.def("fma_peak_gflops", &cpu::fma_peak_gflops, py::arg("threads"), py::arg("dtype") = "float32",
        py::arg("iterations") = 20'000'000, py::call_guard<py::gil_scoped_release>(),
        "Peak FMA GFLOP/s of `threads` threads on registers (the in-use instruction set); each "
        "thread runs `iterations` rounds of 12 vector FMAs (benchmarks/load.py times short runs "
        "as a probe of the machine's own delays).");
  m.def("time_bf16_gemm", [](const std::string& impl, int64_t M, int64_t N, int64_t K, int64_t reps) {
          cpu::GemmTiming t;
#ifdef RNNFAST_STABLE_ABI
          throw std::runtime_error("rnnfast: time_bf16_gemm compares with ATen's brgemm, which only the build on "
                                   "torch's C++ API has (this is the stable-ABI build)");
#else
          {
            py::gil_scoped_release no_gil;
            t = cpu::time_bf16_gemm(impl, M, N, K, reps);
          }
#endif
          py::dict d;
          d["seconds"] = t.seconds;
          d["max_error"] = t.max_error;
          d["variant"] = t.variant;
          return d;
        }, py::arg("impl"), py::arg("M"), py::arg("N"), py::arg("K"), py::arg("reps"),
        "Seconds per call of one bf16 GEMM candidate (benchmarks/bf16_gemm.py).");
  m.def("_set_gpu_emulation", &gpu::set_gpu_emulation, py::arg("on"),
        "Tests: run the GPU algorithm (csrc/gpu/layer_loop.h) on the CPU instead of the CPU loops.");
  m.def("_gpu_emulation", &gpu::gpu_emulation);
  m.def("_gpu_emulated_calls", &gpu::emulated_calls);
  m.def("_set_gpu_chunk_rows", &gpu::set_chunk_rows, py::arg("rows"),
        "Tests: rows per chunk of the GPU algorithm's time-parallel GEMMs (0: automatic).");
  m.def("_set_gpu_path", &gpu::set_gpu_path, py::arg("path"),
        "The GPU forward's algorithm: 'auto' (the cuBLAS loop until the persistent kernel is verified "
        "on a GPU), 'cublas' or 'persistent' (env RNNFAST_GPU_PATH).");
  m.def("_gpu_path", &gpu::gpu_path_name);
  m.def("_gpu_persistent_launches", &gpu::persistent_launches,
        "Persistent-kernel launches so far (CUDA and emulated).");
  m.def("_set_emulated_device", &gpu::set_emulated_device, py::arg("sms"), py::arg("smem_per_block"),
        "Tests: the device the emulated persistent kernel plans for (default 8 SMs, 227 KB per block).");
  m.def("empty_cache", [] {
          cpu::pool_empty_cache();
          cpu::panel_cache_clear();
        },
        "Free the cached buffers of the pool (csrc/cpu/buffer_pool.h) and the packed weight panels "
        "kept across calls (csrc/cpu/panel_cache.h).");
  m.def("panel_cache_stats", [] {
    const cpu::PanelCacheStats s = cpu::panel_cache_stats();
    return named({{"hits", py::cast(s.hits)}, {"packs", py::cast(s.packs)}, {"uncached", py::cast(s.uncached)},
                  {"entries", py::cast(s.entries)}, {"bytes", py::cast(s.bytes)}, {"capacity", py::cast(s.capacity)}});
  }, "The panel cache (csrc/cpu/panel_cache.h): reuses, packs, entries, bytes held, capacity.");
  m.def("_release_panels", [](uintptr_t begin, size_t bytes) {
          cpu::panel_cache_release(reinterpret_cast<const void*>(begin), bytes);
        }, py::arg("begin"), py::arg("bytes"),
        "Drop the cached panels of weights inside these bytes (a module's parameter's storage, "
        "data_ptr() and nbytes(), when it is freed or replaced).");
  m.def("_set_panel_cache_capacity", &cpu::panel_cache_set_capacity, py::arg("bytes"),
        "Tests: the panel cache's capacity in bytes (0 disables it); returns the previous one.");
  m.def("cached_bytes", &cpu::pool_cached_bytes, "Bytes of unused buffers the pool keeps.");
  m.def("cpu_capability", &cpu::cpu_capability, "Instruction set of the CPU kernels in use.");
  m.def("set_min_parallel_macs", &cpu::set_min_parallel_macs,
        "Multiply-adds a CPU layer call needs before it runs on several threads (default 2^17).");
  m.def("min_parallel_macs", &cpu::min_parallel_macs);
  m.def("thread_policy_state", [] {
    const cpu::ThreadPolicyState s = cpu::thread_policy_state();
    return named({{"capacity", py::cast(s.capacity)}, {"in_use", py::cast(s.in_use)},
                  {"forked_child", py::cast(s.forked_child)}, {"serial_until_ns", py::cast(s.serial_until_ns)},
                  {"contended_calls", py::cast(s.contended_calls)}, {"backoffs", py::cast(s.backoffs)},
                  {"leases_denied", py::cast(s.leases_denied)}});
  }, "The CPU thread policy's state (csrc/cpu/thread_policy.h).");
  m.def("reset_thread_policy", &cpu::reset_thread_policy,
        "Clear the contention back-off and the policy's counters.");
  m.def("_report_parallel_region", &cpu::report_parallel_region, py::arg("preemptions"), py::arg("waited_ns"),
        py::arg("threads"), py::arg("duration_ns"),
        "Tests: report a parallel call to the thread policy as the time loops do (waited_ns < 0: no "
        "schedstat), ending now.");
  m.def("_report_timed_region", &cpu::report_timed_region, py::arg("duration_ns"),
        "Tests: report a parallel call watched by its duration alone (a call small enough that "
        "reading the scheduler's account would cost more than it tells; thread_policy.h), ending now.");
  m.def("last_call_plan", [] {
    const cpu::CallPlan& p = cpu::last_call_plan();
    return named({{"backward", py::cast(p.backward)}, {"slices", py::cast(p.slices)}, {"chunks", py::cast(p.chunks)},
                  {"chunk_rows", py::cast(p.chunk_rows)}, {"unpacked", py::cast(p.unpacked)},
                  {"waited_ns", py::cast(p.waited_ns)}, {"batch_split", py::cast(p.batch_split)},
                  {"streamed", py::cast(p.streamed)}, {"weight_as_a", py::cast(p.weight_as_a)}});
  }, "What the last CPU layer call on this thread did: threads, chunks, unpacked or streamed weights.");
  m.def("set_cpu_capability", [](const std::string& name) { cpu::set_cpu_capability(name.c_str()); },
        "Use the CPU kernels of another instruction set (avx512, avx2, default).");
}
