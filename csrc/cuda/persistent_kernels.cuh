// The persistent forward kernel (gpu/persistent.h): one cooperative launch
// per run of steps, each block holding its slice of w_hh in shared memory,
// one grid barrier per step. The phases are the RNNFAST_HD functions of
// gpu/persistent.h (the emulated executor runs the same ones on the CPU).
// Included by the per-dtype instantiation files pointwise_<dtype>.cu.
#pragma once

#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>

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
    for (int64_t r0 = 0; r0 < st.rows; r0 += a.geom.row_tile) {
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

template <typename S>
cudaError_t persistent_set_smem(size_t smem_bytes) {
  cudaError_t e = cudaFuncSetAttribute(persistent_forward_kernel<S, false>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_bytes));
  if (e != cudaSuccess) return e;
  return cudaFuncSetAttribute(persistent_forward_kernel<S, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              int(smem_bytes));
}

template <typename S>
cudaError_t persistent_blocks_per_sm(size_t smem_bytes, int* blocks) {
  cudaError_t e = persistent_set_smem<S>(smem_bytes);
  if (e != cudaSuccess) return e;
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
  cudaError_t e = persistent_set_smem<S>(a.geom.smem_bytes);
  if (e != cudaSuccess) return e;
  void* args[] = {const_cast<gpu::PersistentForwardArgs<S>*>(&a)};
  const void* fn = training ? reinterpret_cast<const void*>(persistent_forward_kernel<S, true>)
                            : reinterpret_cast<const void*>(persistent_forward_kernel<S, false>);
  return cudaLaunchCooperativeKernel(fn, dim3(unsigned(a.geom.blocks)), dim3(unsigned(a.geom.threads)), args,
                                     a.geom.smem_bytes, stream);
}

#define RNNFAST_INSTANTIATE_PERSISTENT(S)                                                                  \
  template cudaError_t persistent_blocks_per_sm<S>(size_t, int*);                                          \
  template cudaError_t launch_persistent_forward<S>(const gpu::PersistentForwardArgs<S>&, bool, cudaStream_t);

}  // namespace rnnfast::cuda
