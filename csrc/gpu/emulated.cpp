// The GPU algorithm (gpu/layer_loop.h) run on the CPU by EmulatedExec: the CPU
// kernels of the rnnfast operators switch to it while gpu_emulation() is on
// (rnnfast._C._set_gpu_emulation, or RNNFAST_GPU_EMULATION=1 at import), so the
// CPU test suite checks the algorithm the CUDA build runs.
#include "emulated.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "emulated_exec.h"
#include "layer_loop.h"

namespace rnnfast::gpu {
namespace {

std::atomic<bool>& flag() {
  static std::atomic<bool> on{[] {
    const char* env = std::getenv("RNNFAST_GPU_EMULATION");
    return env != nullptr && std::strcmp(env, "1") == 0;
  }()};
  return on;
}

std::atomic<int64_t> g_calls{0};

}  // namespace

int64_t emulated_calls() { return g_calls.load(); }


bool gpu_emulation() { return flag().load(std::memory_order_relaxed); }
void set_gpu_emulation(bool on) { flag().store(on); }

LayerOutputs layer_forward_emulated(const LayerInputs& in, bool training) {
  const LayerDims d = check_layer_inputs(in);
  ++g_calls;
  EmulatedExec ex(in.allow_tf32);
  return with_storage_type(in.x.scalar_type(), [&](auto tag) {
    return GpuForwardLoop<EmulatedExec, decltype(tag)>(ex, in, d, training).run();
  });
}

LayerGrads layer_backward_emulated(const LayerBackwardInputs& b) {
  const LayerDims d = check_backward_inputs(b);
  ++g_calls;
  EmulatedExec ex(b.in.allow_tf32);
  return with_storage_type(b.in.x.scalar_type(), [&](auto tag) {
    return GpuBackwardLoop<EmulatedExec, decltype(tag)>(ex, b, d).run();
  });
}

}  // namespace rnnfast::gpu
