// Packed weight panels kept across calls.
//
// The time loops multiply by their weights through panels packed per column
// slice (loop_common.h, SlicePanels): an inference call at T = 16 spends a few
// per cent of its time packing. A weight multiplied once in a call by 5+ rows
// whose A operand fits 512 KB (a one-step call's, w_ih of a short sequence's
// single chunk) does not come here: it is streamed, packed panel by panel as
// the GEMM goes, read once where the check below would read it twice
// (loop_common.h, weight_use). The others do (w_hh over the steps, w_ih over
// chunks, and one-step calls of a larger A).
// The cache keeps the packed bytes of a weight for a recipe (the instruction
// set's table, the storage type, K, the slices and their column maps: every
// input of the packing) and hands them to the next call with the same weight.
//
// When is a weight unchanged? torch's version counter does not say: writes
// through .data, numpy or DLPack, and the fused optimizers
// (torch.optim.Adam(fused=True) steps without bumping it) all leave it as it
// was. So every call that uses an entry reads the weight once and compares
// a 64-bit fingerprint of each 16 KB block with the one taken when the panels
// were packed; the call's own threads do it, in parallel, before the step
// loop (one pass over the weights: cheaper than packing, which reads them and
// writes the panels).
// Any difference packs again. The fingerprint is a multiply-rotate hash per
// 32-bit lane (kernels_impl.h): a changed weight that keeps every block's
// hash is a 2^-64 accident, not a pattern an optimizer or a user can make.
//
// Which weight? An entry is keyed by the weight's address, size and recipe,
// and holds a weak reference to the memory's owner (the weight's storage)
// through WeightOwner below: once the weight is freed, the entry is dropped
// at the next lookup. The reference comes from a factory that the tensor
// layer registers (cpu/ops_cpu.cpp, on torch's C++ API: a weak reference to
// the StorageImpl); this file has no torch header. Without a factory (the
// stable ABI has no weak reference to a storage) entries are only dropped by
// eviction and the releases below. Correctness never depends on it: every
// call checks the fingerprints, so a later weight at the same address is
// packed again unless its values are the same.
//
// Memory: at most RNNFAST_PANEL_CACHE_BYTES (default 512 MiB; 0 disables the
// cache), least recently used entries evicted first. Entries whose owner was
// freed are dropped at the next lookup; the modules release their entries
// when they are garbage-collected (rnnfast/modules.py), and
// rnnfast.empty_cache() releases all. A concurrent call that finds an entry
// in use packs its own panels (no waiting, no sharing of a buffer being
// written); so does a fork() child for an entry that a thread of its parent
// was using.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "../controls.h"
#include "buffer_pool.h"

namespace rnnfast::cpu {

// Bytes of weight per fingerprint block.
constexpr int64_t kFingerprintBlockBytes = 16 * 1024;

struct PanelCacheEntry;

// A weak reference to whatever owns a weight's memory.
class WeightOwner {
 public:
  virtual ~WeightOwner() = default;
  virtual bool expired() const = 0;
};
// Makes the WeightOwner of a weight from the caller's opaque handle of it
// (LayerView's *_owner fields), or nullptr.
using WeightOwnerFactory = std::unique_ptr<WeightOwner> (*)(const void* owner_handle);
void set_weight_owner_factory(WeightOwnerFactory factory);

// One call's use of a cache entry (or, uncached, of a private buffer): the
// panel bytes, and whether the weight changed since they were packed.
class PanelLease {
 public:
  PanelLease() = default;
  ~PanelLease();
  PanelLease(const PanelLease&) = delete;
  PanelLease& operator=(const PanelLease&) = delete;

  // The cache entry for (weight, recipe), or a private buffer of `bytes`; the
  // weight: `weight_bytes` contiguous bytes from `weight`, owned by what
  // `owner_handle` stands for (see WeightOwner; may be nullptr).
  static std::unique_ptr<PanelLease> acquire(const void* weight, int64_t weight_bytes, const void* owner_handle,
                                             std::vector<int64_t> recipe, int64_t bytes);

  void* data() const { return data_; }
  bool cached() const { return entry_ != nullptr; }
  int64_t blocks() const { return blocks_; }
  // Fingerprints blocks [b0, b1) of the weight with `hash` (the kernel table's),
  // recording whether any differs from the packed panels' (thread-safe: each
  // thread its own blocks).
  void check_blocks(int64_t b0, int64_t b1, uint64_t (*hash)(const void*, int64_t));
  // Whether the panels must be packed: uncached, never packed, or a block changed.
  // Valid after every block was checked (a barrier after check_blocks).
  bool stale() const;
  // After the call's panels are packed: the entry now holds this weight's panels.
  void commit();

 private:
  std::shared_ptr<PanelCacheEntry> entry_;
  PooledBytes own_;                   // [bytes] the panels of an uncached call
  void* data_ = nullptr;              // the panels: the entry's or own_
  const uint8_t* weight_ = nullptr;   // the weight's first byte
  int64_t weight_bytes_ = 0;
  int64_t blocks_ = 0;
  std::vector<uint64_t> fingerprints_;  // [blocks] of the weight as this call found it
  std::atomic<bool> changed_{false};
};

// panel_cache_stats, panel_cache_clear, panel_cache_release and the capacity
// hook: controls.h.

}  // namespace rnnfast::cpu
