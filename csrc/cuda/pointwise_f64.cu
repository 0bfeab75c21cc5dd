// The CUDA kernels of the GPU time loops (per-step and persistent) for storage type double.
#include "persistent_kernels.cuh"
#include "pointwise_kernels.cuh"

namespace rnnfast::cuda {
RNNFAST_INSTANTIATE_LAUNCHERS(double)
RNNFAST_INSTANTIATE_PERSISTENT(double)

}  // namespace rnnfast::cuda
