// The persistent kernels (gpu/persistent.h, gpu/persistent_backward.h): one
// cooperative launch per run of steps, each block holding its slice of w_hh in
// shared memory, one grid barrier per step. The phases are the RNNFAST_HD
// functions of those headers (the emulated executor runs the same ones on the CPU).
// Included by the per-dtype instantiation files pointwise_<dtype>.cu.
#pragma once

#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "launch.h"

namespace rnnfast::cuda {

template <typename S, bool Training>
__global__ void __launch_bounds__(gpu::kPersistentThreads)
    persistent_forward_kernel(const __grid_constant__ gpu::PersistentForwardArgs<S> a) {
  extern __shared__ __align__(16) unsigned char smem[];
  const gpu::PersistentSmem<S> sm = gpu::persistent_smem<S>(a.geom, smem);
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();
  const int block = int(blockIdx.x), tid = int(threadIdx.x), nt = int(blockDim.x);
  gpu::persistent_load_weights(a, block, tid, nt, sm.w);
  for (int s = 0; s < a.n_steps; ++s) {
    const gpu::PersistentStep st = a.steps[s];
    for (int r0 = 0; r0 < st.rows; r0 += a.geom.row_tile) {
      __syncthreads();  // the weights are in; the previous tile's readers of h and part are done
      gpu::persistent_load_rows(a, st, r0, tid, nt, sm.h);
      __syncthreads();
      gpu::persistent_partial_dots(a, tid, nt, sm.w, sm.h, sm.part);
      __syncthreads();
      gpu::persistent_store_products(a, st, r0, block, tid, nt, sm.part);
      __syncthreads();  // the block's gate columns of the tile are in gx / gh (global, block-visible)
      gpu::persistent_pointwise<S, Training>(a, st, r0, block, tid, nt);
    }
    grid.sync();  // h_t of every block written before any block reads it as h_{t-1}
  }
}

// The dynamic shared-memory cap of both kernel variants, raised once per device to the device's
// opt-in maximum: the occupancy query and the launch then take any size up to it (raising it to
// each call's size could race between threads planning different sizes).
// The persistent backward (gpu/persistent_backward.h): phase A, the grid barrier, phase B.
template <typename S>
__global__ void __launch_bounds__(gpu::kPersistentThreads)
    persistent_backward_kernel(const __grid_constant__ gpu::PersistentBackwardArgs<S> a) {
  extern __shared__ __align__(16) unsigned char smem[];
  const gpu::PersistentSmem<S> sm = gpu::persistent_smem<S>(a.geom, smem);
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();
  const int block = int(blockIdx.x), tid = int(threadIdx.x), nt = int(blockDim.x);
  gpu::persistent_backward_load_weights(a, block, tid, nt, sm.w);
  for (int s = 0; s < a.n_steps; ++s) {
    const gpu::PersistentStep st = a.steps[s];
    __syncthreads();  // the block's dh of the previous step is written
    gpu::persistent_backward_gates(a, st, block, tid, nt);
    grid.sync();  // dG_t of every block written
    for (int r0 = 0; r0 < st.rows; r0 += a.geom.row_tile) {
      __syncthreads();  // the weights are in; the previous tile's readers of the rows and part are done
      gpu::persistent_backward_load_rows(a, st, r0, tid, nt, sm.h);
      __syncthreads();
      gpu::persistent_backward_partial_dots(a, tid, nt, sm.w, sm.h, sm.part);
      __syncthreads();
      gpu::persistent_backward_store_dh(a, st, r0, block, tid, nt, sm.part);
    }
  }
}

template <typename S>
cudaError_t persistent_allow_smem() {
  static std::atomic<uint64_t> done{0};  // bit d: done on device d (one mask per S)
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return e;
  const uint64_t bit = device < 64 ? uint64_t(1) << device : 0;
  if (bit && (done.load(std::memory_order_acquire) & bit)) return cudaSuccess;
  int optin = 0;
  e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (e != cudaSuccess) return e;
  e = cudaFuncSetAttribute(persistent_forward_kernel<S, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, optin);
  if (e != cudaSuccess) return e;
  e = cudaFuncSetAttribute(persistent_forward_kernel<S, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, optin);
  if (e != cudaSuccess) return e;
  e = cudaFuncSetAttribute(persistent_backward_kernel<S>, cudaFuncAttributeMaxDynamicSharedMemorySize, optin);
  if (e == cudaSuccess && bit) done.fetch_or(bit, std::memory_order_acq_rel);
  return e;
}

template <typename S>
cudaError_t persistent_blocks_per_sm(gpu::PersistentKind kind, size_t smem_bytes, int* blocks) {
  cudaError_t e = persistent_allow_smem<S>();
  if (e != cudaSuccess) return e;
  if (kind == gpu::PersistentKind::kBackward)
    return cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, persistent_backward_kernel<S>,
                                                         gpu::kPersistentThreads, smem_bytes);
  int inference = 0, training = 0;
  e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&inference, persistent_forward_kernel<S, false>,
                                                    gpu::kPersistentThreads, smem_bytes);
  if (e != cudaSuccess) return e;
  e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&training, persistent_forward_kernel<S, true>,
                                                    gpu::kPersistentThreads, smem_bytes);
  *blocks = std::min(inference, training);
  return e;
}

template <typename S>
cudaError_t launch_persistent_forward(const gpu::PersistentForwardArgs<S>& a, bool training, cudaStream_t stream) {
  if (a.n_steps == 0) return cudaSuccess;
  const cudaError_t e = persistent_allow_smem<S>();
  if (e != cudaSuccess) return e;
  void* args[] = {const_cast<gpu::PersistentForwardArgs<S>*>(&a)};
  const void* fn = training ? reinterpret_cast<const void*>(persistent_forward_kernel<S, true>)
                            : reinterpret_cast<const void*>(persistent_forward_kernel<S, false>);
  return cudaLaunchCooperativeKernel(fn, dim3(unsigned(a.geom.blocks)), dim3(unsigned(a.geom.threads)), args,
                                     a.geom.smem_bytes, stream);
}

template <typename S>
cudaError_t launch_persistent_backward(const gpu::PersistentBackwardArgs<S>& a, cudaStream_t stream) {
  if (a.n_steps == 0) return cudaSuccess;
  const cudaError_t e = persistent_allow_smem<S>();
  if (e != cudaSuccess) return e;
  void* args[] = {const_cast<gpu::PersistentBackwardArgs<S>*>(&a)};
  return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(persistent_backward_kernel<S>),
                                     dim3(unsigned(a.geom.blocks)), dim3(unsigned(a.geom.threads)), args,
                                     a.geom.smem_bytes, stream);
}

#define RNNFAST_INSTANTIATE_PERSISTENT(S)                                                                  \
  template cudaError_t persistent_blocks_per_sm<S>(gpu::PersistentKind, size_t, int*);                     \
  template cudaError_t launch_persistent_forward<S>(const gpu::PersistentForwardArgs<S>&, bool, cudaStream_t); \
  template cudaError_t launch_persistent_backward<S>(const gpu::PersistentBackwardArgs<S>&, cudaStream_t);

}  // namespace rnnfast::cuda
