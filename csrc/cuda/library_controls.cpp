// The CUDA library's own controls, as C functions: the library (rnnfast._C_cuda)
// is loaded with ctypes by rnnfast/_extension.py, next to the CPU library,
// and keeps its own copy of the GPU algorithm's settings (gpu/path.cpp).
// These and rnnfast_cuda_register (ops_cuda.cpp) are the only symbols it
// exports; no C++ exception crosses them.
#include <cstdint>
#include <exception>

#include "../build_id.h"
#include "../controls.h"

extern "C" {

// The build this library belongs to (build_id.h): checked against the CPU
// library's before rnnfast_cuda_register.
__attribute__((visibility("default"))) const char* rnnfast_cuda_build_id() noexcept { return RNNFAST_BUILD_ID; }

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
