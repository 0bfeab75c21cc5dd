#include "buffer_pool.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/Allocator.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace rnnfast::cpu {
namespace {

constexpr size_t kAlign = size_t(2) << 20;            // whole huge pages
constexpr size_t kMinPooledBytes = size_t(16) << 20;  // glibc's mmap threshold grows to 32 MB

size_t cap_from_env() {
  const char* env = std::getenv("RNNFAST_POOL_BYTES");
  if (!env || !*env) return size_t(1) << 30;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(env, &end, 10);
  TORCH_CHECK(end && *end == '\0', "rnnfast: RNNFAST_POOL_BYTES must be a number of bytes, got '",
              env, "'");
  return static_cast<size_t>(v);
}

class Pool {
 public:
  static Pool& instance() {
    static Pool* pool = new Pool();  // never destroyed: tensors may outlive static destruction
    return *pool;
  }

  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      // The smallest cached block that fits, if it wastes at most half of itself.
      auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first <= 2 * bytes) {
        void* p = it->second;
        cached_ -= it->first;
        free_.erase(it);
        return p;
      }
    }
    void* p = std::aligned_alloc(kAlign, bytes);
    TORCH_CHECK(p, "rnnfast: out of memory allocating ", bytes, " bytes");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(p, bytes, MADV_HUGEPAGE);  // a hint; ignored where huge pages are off
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
  Pool() : cap_(cap_from_env()) {}
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
  // Below this size glibc's heap already reuses freed memory without faults.
  if (exact < kMinPooledBytes) return at::empty(sizes, options);
  const size_t bytes = (exact + kAlign - 1) / kAlign * kAlign;
  void* p = Pool::instance().take(bytes);
  report_to_profiler(p, static_cast<int64_t>(bytes));
  return at::from_blob(
      p, sizes,
      [bytes](void* q) {
        report_to_profiler(q, -static_cast<int64_t>(bytes));
        Pool::instance().give_back(q, bytes);
      },
      options);
}

size_t pool_cached_bytes() { return Pool::instance().cached(); }

void pool_empty_cache() { Pool::instance().clear(); }

}  // namespace rnnfast::cpu
