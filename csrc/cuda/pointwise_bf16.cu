// The CUDA kernels of the GPU time loops (per-step and persistent) for storage type c10::BFloat16.
#include "persistent_kernels.cuh"
#include "pointwise_kernels.cuh"

namespace rnnfast::cuda {
RNNFAST_INSTANTIATE_LAUNCHERS(c10::BFloat16)
RNNFAST_INSTANTIATE_PERSISTENT(c10::BFloat16)
RNNFAST_INSTANTIATE_CONVERSIONS(c10::BFloat16)
}  // namespace rnnfast::cuda
