// The per-element work of the GPU time loops (gpu/layer_loop.h): one
// (row, unit) of a step's fused gate math, forward and backward, and the small
// element-wise helpers around the GEMMs. Everything here is RNNFAST_HD: nvcc
// compiles it into the CUDA kernels (cuda/pointwise_kernels.cuh, one thread
// per element) and the host compiler into the emulated executor
// (gpu/emulated_exec.h, a loop over the same elements), which runs the whole
// GPU algorithm on the CPU for the tests. No library beyond c10's 16-bit
// types, which convert on host and device alike.
//
// Layouts are torch's: gate g of unit u at column g*H + u of a [rows, G*H]
// buffer. Types by role (as on the CPU, cpu/kernels.h): S storage, A = acc_t<S>
// accumulation (float for the 16-bit types, S otherwise).
#pragma once

#include <cstdint>

#include "../acc_type.h"
#include "../cell_math.h"
#include "../cells.h"
#include "../loop_shared.h"

namespace rnnfast::gpu {

// One step of the forward gate math. Buffers point at the step's first row.
template <typename S>
struct StepForwardArgs {
  using A = acc_t<S>;
  CellType cell = CellType::kLSTM;
  int64_t rows = 0, H = 0;
  const A* gx = nullptr;       // [rows, G*H] x @ w_ih^T (+ h @ w_hh^T unless separate_hidden)
  int64_t ld_gx = 0;
  const A* gh = nullptr;       // separate_hidden: [rows, G*H] h_{t-1} @ w_hh^T
  int64_t ld_gh = 0;
  const A* bias = nullptr;     // [G*H] b_ih + b_hh (separate_hidden: b_ih only in the last block)
  const A* bias_hn = nullptr;  // separate_hidden: [H] b_hh of the last block
  PrevRows<S> h_prev;     // separate_hidden: h_{t-1} of each row
  A* c = nullptr;              // cell_state: [rows, H] (row stride H) in c_{t-1}, out c_t
  S* h = nullptr;              // [rows, ld_h] out: h_t (LSTM with projection: m_t)
  int64_t ld_h = 0;
  S* gates = nullptr;          // training: [rows, G*H] out: activated gates
  S* saved = nullptr;          // training: [rows, H] out: LSTM c_t, GRU W_hn h + b_hn
};

template <typename S, bool Training>
RNNFAST_HD void step_forward_element(const StepForwardArgs<S>& a, int64_t b, int64_t u) {
  using A = acc_t<S>;
  using M = ScalarMath<A>;
  const int64_t H = a.H;
  const A* gx = a.gx + b * a.ld_gx;
  switch (a.cell) {
    case CellType::kLSTM: {
      LstmGates<A> g;
      A c, m;
      A* cp = a.c + b * H + u;
      lstm_forward<M>(gx[u] + a.bias[u], gx[H + u] + a.bias[H + u], gx[2 * H + u] + a.bias[2 * H + u],
                      gx[3 * H + u] + a.bias[3 * H + u], *cp, g, c, m);
      *cp = c;
      a.h[b * a.ld_h + u] = S(m);
      if constexpr (Training) {
        S* gates = a.gates + b * 4 * H;
        gates[u] = S(g.i);
        gates[H + u] = S(g.f);
        gates[2 * H + u] = S(g.g);
        gates[3 * H + u] = S(g.o);
        a.saved[b * H + u] = S(c);
      }
      break;
    }
    case CellType::kGRU: {
      const A* gh = a.gh + b * a.ld_gh;
      const A hn = gh[2 * H + u] + a.bias_hn[u];
      GruGates<A> g;
      A h;
      gru_forward<M>(gx[u] + gh[u] + a.bias[u], gx[H + u] + gh[H + u] + a.bias[H + u],
                     gx[2 * H + u] + a.bias[2 * H + u], hn, A(a.h_prev.row(b)[u]), g, h);
      a.h[b * a.ld_h + u] = S(h);
      if constexpr (Training) {
        S* gates = a.gates + b * 3 * H;
        gates[u] = S(g.r);
        gates[H + u] = S(g.z);
        gates[2 * H + u] = S(g.n);
        a.saved[b * H + u] = S(hn);
      }
      break;
    }
    case CellType::kRNNTanh:
      a.h[b * a.ld_h + u] = S(rnn_forward<M, RnnActivation::kTanh>(gx[u] + a.bias[u]));
      break;
    case CellType::kRNNRelu:
      a.h[b * a.ld_h + u] = S(rnn_forward<M, RnnActivation::kRelu>(gx[u] + a.bias[u]));
      break;
  }
}

// One step of the backward gate math.
template <typename S>
struct StepBackwardArgs {
  using A = acc_t<S>;
  CellType cell = CellType::kLSTM;
  int64_t rows = 0, H = 0;
  const S* gates = nullptr;  // [rows, G*H] saved activated gates
  const S* saved = nullptr;  // [rows, H] saved LSTM c_t, GRU W_hn h + b_hn
  const S* h = nullptr;      // RNN: [rows, ld_h] the step's output (its activation)
  int64_t ld_h = 0;
  PrevRows<S> prev;     // LSTM c_{t-1}, GRU h_{t-1} of each row
  const S* dy = nullptr;     // the gradient w.r.t. h_t (LSTM: m_t) is dy + dh, dy may be null
  int64_t ld_dy = 0;         //   (with a projection dh carries all of it)
  const A* dh = nullptr;     // [rows, ld_dh]
  int64_t ld_dh = 0;
  A* dc = nullptr;           // LSTM: [rows, H] in dc_t, out dc_{t-1}
  A* dh_direct = nullptr;    // GRU: [rows, ld_dh] out: z*dh (may alias dh: read before written)
  S* dg = nullptr;           // [rows, G*H] out: pre-activation gradients (GRU: hidden side)
  S* dgxn = nullptr;         // GRU: [rows, H] out: input side of the last block
};

template <typename S>
RNNFAST_HD void step_backward_element(const StepBackwardArgs<S>& a, int64_t b, int64_t u) {
  using A = acc_t<S>;
  using M = ScalarMath<A>;
  const int64_t H = a.H;
  const A grad = (a.dy ? A(a.dy[b * a.ld_dy + u]) : A(0)) + a.dh[b * a.ld_dh + u];
  switch (a.cell) {
    case CellType::kLSTM: {
      const S* gs = a.gates + b * 4 * H;
      const LstmGates<A> g{A(gs[u]), A(gs[H + u]), A(gs[2 * H + u]), A(gs[3 * H + u])};
      A* dc = a.dc + b * H + u;
      A di, df, dgg, dout, dc_prev;
      lstm_backward<M>(g, A(a.saved[b * H + u]), A(a.prev.row(b)[u]), grad, *dc, di, df, dgg, dout, dc_prev);
      S* dg = a.dg + b * 4 * H;
      dg[u] = S(di);
      dg[H + u] = S(df);
      dg[2 * H + u] = S(dgg);
      dg[3 * H + u] = S(dout);
      *dc = dc_prev;
      break;
    }
    case CellType::kGRU: {
      const S* gs = a.gates + b * 3 * H;
      const GruGates<A> g{A(gs[u]), A(gs[H + u]), A(gs[2 * H + u])};
      A dr, dz, dxn, dhn, direct;
      gru_backward<M>(g, A(a.saved[b * H + u]), A(a.prev.row(b)[u]), grad, dr, dz, dxn, dhn, direct);
      S* dg = a.dg + b * 3 * H;
      dg[u] = S(dr);
      dg[H + u] = S(dz);
      dg[2 * H + u] = S(dhn);
      a.dgxn[b * H + u] = S(dxn);
      a.dh_direct[b * a.ld_dh + u] = direct;
      break;
    }
    case CellType::kRNNTanh:
      a.dg[b * H + u] = S(rnn_backward<M, RnnActivation::kTanh>(A(a.h[b * a.ld_h + u]), grad));
      break;
    case CellType::kRNNRelu:
      a.dg[b * H + u] = S(rnn_backward<M, RnnActivation::kRelu>(A(a.h[b * a.ld_h + u]), grad));
      break;
  }
}

// dst[r, c] = To(src[r, c]) (storage <-> accumulation, rounding to nearest even).
template <typename To, typename From>
struct ConvertArgs {
  int64_t rows = 0, cols = 0;
  const From* src = nullptr;
  int64_t lds = 0;
  To* dst = nullptr;
  int64_t ldd = 0;
};
template <typename To, typename From>
RNNFAST_HD void convert_element(const ConvertArgs<To, From>& a, int64_t r, int64_t c) {
  using Acc = acc_t<To>;  // To == From for plain copies
  a.dst[r * a.ldd + c] = To(static_cast<Acc>(a.src[r * a.lds + c]));
}

// dst[r, c] = S(A(x[r, c]) + y[r, c]): with a projection, dh_t = dy_t + the
// recurrent part, in storage (the A operand of dm = dh_t @ w_hr and of dw_hr).
template <typename S>
struct AddRowsArgs {
  int64_t rows = 0, cols = 0;
  const S* x = nullptr;
  int64_t ldx = 0;
  const acc_t<S>* y = nullptr;
  int64_t ldy = 0;
  S* dst = nullptr;
  int64_t ldd = 0;
};
template <typename S>
RNNFAST_HD void add_rows_element(const AddRowsArgs<S>& a, int64_t r, int64_t c) {
  using A = acc_t<S>;
  a.dst[r * a.ldd + c] = S(A(a.x[r * a.ldx + c]) + a.y[r * a.ldy + c]);
}

}  // namespace rnnfast::gpu
