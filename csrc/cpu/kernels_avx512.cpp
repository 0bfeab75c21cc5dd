// The CPU kernels built for one instruction set; setup.py and CMakeLists.txt
// compile this file with that set's flags and CPU_CAPABILITY defined.
#include "kernels_impl.h"

RNNFAST_DEFINE_KERNEL_TABLES("avx512")
