// The library's controls: every function of the compiled library that the
// Python bindings (bindings.cpp) call, besides the operators, in plain C++
// types. No torch header: the bindings compile without torch's include
// directory (setup.py, CMake; scripts/check_torch_symbols.sh checks their
// object), so once the operators are on the stable ABI the bindings module is
// tied to the Python version only (issue 16).
//
// Errors: std::runtime_error (Python RuntimeError) or std::invalid_argument
// (ValueError), which pybind11 translates without torch's translators.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace rnnfast {

namespace cpu {

// The instruction-set builds of the CPU kernels (cpu/dispatch.cpp).
const char* cpu_capability();                                 // the build in use
void set_cpu_capability(const char* name);                    // avx512_bf16, avx512, avx2, default
const char* const* available_cpu_capabilities(int* count);    // best first, supported by this CPU

// Peak FMA rate of `threads` threads running the in-use build's register-only
// FMA loop at once (cpu/fma_peak.cpp): dtype "float32", "float64" or
// "bfloat16" (the bf16 dot-product instruction where the build has it, else
// float32 FMAs); `iterations` rounds of 12 vector FMAs per thread.
double fma_peak_gflops(int threads, const std::string& dtype, int64_t iterations);

// Whether the CPU loops were compiled with OpenMP (cpu/thread_policy.cpp).
bool built_with_openmp();

// The buffer pool (cpu/buffer_pool.h): bytes it keeps unused; frees them.
size_t pool_cached_bytes();
void pool_empty_cache();

// The packed weight panels kept across calls (cpu/panel_cache.h).
struct PanelCacheStats {
  int64_t hits = 0;        // calls that reused packed panels
  int64_t packs = 0;       // cached entries (re)packed: new, or the weight changed
  int64_t uncached = 0;    // calls that packed a private buffer (cache off, full, entry in use)
  int64_t entries = 0;
  int64_t bytes = 0;       // panel bytes held
  int64_t capacity = 0;    // RNNFAST_PANEL_CACHE_BYTES
};
PanelCacheStats panel_cache_stats();
// Drops every entry (rnnfast.empty_cache()).
void panel_cache_clear();
// Drops the entries of weights inside the `bytes` bytes from `begin` (a
// module's parameter, when it is freed or replaced: Python passes its
// storage's data_ptr() and nbytes()).
void panel_cache_release(const void* begin, size_t bytes);
// Test hook: the capacity in bytes (0 disables); returns the previous one.
int64_t panel_cache_set_capacity(int64_t bytes);

}  // namespace cpu

namespace gpu {

// The GPU algorithm emulated on the CPU (gpu/emulated.cpp), for the tests:
// while on, the CPU kernels of the operators run it.
bool gpu_emulation();
void set_gpu_emulation(bool on);
// Layer calls (forward or backward) the emulation has run: tests check the switch took effect.
int64_t emulated_calls();
// Rows per chunk of the GPU algorithm's time-parallel GEMMs (gpu/layer_loop.h);
// 0: automatic.
void set_chunk_rows(int64_t rows);

// Which GPU algorithm runs a layer (gpu/path.h): "auto", "cublas" or
// "persistent" (RNNFAST_GPU_PATH when the library loads); anything else
// raises std::invalid_argument.
void set_gpu_path(const std::string& name);
std::string gpu_path_name();
// Persistent launches made so far (CUDA and emulated): tests check the path ran.
int64_t persistent_launches();
// The device the emulated persistent kernel plans for (gpu/path.h, EmulatedDevice).
void set_emulated_device(int sms, int64_t smem_per_block);

}  // namespace gpu

}  // namespace rnnfast
