// Pieces shared by the CPU forward and backward loops (forward_loop.cpp,
// backward_loop.cpp): how the hidden units are split across threads, the
// parallel region, packed weight panels per slice, and the small buffers of
// the step loops.
//
// No allocation and no exception inside a parallel region: every buffer is
// allocated before it, and the kernels only see raw pointers.
#pragma once

#include <torch/csrc/stable/ops.h>  // get_num_threads

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../layer_view.h"
#include "barrier.h"
#include "buffer_pool.h"
#include "kernels.h"
#include "panel_cache.h"
#include "thread_policy.h"

namespace rnnfast::cpu {

// Column slices of the hidden units (and of the projection outputs), one per
// thread, boundaries on multiples of the vector width where the size allows.
struct Slicing {
  int count = 1;
  std::vector<int64_t> unit;  // [count+1] boundaries over H
  std::vector<int64_t> proj;  // [count+1] boundaries over P

  static std::vector<int64_t> split(int64_t n, int parts, int64_t align) {
    std::vector<int64_t> cut(parts + 1);
    for (int s = 0; s <= parts; ++s) {
      int64_t c = n * s / parts;
      if (s != 0 && s != parts && n >= parts * align) c = (c + align / 2) / align * align;
      cut[s] = std::min(std::max(c, cut[s ? s - 1 : 0]), n);
    }
    return cut;
  }

  // `count` slices (the threads a ThreadLease granted; see thread_policy.h),
  // at most one per 16 units.
  Slicing(int64_t H, int64_t P, int count_wanted) {
    count = static_cast<int>(std::min<int64_t>(std::max(count_wanted, 1), H / 16 > 0 ? H / 16 : 1));
    unit = split(H, count, 16);
    proj = split(P, count, 16);
  }
  // Per-slice widths: G gate blocks of the slice's units, or its projection columns.
  std::vector<int64_t> unit_widths(int64_t G) const {
    std::vector<int64_t> w(count);
    for (int s = 0; s < count; ++s) w[s] = G * (unit[s + 1] - unit[s]);
    return w;
  }
  std::vector<int64_t> proj_widths() const {
    std::vector<int64_t> w(count);
    for (int s = 0; s < count; ++s) w[s] = proj[s + 1] - proj[s];
    return w;
  }
  int64_t u0(int s) const { return unit[s]; }
  int64_t u1(int s) const { return unit[s + 1]; }
  int64_t p0(int s) const { return proj[s]; }
  int64_t p1(int s) const { return proj[s + 1]; }
};

// Rows per chunk of the time-parallel GEMMs: large enough for an efficient
// GEMM, small enough that a chunk's scratch stays in the caches. Forward:
// 512 rows measured ~3 % faster than 2048 for an LSTM inference at T=64,
// B=32, H=256 (its pre-activations then stay in L2 until their step), same
// time at B=64, H=512 and in training. The backward chunk holds dG
// ([rows, G*H]), read again by three GEMMs.
constexpr int64_t kForwardChunkRows = 512;
constexpr int64_t kBackwardChunkRows = 512;

// Runs body(thread, threads, barrier) on `slices` threads (a serial call when
// there is one slice). The OpenMP team may be smaller than asked (nested
// parallelism): each thread then handles slices thread, thread+threads, ...
// `watch`: how the thread policy learns whether the threads waited for a CPU
// (thread_policy.h: the scheduler's account read by each thread, or the
// call's duration).
template <typename Body>
void run_parallel(int slices, RegionWatch watch, const Body& body) {
#ifdef _OPENMP
  if (slices > 1 && !omp_in_parallel()) {
    const int team = std::min(slices, static_cast<int>(torch::stable::get_num_threads()));
    const bool account = watch == RegionWatch::kSchedulerAccount;
    SpinBarrier* barrier_ptr = nullptr;
    alignas(64) unsigned char storage[sizeof(SpinBarrier)];
    const auto start = std::chrono::steady_clock::now();
    int64_t preemptions = 0, waited_ns = 0, unknown = 0;
#pragma omp parallel num_threads(team) reduction(+ : preemptions, waited_ns, unknown)
    {
      const ThreadSchedule before = account ? thread_schedule() : ThreadSchedule{};
      const int threads = omp_get_num_threads();
#pragma omp single
      barrier_ptr = new (storage) SpinBarrier(threads);
      // (implicit barrier after single)
      body(omp_get_thread_num(), threads, *barrier_ptr);
      if (account) {
        const ThreadSchedule after = thread_schedule();
        // (preemptions are counted only where schedstat was missing both times)
        if (before.waited_ns < 0 && after.waited_ns < 0) preemptions += after.preemptions - before.preemptions;
        waited_ns += after.waited_ns - before.waited_ns;
        unknown += before.waited_ns < 0 || after.waited_ns < 0;
      }
    }
    const int64_t duration_ns =
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count();
    if (account) {
      last_call_plan().waited_ns = unknown ? -1 : waited_ns;
      report_parallel_region(preemptions, unknown ? -1 : waited_ns, team, duration_ns);
    } else {
      last_call_plan().waited_ns = -1;
      report_timed_region(duration_ns);
    }
    barrier_ptr->~SpinBarrier();  // placement-new'd: frees its flags
    return;
  }
#endif
  SpinBarrier solo(1);
  body(0, 1, solo);
}

// Where slice s of a weight's panels comes from: column n of the slice at
// weight + offset + columns.offset(n), rows k at k_stride (elements).
struct SliceSource {
  int64_t offset = 0;
  int64_t k_stride = 1;
  ColumnMap columns;
};

// Steps of at most this many rows alternate the order of their panels (SlicePanels::gemm).
constexpr int64_t kMaxAlternatingRows = 4;

// How a call multiplies by one of its weights: the weight read where it is
// (a call of at most kMaxUnpackedRows rows in all), streamed (multiplied once:
// packed panel by panel as the GEMM goes), or through the panel cache.
enum class WeightUse { kDirect, kStreamed, kCached };

// Streaming packs every call: it replaces the cache's fingerprint pass (one
// read of the weight) with a pack (a read and a write of one panel's scratch),
// and the GEMM then reads that panel while it is hot instead of the cached
// panels from L2 or beyond. That pays when the product has rows enough to hide
// the packing, and its A operand (passed over by every panel) stays in L2.
// Measured on a 2-core Xeon (docs/results/xeon-avx512/streamed_weights_ab.txt):
// one-step calls of 16-64 rows mostly 8-31 % less time than through the cache,
// and of 5-7 rows 13-26 % less at H=512 (the smallest that are not read in
// place: every call that packs a weight it multiplies once streams it).
constexpr int64_t kMinStreamedRows = kMaxUnpackedRows + 1;
constexpr int64_t kMaxStreamedABytes = 512 * 1024;

// total_rows: the call's rows (plan N); gemms: products by this weight per
// slice in the call; rows, K: the largest product's rows and depth.
// RNNFAST_STREAMED_MIN_ROWS overrides kMinStreamedRows (tuning; a huge value
// sends every weight through the cache).
inline WeightUse weight_use(int64_t total_rows, int64_t gemms, int64_t rows, int64_t K, int64_t element_size) {
  static const int64_t min_rows = bytes_from_env("RNNFAST_STREAMED_MIN_ROWS", kMinStreamedRows);
  if (total_rows <= kMaxUnpackedRows) return WeightUse::kDirect;
  if (gemms == 1 && rows >= min_rows && rows * K * element_size <= kMaxStreamedABytes)
    return WeightUse::kStreamed;
  return WeightUse::kCached;
}

// A matrix packed for gemm_packed separately for each column slice (slice s:
// up to K_max rows, widths[s] columns): the weights of the time loop, or a
// chunk of rows for the weight gradients. Allocated before the parallel
// region; each thread packs its own slices inside it, so the panels are first
// touched by the core that streams them. Panels are opaque bytes in the
// layout of the build that packs them (kernels.h).
//
// Weights are packed through the panel cache (panel_cache.h): in the
// parallel region every thread first fingerprints its share of the weight
// (check), then, after a barrier, packs its slices only if the cache holds
// no panels of this weight as it is now (pack); the call commits afterwards.
template <typename S>
class SlicePanels {
 public:
  using A = acc_t<S>;
  SlicePanels() = default;
  // Scratch panels of `widths` columns and up to K_max rows, filled by pack_rows.
  SlicePanels(const KernelTable<S>& k, int64_t K_max, std::vector<int64_t> widths)
      : K_(widths.size(), K_max), widths_(std::move(widths)), offsets_(layout(k, K_max, widths_)) {
    buffer_ = PooledBytes(size_t(offsets_.back()));
    data_ = buffer_.as<uint8_t>();
  }
  // The panels of `weight` (`elements` contiguous S, held by `owner`: a
  // LayerView *_owner handle), slice s packed from sources[s] with K rows:
  // through the panel cache.
  static SlicePanels packed(const KernelTable<S>& k, const S* weight, int64_t elements, const void* owner,
                            int64_t K, std::vector<int64_t> widths, std::vector<SliceSource> sources) {
    SlicePanels p;
    p.K_.assign(widths.size(), K);
    p.widths_ = std::move(widths);
    p.offsets_ = layout(k, K, p.widths_);
    std::vector<int64_t> recipe{int64_t(reinterpret_cast<uintptr_t>(&k)), K, int64_t(p.widths_.size())};
    for (size_t s = 0; s < p.widths_.size(); ++s) {
      const SliceSource& src = sources[s];
      recipe.insert(recipe.end(), {p.widths_[s], src.offset, src.k_stride, src.columns.base, src.columns.block,
                                   src.columns.block_stride, src.columns.col_stride, src.columns.first});
    }
    p.lease_ = PanelLease::acquire(weight, elements * int64_t(sizeof(S)), owner, std::move(recipe),
                                   p.offsets_.back());
    p.data_ = static_cast<uint8_t*>(p.lease_->data());
    p.weight_ = weight;
    p.sources_ = std::move(sources);
    return p;
  }
  // Unpacked: gemm() reads the weight where it is, for calls too small to
  // repay packing: transposed weights (k_stride 1: gemm_direct, a dot product
  // per output) or row-major ones (contiguous columns of rows k_stride apart:
  // gemm_rows).
  static SlicePanels direct(const S* weight, int64_t K, std::vector<int64_t> widths,
                            std::vector<SliceSource> sources) {
    SlicePanels p;
    p.K_.assign(widths.size(), K);
    p.widths_ = std::move(widths);
    p.weight_ = weight;
    p.sources_ = std::move(sources);
    p.direct_ = true;
    for (size_t s = 0; s < p.sources_.size(); ++s) {  // row-major sources are read as one run of columns per row
      const SliceSource& src = p.sources_[s];
      if (src.k_stride != 1 && (src.columns.col_stride != 1 || src.columns.block < p.widths_[s]))
        throw std::logic_error("rnnfast: internal error: an unpacked weight slice must be contiguous columns");
      if (src.columns.first != 0)  // gemm() walks the gate blocks from column 0
        throw std::logic_error("rnnfast: internal error: an unpacked weight slice must start its column map");
    }
    return p;
  }
  // Streamed: gemm() packs the weight panel by panel as it multiplies
  // (KernelTable::gemm_streamed), for a weight multiplied once per call. Each
  // slice gets gemm_streamed's scratch for products of up to `rows` rows (one
  // panel, or what the weight-as-A path needs), allocated here, before the
  // parallel region; a slice is multiplied by one thread at a time.
  static SlicePanels streamed(const KernelTable<S>& k, const S* weight, int64_t K, int64_t rows,
                              std::vector<int64_t> widths, std::vector<SliceSource> sources) {
    SlicePanels p;
    p.K_.assign(widths.size(), K);
    p.widths_ = std::move(widths);
    p.rows_ = std::max<int64_t>(rows, 1);
    const int64_t k_stride = sources.empty() ? 1 : sources[0].k_stride;
    const int64_t bytes = (k.streamed_scratch_bytes(p.rows_, K, k_stride) + 63) / 64 * 64;
    p.offsets_.resize(p.widths_.size() + 1);
    for (size_t s = 0; s < p.offsets_.size(); ++s) p.offsets_[s] = int64_t(s) * bytes;
    p.buffer_ = PooledBytes(size_t(p.offsets_.back()));
    p.data_ = p.buffer_.as<uint8_t>();
    p.weight_ = weight;
    p.sources_ = std::move(sources);
    p.streamed_ = true;
    return p;
  }
  // The panels of a weight used as `use` says (weight_use): direct, streamed
  // or packed through the cache (rows: of the largest product by it).
  static SlicePanels of(const KernelTable<S>& k, WeightUse use, const S* weight, int64_t elements, const void* owner,
                        int64_t K, int64_t rows, std::vector<int64_t> widths, std::vector<SliceSource> sources) {
    switch (use) {
      case WeightUse::kDirect: return direct(weight, K, std::move(widths), std::move(sources));
      case WeightUse::kStreamed: return streamed(k, weight, K, rows, std::move(widths), std::move(sources));
      case WeightUse::kCached: break;
    }
    return packed(k, weight, elements, owner, K, std::move(widths), std::move(sources));
  }
  // Whether the panel cache holds these panels (their weight is fingerprinted).
  bool cached() const { return lease_ && lease_->cached(); }
  bool is_streamed() const { return streamed_; }
  // Whether gemm_streamed reads this weight as the A operand in the call's
  // largest product (KernelTable::streams_weight_as_a).
  bool reads_weight_as_a(const KernelTable<S>& k) const {
    return streamed_ && !sources_.empty() && k.streams_weight_as_a(rows_, sources_[0].k_stride);
  }
  // This thread's share of the weight's fingerprint (a barrier must follow
  // before pack() reads the verdict).
  void check(const KernelTable<S>& k, int thread, int threads) {
    if (!cached()) return;
    const int64_t n = lease_->blocks();
    lease_->check_blocks(n * thread / threads, n * (thread + 1) / threads, k.fingerprint);
  }
  // Packs slice s, unless the cache holds it for the weight as it is.
  void pack(const KernelTable<S>& k, int s) {
    if (direct_ || streamed_ || sources_.empty() || (lease_ && !lease_->stale())) return;
    const SliceSource& src = sources_[s];
    k.pack_b(K_[s], widths_[s], weight_ + src.offset, src.k_stride, src.columns, data(s));
  }
  // After the parallel region: the cache entry holds what was packed.
  void commit() {
    if (lease_) lease_->commit();
  }
  // Packs slice s from K rows given by pointers (their columns col0 ...).
  void pack_rows(const KernelTable<S>& k, int s, int64_t K, const S* const* rows, int64_t col0) {
    K_[s] = K;
    k.pack_b_rows(K, widths_[s], rows, col0, data(s));
  }
  // C[M, widths[s]] = A[M, K] @ (slice s) + beta * C. `step`: the time
  // loop's step index for its per-step GEMMs (else -1). A call of at most
  // kMaxAlternatingRows rows is a GEMV-like pass bound by reading the panels
  // from L2: odd steps read them last to first, so each step starts on the
  // panels its predecessor left in L1. Same result either way (ARCHITECTURE,
  // "The GEMM").
  void gemm(const KernelTable<S>& k, int s, int64_t M, const S* A_, int64_t lda, A beta, A* C, int64_t ldc,
            int64_t step = -1) const {
    if (M <= 0 || widths_[s] <= 0) return;  // (e.g. dx of a cell with input_size 0)
    if (streamed_) {
      const SliceSource& d = sources_[s];
      // Blocks of at most the rows the scratch was sized for (one block in
      // every call the loops make).
      for (int64_t m0 = 0; m0 < M; m0 += rows_)
        k.gemm_streamed(std::min(rows_, M - m0), widths_[s], K_[s], A_ + m0 * lda, lda, weight_ + d.offset,
                        d.k_stride, d.columns, beta, C + m0 * ldc, ldc, data(s));
      return;
    }
    if (!direct_) {
      const bool descending = step >= 0 && (step & 1) && M <= kMaxAlternatingRows;
      k.gemm_packed(M, widths_[s], K_[s], A_, lda, data(s), beta, C, ldc, descending);
      return;
    }
    const SliceSource& d = sources_[s];
    const S* src = weight_ + d.offset;
    if (d.k_stride != 1) {
      k.gemm_rows(M, widths_[s], K_[s], A_, lda, src + d.columns.offset(0), d.k_stride, beta, C, ldc);
      return;
    }
    // Columns come in blocks of contiguous weight rows (gate blocks).
    for (int64_t n0 = 0; n0 < widths_[s]; n0 += d.columns.block) {
      const int64_t n = std::min(d.columns.block, widths_[s] - n0);
      k.gemm_direct(M, n, K_[s], A_, lda, src + d.columns.offset(n0), d.columns.col_stride, beta, C + n0, ldc);
    }
  }

 private:
  // Byte offsets of the slices' panels (each 64-byte aligned), and the total.
  static std::vector<int64_t> layout(const KernelTable<S>& k, int64_t K, const std::vector<int64_t>& widths) {
    std::vector<int64_t> offsets(widths.size() + 1, 0);
    for (size_t s = 0; s < widths.size(); ++s)
      offsets[s + 1] = offsets[s] + (k.packed_b_bytes(K, widths[s]) + 63) / 64 * 64;
    return offsets;
  }
  void* data(int s) const { return data_ + offsets_[s]; }

  std::vector<int64_t> K_;
  std::vector<int64_t> widths_;
  std::vector<int64_t> offsets_;  // bytes
  uint8_t* data_ = nullptr;       // the panels: buffer_ or the lease's
  PooledBytes buffer_;            // scratch panels
  std::shared_ptr<PanelLease> lease_;  // a weight's panels
  const S* weight_ = nullptr;
  std::vector<SliceSource> sources_;
  bool direct_ = false;
  bool streamed_ = false;
  int64_t rows_ = 0;  // streamed: the rows gemm_streamed's scratch is sized for
};

// Runs the fingerprint checks of a call's cached panels, then (after one
// barrier, only where some panels are cached) packs this thread's slices of
// each: the start of a time loop's parallel region. A barrier must follow
// before any slice's panels are read.
template <typename S, typename... Panels>
void check_and_pack(const KernelTable<S>& k, const Slicing& slicing, int thread, int threads,
                    SpinBarrier& barrier, Panels&... panels) {
  (panels.check(k, thread, threads), ...);
  if ((panels.cached() || ...)) barrier.wait(thread);
  for (int s = thread; s < slicing.count; s += threads) (panels.pack(k, s), ...);
}

// Small buffers of the step loops (running cell state, recurrent gradients,
// folded biases) are read and written next to the large pooled buffers, whose
// rows all start at the same offsets modulo 4 KB. Where malloc puts a small
// buffer modulo 4 KB is a lottery, and at some offsets its loads alias recent
// stores to a large buffer (4K aliasing: a load waits for an unrelated store):
// measured as 30 % slower LSTM training at B=8 in about a quarter of processes.
// Small buffers therefore start at a fixed offset off the 4 KB grid.
constexpr uintptr_t kSmallBufferOffset = 2048 + 256;

// The small buffers of one call, carved from one allocation (a one-step call
// must not pay an allocation per buffer): buffer k holds bytes[k] bytes (none
// for 0) and starts at the fixed offset off the 4 KB grid.
class SmallBuffers {
 public:
  SmallBuffers() = default;
  explicit SmallBuffers(const std::vector<int64_t>& bytes) {
    constexpr uintptr_t kPage = 4096;
    auto span = [](int64_t n) { return (kSmallBufferOffset + uintptr_t(n) + kPage - 1) / kPage * kPage; };
    uintptr_t total = kPage;  // slack to align the first buffer's page
    for (int64_t n : bytes) total += n > 0 ? span(n) : 0;
    block_ = PooledBytes(total);
    uintptr_t page = (reinterpret_cast<uintptr_t>(block_.data()) + kPage - 1) / kPage * kPage;
    for (int64_t n : bytes) {
      ptrs_.push_back(n > 0 ? reinterpret_cast<void*>(page + kSmallBufferOffset) : nullptr);
      page += n > 0 ? span(n) : 0;
    }
  }
  template <typename T>
  T* get(size_t k) const {
    return static_cast<T*>(ptrs_[k]);
  }

 private:
  PooledBytes block_;
  std::vector<void*> ptrs_;
};

// Bias vectors folded for the fused kernels (zeros without bias), in the
// accumulation type, written into a buffer of G*H + H elements by plain loops:
// tensor ops would cost microseconds of dispatch in a one-step call. The rule
// is loop_shared.h's folded_bias_columns:
//   bias    = b_ih + b_hh [G*H], b_ih alone beyond the folded columns;
//   bias_hn = b_hh of the last block [H] of a separate_hidden cell, else 0.
template <typename S>
class FoldedBias {
 public:
  using A = acc_t<S>;
  FoldedBias() = default;
  // b_ih, b_hh: [G*H] each, or both nullptr.
  FoldedBias(const CellInfo& cell, const S* b_ih, const S* b_hh, int64_t H, A* storage) {
    const int64_t GH = cell.gates * H;
    bias_ = storage;
    bias_hn_ = storage + GH;
    if (!b_ih) {
      std::fill_n(storage, GH + H, A(0));
      return;
    }
    const int64_t hidden_part = folded_bias_columns(cell, H);
    for (int64_t j = 0; j < GH; ++j)
      bias_[j] = j < hidden_part ? A(b_ih[j]) + A(b_hh[j]) : A(b_ih[j]);
    for (int64_t j = 0; j < H; ++j) bias_hn_[j] = cell.separate_hidden ? A(b_hh[hidden_part + j]) : A(0);
  }
  static int64_t size(const CellInfo& cell, int64_t H) { return (cell.gates + 1) * H; }
  const A* bias() const { return bias_; }
  const A* bias_hn() const { return bias_hn_; }

 private:
  A* bias_ = nullptr;     // [G*H]
  A* bias_hn_ = nullptr;  // [H]
};

}  // namespace rnnfast::cpu
