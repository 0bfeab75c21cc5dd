// A reusable barrier for the threads of one parallel time loop.
//
// The time loop needs one rendezvous per step (every thread must see the whole
// h_t before the next recurrent GEMM), microseconds apart: an OS-level wait
// would cost more than a step at small batch. Each thread owns a cache line
// holding the number of barriers it has reached; arriving is one store to its
// own line, waiting is reading the others' lines. No read-modify-write on a
// shared line, so a step costs about one cache-line transfer per thread.
// Waiters spin briefly with a pause instruction, then sleep on the flag they
// wait for (a futex through std::atomic::wait), so an oversubscribed machine
// does not burn the core the late thread needs.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
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
  explicit SpinBarrier(int participants)
      : participants_(participants), flags_(new Flag[participants > 0 ? participants : 1]) {}
  SpinBarrier(const SpinBarrier&) = delete;
  SpinBarrier& operator=(const SpinBarrier&) = delete;

  // Called by thread `self` (0 <= self < participants), the same number of
  // times by every participant.
  // Waits that had to sleep, over all participants: a partner thread was off
  // its core for longer than the spin (read after the threads have joined).
  int sleeps() const {
    int n = 0;
    for (int k = 0; k < participants_; ++k) n += flags_[k].sleeps;
    return n;
  }

  void wait(int self) {
    if (participants_ <= 1) return;
    std::atomic<uint32_t>& mine = flags_[self].reached;
    const uint32_t epoch = mine.load(std::memory_order_relaxed) + 1;
    mine.store(epoch, std::memory_order_release);
    mine.notify_all();
    for (int other = 0; other < participants_; ++other) {
      if (other == self) continue;
      std::atomic<uint32_t>& theirs = flags_[other].reached;
      int spins = 0;
      for (uint32_t seen; (seen = theirs.load(std::memory_order_acquire)) != epoch &&
                          int32_t(seen - epoch) < 0;) {
        if (++spins < kSpins) {
          RNNFAST_CPU_RELAX();
        } else {
          if (spins == kSpins) ++flags_[self].sleeps;
          theirs.wait(seen, std::memory_order_acquire);
        }
      }
    }
  }

 private:
  // ~1 ms of spinning (pause ~26 ns on Zen 4): longer than a step's imbalance or an
  // interrupt, so a thread sleeps only when the machine is oversubscribed.
  static constexpr int kSpins = 1 << 15;
  struct alignas(64) Flag {
    std::atomic<uint32_t> reached{0};
    int sleeps = 0;  // waits of this thread that ended in a sleep (written by it alone)
  };
  const int participants_;
  std::unique_ptr<Flag[]> flags_;
};

}  // namespace rnnfast::cpu
