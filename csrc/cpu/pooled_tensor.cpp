#include "pooled_tensor.h"

#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/Storage.h>
#include <c10/util/accumulate.h>
#include <c10/util/strides.h>

#include "../layer_aten.h"
#include "buffer_pool.h"

namespace rnnfast::cpu {
namespace {

// Pooled blocks as torch's profiler sees the CPU allocator's (profile_memory=True).
void report_to_profiler(void* p, int64_t delta) {
  if (c10::memoryProfilingEnabled())
    c10::reportMemoryUsageToProfiler(p, delta, 0, 0, c10::Device(c10::DeviceType::CPU));
}

const bool observer_set = (set_pool_observer(&report_to_profiler), true);

at::Tensor pooled_empty_aten(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const size_t exact = static_cast<size_t>(c10::multiply_integers(sizes)) * options.dtype().itemsize();
  if (exact < kMinPooledBytes) return at::detail::empty_cpu(sizes, options);
  size_t block = 0;
  void* p = pool_take(exact, &block);
  c10::DataPtr data = c10::InefficientStdFunctionContext::makeDataPtr(
      p, [block](void* q) { pool_give(q, block); }, c10::Device(c10::DeviceType::CPU));
  // Resizable like the storage of at::empty: growing it (resize_) moves the
  // data to a block of the regular CPU allocator and returns this one.
  c10::Storage storage(c10::Storage::use_byte_size_t(), exact, std::move(data), c10::GetCPUAllocator(),
                       /*resizable=*/true);
  return at::empty({0}, options).set_(std::move(storage), 0, sizes, c10::contiguous_strides(sizes));
}

at::TensorOptions cpu_options(torch::headeronly::ScalarType dtype) {
  return at::TensorOptions().dtype(dtype).device(c10::DeviceType::CPU);
}

}  // namespace

torch::stable::Tensor pooled_empty(torch::headeronly::IntHeaderOnlyArrayRef sizes,
                                   torch::headeronly::ScalarType dtype) {
  return aten_layer::stable(pooled_empty_aten(at::IntArrayRef(sizes.data(), sizes.size()), cpu_options(dtype)));
}

}  // namespace rnnfast::cpu
