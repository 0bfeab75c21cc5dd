// CPU tensors for the operators' outputs (layer outputs, saved activations,
// gradients), backed by the buffer pool's blocks where they are large
// (buffer_pool.h). The declaration is on the stable ABI; the definition
// (pooled_tensor.cpp) is still on torch's C++ API, which gives the pooled
// storage what at::empty's has (resizable; seen by the profiler). On the
// stable ABI it becomes torch::stable::from_blob with a deleter, which has
// neither (issue 16).
#pragma once

#include <torch/csrc/stable/tensor.h>

namespace rnnfast::cpu {

// An uninitialised CPU tensor; from kMinPooledBytes up backed by a pooled
// block (a fresh one if none fits), below by the regular allocator.
torch::stable::Tensor pooled_empty(torch::headeronly::IntHeaderOnlyArrayRef sizes,
                                   torch::headeronly::ScalarType dtype);

}  // namespace rnnfast::cpu
