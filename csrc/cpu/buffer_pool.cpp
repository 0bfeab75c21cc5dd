#include "buffer_pool.h"

#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>

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
constexpr size_t kHeapAlign = 64;  // as torch's CPU allocator

size_t block_bytes(size_t exact) {
  const size_t unit = exact >= kHugeBytes ? kHugePage : kGranule;
  return (exact + unit - 1) / unit * unit;
}

void* aligned_or_throw(size_t align, size_t bytes) {
  void* p = std::aligned_alloc(align, (bytes + align - 1) / align * align);
  if (!p) throw std::runtime_error("rnnfast: out of memory allocating " + std::to_string(bytes) + " bytes");
  return p;
}

std::atomic<PoolObserver> observer{nullptr};

void observe(void* p, int64_t delta) {
  if (PoolObserver o = observer.load(std::memory_order_relaxed)) o(p, delta);
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
    void* p = aligned_or_throw(huge ? kHugePage : kPageAlign, bytes);
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

}  // namespace

void* pool_take(size_t bytes, size_t* block) {
  *block = block_bytes(bytes);
  void* p = Pool::instance().take(*block);
  observe(p, static_cast<int64_t>(*block));
  return p;
}

void pool_give(void* p, size_t block) {
  observe(p, -static_cast<int64_t>(block));
  Pool::instance().give_back(p, block);
}

void set_pool_observer(PoolObserver o) { observer.store(o, std::memory_order_relaxed); }

PooledBytes::PooledBytes(size_t bytes, bool pooled) : bytes_(bytes) {
  if (pooled && bytes >= kMinPooledBytes) {
    data_ = pool_take(bytes, &block_);
  } else {
    data_ = aligned_or_throw(kHeapAlign, bytes ? bytes : 1);
    observe(data_, static_cast<int64_t>(bytes));  // the profiler saw these as the CPU allocator's too
  }
}

PooledBytes& PooledBytes::operator=(PooledBytes&& other) noexcept {
  if (this != &other) {
    release();
    data_ = other.data_;
    bytes_ = other.bytes_;
    block_ = other.block_;
    other.data_ = nullptr;
    other.bytes_ = other.block_ = 0;
  }
  return *this;
}

PooledBytes::~PooledBytes() { release(); }

void PooledBytes::release() {
  if (!data_) return;
  if (block_) {
    pool_give(data_, block_);
  } else {
    observe(data_, -static_cast<int64_t>(bytes_));
    std::free(data_);
  }
  data_ = nullptr;
}

int64_t bytes_from_env(const char* name, int64_t fallback) {
  const char* env = std::getenv(name);
  if (!env || !*env) return fallback;
  char* end = nullptr;
  const long long v = std::strtoll(env, &end, 10);
  if (!(end && *end == '\0' && v >= 0))
    throw std::runtime_error(std::string("rnnfast: ") + name + " must be a non-negative integer, got '" + env + "'");
  return v;
}

size_t pool_cached_bytes() { return Pool::instance().cached(); }

void pool_empty_cache() { Pool::instance().clear(); }

}  // namespace rnnfast::cpu
