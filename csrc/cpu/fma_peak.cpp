// The machine's peak FMA rate through the in-use instruction set's
// register-only loop (KernelTable::fma_loop): the denominator of every
// fraction-of-peak report (benchmarks/peak_fraction.py, benchmarks/load.py).
#include <chrono>
#include <stdexcept>
#include <string>

#include "kernels.h"

namespace rnnfast::cpu {

double fma_peak_gflops(int threads, const std::string& dtype, int64_t iterations) {
  if (threads <= 0 || iterations <= 0)
    throw std::runtime_error("rnnfast: fma_peak_gflops needs threads and iterations > 0");
  if (dtype != "float32" && dtype != "float64" && dtype != "bfloat16")
    throw std::runtime_error("rnnfast: fma_peak_gflops dtype must be float32, float64 or bfloat16, got " + dtype);
  double seconds = 0, flops = 0;
#pragma omp parallel num_threads(threads) reduction(+ : flops) reduction(max : seconds)
  {
    double f = 0;
    const auto t0 = std::chrono::steady_clock::now();
    const double checksum = dtype == "float64"    ? kernels<double>().fma_loop(iterations, &f)
                            : dtype == "bfloat16" ? kernels<c10::BFloat16>().fma_loop(iterations, &f)
                                                  : kernels<float>().fma_loop(iterations, &f);
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    flops = checksum == checksum ? f : 0;  // (uses the checksum; NaN would mean a broken loop)
  }
  return flops / seconds / 1e9;
}

}  // namespace rnnfast::cpu
