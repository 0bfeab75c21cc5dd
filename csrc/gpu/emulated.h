// The GPU algorithm emulated on the CPU (emulated.cpp), for the tests.
#pragma once

#include "../controls.h"
#include "../layer.h"

namespace rnnfast::gpu {

// The switch (gpu_emulation, set_gpu_emulation, emulated_calls): controls.h.

// The operators' CPU kernels call these with their (stable) tensors.
rnnfast::LayerOutputs layer_forward_emulated(const rnnfast::LayerInputs& in, bool training);
rnnfast::LayerGrads layer_backward_emulated(const rnnfast::LayerBackwardInputs& b);

}  // namespace rnnfast::gpu
