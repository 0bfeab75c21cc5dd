// The GPU algorithm emulated on the CPU (emulated.cpp), for the tests.
#pragma once

#include "../controls.h"
#include "../layer.h"

namespace rnnfast::gpu {

// The switch (gpu_emulation, set_gpu_emulation, emulated_calls): controls.h.

LayerOutputs layer_forward_emulated(const LayerInputs& in, bool training);
LayerGrads layer_backward_emulated(const LayerBackwardInputs& b);

}  // namespace rnnfast::gpu
