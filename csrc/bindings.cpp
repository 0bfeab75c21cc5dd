// Python bindings of rnnfast._C for what is not an operator: the build's
// contents, the cell table, the buffer pool and the CPU instruction set. The
// kernels themselves are dispatcher operators (ops.cpp), registered when this
// module is imported.
#include <torch/extension.h>
#include <torch/version.h>

#include "cpu/buffer_pool.h"
#include "cpu/kernels.h"
#include "cells.h"

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

py::dict build_info() {
  py::dict d;
  d["torch_version"] = TORCH_VERSION;
  d["cuda"] = false;
  d["cuda_arches"] = py::list();
  int n = 0;
  const char* const* caps = cpu::available_cpu_capabilities(&n);
  py::list avail;
  for (int i = 0; i < n; ++i) avail.append(caps[i]);
  d["cpu_capabilities"] = avail;
#ifdef _OPENMP
  d["openmp"] = true;
#else
  d["openmp"] = false;
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
  m.def("empty_cache", &cpu::pool_empty_cache,
        "Free the cached buffers of the pool (see csrc/cpu/buffer_pool.h).");
  m.def("cached_bytes", &cpu::pool_cached_bytes, "Bytes of unused buffers the pool keeps.");
  m.def("cpu_capability", &cpu::cpu_capability, "Instruction set of the CPU kernels in use.");
  m.def("set_cpu_capability", [](const std::string& name) { cpu::set_cpu_capability(name.c_str()); },
        "Use the CPU kernels of another instruction set (avx512, avx2, default).");
}
