// The GPU algorithm emulated on the CPU (emulated.cpp), for the tests.
#pragma once

#include "../layer.h"

namespace rnnfast::gpu {

// While on, the CPU kernels of the operators run the GPU algorithm.
bool gpu_emulation();
void set_gpu_emulation(bool on);
// Layer calls (forward or backward) the emulation has run: tests check the switch took effect.
int64_t emulated_calls();

LayerOutputs layer_forward_emulated(const LayerInputs& in, bool training);
LayerGrads layer_backward_emulated(const LayerBackwardInputs& b);

}  // namespace rnnfast::gpu
