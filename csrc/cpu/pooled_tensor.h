// CPU tensors for the operators' outputs (layer outputs, saved activations,
// gradients), backed by the buffer pool's blocks where they are large
// (buffer_pool.h). The declarations are on the stable ABI; the definitions
// (pooled_tensor.cpp) are still on torch's C++ API, which gives the pooled
// storage what at::empty's has (resizable; seen by the profiler) and the small
// tensors an allocation without the dispatcher. The stable build makes them
// with torch::stable::from_blob and a deleter (issue 16).
#pragma once

#include <torch/csrc/stable/tensor.h>

namespace rnnfast::cpu {

// An uninitialised CPU tensor; from kMinPooledBytes up backed by a pooled
// block (a fresh one if none fits), below by the regular allocator.
torch::stable::Tensor pooled_empty(torch::headeronly::IntHeaderOnlyArrayRef sizes,
                                   torch::headeronly::ScalarType dtype);

// An uninitialised CPU tensor from the regular allocator, without a trip
// through the dispatcher (at::empty costs ~0.3 us of dispatch: a visible
// part of a one-step call, which allocates its outputs).
torch::stable::Tensor cpu_empty(torch::headeronly::IntHeaderOnlyArrayRef sizes,
                                torch::headeronly::ScalarType dtype);

}  // namespace rnnfast::cpu
