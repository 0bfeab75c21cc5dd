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
//                      k_split threads (interleaved k: conflict-free shared reads)
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
// with torch.nn. Not covered (the cuBLAS path runs): LSTM with proj_size.
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
  int64_t ld_w = 0;    // row stride of the weight slice in shared memory (elements)
  int64_t w_bytes = 0, h_bytes = 0, part_bytes = 0;  // the three shared-memory regions
  size_t smem_bytes = 0;                             // their sum (16-byte aligned regions)
  bool ok() const { return blocks > 0; }
};

inline int64_t align16(int64_t bytes) { return (bytes + 15) / 16 * 16; }

// The first geometry (fewest units per block, so the most blocks) whose blocks
// all fit on the device at once. max_smem: shared memory one block may use;
// co_resident(smem_bytes): blocks of that size the device holds at once.
// Returns a geometry with blocks == 0 when none fits (the caller then takes
// the cuBLAS path).
template <typename S, class CoResident>
PersistentGeometry plan_persistent(int64_t G, int64_t H, int64_t B, size_t max_smem, CoResident co_resident) {
  using A = acc_of<S>;
  PersistentGeometry g;
  if (H <= 0 || B <= 0) return g;
  const int row_tile = int(std::min<int64_t>(B, kPersistentMaxRowTile));
  // Rows padded by 4 bytes: threads reading the same k of different rows hit different banks.
  const int64_t ld_w = H + std::max<int64_t>(1, int64_t(4 / sizeof(S)));
  for (int64_t units = 1; units <= H; ++units) {
    const int64_t blocks = (H + units - 1) / units;
    if (units > 1 && (H + units - 2) / (units - 1) == blocks) continue;  // same grid as fewer units
    const int64_t outputs = int64_t(row_tile) * G * units;
    int k_split = 1;
    while (k_split * 2 * outputs <= kPersistentThreads && k_split * 2 <= H) k_split *= 2;
    PersistentGeometry c;
    c.threads = kPersistentThreads;
    c.units = int(units);
    c.row_tile = row_tile;
    c.k_split = k_split;
    c.ld_w = ld_w;
    c.w_bytes = align16(G * units * ld_w * int64_t(sizeof(S)));
    c.h_bytes = align16(int64_t(row_tile) * H * int64_t(sizeof(A)));
    c.part_bytes = align16(outputs * k_split * int64_t(sizeof(A)));
    c.smem_bytes = size_t(c.w_bytes + c.h_bytes + c.part_bytes);
    if (c.smem_bytes > max_smem) return g;  // more units per block only need more
    if (blocks <= co_resident(c.smem_bytes)) {
      c.blocks = int(blocks);
      return c;
    }
  }
  return g;
}

// Arguments of one persistent launch (passed by value to the kernel).
template <typename S>
struct PersistentForwardArgs {
  using A = acc_of<S>;
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
  acc_of<S>* h;      // [row_tile, H] h_{t-1} rows of the tile
  acc_of<S>* part;   // [row_tile * G*units, k_split] partial dot products
};
template <typename S>
RNNFAST_HD PersistentSmem<S> persistent_smem(const PersistentGeometry& g, unsigned char* base) {
  using A = acc_of<S>;
  return PersistentSmem<S>{reinterpret_cast<S*>(base), reinterpret_cast<A*>(base + g.w_bytes),
                           reinterpret_cast<A*>(base + g.w_bytes + g.h_bytes)};
}

// Once per launch: the block's rows of w_hh (zeros past H in the last block).
template <typename S>
RNNFAST_HD void persistent_load_weights(const PersistentForwardArgs<S>& a, int block, int tid, int nt, S* w) {
  const int64_t H = a.H, U = a.geom.units, u0 = int64_t(block) * U, n = a.G * U * H;
  for (int64_t i = tid; i < n; i += nt) {
    const int64_t o = i / H, k = i % H, g = o / U, u = u0 + o % U;
    w[o * a.geom.ld_w + k] = u < H ? a.w_hh[(g * H + u) * H + k] : S(0);
  }
}

// Phase 1: h_{t-1} of rows r0 .. r0+row_tile of step st (zeros past its rows).
template <typename S>
RNNFAST_HD void persistent_load_rows(const PersistentForwardArgs<S>& a, const PersistentStep& st, int64_t r0,
                                     int tid, int nt, acc_of<S>* h) {
  using A = acc_of<S>;
  const int64_t H = a.H, n = int64_t(a.geom.row_tile) * H;
  for (int64_t i = tid; i < n; i += nt) {
    const int64_t r = r0 + i / H, k = i % H;
    A v = A(0);
    if (r < st.rows) {
      const S* src = r < st.n_first ? a.y + (int64_t(st.prev_off) + r) * H : a.h0 + r * H;
      v = A(src[k]);
    }
    h[i] = v;
  }
}

// Phase 2: part[j, s] = sum over k = s, s+k_split, ... of h[b, k] * w[o, k], for output
// j = b * G*units + o (row b of the tile, gate column o of the block).
template <typename S>
RNNFAST_HD void persistent_partial_dots(const PersistentForwardArgs<S>& a, int tid, int nt, const S* w,
                                        const acc_of<S>* h, acc_of<S>* part) {
  using A = acc_of<S>;
  const int64_t H = a.H, GU = a.G * a.geom.units, KS = a.geom.k_split;
  const int64_t n = int64_t(a.geom.row_tile) * GU * KS;
  for (int64_t i = tid; i < n; i += nt) {
    const int64_t j = i / KS, s = i % KS, b = j / GU, o = j % GU;
    const A* hb = h + b * H;
    const S* wo = w + o * a.geom.ld_w;
    A sum = A(0);
    for (int64_t k = s; k < H; k += KS) sum += hb[k] * A(wo[k]);
    part[i] = sum;
  }
}

// Phase 3: the partials summed in a fixed order, added to the step's gx (or written to gh).
template <typename S>
RNNFAST_HD void persistent_store_products(const PersistentForwardArgs<S>& a, const PersistentStep& st, int64_t r0,
                                          int block, int tid, int nt, const acc_of<S>* part) {
  using A = acc_of<S>;
  const int64_t H = a.H, U = a.geom.units, GU = a.G * U, KS = a.geom.k_split, GH = a.G * H;
  const int64_t u0 = int64_t(block) * U, n = int64_t(a.geom.row_tile) * GU;
  for (int64_t j = tid; j < n; j += nt) {
    const int64_t r = r0 + j / GU, o = j % GU, u = u0 + o % U;
    if (r >= st.rows || u >= H) continue;
    A sum = A(0);
    for (int64_t s = 0; s < KS; ++s) sum += part[j * KS + s];
    const int64_t col = (o / U) * H + u;
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
  s.h_prev = TwoSourceRows<S>{st.prev_off >= 0 ? a.y + int64_t(st.prev_off) * H : nullptr, a.h0, st.n_first, H};
  s.c = a.c;
  s.h = a.y + int64_t(st.off) * H;
  s.ld_h = H;
  s.gates = a.gates ? a.gates + int64_t(st.off) * GH : nullptr;
  s.saved = a.saved ? a.saved + int64_t(st.off) * H : nullptr;
  return s;
}

// Phase 4: the gate math of the block's units for the tile's rows.
template <typename S, bool Training>
RNNFAST_HD void persistent_pointwise(const PersistentForwardArgs<S>& a, const PersistentStep& st, int64_t r0,
                                     int block, int tid, int nt) {
  const StepForwardArgs<S> s = persistent_step_args(a, st);
  const int64_t U = a.geom.units, u0 = int64_t(block) * U, n = int64_t(a.geom.row_tile) * U;
  for (int64_t i = tid; i < n; i += nt) {
    const int64_t r = r0 + i / U, u = u0 + i % U;
    if (r < st.rows && u < a.H) step_forward_element<S, Training>(s, r, u);
  }
}

}  // namespace rnnfast::gpu
