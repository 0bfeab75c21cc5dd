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
// Blocks handed out are reported to torch's profiler like allocations of the
// CPU allocator (profile_memory=True sees them), and returned ones as frees.
#pragma once

#include <ATen/core/Tensor.h>

#include <pthread.h>

#include <cstddef>
#include <cstdint>

#include "../controls.h"

namespace rnnfast::cpu {

// An uninitialised CPU tensor; from 128 KB up backed by a pooled block (a
// fresh one if none fits), below by the regular allocator.
at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options);

// An uninitialised CPU tensor from the regular allocator, without a trip
// through the dispatcher (at::empty costs ~0.3 us of dispatch: a visible
// part of a one-step call, which allocates its outputs and scratch).
at::Tensor cpu_empty(at::IntArrayRef sizes, const at::TensorOptions& options);

// A byte count from the environment variable `name` (a non-negative integer;
// anything else raises), or `fallback` where it is unset or empty.
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
