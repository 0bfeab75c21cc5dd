// The panel cache's weak reference to a weight (panel_cache.h, WeightOwner):
// a weak reference to its storage. The CPU kernels (ops_cpu.cpp) pass the
// weights' stable tensors as the owner handles; a weak reference to a storage
// exists only on torch's C++ API, so this file stays there. The stable build
// has none: its entries go by eviction, the modules' release and
// rnnfast.empty_cache() (panel_cache.h; issue 16).
#include <c10/core/StorageImpl.h>
#include <c10/util/intrusive_ptr.h>

#include <memory>

#include "../layer_aten.h"
#include "panel_cache.h"

namespace rnnfast::cpu {
namespace {

class StorageOwner final : public WeightOwner {
 public:
  explicit StorageOwner(const at::Tensor& weight) : storage_(weight.storage().getWeakStorageImpl()) {}
  bool expired() const override { return storage_.expired(); }

 private:
  c10::weak_intrusive_ptr<c10::StorageImpl> storage_;
};

// `handle`: a const torch::stable::Tensor* (LayerView's *_owner fields, set by ops_cpu.cpp).
const bool owner_factory_set = (set_weight_owner_factory([](const void* handle) {
                                  const auto& weight = *static_cast<const torch::stable::Tensor*>(handle);
                                  return std::unique_ptr<WeightOwner>(new StorageOwner(aten_layer::aten(weight)));
                                }),
                                true);

}  // namespace
}  // namespace rnnfast::cpu
