#include "buffer_pool.h"

#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/Storage.h>
#include <c10/util/strides.h>
#include <c10/core/Allocator.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <string>

#include <pthread.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace rnnfast::cpu {
namespace {

// Blocks from kHugeBytes up are whole, aligned huge pages; smaller ones are
// rounded to kGranule (so that a block fits requests of nearby sizes).
constexpr size_t kHugeBytes = size_t(16) << 20;
constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kGranule = size_t(64) << 10;
constexpr size_t kPageAlign = 4096;
// glibc's initial mmap threshold: allocations from here up are often given
// back to the kernel when freed (mmap, or a trimmed heap top) and fault again
// on reuse (measured: 75 faults per GRU training step at T=1, B=32, H=256
// with the weight gradients unpooled). Below it, the heap reuses memory.
constexpr size_t kMinPooledBytes = size_t(128) << 10;

size_t block_bytes(size_t exact) {
  const size_t unit = exact >= kHugeBytes ? kHugePage : kGranule;
  return (exact + unit - 1) / unit * unit;
}

class Pool {
 public:
  static Pool& instance() { return process_instance<Pool>(); }

  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      // The smallest cached block that fits, if at most a fifth of it is
      // unused: a block handed out can live long (a parameter's .grad kept
      // across steps), so it must not be much larger than asked for.
      auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first <= bytes + bytes / 4) {
        void* p = it->second;
        cached_ -= it->first;
        free_.erase(it);
        return p;
      }
    }
    const bool huge = bytes >= kHugeBytes;
    void* p = std::aligned_alloc(huge ? kHugePage : kPageAlign, bytes);
    TORCH_CHECK(p, "rnnfast: out of memory allocating ", std::to_string(bytes), " bytes");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (huge) madvise(p, bytes, MADV_HUGEPAGE);  // a hint; ignored where huge pages are off
#endif
    return p;
  }

  void give_back(void* p, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cached_ + bytes <= cap_) {
        free_.emplace(bytes, p);
        cached_ += bytes;
        return;
      }
    }
    std::free(p);
  }

  size_t cached() {
    std::lock_guard<std::mutex> lock(mutex_);
    return cached_;
  }

  void clear() {
    std::multimap<size_t, void*> blocks;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      blocks.swap(free_);
      cached_ = 0;
    }
    for (auto& [size, p] : blocks) std::free(p);
  }

 private:
  template <typename T>
  friend T& ::rnnfast::cpu::process_instance();
  Pool() : cap_(size_t(bytes_from_env("RNNFAST_POOL_BYTES", int64_t(1) << 30))) {}
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;  // block size -> block
  size_t cached_ = 0;
  const size_t cap_;
};

void report_to_profiler(void* p, int64_t delta) {
  if (c10::memoryProfilingEnabled())
    c10::reportMemoryUsageToProfiler(p, delta, 0, 0, c10::Device(c10::DeviceType::CPU));
}

}  // namespace

at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const size_t exact = static_cast<size_t>(numel) * options.dtype().itemsize();
  if (exact < kMinPooledBytes) return cpu_empty(sizes, options);
  const size_t bytes = block_bytes(exact);
  void* p = Pool::instance().take(bytes);
  report_to_profiler(p, static_cast<int64_t>(bytes));
  c10::DataPtr data = c10::InefficientStdFunctionContext::makeDataPtr(
      p,
      [bytes](void* q) {
        report_to_profiler(q, -static_cast<int64_t>(bytes));
        Pool::instance().give_back(q, bytes);
      },
      c10::Device(c10::DeviceType::CPU));
  // Resizable like the storage of at::empty: growing it (resize_) moves the
  // data to a block of the regular CPU allocator and returns this one.
  c10::Storage storage(c10::Storage::use_byte_size_t(), exact, std::move(data),
                       c10::GetCPUAllocator(), /*resizable=*/true);
  return at::empty({0}, options).set_(std::move(storage), 0, sizes, c10::contiguous_strides(sizes));
}

int64_t bytes_from_env(const char* name, int64_t fallback) {
  const char* env = std::getenv(name);
  if (!env || !*env) return fallback;
  char* end = nullptr;
  const long long v = std::strtoll(env, &end, 10);
  TORCH_CHECK(end && *end == '\0' && v >= 0, "rnnfast: ", name, " must be a number of bytes, got '", env, "'");
  return v;
}

at::Tensor cpu_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return at::Tensor(at::detail::empty_cpu(sizes, options));
}

size_t pool_cached_bytes() { return Pool::instance().cached(); }

void pool_empty_cache() { Pool::instance().clear(); }

}  // namespace rnnfast::cpu
