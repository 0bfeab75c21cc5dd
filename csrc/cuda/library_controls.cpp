// The CUDA library's own controls, as C functions: the library (rnnfast._C_cuda)
// is loaded with ctypes by rnnfast/_extension.py, next to the CPU library,
// and keeps its own copy of the GPU algorithm's settings (gpu/path.cpp).
// These are the only symbols it exports besides its static op registrations;
// no C++ exception crosses them.
#include <cstdint>
#include <exception>

#include "../controls.h"

extern "C" {

// The GPU path ("auto", "cublas" or "persistent"; rnnfast.set_gpu_path):
// 0 when set, 1 for an unknown name (the CPU library's setter, called first,
// raises for it).
__attribute__((visibility("default"))) int rnnfast_cuda_set_gpu_path(const char* name) noexcept {
  try {
    rnnfast::gpu::set_gpu_path(name);
    return 0;
  } catch (const std::exception&) {
    return 1;
  }
}

// Persistent-kernel launches of this library so far (the tests' counter).
__attribute__((visibility("default"))) int64_t rnnfast_cuda_persistent_launches() noexcept {
  return rnnfast::gpu::persistent_launches();
}

}  // extern "C"
