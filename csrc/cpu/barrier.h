// A reusable spinning barrier for the threads of one parallel time loop.
//
// The time loop needs one rendezvous per step (every thread must see the whole
// h_t before the next recurrent GEMM), a few microseconds apart: an OS-level
// wait would cost more than a step at small batch. Threads spin briefly with
// a pause instruction, then sleep on the generation counter (a futex through
// std::atomic::wait), so an oversubscribed machine does not burn the core the
// late thread needs.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define RNNFAST_CPU_RELAX() _mm_pause()
#else
#define RNNFAST_CPU_RELAX() std::this_thread::yield()
#endif

namespace rnnfast::cpu {

class SpinBarrier {
 public:
  explicit SpinBarrier(int participants) : participants_(participants) {}
  SpinBarrier(const SpinBarrier&) = delete;
  SpinBarrier& operator=(const SpinBarrier&) = delete;

  void wait() {
    if (participants_ <= 1) return;
    const uint32_t gen = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == participants_) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.store(gen + 1, std::memory_order_release);
      generation_.notify_all();
      return;
    }
    for (int spins = 0; spins < kSpins; ++spins) {
      if (generation_.load(std::memory_order_acquire) != gen) return;
      RNNFAST_CPU_RELAX();
    }
    while (generation_.load(std::memory_order_acquire) == gen) generation_.wait(gen);
  }

 private:
  // ~20-50 us of spinning: longer than a step's imbalance, shorter than a time slice.
  static constexpr int kSpins = 1 << 11;
  const int participants_;
  alignas(64) std::atomic<int> arrived_{0};
  alignas(64) std::atomic<uint32_t> generation_{0};
};

}  // namespace rnnfast::cpu
