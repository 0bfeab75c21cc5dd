// CUDA kernels of the GPU time loops: one thread per element, each running
// the per-element function of gpu/pointwise.h (the emulated executor runs the
// same functions in a host loop). Included by the per-dtype instantiation
// files pointwise_<dtype>.cu (mamba's pattern: the math in one header, thin
// .cu files per type).
#pragma once

#include <cuda_runtime.h>

#include "launch.h"

namespace rnnfast::cuda {

constexpr int kThreads = 256;

// Blocks for n elements, one per thread (n > 0; grid x is limited to 2^31-1
// blocks, far beyond any [rows, H] of a step).
inline unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

template <typename S, bool Training>
__global__ void step_forward_kernel(const gpu::StepForwardArgs<S> a) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < a.rows * a.H) gpu::step_forward_element<S, Training>(a, i / a.H, i % a.H);
}

template <typename S>
__global__ void step_backward_kernel(const gpu::StepBackwardArgs<S> a) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < a.rows * a.H) gpu::step_backward_element<S>(a, i / a.H, i % a.H);
}

template <typename To, typename From>
__global__ void convert_kernel(const gpu::ConvertArgs<To, From> a) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < a.rows * a.cols) gpu::convert_element<To, From>(a, i / a.cols, i % a.cols);
}

template <typename S>
__global__ void add_rows_kernel(const gpu::AddRowsArgs<S> a) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < a.rows * a.cols) gpu::add_rows_element<S>(a, i / a.cols, i % a.cols);
}

template <typename S>
cudaError_t launch_step_forward(const gpu::StepForwardArgs<S>& a, bool training, cudaStream_t stream) {
  const int64_t n = a.rows * a.H;
  if (n == 0) return cudaSuccess;
  if (training) {
    step_forward_kernel<S, true><<<blocks_for(n), kThreads, 0, stream>>>(a);
  } else {
    step_forward_kernel<S, false><<<blocks_for(n), kThreads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

template <typename S>
cudaError_t launch_step_backward(const gpu::StepBackwardArgs<S>& a, cudaStream_t stream) {
  const int64_t n = a.rows * a.H;
  if (n == 0) return cudaSuccess;
  step_backward_kernel<S><<<blocks_for(n), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

template <typename To, typename From>
cudaError_t launch_convert(const gpu::ConvertArgs<To, From>& a, cudaStream_t stream) {
  const int64_t n = a.rows * a.cols;
  if (n == 0) return cudaSuccess;
  convert_kernel<To, From><<<blocks_for(n), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

template <typename S>
cudaError_t launch_add_rows(const gpu::AddRowsArgs<S>& a, cudaStream_t stream) {
  const int64_t n = a.rows * a.cols;
  if (n == 0) return cudaSuccess;
  add_rows_kernel<S><<<blocks_for(n), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

// Every launcher of storage type S (with its conversions to and from A).
#define RNNFAST_INSTANTIATE_LAUNCHERS(S)                                                                   \
  template cudaError_t launch_step_forward<S>(const gpu::StepForwardArgs<S>&, bool, cudaStream_t);       \
  template cudaError_t launch_step_backward<S>(const gpu::StepBackwardArgs<S>&, cudaStream_t);           \
  template cudaError_t launch_convert<S, S>(const gpu::ConvertArgs<S, S>&, cudaStream_t);                \
  template cudaError_t launch_add_rows<S>(const gpu::AddRowsArgs<S>&, cudaStream_t);

#define RNNFAST_INSTANTIATE_CONVERSIONS(S)                                                                 \
  template cudaError_t launch_convert<S, acc_t<S>>(const gpu::ConvertArgs<S, acc_t<S>>&,     \
                                                         cudaStream_t);                                  \
  template cudaError_t launch_convert<acc_t<S>, S>(const gpu::ConvertArgs<acc_t<S>, S>&,     \
                                                         cudaStream_t);

}  // namespace rnnfast::cuda
