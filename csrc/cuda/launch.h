// Launchers of the CUDA kernels of the GPU time loops (pointwise_kernels.cuh,
// instantiated per storage type in pointwise_<dtype>.cu): plain functions of
// the argument structs of gpu/pointwise.h and a stream, so the host code
// (ops_cuda.cpp) never includes device code and the .cu files never include
// torch/extension.h. Each returns the launch's error (cudaGetLastError), which
// the caller checks.
#pragma once

#include <cuda_runtime_api.h>

#include "../gpu/persistent.h"
#include "../gpu/persistent_backward.h"
#include "../gpu/pointwise.h"

namespace rnnfast::cuda {

template <typename S>
cudaError_t launch_step_forward(const gpu::StepForwardArgs<S>& a, bool training, cudaStream_t stream);

template <typename S>
cudaError_t launch_step_backward(const gpu::StepBackwardArgs<S>& a, cudaStream_t stream);

template <typename To, typename From>
cudaError_t launch_convert(const gpu::ConvertArgs<To, From>& a, cudaStream_t stream);

template <typename S>
cudaError_t launch_add_rows(const gpu::AddRowsArgs<S>& a, cudaStream_t stream);

// The persistent kernels (persistent_kernels.cuh): resident blocks per SM for
// a dynamic shared-memory size, and one cooperative launch each.
template <typename S>
cudaError_t persistent_blocks_per_sm(gpu::PersistentKind kind, size_t smem_bytes, int* blocks);

template <typename S>
cudaError_t launch_persistent_forward(const gpu::PersistentForwardArgs<S>& a, bool training, cudaStream_t stream);

template <typename S>
cudaError_t launch_persistent_backward(const gpu::PersistentBackwardArgs<S>& a, cudaStream_t stream);

}  // namespace rnnfast::cuda
