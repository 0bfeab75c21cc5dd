#include "panel_cache.h"

#include <algorithm>
#include <atomic>
#include <list>
#include <mutex>

#include <pthread.h>

#include "buffer_pool.h"

namespace rnnfast::cpu {

struct PanelCacheEntry {
  std::unique_ptr<WeightOwner> owner;                 // weak: never keeps the weight alive
  const void* weight = nullptr;                       // the weight's first byte
  int64_t weight_bytes = 0;
  std::vector<int64_t> recipe;                        // everything the packing depends on (its
                                                      // kernel table: the storage type)
  PooledBytes buffer;                                 // the panels (heap memory: long-lived)
  std::vector<uint64_t> fingerprints;                 // [blocks] of the weight they were packed from
  bool packed = false;
  std::atomic<bool> in_use{false};
  uint64_t last_use = 0;
};

namespace {

std::atomic<WeightOwnerFactory> owner_factory{nullptr};

class Cache {
 public:
  static Cache& instance() { return process_instance<Cache>(); }

  // The entry for (weight, recipe), marked in use; nullptr when the cache is
  // off, the entry is in use, or it would not fit.
  std::shared_ptr<PanelCacheEntry> acquire(const void* weight, int64_t weight_bytes, const void* owner_handle,
                                           std::vector<int64_t>& recipe, int64_t bytes) {
    std::vector<std::shared_ptr<PanelCacheEntry>> dropped;  // freed outside the lock
    std::lock_guard<std::mutex> lock(mutex_);
    drop_expired(dropped);
    if (capacity_ <= 0 || bytes > capacity_) return nullptr;
    for (auto& e : entries_) {
      if (e->weight != weight || e->weight_bytes != weight_bytes || e->recipe != recipe) continue;
      if (e->in_use.exchange(true)) return nullptr;  // another call packs or reads it now
      e->last_use = ++clock_;
      return e;
    }
    // Room for a new entry: least recently used ones out first.
    while (bytes_ + bytes > capacity_) {
      auto victim = entries_.end();
      for (auto it = entries_.begin(); it != entries_.end(); ++it)
        if (!(*it)->in_use.load() && (victim == entries_.end() || (*it)->last_use < (*victim)->last_use))
          victim = it;
      if (victim == entries_.end()) return nullptr;  // all in use
      bytes_ -= (*victim)->buffer.bytes();
      dropped.push_back(std::move(*victim));
      entries_.erase(victim);
    }
    auto e = std::make_shared<PanelCacheEntry>();
    const WeightOwnerFactory factory = owner_factory.load(std::memory_order_relaxed);
    if (factory && owner_handle) e->owner = factory(owner_handle);
    e->weight = weight;
    e->weight_bytes = weight_bytes;
    e->recipe = std::move(recipe);
    e->buffer = PooledBytes(size_t(bytes), /*pooled=*/false);
    e->in_use = true;
    e->last_use = ++clock_;
    bytes_ += e->buffer.bytes();
    entries_.push_back(e);
    return e;
  }

  void release(const std::shared_ptr<PanelCacheEntry>& e) { e->in_use.store(false, std::memory_order_release); }

  void count(bool hit, bool cached) {
    std::lock_guard<std::mutex> lock(mutex_);
    (cached ? (hit ? hits_ : packs_) : uncached_) += 1;
  }

  PanelCacheStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {hits_, packs_, uncached_, int64_t(entries_.size()), bytes_, capacity_};
  }

  // Drops the entries matching `which` that no call uses now.
  template <typename Pred>
  void drop_if(Pred which) {
    std::vector<std::shared_ptr<PanelCacheEntry>> dropped;
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = entries_.begin(); it != entries_.end();) {
      if (which(**it) && !(*it)->in_use.load()) {
        bytes_ -= (*it)->buffer.bytes();
        dropped.push_back(std::move(*it));
        it = entries_.erase(it);
      } else {
        ++it;
      }
    }
  }

  int64_t set_capacity(int64_t bytes) {
    int64_t old;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      old = capacity_;
      capacity_ = bytes;
    }
    drop_if([&](const PanelCacheEntry&) { return bytes_ > capacity_; });
    return old;
  }

 private:
  template <typename T>
  friend T& ::rnnfast::cpu::process_instance();
  Cache() : capacity_(bytes_from_env("RNNFAST_PANEL_CACHE_BYTES", int64_t(512) << 20)) {}

  // Entries whose weight was freed, unless a call uses them now.
  void drop_expired(std::vector<std::shared_ptr<PanelCacheEntry>>& dropped) {
    for (auto it = entries_.begin(); it != entries_.end();) {
      if ((*it)->owner && (*it)->owner->expired() && !(*it)->in_use.load()) {
        bytes_ -= (*it)->buffer.bytes();
        dropped.push_back(std::move(*it));
        it = entries_.erase(it);
      } else {
        ++it;
      }
    }
  }

  std::mutex mutex_;
  std::list<std::shared_ptr<PanelCacheEntry>> entries_;
  int64_t bytes_ = 0;
  int64_t capacity_;
  uint64_t clock_ = 0;
  int64_t hits_ = 0, packs_ = 0, uncached_ = 0;
};

}  // namespace

void set_weight_owner_factory(WeightOwnerFactory factory) { owner_factory.store(factory); }

std::unique_ptr<PanelLease> PanelLease::acquire(const void* weight, int64_t weight_bytes, const void* owner_handle,
                                                std::vector<int64_t> recipe, int64_t bytes) {
  auto lease = std::make_unique<PanelLease>();
  lease->entry_ = Cache::instance().acquire(weight, weight_bytes, owner_handle, recipe, bytes);
  if (lease->entry_) {
    lease->data_ = lease->entry_->buffer.data();
    lease->weight_ = static_cast<const uint8_t*>(weight);
    lease->weight_bytes_ = weight_bytes;
    lease->blocks_ = (lease->weight_bytes_ + kFingerprintBlockBytes - 1) / kFingerprintBlockBytes;
    lease->fingerprints_.resize(lease->blocks_);
  } else {
    lease->own_ = PooledBytes(size_t(bytes));
    lease->data_ = lease->own_.data();
  }
  return lease;
}

PanelLease::~PanelLease() {
  if (entry_) Cache::instance().release(entry_);
}

void PanelLease::check_blocks(int64_t b0, int64_t b1, uint64_t (*hash)(const void*, int64_t)) {
  if (!entry_) return;
  bool changed = false;
  for (int64_t b = b0; b < std::min(b1, blocks_); ++b) {
    const int64_t start = b * kFingerprintBlockBytes;
    fingerprints_[b] = hash(weight_ + start, std::min(kFingerprintBlockBytes, weight_bytes_ - start));
    changed |= !entry_->packed || fingerprints_[b] != entry_->fingerprints[b];
  }
  if (changed) changed_.store(true, std::memory_order_relaxed);
}

bool PanelLease::stale() const { return !entry_ || !entry_->packed || changed_.load(std::memory_order_relaxed); }

void PanelLease::commit() {
  if (!entry_) {
    Cache::instance().count(false, false);
    return;
  }
  const bool hit = !stale();
  if (!hit) {
    entry_->fingerprints = fingerprints_;
    entry_->packed = true;
  }
  Cache::instance().count(hit, true);
}

PanelCacheStats panel_cache_stats() { return Cache::instance().stats(); }

void panel_cache_clear() {
  Cache::instance().drop_if([](const PanelCacheEntry&) { return true; });
}

void panel_cache_release(const void* begin, size_t bytes) {
  if (begin == nullptr || bytes == 0) return;  // an empty storage: no panels
  const auto* first = static_cast<const uint8_t*>(begin);
  Cache::instance().drop_if([first, bytes](const PanelCacheEntry& e) {
    const auto* w = static_cast<const uint8_t*>(e.weight);
    return w >= first && w < first + bytes;
  });
}

int64_t panel_cache_set_capacity(int64_t bytes) { return Cache::instance().set_capacity(bytes); }

}  // namespace rnnfast::cpu
