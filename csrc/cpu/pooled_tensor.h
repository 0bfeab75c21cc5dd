// CPU tensors for the operators' outputs (layer outputs, saved activations,
// gradients), backed by the buffer pool's blocks where they are large
// (buffer_pool.h). The one part of the pool on torch's C++ API: on the stable
// ABI it becomes torch::stable::from_blob with a deleter (issue 16).
#pragma once

#include <ATen/core/Tensor.h>

namespace rnnfast::cpu {

// An uninitialised CPU tensor; from kMinPooledBytes up backed by a pooled
// block (a fresh one if none fits), below by the regular allocator.
at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options);

// An uninitialised CPU tensor from the regular allocator, without a trip
// through the dispatcher (at::empty costs ~0.3 us of dispatch: a visible
// part of a one-step call, which allocates its outputs).
at::Tensor cpu_empty(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace rnnfast::cpu
