// The CPU kernels built for AVX-512 with the BF16 extension (vdpbf16ps:
// bfloat16 GEMMs on bf16 k-pair panels); setup.py and CMakeLists.txt compile
// this file with that set's flags, CPU_CAPABILITY=AVX512_BF16 and
// RNNFAST_NATIVE_BF16 (simd.h sees CPU_CAPABILITY_AVX512).
#include "kernels_impl.h"

RNNFAST_DEFINE_KERNEL_TABLES("avx512_bf16")
