// The CPU kernels of the rnnfast operators (schemas: csrc/ops.cpp).
#include <torch/library.h>

#include "../ops.h"

namespace {
using CpuOps = rnnfast::DeviceOps<&rnnfast::layer_forward_cpu, &rnnfast::layer_backward_cpu>;
}  // namespace

TORCH_LIBRARY_IMPL(rnnfast, CPU, m) {
  m.impl("layer_forward", &CpuOps::forward);
  m.impl("layer_forward_train", &CpuOps::forward_train);
  m.impl("layer_backward", &CpuOps::backward);
}
