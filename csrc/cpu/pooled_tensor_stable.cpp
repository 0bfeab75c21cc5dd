// pooled_empty (pooled_tensor.h) in the build on torch's stable ABI alone
// (RNNFAST_STABLE_ABI=1, what the wheel ships; setup.py): a pooled block is
// wrapped by the shim's from_blob with a deleter that hands it back to the
// pool. Two differences from pooled_tensor.cpp's (the C++ API build), which
// the stable ABI cannot express: such a storage is not resizable (growing an
// output with resize_ raises RuntimeError; shrinking works), and the profiler's
// memory view does not see the pooled blocks.
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/tensor.h>

#include <array>
#include <cstdint>

#include "../check.h"
#include "buffer_pool.h"
#include "pooled_tensor.h"

namespace rnnfast::cpu {
namespace {

// Bytes per element of the operators' floating dtypes.
size_t element_bytes(torch::headeronly::ScalarType dtype) {
  using torch::headeronly::ScalarType;
  switch (dtype) {
    case ScalarType::Double: return 8;
    case ScalarType::Float: return 4;
    case ScalarType::BFloat16:
    case ScalarType::Half: return 2;
    default: detail::check_failed("rnnfast: pooled_empty takes a floating dtype");
  }
}

// The deleter: `ctx` carries the block's size (pool_give needs it).
void give_back(void* data, void* ctx) { pool_give(data, reinterpret_cast<uintptr_t>(ctx)); }

}  // namespace

torch::stable::Tensor pooled_empty(torch::headeronly::IntHeaderOnlyArrayRef sizes,
                                   torch::headeronly::ScalarType dtype) {
  std::array<int64_t, 4> strides{};  // contiguous
  RNNFAST_CHECK(sizes.size() <= strides.size(), "rnnfast: pooled_empty takes up to 4 dimensions");
  int64_t numel = 1;
  for (size_t k = sizes.size(); k-- > 0;) {
    strides[k] = numel;
    numel *= sizes[k];
  }
  const int32_t shim_dtype = torch::stable::detail::to<int32_t>(torch::stable::detail::from(dtype));
  const int32_t cpu = aoti_torch_device_type_cpu();
  const auto ndim = static_cast<int64_t>(sizes.size());
  AtenTensorHandle out = nullptr;
  const size_t exact = static_cast<size_t>(numel) * element_bytes(dtype);
  if (exact < kMinPooledBytes) {
    RNNFAST_CHECK(aoti_torch_empty_strided(ndim, sizes.data(), strides.data(), shim_dtype, cpu, 0, &out) ==
                      AOTI_TORCH_SUCCESS,
                  "rnnfast: could not allocate an output tensor");
    return torch::stable::Tensor(out);
  }
  size_t block = 0;
  void* p = pool_take(exact, &block);
  // Device index -1: from_blob checks the device against the data's, a CPU pointer's being cpu (not cpu:0).
  // On failure the block is not given back here: the shim may already have run the deleter (it
  // makes the data pointer before the storage and the tensor), and a block given back twice would
  // reach two callers. A failed call leaks one block instead.
  if (torch_from_blob(p, ndim, sizes.data(), strides.data(), 0, shim_dtype, cpu, -1, &out,
                      aoti_torch_layout_strided(), nullptr, 0, &give_back,
                      reinterpret_cast<void*>(static_cast<uintptr_t>(block))) != AOTI_TORCH_SUCCESS)
    detail::check_failed("rnnfast: could not wrap a pooled block as a tensor");
  return torch::stable::Tensor(out);
}

}  // namespace rnnfast::cpu
