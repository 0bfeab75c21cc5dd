// The CUDA kernels of the GPU time loops (per-step and persistent) for storage type float.
#include "persistent_kernels.cuh"
#include "pointwise_kernels.cuh"

namespace rnnfast::cuda {
RNNFAST_INSTANTIATE_LAUNCHERS(float)
RNNFAST_INSTANTIATE_PERSISTENT(float)

}  // namespace rnnfast::cuda
