// The persistent backward of one layer-direction: one cooperative launch per
// run of up to kPersistentMaxSteps steps of a chunk, in reverse processing
// order. Block k owns hidden units [k*U, (k+1)*U) and keeps the columns
// w_hh[:, u] of its units (G*H long each, transposed) in shared memory for the
// whole launch. Per step:
//   A. gates:  step_backward_element (gpu/pointwise.h) for every row and the
//              block's units: dG_t of its gate columns, dc, (GRU) the direct
//              part of dh; exactly what the cuBLAS loop runs per element
//   -- grid barrier: dG_t complete --
//   B. per tile of rows: stage dG_t rows in shared memory, then for the
//      block's units dh_{t-1}[b, u] = dG_t[b, :] . w_hh[:, u] (split over
//      k_split threads, fixed-order sums), added to the direct part for GRU.
// Phase A of the next step reads dh only at the block's own units, which the
// block itself wrote in phase B, so one grid barrier per step suffices. The
// weight gradients, dx and the bias sums stay time-parallel GEMMs per chunk
// after the launch (gpu/layer_loop.h), on the dG rows the launch wrote.
// Not covered (the cuBLAS loop runs): LSTM with proj_size.
#pragma once

#include "persistent.h"

namespace rnnfast::gpu {

template <typename S>
struct PersistentBackwardArgs {
  using A = acc_t<S>;
  CellType cell = CellType::kLSTM;
  bool separate_hidden = false;
  int64_t G = 0, H = 0;
  const S* w_hh = nullptr;          // [G*H, H]
  const S* gates = nullptr;         // [N, G*H] saved activated gates
  const S* saved = nullptr;         // [N, H] saved LSTM c_t, GRU W_hn h + b_hn
  const S* y = nullptr;             // [N, H] the layer's output (RNN: the activation)
  const S* prev = nullptr;          // [N, H] LSTM: saved c; GRU, RNN: y (rows of the previous step)
  const S* prev_initial = nullptr;  // [B, H] LSTM: c0; GRU, RNN: h0
  const S* dy = nullptr;            // [N, ld_dy] gradient w.r.t. the output
  int64_t ld_dy = 0;
  A* dh = nullptr;                  // [B, H] in: dh_n, running dh (LSTM: w.r.t. h_t), out: dh0
  A* dc = nullptr;                  // LSTM: [B, H] running dc
  S* dg = nullptr;                  // [chunk rows, G*H] out: pre-activation gradients, first row chunk_lo
  S* dgxn = nullptr;                // GRU: [chunk rows, H] out: input side of the last block
  int64_t chunk_lo = 0;
  PersistentGeometry geom;          // PersistentKind::kBackward
  int n_steps = 0;
  PersistentStep steps[kPersistentMaxSteps];  // in processing order (latest step first)
};

// Once per launch: w_hh[:, u] of the block's units as rows of the slice (zeros past H).
template <typename S>
RNNFAST_HD void persistent_backward_load_weights(const PersistentBackwardArgs<S>& a, int block, int tid, int nt,
                                                 S* w) {
  const int H = int(a.H), GH = int(a.G * a.H), U = a.geom.units, u0 = block * U, ld = int(a.geom.ld_w);
  const int n = U * GH;
  for (int i = tid; i < n; i += nt) {
    const int o = i / GH, j = i - o * GH, u = u0 + o;
    w[o * ld + j] = u < H ? a.w_hh[int64_t(j) * H + u] : S(0);
  }
}

// The step's arguments of the per-element gate backward (gpu/pointwise.h).
template <typename S>
RNNFAST_HD StepBackwardArgs<S> persistent_backward_step_args(const PersistentBackwardArgs<S>& a,
                                                             const PersistentStep& st) {
  const int64_t H = a.H, GH = a.G * H, off = st.off, r0 = off - a.chunk_lo;
  StepBackwardArgs<S> s;
  s.cell = a.cell;
  s.rows = st.rows;
  s.H = H;
  s.gates = a.gates ? a.gates + off * GH : nullptr;
  s.saved = a.saved ? a.saved + off * H : nullptr;
  s.h = a.y + off * H;
  s.ld_h = H;
  s.prev = PrevRows<S>{st.prev_off >= 0 ? a.prev + int64_t(st.prev_off) * H : nullptr, H, st.n_first,
                       a.prev_initial, H};
  s.dy = a.dy + off * a.ld_dy;
  s.ld_dy = a.ld_dy;
  s.dh = a.dh;
  s.ld_dh = H;
  s.dc = a.dc;
  s.dh_direct = a.dh;
  s.dg = a.dg + r0 * GH;
  s.dgxn = a.dgxn ? a.dgxn + r0 * H : nullptr;
  return s;
}

// Phase A: the gate backward of the block's units for every row of the step.
template <typename S>
RNNFAST_HD void persistent_backward_gates(const PersistentBackwardArgs<S>& a, const PersistentStep& st, int block,
                                          int tid, int nt) {
  const StepBackwardArgs<S> s = persistent_backward_step_args(a, st);
  const int U = a.geom.units, u0 = block * U, H = int(a.H), n = st.rows * U;
  for (int i = tid; i < n; i += nt) {
    const int r = i / U, u = u0 + (i - r * U);
    if (u < H) step_backward_element<S>(s, r, u);
  }
}

// Phase B1: dG_t rows r0 .. r0+row_tile -> shared memory (zeros past the step's rows).
template <typename S>
RNNFAST_HD void persistent_backward_load_rows(const PersistentBackwardArgs<S>& a, const PersistentStep& st, int r0,
                                              int tid, int nt, acc_t<S>* rows) {
  using A = acc_t<S>;
  const int GH = int(a.G * a.H), n = a.geom.row_tile * GH, ld = int(a.geom.ld_w);
  const S* dg = a.dg + (int64_t(st.off) - a.chunk_lo) * GH;
  for (int i = tid; i < n; i += nt) {
    const int b = i / GH, j = i - b * GH, r = r0 + b;
    rows[b * ld + j] = r < st.rows ? A(dg[int64_t(r) * GH + j]) : A(0);
  }
}

// Phase B2: part[q, s] = sum over j = s, s+k_split, ... of dG[b, j] * w_hh[j, u], for output
// q = b * units + o (row b of the tile, unit o of the block).
template <typename S>
RNNFAST_HD void persistent_backward_partial_dots(const PersistentBackwardArgs<S>& a, int tid, int nt, const S* w,
                                                 const acc_t<S>* rows, acc_t<S>* part) {
  using A = acc_t<S>;
  const int GH = int(a.G * a.H), U = a.geom.units, KS = a.geom.k_split, ld = int(a.geom.ld_w);
  const int n = a.geom.row_tile * U * KS;
  for (int i = tid; i < n; i += nt) {
    const int q = i / KS, s = i - q * KS, b = q / U, o = q - b * U;
    const A* rb = rows + b * ld;
    const S* wo = w + o * ld;
    A sum = A(0);
    for (int j = s; j < GH; j += KS) sum += rb[j] * A(wo[j]);
    part[i] = sum;
  }
}

// Phase B3: dh_{t-1} of the block's units: the partials summed in a fixed order (GRU: added to
// the direct part that phase A left in dh).
template <typename S>
RNNFAST_HD void persistent_backward_store_dh(const PersistentBackwardArgs<S>& a, const PersistentStep& st, int r0,
                                             int block, int tid, int nt, const acc_t<S>* part) {
  using A = acc_t<S>;
  const int H = int(a.H), U = a.geom.units, KS = a.geom.k_split, u0 = block * U, n = a.geom.row_tile * U;
  for (int q = tid; q < n; q += nt) {
    const int b = q / U, r = r0 + b, u = u0 + (q - b * U);
    if (r >= st.rows || u >= H) continue;
    A sum = A(0);
    for (int s = 0; s < KS; ++s) sum += part[q * KS + s];
    A* dh = a.dh + int64_t(r) * H + u;
    *dh = a.separate_hidden ? *dh + sum : sum;
  }
}

}  // namespace rnnfast::gpu
