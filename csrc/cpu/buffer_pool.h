// A cache of large host buffers: the activations a training forward saves for
// its backward, the layer outputs and gradients, and the scratch of the time
// loops (packed weights, pre-activation chunks).
//
// Those buffers are the largest allocations of a call (e.g. 160 MB of saved
// activations for an LSTM layer at T=1024, B=32, H=256) and are freed after
// every call. glibc returns blocks that size to the kernel, so the next call
// pays a page fault and the zeroing of every page again: measured at ~7 % of
// an LSTM training step, and 11k faults (~5 %) of an inference call at T=100,
// B=64, H=512. The pool keeps freed blocks (up to a cap) and hands them out
// again, like the caching allocators of GPU frameworks.
//
//   RNNFAST_POOL_BYTES   cap on the bytes kept while unused (default 1 GiB; 0: off)
//   rnnfast.empty_cache() / pool_cached_bytes() through the bindings
//
// Raw memory only, no torch header (on the stable ABI's side of issue 16):
// the loops' scratch is PooledBytes; tensors backed by pooled blocks are made
// by cpu/pooled_tensor.h. An observer (set there) hears of every block handed
// out and returned, and of PooledBytes' heap memory, which is how torch's
// profiler sees them (profile_memory=True) as allocations and frees of the
// CPU allocator.
#pragma once

#include <pthread.h>

#include <cstddef>
#include <cstdint>

#include "../controls.h"

namespace rnnfast::cpu {

// Requests from this size up are served by the pool; smaller ones by the heap.
// glibc's initial mmap threshold: allocations from here up are often given
// back to the kernel when freed (mmap, or a trimmed heap top) and fault again
// on reuse (measured: 75 faults per GRU training step at T=1, B=32, H=256
// with the weight gradients unpooled). Below it, the heap reuses memory.
constexpr size_t kMinPooledBytes = size_t(128) << 10;

// A pooled block of at least `bytes` (page-aligned; huge-page aligned from
// 16 MiB up); its size, which pool_give needs, in *block. Throws
// std::runtime_error when out of memory.
void* pool_take(size_t bytes, size_t* block);
// Returns a block from pool_take: kept for reuse, or freed past the cap.
void pool_give(void* p, size_t block);

// Hears of every block handed out (delta > 0, its size) and returned (delta < 0).
using PoolObserver = void (*)(void* p, int64_t delta);
void set_pool_observer(PoolObserver observer);

// A move-only buffer of `bytes` (64-byte aligned): a pooled block from
// kMinPooledBytes up, heap memory below or where `pooled` is false (memory
// that lives long, like the panel cache's entries, must not hold a pool
// block). Uninitialised.
class PooledBytes {
 public:
  PooledBytes() = default;
  explicit PooledBytes(size_t bytes, bool pooled = true);
  ~PooledBytes();
  PooledBytes(PooledBytes&& other) noexcept { *this = static_cast<PooledBytes&&>(other); }
  PooledBytes& operator=(PooledBytes&& other) noexcept;
  PooledBytes(const PooledBytes&) = delete;
  PooledBytes& operator=(const PooledBytes&) = delete;

  void* data() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void release();
  void* data_ = nullptr;
  size_t bytes_ = 0;  // as asked
  size_t block_ = 0;  // pooled block size; 0 for heap memory
};

// A byte count from the environment variable `name` (a non-negative integer;
// anything else raises std::runtime_error), or `fallback` where it is unset
// or empty.
int64_t bytes_from_env(const char* name, int64_t fallback);

// The process-wide instance of T, made on first use and never destroyed
// (tensors and leases may outlive static destruction), whose `mutex_` is held
// across fork() and released on both sides: a child must not inherit it
// locked by a thread it does not have. T befriends this function.
template <typename T>
T& process_instance() {
  static T* instance = [] {
    T* p = new T();
    pthread_atfork([] { process_instance<T>().mutex_.lock(); }, [] { process_instance<T>().mutex_.unlock(); },
                   [] { process_instance<T>().mutex_.unlock(); });
    return p;
  }();
  return *instance;
}

// pool_cached_bytes and pool_empty_cache: controls.h.

}  // namespace rnnfast::cpu
