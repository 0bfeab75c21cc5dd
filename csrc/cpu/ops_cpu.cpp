// The CPU kernels of the rnnfast operators (schemas: csrc/ops.cpp): the CPU
// loops, or the GPU algorithm emulated on the CPU while the tests ask for it
// (gpu/emulated.h).
#include <torch/library.h>

#include "../gpu/emulated.h"
#include "../ops.h"

namespace rnnfast {
namespace {

LayerOutputs forward_on_cpu(const LayerInputs& in, bool training) {
  return gpu::gpu_emulation() ? gpu::layer_forward_emulated(in, training) : layer_forward_cpu(in, training);
}

LayerGrads backward_on_cpu(const LayerBackwardInputs& b) {
  return gpu::gpu_emulation() ? gpu::layer_backward_emulated(b) : layer_backward_cpu(b);
}

using CpuOps = DeviceOps<&forward_on_cpu, &backward_on_cpu>;

}  // namespace
}  // namespace rnnfast

TORCH_LIBRARY_IMPL(rnnfast, CPU, m) {
  m.impl("layer_forward", &rnnfast::CpuOps::forward);
  m.impl("layer_forward_train", &rnnfast::CpuOps::forward_train);
  m.impl("layer_backward", &rnnfast::CpuOps::backward);
}
