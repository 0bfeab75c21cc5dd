// Which GPU algorithm runs a layer-direction's recurrence, forward and
// backward: the per-step cuBLAS loop (gpu/layer_loop.h) or the persistent
// kernels (gpu/persistent.h, gpu/persistent_backward.h). Shared by the CUDA
// executor and the emulated one. Host code.
#pragma once

#include <cstdint>
#include <string>

#include "../cells.h"
#include "../controls.h"
#include "../layer.h"

namespace rnnfast::gpu {

enum class GpuPath : int { kAuto = 0, kCublas = 1, kPersistent = 2 };

// The setting: RNNFAST_GPU_PATH=auto|cublas|persistent when the library
// loads, then rnnfast.set_gpu_path, which sets it in the CPU library (its
// emulation; rnnfast._C._set_gpu_path) and in the CUDA library
// (rnnfast_cuda_set_gpu_path). An unknown value raises.
GpuPath gpu_path();

// Whether the setting asks for the persistent kernels for this layer. "auto"
// takes the cuBLAS path: the persistent kernels have not yet been verified or
// timed on a GPU (issue "persistent GPU kernels"); "persistent" opts in. Cells
// they do not cover (LSTM with proj_size) take the cuBLAS path under any
// setting, as does a shape whose weights do not fit on the device (the caller
// checks the planned geometry).
bool wants_persistent(const CellInfo& cell, const LayerDims& d);

// Counts a persistent launch (persistent_launches: controls.h).
void count_persistent_launch();

// The device the emulated executor pretends to have (tests vary it to get
// several units per block and a partial last block, set_emulated_device):
// streaming multiprocessors, one resident block each, and shared memory per
// block.
struct EmulatedDevice {
  int sms = 8;
  int64_t smem_per_block = 227 * 1024;
};
EmulatedDevice& emulated_device();

}  // namespace rnnfast::gpu
