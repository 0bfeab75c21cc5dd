// The CUDA kernels of the GPU time loops (per-step and persistent) for storage type c10::Half.
#include "persistent_kernels.cuh"
#include "pointwise_kernels.cuh"

namespace rnnfast::cuda {
RNNFAST_INSTANTIATE_LAUNCHERS(c10::Half)
RNNFAST_INSTANTIATE_PERSISTENT(c10::Half)
RNNFAST_INSTANTIATE_CONVERSIONS(c10::Half)
}  // namespace rnnfast::cuda
