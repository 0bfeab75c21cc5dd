// The persistent forward of one layer-direction (issue "persistent GPU
// kernels"): one launch covers a run of up to kPersistentMaxSteps time steps.
// Block k keeps the rows of w_hh of its hidden units [k*U, (k+1)*U) (all G
// gates of each) in shared memory for the whole launch, so the recurrent
// weights are read from device memory once per launch instead of once per
// step; the blocks exchange h_t through global memory (L2) and meet at one
// grid-wide barrier per step (a cooperative launch).
//
// Per step, per tile of `row_tile` rows of the batch:
//   1. load_rows:      h_{t-1} rows of the tile -> shared memory (acc type)
//   2. partial_dots:   each (row, gate column) dot product over H, split over
//                      k_split threads (interleaved k; row strides padded against
//                      bank conflicts, persistent_ld)
//   3. store_products: fixed-order sum of the k_split partials (deterministic),
//                      added into the step's gx rows (gh for a separate_hidden cell)
//   4. pointwise:      the gate math of the block's units, step_forward_element
//                      (gpu/pointwise.h), exactly what the cuBLAS path runs
// with a block barrier between phases and a grid barrier after the step.
// Step t's recurrent products of block k read only h_{t-1} (all of it) and
// write only block k's columns, so the blocks of one step are independent.
//
// Everything here is RNNFAST_HD phase functions of (block, thread, threads):
// cuda/persistent_kernels.cuh runs them as a kernel; gpu/emulated_exec.h runs
// them block by block and thread by thread on the CPU, which the tests compare
// with torch.nn. Not covered (the cuBLAS path runs): LSTM with proj_size. The
// backward counterpart: gpu/persistent_backward.h.
// The dot products are fp32 (or fp64) FMAs, not tensor cores: fp32 results are
// full fp32 even where torch allows TF32.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "pointwise.h"

namespace rnnfast::gpu {

// Steps per launch: the step table travels in the kernel's parameters (by value, so a CUDA
// graph that captured the launch replays it without host memory; 8 KB of the 32 KB allowed).
constexpr int kPersistentMaxSteps = 512;
constexpr int kPersistentThreads = 256;
constexpr int kPersistentMaxRowTile = 16;

// One step of a launch: rows off .. off+rows of the packed layout; rows
// [0, n_first) continue from the previous step's rows at prev_off, the rest
// start from h0 (prev_off is -1 on a layer-direction's first step).
struct PersistentStep {
  int32_t off = 0, rows = 0, n_first = 0, prev_off = -1;
};

// The split of the work over blocks and threads, and the shared memory it needs.
struct PersistentGeometry {
  int blocks = 0;      // grid size; block k owns hidden units [k*units, (k+1)*units) ∩ [0, H)
  int threads = kPersistentThreads;
  int units = 0;       // hidden units per block
  int row_tile = 0;    // rows of h_{t-1} staged in shared memory at a time
  int k_split = 1;     // threads per dot product
  int64_t ld_w = 0;    // row stride of the weight slice and of the staged h rows (elements)
  int64_t w_bytes = 0, h_bytes = 0, part_bytes = 0;  // the three shared-memory regions
  size_t smem_bytes = 0;                             // their sum (16-byte aligned regions)
  bool ok() const { return blocks > 0; }
};

inline int64_t align16(int64_t bytes) { return (bytes + 15) / 16 * 16; }

// Shared-memory row strides, in elements: H rounded up to 32, plus k_split. Lane (o, s) of a
// warp reads element o*ld + s + k_split*i of the weight slice (and row b of h at b*ld + ...), so
// with ld = k_split (mod 32) the lanes of one access fall in distinct banks (4-byte types).
inline int64_t persistent_ld(int64_t H, int k_split) { return (H + 31) / 32 * 32 + k_split; }

// Which persistent kernel a geometry is for: the forward keeps G rows of w_hh (length H) per
// unit, the backward G*H-long columns of w_hh (one per unit).
enum class PersistentKind : int { kForward = 0, kBackward = 1 };

// The first geometry (fewest units per block, so the most blocks) whose blocks
// all fit on the device at once. max_smem: shared memory one block may use;
// co_resident(smem_bytes): blocks of that size the device holds at once.
// Returns a geometry with blocks == 0 when none fits (the caller then takes
// the cuBLAS path). Row tiles shrink (16, 8, ..., 1) before units grow when the
// staged rows do not fit. Tuning left for a GPU: fewer, fuller blocks read the
// staged rows fewer times per step and sync faster.
template <typename S, class CoResident>
PersistentGeometry plan_persistent(PersistentKind kind, int64_t G, int64_t H, int64_t B, size_t max_smem,
                                   CoResident co_resident) {
  using A = acc_t<S>;
  PersistentGeometry g;
  const int64_t rows_per_unit = kind == PersistentKind::kForward ? G : 1;
  const int64_t len = kind == PersistentKind::kForward ? H : G * H;  // dot-product length
  // (32-bit index math in the kernel: every shared-memory index and row*H stays far below 2^31)
  if (H <= 0 || B <= 0 || len > (int64_t(1) << 20)) return g;
  for (int64_t units = 1; units <= H; ++units) {
    const int64_t blocks = (H + units - 1) / units;
    if (units > 1 && (H + units - 2) / (units - 1) == blocks) continue;  // same grid as fewer units
    for (int row_tile = int(std::min<int64_t>(B, kPersistentMaxRowTile)); row_tile >= 1; row_tile /= 2) {
      const int64_t outputs = int64_t(row_tile) * rows_per_unit * units;
      int k_split = 1;
      while (k_split * 2 * outputs <= kPersistentThreads && k_split * 2 <= len) k_split *= 2;
      PersistentGeometry c;
      c.threads = kPersistentThreads;
      c.units = int(units);
      c.row_tile = row_tile;
      c.k_split = k_split;
      c.ld_w = persistent_ld(len, k_split);
      c.w_bytes = align16(rows_per_unit * units * c.ld_w * int64_t(sizeof(S)));
      c.h_bytes = align16(int64_t(row_tile) * c.ld_w * int64_t(sizeof(A)));
      c.part_bytes = align16(outputs * k_split * int64_t(sizeof(A)));
      c.smem_bytes = size_t(c.w_bytes + c.h_bytes + c.part_bytes);
      if (c.smem_bytes > max_smem) continue;  // fewer staged rows
      if (blocks <= co_resident(c.smem_bytes)) {
        c.blocks = int(blocks);
        return c;
      }
      break;  // fits but not co-resident: more units per block
    }
    if (int64_t(sizeof(S)) * rows_per_unit * units * len > int64_t(max_smem)) return g;  // the slice alone
  }
  return g;
}

// Arguments of one persistent launch (passed by value to the kernel).
template <typename S>
struct PersistentForwardArgs {
  using A = acc_t<S>;
  CellType cell = CellType::kLSTM;
  bool separate_hidden = false;  // the cell's table entry (csrc/cells.h)
  int64_t G = 0, H = 0;
  const S* w_hh = nullptr;     // [G*H, H]
  const A* bias = nullptr;     // [G*H] folded biases (StepForwardArgs::bias)
  const A* bias_hn = nullptr;  // [H] (StepForwardArgs::bias_hn)
  const S* h0 = nullptr;       // [B, H]
  A* c = nullptr;              // cell_state: [B, H] running cell state
  S* y = nullptr;              // [N, H] out: h_t of every step (the layer's output)
  A* gx = nullptr;             // [chunk rows, G*H] x @ w_ih^T of the chunk, first row chunk_lo
  int64_t chunk_lo = 0;
  A* gh = nullptr;             // separate_hidden: [B, G*H] scratch for h_{t-1} @ w_hh^T
  S* gates = nullptr;          // training: [N, G*H] out: activated gates
  S* saved = nullptr;          // training: [N, H] out: LSTM c_t, GRU W_hn h + b_hn
  PersistentGeometry geom;
  int n_steps = 0;
  PersistentStep steps[kPersistentMaxSteps];
};

// The block's three shared-memory regions.
template <typename S>
struct PersistentSmem {
  S* w;              // [G*units, ld_w] rows g*H + u of w_hh for the block's units u
  acc_t<S>* h;      // [row_tile, ld_w] h_{t-1} rows of the tile
  acc_t<S>* part;   // [row_tile * G*units, k_split] partial dot products
};
template <typename S>
RNNFAST_HD PersistentSmem<S> persistent_smem(const PersistentGeometry& g, unsigned char* base) {
  using A = acc_t<S>;
  return PersistentSmem<S>{reinterpret_cast<S*>(base), reinterpret_cast<A*>(base + g.w_bytes),
                           reinterpret_cast<A*>(base + g.w_bytes + g.h_bytes)};
}

// The phases index shared memory and the block's work with 32-bit ints (64-bit division is a
// long software routine on the GPU); global offsets stay 64-bit. ld = geom.ld_w for the weight
// slice and for the staged rows of h.

// Once per launch: the block's rows of w_hh (zeros past H in the last block).
template <typename S>
RNNFAST_HD void persistent_load_weights(const PersistentForwardArgs<S>& a, int block, int tid, int nt, S* w) {
  const int H = int(a.H), U = a.geom.units, u0 = block * U, n = int(a.G) * U * H, ld = int(a.geom.ld_w);
  for (int i = tid; i < n; i += nt) {
    const int o = i / H, k = i - o * H, g = o / U, u = u0 + (o - g * U);
    w[o * ld + k] = u < H ? a.w_hh[(int64_t(g) * H + u) * H + k] : S(0);
  }
}

// Phase 1: h_{t-1} of rows r0 .. r0+row_tile of step st (zeros past its rows).
template <typename S>
RNNFAST_HD void persistent_load_rows(const PersistentForwardArgs<S>& a, const PersistentStep& st, int r0,
                                     int tid, int nt, acc_t<S>* h) {
  using A = acc_t<S>;
  const int H = int(a.H), n = a.geom.row_tile * H, ld = int(a.geom.ld_w);
  for (int i = tid; i < n; i += nt) {
    const int b = i / H, k = i - b * H, r = r0 + b;
    A v = A(0);
    if (r < st.rows) {
      const S* src = r < st.n_first ? a.y + (int64_t(st.prev_off) + r) * H : a.h0 + int64_t(r) * H;
      v = A(src[k]);
    }
    h[b * ld + k] = v;
  }
}

// Phase 2: part[j, s] = sum over k = s, s+k_split, ... of h[b, k] * w[o, k], for output
// j = b * G*units + o (row b of the tile, gate column o of the block).
template <typename S>
RNNFAST_HD void persistent_partial_dots(const PersistentForwardArgs<S>& a, int tid, int nt, const S* w,
                                        const acc_t<S>* h, acc_t<S>* part) {
  using A = acc_t<S>;
  const int H = int(a.H), GU = int(a.G) * a.geom.units, KS = a.geom.k_split, ld = int(a.geom.ld_w);
  const int n = a.geom.row_tile * GU * KS;
  for (int i = tid; i < n; i += nt) {
    const int j = i / KS, s = i - j * KS, b = j / GU, o = j - b * GU;
    const A* hb = h + b * ld;
    const S* wo = w + o * ld;
    A sum = A(0);
    for (int k = s; k < H; k += KS) sum += hb[k] * A(wo[k]);
    part[i] = sum;
  }
}

// Phase 3: the partials summed in a fixed order, added to the step's gx (or written to gh).
template <typename S>
RNNFAST_HD void persistent_store_products(const PersistentForwardArgs<S>& a, const PersistentStep& st, int r0,
                                          int block, int tid, int nt, const acc_t<S>* part) {
  using A = acc_t<S>;
  const int H = int(a.H), U = a.geom.units, GU = int(a.G) * U, KS = a.geom.k_split, u0 = block * U;
  const int64_t GH = a.G * a.H;
  const int n = a.geom.row_tile * GU;
  for (int j = tid; j < n; j += nt) {
    const int b = j / GU, o = j - b * GU, g = o / U, u = u0 + (o - g * U), r = r0 + b;
    if (r >= st.rows || u >= H) continue;
    A sum = A(0);
    for (int s = 0; s < KS; ++s) sum += part[j * KS + s];
    const int64_t col = int64_t(g) * H + u;
    if (a.separate_hidden) {
      a.gh[r * GH + col] = sum;
    } else {
      a.gx[(int64_t(st.off) - a.chunk_lo + r) * GH + col] += sum;
    }
  }
}

// The step's arguments of the per-element gate math (gpu/pointwise.h).
template <typename S>
RNNFAST_HD StepForwardArgs<S> persistent_step_args(const PersistentForwardArgs<S>& a, const PersistentStep& st) {
  const int64_t H = a.H, GH = a.G * H;
  StepForwardArgs<S> s;
  s.cell = a.cell;
  s.rows = st.rows;
  s.H = H;
  s.gx = a.gx + (int64_t(st.off) - a.chunk_lo) * GH;
  s.ld_gx = GH;
  s.gh = a.gh;
  s.ld_gh = GH;
  s.bias = a.bias;
  s.bias_hn = a.bias_hn;
  s.h_prev = PrevRows<S>{st.prev_off >= 0 ? a.y + int64_t(st.prev_off) * H : nullptr, H, st.n_first, a.h0, H};
  s.c = a.c;
  s.h = a.y + int64_t(st.off) * H;
  s.ld_h = H;
  s.gates = a.gates ? a.gates + int64_t(st.off) * GH : nullptr;
  s.saved = a.saved ? a.saved + int64_t(st.off) * H : nullptr;
  return s;
}

// Phase 4: the gate math of the block's units for the tile's rows.
template <typename S, bool Training>
RNNFAST_HD void persistent_pointwise(const PersistentForwardArgs<S>& a, const PersistentStep& st, int r0,
                                     int block, int tid, int nt) {
  const StepForwardArgs<S> s = persistent_step_args(a, st);
  const int U = a.geom.units, u0 = block * U, n = a.geom.row_tile * U, H = int(a.H);
  for (int i = tid; i < n; i += nt) {
    const int b = i / U, r = r0 + b, u = u0 + (i - b * U);
    if (r < st.rows && u < H) step_forward_element<S, Training>(s, r, u);
  }
}

}  // namespace rnnfast::gpu
