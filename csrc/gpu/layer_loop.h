// The GPU algorithm of one layer-direction, forward and backward, written once
// over an executor (interface below) and a storage type S:
//   * cuda/ops_cuda.cpp runs it with CudaExec: cuBLAS on torch's handle and
//     current stream, the pointwise kernels of cuda/pointwise_kernels.cuh;
//   * gpu/emulated.cpp runs it with EmulatedExec on the CPU (ATen matmul for
//     the column-major GEMMs, host loops over the same per-element functions),
//     so the CPU test suite checks this algorithm against torch.nn.
//
// Forward: per chunk of steps one GEMM gx = x @ w_ih^T ([rows, G*H], A), then
// per step one recurrent GEMM (accumulated into gx, or kept apart in gh for a
// separate_hidden cell) and one fused pointwise kernel (gpu/pointwise.h); with
// a projection a second GEMM y_t = m_t @ w_hr^T. Backward: per step the fused
// gate backward and dh_{t-1} = dG_t @ w_hh; per chunk the weight gradients,
// dx and the bias column sums as GEMMs / deterministic reductions over the
// chunk's rows (the bias sums as GEMMs with a ones vector). All buffers are allocated before the time loop; the loop only
// launches work (no allocation, no host synchronisation). Layouts: layer.h;
// types by role: gpu/pointwise.h.
//
// Executor interface (all work is enqueued; pointers are the device's):
//   gemm_cm<S, Out>(trans_a, trans_b, m, n, k, A, lda, B, ldb, beta, C, ldc)
//       column-major C[m,n] = op(A)[m,k] @ op(B)[k,n] + beta*C, cuBLAS's
//       semantics (C not read when beta == 0), A and B of type S, C of type
//       Out (acc_t<S> or S), sums in acc_t<S>
//   step_forward<S>(StepForwardArgs<S>, training), step_backward<S>(StepBackwardArgs<S>)
//   convert<To, From>(ConvertArgs), add_rows<S>(AddRowsArgs)
//   plan_persistent<S>(kind, G, H, B) -> PersistentGeometry (blocks == 0: does not fit)
//   persistent_forward<S>(PersistentForwardArgs<S>, training), persistent_backward<S>(
//       PersistentBackwardArgs<S>): one persistent launch
#pragma once

#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <algorithm>
#include <vector>

#include "../layer_aten.h"
#include "path.h"
#include "persistent.h"
#include "persistent_backward.h"
#include "pointwise.h"

namespace rnnfast::gpu {

// The algorithm works on at::Tensor (layer_aten.h) until it moves to the stable ABI.
using aten_layer::LayerBackwardInputs;
using aten_layer::LayerGrads;
using aten_layer::LayerInputs;
using aten_layer::LayerOutputs;
using aten_layer::OptTensor;
using aten_layer::ptr;
using aten_layer::SavedActivations;
using aten_layer::Tensor;

// The ATen ops of the loops (conversions, the emulator's matmul) run as
// written: an enclosing torch.autocast region must not recast them (it already
// chose the op's dtype where the op was called).
using NoAutocast = c10::impl::ExcludeDispatchKeyGuard;

// Rows per chunk of the time-parallel GEMMs: as many as keep the chunk's
// accumulation-typed scratch (gx forward, dx backward) under ~64 MB, or the
// tests' override (set_chunk_rows: small chunks exercise the chunk
// boundaries at test sizes).
int64_t& chunk_rows_override();  // 0: automatic (emulated.cpp; set_chunk_rows, controls.h)
inline int64_t chunk_rows(int64_t B, int64_t row_bytes) {
  constexpr int64_t kScratchBytes = int64_t(64) << 20;
  const int64_t rows = chunk_rows_override() > 0 ? chunk_rows_override()
                                                 : kScratchBytes / std::max<int64_t>(row_bytes, 1);
  return std::max<int64_t>(B, rows);
}

// Row-major C[M,N] = op(A)[M,K] @ op(B)[K,N] + beta*C through a column-major
// GEMM: the same memory read column-major is the transpose, so this is
// C^T = op(B)^T @ op(A)^T. Leading dimensions are row strides (at least 1).
// An empty product (K == 0: input_size 0, say) never reaches the GEMM: C =
// beta*C is written here (zeros for beta == 0), as torch does for empty
// operands, instead of relying on a library's k == 0 behaviour with possibly
// null operands.
template <class Exec, typename S, typename Out>
void gemm_rm(Exec& ex, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const S* A,
             int64_t lda, const S* B, int64_t ldb, acc_t<S> beta, Out* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    TORCH_INTERNAL_ASSERT(beta == acc_t<S>(0) || beta == acc_t<S>(1),
                          "rnnfast: an empty product with beta other than 0 or 1");
    if (beta == acc_t<S>(0)) ex.template zero_rows<Out>(M, N, C, ldc);
    return;
  }
  ex.template gemm_cm<S, Out>(trans_b, trans_a, N, M, K, B, std::max<int64_t>(ldb, 1), A,
                              std::max<int64_t>(lda, 1), beta, C, std::max<int64_t>(ldc, 1));
}

// The s-th processed step of a layer-direction as a row of a persistent launch's step table.
inline PersistentStep persistent_step(const StepPlan& plan, int64_t s) {
  const int64_t t = plan.step(s);
  PersistentStep st;
  st.off = int32_t(plan.offset(t));
  st.rows = int32_t(plan.bs(t));
  st.n_first = int32_t(plan.continuing_rows(s));
  st.prev_off = s == 0 ? -1 : int32_t(plan.previous_offset(s));
  return st;
}

template <class Exec, typename S>
class GpuForwardLoop {
 public:
  using A = acc_t<S>;

  GpuForwardLoop(Exec& ex, const LayerInputs& in, const LayerDims& d, bool training)
      : ex_(ex), in_(in), cell_(cell_info(in.cell)), plan_(make_step_plan(in, d)), d_(d),
        training_(training) {}

  LayerOutputs run() {
    const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
    const int64_t N = d_.N, B = plan_.B, G = d_.G, H = d_.H, I = d_.I, P = d_.P, GH = G * H;
    const auto opts = in_.x.options();
    const auto acc_opts = opts.dtype(c10::CppTypeToScalarType<A>::value);
    LayerOutputs out;
    out.y = at::empty({N, P}, opts);
    out.h_n = at::empty({B, P}, opts);
    SavedActivations saved;
    if (training_) {
      out.workspace = at::empty({N * saved_width(cell_, H, d_.proj)}, opts);
      saved = SavedActivations::view(out.workspace, in_.cell, d_);
    } else {
      out.workspace = at::empty({0}, opts);
    }
    const auto chunks = plan_.chunks(chunk_rows(B, GH * int64_t(sizeof(A))));
    // Scratch, all allocated before the loop.
    Tensor gx = at::empty({StepPlan::max_rows(chunks), GH}, acc_opts);  // [chunk rows, G*H]
    Tensor gh = cell_.separate_hidden ? at::empty({B, GH}, acc_opts) : Tensor();  // [B, G*H]
    Tensor m = d_.proj && !training_ ? at::empty({B, H}, opts) : Tensor();        // [B, H] m_t
    Tensor c = cell_.cell_state ? in_.c0->to(acc_opts, /*non_blocking=*/false, /*copy=*/true)
                                : Tensor();                                      // [B, H] running c
    Tensor bias, bias_hn;  // [G*H], [H]
    fold_bias(acc_opts, bias, bias_hn);
    // The persistent kernel where asked for and where the block slices of w_hh fit on the device.
    const PersistentGeometry geom = wants_persistent(cell_, d_)
                                        ? ex_.template plan_persistent<S>(PersistentKind::kForward, G, H, B)
                                        : PersistentGeometry{};

    const S* x = in_.x.template data_ptr<S>();
    const S* w_ih = in_.w.w_ih.template data_ptr<S>();
    const S* w_hh = in_.w.w_hh.template data_ptr<S>();
    const S* w_hr = d_.proj ? in_.w.w_hr->template data_ptr<S>() : nullptr;
    const S* h0 = in_.h0.template data_ptr<S>();
    S* y = out.y.template data_ptr<S>();
    A* gx_p = gx.data_ptr<A>();
    for (const StepPlan::Chunk& ch : chunks) {
      // gx = x @ w_ih^T for the chunk's rows.
      gemm_rm(ex_, false, true, ch.rows, GH, I, x + ch.lo * I, I, w_ih, I, A(0), gx_p, GH);
      if (geom.ok()) {
        persistent_chunk(ch, geom, gx_p, gh, c, bias, bias_hn, saved, y);
        continue;
      }
      for (int64_t s = ch.s0; s < ch.s1; ++s) {
        const int64_t t = plan_.step(s), rows = plan_.bs(t), off = plan_.offset(t);
        const int64_t n_first = plan_.continuing_rows(s);
        const S* prev = s == 0 ? nullptr : y + plan_.previous_offset(s) * P;
        A* gxs = gx_p + (off - ch.lo) * GH;
        // Recurrent GEMM: rows continuing from the previous step, then rows
        // starting from h0 (only the first step, or the reverse direction of
        // a packed batch).
        A* rec = cell_.separate_hidden ? gh.data_ptr<A>() : gxs;
        const A beta = cell_.separate_hidden ? A(0) : A(1);
        gemm_rm(ex_, false, true, n_first, GH, P, prev, P, w_hh, P, beta, rec, GH);
        gemm_rm(ex_, false, true, rows - n_first, GH, P, h0 + n_first * P, P, w_hh, P, beta,
                rec + n_first * GH, GH);

        StepForwardArgs<S> a;
        a.cell = in_.cell;
        a.rows = rows;
        a.H = H;
        a.gx = gxs;
        a.ld_gx = GH;
        a.gh = ptr<A>(gh);
        a.ld_gh = GH;
        a.bias = bias.data_ptr<A>();
        a.bias_hn = bias_hn.data_ptr<A>();
        a.h_prev = PrevRows<S>{prev, P, n_first, h0, P};
        a.c = ptr<A>(c);
        // The gate math writes h_t, or m_t (the input of w_hr) with a projection.
        S* m_t = !d_.proj ? y + off * P
                          : (training_ ? saved.proj_in.template data_ptr<S>() + off * H : m.template data_ptr<S>());
        a.h = m_t;
        a.ld_h = d_.proj ? H : P;
        if (training_) {
          a.gates = ptr<S>(saved.gates) ? ptr<S>(saved.gates) + off * GH : nullptr;
          S* step_state = ptr<S>(saved.step_state(in_.cell));
          a.saved = step_state ? step_state + off * H : nullptr;
        }
        ex_.step_forward(a, training_);
        if (d_.proj)  // h_t = m_t @ w_hr^T, rounded to storage by the GEMM
          gemm_rm(ex_, false, true, rows, P, H, m_t, H, w_hr, H, A(0), y + off * P, P);
      }
    }
    gather_h_n(out.y, out.h_n);
    out.c_n = cell_.cell_state ? c.to(in_.x.scalar_type()) : at::empty({0}, opts);
    return out;
  }

 private:
  // The steps of a chunk as persistent launches of up to kPersistentMaxSteps steps each.
  void persistent_chunk(const StepPlan::Chunk& ch, const PersistentGeometry& geom, A* gx, const Tensor& gh,
                        const Tensor& c, const Tensor& bias, const Tensor& bias_hn, const SavedActivations& saved,
                        S* y) {
    PersistentForwardArgs<S> a;  // ~8 KB, by value into the launch
    a.cell = in_.cell;
    a.separate_hidden = cell_.separate_hidden;
    a.G = d_.G;
    a.H = d_.H;
    a.w_hh = in_.w.w_hh.template data_ptr<S>();
    a.bias = bias.data_ptr<A>();
    a.bias_hn = bias_hn.data_ptr<A>();
    a.h0 = in_.h0.template data_ptr<S>();
    a.c = ptr<A>(c);
    a.y = y;
    a.gx = gx;
    a.chunk_lo = ch.lo;
    a.gh = ptr<A>(gh);
    if (training_) {
      a.gates = ptr<S>(saved.gates);
      a.saved = ptr<S>(saved.step_state(in_.cell));
    }
    a.geom = geom;
    for (int64_t s0 = ch.s0; s0 < ch.s1; s0 += kPersistentMaxSteps) {
      const int64_t s1 = std::min<int64_t>(ch.s1, s0 + kPersistentMaxSteps);
      a.n_steps = int(s1 - s0);
      for (int64_t s = s0; s < s1; ++s) a.steps[s - s0] = persistent_step(plan_, s);
      ex_.persistent_forward(a, training_);
      count_persistent_launch();
    }
  }

  // The folded biases (loop_shared.h): bias [G*H], bias_hn [H], in the
  // accumulation type; zeros without bias.
  void fold_bias(const at::TensorOptions& acc_opts, Tensor& bias, Tensor& bias_hn) const {
    const int64_t GH = d_.G * d_.H, H = d_.H;
    if (!has(in_.w.b_ih)) {
      bias = at::zeros({GH}, acc_opts);
      bias_hn = at::zeros({H}, acc_opts);
      return;
    }
    const Tensor b_ih = in_.w.b_ih->to(acc_opts), b_hh = in_.w.b_hh->to(acc_opts);
    const int64_t folded = folded_bias_columns(cell_, H);  // (loop_shared.h)
    bias = at::cat({b_ih.narrow(0, 0, folded) + b_hh.narrow(0, 0, folded), b_ih.narrow(0, folded, GH - folded)});
    bias_hn = cell_.separate_hidden ? b_hh.narrow(0, GH - H, H).contiguous() : at::zeros({H}, acc_opts);
  }

  // h_n[b] = y at row b of its sequence's last step: one copy per run of rows
  // that end at the same step.
  void gather_h_n(const Tensor& y, const Tensor& h_n) const {
    for (int64_t b0 = 0; b0 < plan_.B;) {
      const int64_t t = plan_.last_step_of_row(b0);
      int64_t b1 = b0 + 1;
      while (b1 < plan_.B && plan_.last_step_of_row(b1) == t) ++b1;
      h_n.narrow(0, b0, b1 - b0).copy_(y.narrow(0, plan_.offset(t) + b0, b1 - b0));
      b0 = b1;
    }
  }

  Exec& ex_;
  const LayerInputs& in_;
  const CellInfo& cell_;
  const StepPlan plan_;
  const LayerDims d_;
  const bool training_;
};

template <class Exec, typename S>
class GpuBackwardLoop {
 public:
  using A = acc_t<S>;
  static constexpr bool kConvert = !std::is_same_v<S, A>;

  GpuBackwardLoop(Exec& ex, const LayerBackwardInputs& b, const LayerDims& d)
      : ex_(ex), b_(b), in_(b.in), cell_(cell_info(b.in.cell)), plan_(make_step_plan(b.in, d)), d_(d),
        saved_(SavedActivations::view(b.workspace, b.in.cell, d)), y_(rows_of_width(b.y, d.P)) {}

  LayerGrads run() {
    const NoAutocast no_autocast(c10::autocast_dispatch_keyset);
    const int64_t B = plan_.B, G = d_.G, H = d_.H, I = d_.I, P = d_.P, GH = G * H;
    const int64_t shared = cell_.separate_hidden ? GH - H : GH;  // columns of dG that w_ih shares
    const auto opts = in_.x.options();
    const auto acc_opts = opts.dtype(c10::CppTypeToScalarType<A>::value);
    const auto chunks = plan_.chunks(chunk_rows(B, (GH + I) * int64_t(sizeof(A))));
    const int64_t rows_max = StepPlan::max_rows(chunks);
    // Scratch, all allocated before the loop.
    Tensor dg = at::empty({rows_max, GH}, opts);                                     // [rows, G*H]
    Tensor dgxn = cell_.separate_hidden ? at::empty({rows_max, H}, opts) : Tensor();  // [rows, H]
    Tensor dht = d_.proj ? at::empty({rows_max, P}, opts) : Tensor();                // [rows, P]
    Tensor dm = d_.proj ? at::empty({B, H}, acc_opts) : Tensor();                    // [B, H]
    Tensor hp = b_.need_dweights ? at::empty({rows_max, P}, opts) : Tensor();        // [rows, P]
    Tensor dx_acc = b_.need_dx && kConvert ? at::empty({rows_max, I}, acc_opts) : Tensor();
    Tensor dh = b_.dh_n.to(acc_opts, false, /*copy=*/true);                         // [B, P]
    Tensor dc = cell_.cell_state ? b_.dc_n->to(acc_opts, false, true) : Tensor();   // [B, H]
    Tensor dw_ih, dw_hh, dw_hr, db_h, db_xn;  // accumulators (A)
    if (b_.need_dweights) {
      dw_ih = at::zeros(in_.w.w_ih.sizes(), acc_opts);
      dw_hh = at::zeros(in_.w.w_hh.sizes(), acc_opts);
      if (d_.proj) dw_hr = at::zeros(in_.w.w_hr->sizes(), acc_opts);
      db_h = at::zeros({GH}, acc_opts);
      if (cell_.separate_hidden) db_xn = at::zeros({H}, acc_opts);
      ones_ = at::ones({rows_max}, opts);  // [rows] the bias gradients' GEMM operand
    }
    LayerGrads g;
    if (b_.need_dx) g.dx = at::empty({d_.N, I}, opts);

    const S* w_hh = in_.w.w_hh.template data_ptr<S>();
    const S* w_hr = d_.proj ? in_.w.w_hr->template data_ptr<S>() : nullptr;
    const S* y = y_.template data_ptr<S>();
    const S* dy = b_.dy.template data_ptr<S>();
    const int64_t ld_dy = b_.dy.stride(0);
    S* dg_p = dg.data_ptr<S>();
    A* dh_p = dh.data_ptr<A>();
    // The persistent kernel where asked for and where the block slices of w_hh fit on the device.
    const PersistentGeometry geom = wants_persistent(cell_, d_)
                                        ? ex_.template plan_persistent<S>(PersistentKind::kBackward, G, H, B)
                                        : PersistentGeometry{};

    for (auto ch = chunks.rbegin(); ch != chunks.rend(); ++ch) {
      if (geom.ok()) {
        persistent_chunk(*ch, geom, dg, dgxn, dh, dc);
        chunk_products(*ch, g, dg, dgxn, dht, hp, dx_acc, dw_ih, dw_hh, dw_hr, db_h, db_xn, shared);
        continue;
      }
      for (int64_t s = ch->s1 - 1; s >= ch->s0; --s) {
        const int64_t t = plan_.step(s), rows = plan_.bs(t), off = plan_.offset(t);
        const int64_t r0 = off - ch->lo;  // the step's first row in the chunk buffers
        S* dg_t = dg_p + r0 * GH;
        StepBackwardArgs<S> a;
        a.cell = in_.cell;
        a.rows = rows;
        a.H = H;
        a.gates = ptr<S>(saved_.gates) ? ptr<S>(saved_.gates) + off * GH : nullptr;
        S* step_state = ptr<S>(saved_.step_state(in_.cell));
        a.saved = step_state ? step_state + off * H : nullptr;
        a.h = y + off * P;
        a.ld_h = P;
        a.prev = prev_state(s);
        if (d_.proj) {
          // dh_t = dy_t + recurrent part (storage: an A operand), dm_t = dh_t @ w_hr.
          S* dht_t = dht.data_ptr<S>() + r0 * P;
          AddRowsArgs<S> add{rows, P, dy + off * ld_dy, ld_dy, dh_p, P, dht_t, P};
          ex_.add_rows(add);
          gemm_rm(ex_, false, false, rows, H, P, dht_t, P, w_hr, H, A(0), dm.data_ptr<A>(), H);
          a.dh = dm.data_ptr<A>();
          a.ld_dh = H;
        } else {
          a.dy = dy + off * ld_dy;
          a.ld_dy = ld_dy;
          a.dh = dh_p;
          a.ld_dh = P;
        }
        a.dc = ptr<A>(dc);
        a.dh_direct = dh_p;
        a.dg = dg_t;
        a.dgxn = cell_.separate_hidden ? dgxn.data_ptr<S>() + r0 * H : nullptr;
        ex_.step_backward(a);
        // dh_{t-1} = dG_t @ w_hh (+ the direct path the GRU kernel left in dh).
        gemm_rm(ex_, false, false, rows, P, GH, dg_t, GH, w_hh, P,
                cell_.separate_hidden ? A(1) : A(0), dh_p, P);
      }
      chunk_products(*ch, g, dg, dgxn, dht, hp, dx_acc, dw_ih, dw_hh, dw_hr, db_h, db_xn, shared);
    }

    // The sums in storage (a copy each: two .grad fields never share storage).
    const auto st = in_.x.scalar_type();
    if (b_.need_dstate) {
      g.dh0 = dh.to(st, false, /*copy=*/true);
      if (cell_.cell_state) g.dc0 = dc.to(st, false, true);
    }
    if (b_.need_dweights) {
      g.dw_ih = dw_ih.to(st, false, true);
      g.dw_hh = dw_hh.to(st, false, true);
      if (d_.proj) g.dw_hr = dw_hr.to(st, false, true);
      if (has(in_.w.b_ih)) {
        g.db_hh = db_h.to(st, false, true);
        g.db_ih = cell_.separate_hidden ? at::cat({db_h.narrow(0, 0, GH - H), db_xn}).to(st)
                                        : db_h.to(st, false, true);
      }
    }
    return g;
  }

 private:
  // The steps of a chunk, latest first, as persistent launches of up to kPersistentMaxSteps each.
  void persistent_chunk(const StepPlan::Chunk& ch, const PersistentGeometry& geom, const Tensor& dg,
                        const Tensor& dgxn, const Tensor& dh, const Tensor& dc) {
    PersistentBackwardArgs<S> a;  // ~8 KB, by value into the launch
    a.cell = in_.cell;
    a.separate_hidden = cell_.separate_hidden;
    a.G = d_.G;
    a.H = d_.H;
    a.w_hh = in_.w.w_hh.template data_ptr<S>();
    a.gates = ptr<S>(saved_.gates);
    a.saved = ptr<S>(saved_.step_state(in_.cell));
    a.y = y_.template data_ptr<S>();
    const bool prev_cell = cell_.backward_prev == PrevState::kCell;
    a.prev = prev_cell ? saved_.cell.template data_ptr<S>() : a.y;
    a.prev_initial = prev_cell ? in_.c0->template data_ptr<S>() : in_.h0.template data_ptr<S>();
    a.dy = b_.dy.template data_ptr<S>();
    a.ld_dy = b_.dy.stride(0);
    a.dh = dh.data_ptr<A>();
    a.dc = ptr<A>(dc);
    a.dg = dg.data_ptr<S>();
    a.dgxn = ptr<S>(dgxn);
    a.chunk_lo = ch.lo;
    a.geom = geom;
    for (int64_t s1 = ch.s1; s1 > ch.s0; s1 -= kPersistentMaxSteps) {
      const int64_t s0 = std::max<int64_t>(ch.s0, s1 - kPersistentMaxSteps);
      a.n_steps = int(s1 - s0);
      for (int64_t s = s1 - 1; s >= s0; --s) a.steps[s1 - 1 - s] = persistent_step(plan_, s);
      ex_.persistent_backward(a);
      count_persistent_launch();
    }
  }

  static Tensor rows_of_width(const Tensor& y, int64_t P) {
    return y.size(0) <= 1 || y.stride(0) == P ? y : y.contiguous();
  }

  // LSTM c_{t-1} or GRU h_{t-1} of each row of the s-th processed step.
  PrevRows<S> prev_state(int64_t s) const {
    PrevRows<S> p;
    p.n_first = plan_.continuing_rows(s);
    if (cell_.backward_prev == PrevState::kCell) {
      p.first = s == 0 ? nullptr : saved_.cell.template data_ptr<S>() + plan_.previous_offset(s) * d_.H;
      p.initial = in_.c0->template data_ptr<S>();
      p.ld_first = p.ld_initial = d_.H;
    } else {
      p.first = s == 0 ? nullptr : y_.template data_ptr<S>() + plan_.previous_offset(s) * d_.P;
      p.initial = in_.h0.template data_ptr<S>();
      p.ld_first = p.ld_initial = d_.P;
    }
    return p;
  }

  // h_{t-1} of the chunk's rows, [rows, P] in row order: for a padded input
  // past the first step a block of y itself; otherwise gathered per step
  // (rows continuing from the previous step, then rows starting from h0).
  const S* chunk_h_prev(const StepPlan::Chunk& ch, const Tensor& hp) {
    const int64_t P = d_.P, B = plan_.B;
    const S* y = y_.template data_ptr<S>();
    if (!has(in_.batch_sizes) && ch.s0 > 0) return y + (plan_.reverse ? ch.lo + B : ch.lo - B) * P;
    S* dst = hp.data_ptr<S>();
    const S* h0 = in_.h0.template data_ptr<S>();
    for (int64_t s = ch.s0; s < ch.s1; ++s) {
      const int64_t t = plan_.step(s), rows = plan_.bs(t), r0 = plan_.offset(t) - ch.lo;
      const int64_t n_first = plan_.continuing_rows(s);
      if (n_first > 0)
        ex_.convert(ConvertArgs<S, S>{n_first, P, y + plan_.previous_offset(s) * P, P, dst + r0 * P, P});
      if (rows > n_first)
        ex_.convert(ConvertArgs<S, S>{rows - n_first, P, h0 + n_first * P, P, dst + (r0 + n_first) * P, P});
    }
    return dst;
  }

  // The time-parallel products of a finished chunk (rows lo .. lo + rows).
  void chunk_products(const StepPlan::Chunk& ch, LayerGrads& g, const Tensor& dg, const Tensor& dgxn,
                      const Tensor& dht, const Tensor& hp, const Tensor& dx_acc, const Tensor& dw_ih,
                      const Tensor& dw_hh, const Tensor& dw_hr, const Tensor& db_h, const Tensor& db_xn,
                      int64_t shared) {
    const int64_t H = d_.H, I = d_.I, P = d_.P, GH = d_.G * H, rows = ch.rows;
    const S* x = in_.x.template data_ptr<S>() + ch.lo * I;
    const S* dg_p = dg.data_ptr<S>();
    const S* dgxn_p = ptr<S>(dgxn);
    if (b_.need_dweights) {
      A* dw_ih_p = dw_ih.data_ptr<A>();
      // dw_ih += dG^T x (a separate_hidden cell's last block from its input side).
      gemm_rm(ex_, true, false, shared, I, rows, dg_p, GH, x, I, A(1), dw_ih_p, I);
      if (cell_.separate_hidden)
        gemm_rm(ex_, true, false, H, I, rows, dgxn_p, H, x, I, A(1), dw_ih_p + shared * I, I);
      // dw_hh += dG^T h_prev.
      gemm_rm(ex_, true, false, GH, P, rows, dg_p, GH, chunk_h_prev(ch, hp), P, A(1), dw_hh.data_ptr<A>(), P);
      // dw_hr += dh_total^T m.
      if (d_.proj)
        gemm_rm(ex_, true, false, P, H, rows, dht.data_ptr<S>(), P,
                saved_.proj_in.template data_ptr<S>() + ch.lo * H, H, A(1), dw_hr.data_ptr<A>(), H);
      // db += ones^T dG: the column sums as a [1, rows] x [rows, G*H] GEMM (deterministic, no atomics).
      const S* ones = ones_.template data_ptr<S>();
      gemm_rm(ex_, false, false, 1, GH, rows, ones, rows, dg_p, GH, A(1), db_h.data_ptr<A>(), GH);
      if (cell_.separate_hidden)
        gemm_rm(ex_, false, false, 1, H, rows, ones, rows, dgxn_p, H, A(1), db_xn.data_ptr<A>(), H);
    }
    if (b_.need_dx) {
      // dx = dG @ w_ih (a separate_hidden cell: + dGxn @ its last block).
      S* dx = g.dx.template data_ptr<S>() + ch.lo * I;
      A* acc = kConvert ? dx_acc.data_ptr<A>() : reinterpret_cast<A*>(dx);
      const S* w_ih = in_.w.w_ih.template data_ptr<S>();
      gemm_rm(ex_, false, false, rows, I, shared, dg_p, GH, w_ih, I, A(0), acc, I);
      if (cell_.separate_hidden)
        gemm_rm(ex_, false, false, rows, I, H, dgxn_p, H, w_ih + shared * I, I, A(1), acc, I);
      if (kConvert) ex_.convert(ConvertArgs<S, A>{rows, I, acc, I, dx, I});
    }
  }

  Exec& ex_;
  const LayerBackwardInputs& b_;
  const LayerInputs& in_;
  const CellInfo& cell_;
  const StepPlan plan_;
  const LayerDims d_;
  const SavedActivations saved_;
  // y [N, P] with row stride P: the loops, the persistent kernel and the
  // contiguous h_{t-1} shortcut of chunk_h_prev all index it that way, while the
  // op lets a column slice of a wider buffer through (ops.h's row_major).
  const Tensor y_;
  Tensor ones_;  // [max chunk rows] of 1 (storage type), when the weight gradients are asked for
};

}  // namespace rnnfast::gpu
