// CPU backward of one layer-direction (interface: csrc/layer.h).
//
// Mirrors the forward: one parallel region, one column slice of the hidden
// units per thread. Per step the fused gate backward of each slice's units, a
// barrier, and each slice's columns of dh_{t-1} = dG_t @ w_hh. Per chunk of
// about 512 rows, while the chunk's dG is still in cache, the time-parallel
// products dw_ih += dG^T x, dw_hh += dG^T h_prev, dx = dG w_ih and the bias
// column sums (in a fixed order: deterministic). dG is never stored for the
// whole sequence.
//
// Types by role (kernels.h): dG, dh_total and the transposed blocks are GEMM
// operands in the storage type S; the running dh, dc, dm and every sum (weight
// and bias gradients, dx) are in the accumulation type A, converted to S once
// at the end (16-bit storage).
#include <ATen/Dispatch.h>

#include "loop_common.h"

namespace rnnfast {
namespace cpu {
namespace {

template <typename S>
class BackwardLoop {
 public:
  using A = acc_t<S>;
  static constexpr bool kConvert = !std::is_same_v<S, A>;  // sums need a conversion to S

  BackwardLoop(const LayerBackwardInputs& a, const LayerDims& d)
      : a_(a),
        in_(a.in),
        cell_(cell_info(a.in.cell)),
        k_(kernels<S>()),
        plan_(make_step_plan(a.in, d)),
        G_(d.G),
        H_(d.H),
        I_(d.I),
        P_(d.P),
        proj_(d.proj),
        separate_(cell_.separate_hidden),
        lease_(wanted_threads(H_, plan_.B * G_ * H_ * P_, plan_.N * G_ * H_ * (2 * I_ + 3 * P_))),
        slicing_(H_, P_, lease_.threads()),
        input_cut_(Slicing::split(I_, slicing_.count, 16)),
        saved_(SavedActivations::view(a.workspace, a.in.cell, d)) {}

  LayerGrads run() {
    const int64_t B = plan_.B, GH = G_ * H_;
    auto opts = in_.x.options();
    const auto acc_opts = opts.dtype(c10::CppTypeToScalarType<A>::value);
    chunks_ = plan_.chunks(std::max<int64_t>(B, kBackwardChunkRows));
    const int64_t rows_max = StepPlan::max_rows(chunks_);
    dg_ = pooled_empty({rows_max, GH}, opts);
    if (separate_) dgxn_ = pooled_empty({rows_max, H_}, opts);
    constexpr int64_t a = sizeof(A);
    small_ = SmallBuffers({B * P_ * a, cell_.cell_state ? B * H_ * a : 0, proj_ ? B * H_ * a : 0},
                          opts);
    dh_ = small_.get<A>(0);  // running dh of the current step's h
    dc_ = small_.get<A>(1);
    dm_ = small_.get<A>(2);
    to_acc(a_.dh_n.template data_ptr<S>(), B * P_, dh_);
    if (cell_.cell_state) to_acc(a_.dc_n->template data_ptr<S>(), B * H_, dc_);
    if (proj_) dh_total_ = pooled_empty({rows_max, P_}, opts);
    // As in the forward, a call of a few rows reads the weights where they are
    // instead of packing them; the others go through the panel cache. Slice s
    // owns columns p0..p1 of dh_{t-1} = dG_t @ w_hh, with projection units
    // u0..u1 of dm_t = dh_t @ w_hr, and columns i0..i1 of dx = dG @ w_ih.
    const bool direct = plan_.N <= kMaxUnpackedRows;
    auto panels = [&](const Tensor& w, int64_t K, std::vector<int64_t> widths,
                      const std::vector<int64_t>& cut) {
      // Row-major weights: slice s is columns cut[s] .. cut[s+1] of every row.
      std::vector<SliceSource> src(slicing_.count);
      for (int sl = 0; sl < slicing_.count; ++sl) src[sl] = {0, w.size(1), ColumnMap{cut[sl], w.size(1), 0, 1}};
      return direct ? SlicePanels<S>::direct(w, K, std::move(widths), std::move(src))
                    : SlicePanels<S>::packed(k_, w, K, std::move(widths), std::move(src));
    };
    w_hh_panels_ = panels(in_.w.w_hh, GH, slicing_.proj_widths(), slicing_.proj);
    if (proj_) w_hr_panels_ = panels(*in_.w.w_hr, P_, slicing_.unit_widths(1), slicing_.unit);
    if (a_.need_dweights) {
      // Written (not accumulated) by the first chunk's products: no zeroing.
      dw_ih_ = pooled_empty(in_.w.w_ih.sizes(), acc_opts);
      dw_hh_ = pooled_empty(in_.w.w_hh.sizes(), acc_opts);
      db_h_ = cpu_empty({GH}, acc_opts).zero_();
      if (separate_) db_xn_ = cpu_empty({H_}, acc_opts).zero_();
      if (proj_) dw_hr_ = pooled_empty(in_.w.w_hr->sizes(), acc_opts);
      x_panels_ = SlicePanels<S>(k_, rows_max, std::vector<int64_t>(slicing_.count, I_), opts);
      hp_panels_ = SlicePanels<S>(k_, rows_max, std::vector<int64_t>(slicing_.count, P_), opts);
      if (proj_)
        m_panels_ = SlicePanels<S>(k_, rows_max, std::vector<int64_t>(slicing_.count, H_), opts);
      int64_t widest = 0;
      for (int s = 0; s < slicing_.count; ++s)
        widest = std::max({widest, slicing_.u1(s) - slicing_.u0(s), slicing_.p1(s) - slicing_.p0(s)});
      dg_t_ = pooled_empty({slicing_.count, widest * rows_max}, opts);
      make_row_pointers();
    }
    if (a_.need_dx) {
      g_.dx = pooled_empty({plan_.N, I_}, opts);
      if (kConvert) dx_chunk_ = pooled_empty({rows_max, I_}, acc_opts);
      std::vector<int64_t> widths(slicing_.count);
      for (int s = 0; s < slicing_.count; ++s) widths[s] = input_cut_[s + 1] - input_cut_[s];
      const int64_t shared = separate_ ? GH - H_ : GH;
      w_ih_panels_ = panels(in_.w.w_ih.narrow(0, 0, shared), shared, widths, input_cut_);
      if (separate_) w_in_panels_ = panels(in_.w.w_ih.narrow(0, shared, H_), H_, widths, input_cut_);
    }

    last_call_plan() = CallPlan{true, slicing_.count, int64_t(chunks_.size()), rows_max, direct};
    run_parallel(slicing_.count, [&](int thread, int threads, SpinBarrier& barrier) {
      pack_weights(thread, threads, barrier);
      for (auto c = chunks_.rbegin(); c != chunks_.rend(); ++c) {
        for (int64_t s = c->s1 - 1; s >= c->s0; --s) step(s, *c, thread, threads, barrier);
        chunk_products(*c, c == chunks_.rbegin(), thread, threads);
        barrier.wait(thread);  // the next chunk reuses the chunk buffers
      }
    });
    for (SlicePanels<S>* p : {&w_hh_panels_, &w_hr_panels_, &w_ih_panels_, &w_in_panels_}) p->commit();
    return finish();
  }

 private:
  using Chunk = StepPlan::Chunk;

  // Each thread packs its slices of the weights (or finds them in the panel cache).
  void pack_weights(int thread, int threads, SpinBarrier& barrier) {
    check_and_pack(k_, slicing_, thread, threads, barrier, w_hh_panels_, w_hr_panels_, w_ih_panels_,
                   w_in_panels_);
    barrier.wait(thread);
  }

  // Rows of the previous step's `states` ([N, ld] per-step rows) for the rows
  // of the s-th processed step, or of `initial` ([B, ld_initial]) where a row
  // starts at this step.
  PrevRows<S> prev(int64_t s, const S* states, int64_t ld, const S* initial,
                   int64_t ld_initial) const {
    PrevRows<S> p;
    p.n_first = plan_.continuing_rows(s);
    p.first = s == 0 ? nullptr : states + plan_.previous_offset(s) * ld;
    p.ld_first = ld;
    p.initial = initial;
    p.ld_initial = ld_initial;
    return p;
  }
  PrevRows<S> h_prev(int64_t s) const {
    return prev(s, a_.y.template data_ptr<S>(), a_.y.stride(0), in_.h0.template data_ptr<S>(), P_);
  }

  void step(int64_t s, const Chunk& chunk, int thread, int threads, SpinBarrier& barrier) {
    const int64_t t = plan_.step(s), rows = plan_.bs(t), off = plan_.offset(t);
    const int64_t GH = G_ * H_;
    const S* dy = a_.dy.template data_ptr<S>() + off * a_.dy.stride(0);
    const int64_t lddy = a_.dy.stride(0);
    A* dh = dh_;
    const int64_t r0 = off - chunk.lo;  // first row of the step in the chunk buffers
    S* dg = dg_.data_ptr<S>() + r0 * GH;

    if (proj_) {
      // dh_t = dy_t + recurrent part, then dm_t = dh_t @ w_hr.
      S* dht = dh_total_.data_ptr<S>() + r0 * P_;
      for (int sl = thread; sl < slicing_.count; sl += threads)
        for (int64_t b = 0; b < rows; ++b)
          for (int64_t p = slicing_.p0(sl); p < slicing_.p1(sl); ++p)
            dht[b * P_ + p] = S(A(dy[b * lddy + p]) + dh[b * P_ + p]);
      barrier.wait(thread);
      for (int sl = thread; sl < slicing_.count; sl += threads)
        w_hr_panels_.gemm(k_, sl, rows, dht, P_, A(0), dm_ + slicing_.u0(sl), H_);
    }

    CellBackwardRows<S> r;
    r.rows = rows; r.H = H_;
    if (saved_.gates.defined()) {
      r.gates = saved_.gates.template data_ptr<S>() + off * GH; r.ld_gates = GH;
    }
    const Tensor& step_state = saved_.step_state(in_.cell);
    if (step_state.defined()) {
      r.saved = step_state.template data_ptr<S>() + off * H_; r.ld_saved = H_;
    }
    r.h = a_.y.template data_ptr<S>() + off * a_.y.stride(0); r.ld_h = a_.y.stride(0);
    if (cell_.backward_prev == PrevState::kCell) {
      r.prev = prev(s, saved_.cell.template data_ptr<S>(), H_, in_.c0->template data_ptr<S>(), H_);
    } else if (cell_.backward_prev == PrevState::kHidden) {
      r.prev = h_prev(s);
    }
    if (proj_) {
      r.dh = dm_; r.ld_dh = H_;
    } else {
      r.dy = dy; r.ld_dy = lddy;
      r.dh = dh; r.ld_dh = P_;
    }
    if (cell_.cell_state) {
      r.dc = dc_; r.ld_dc = H_;
    }
    if (separate_) {
      r.dh_direct = dh; r.ld_dh_direct = P_;
      r.dgxn = dgxn_.data_ptr<S>() + r0 * H_; r.ld_dgxn = H_;
    }
    r.dg = dg; r.ld_dg = GH;
    for (int sl = thread; sl < slicing_.count; sl += threads) {
      r.u0 = slicing_.u0(sl);
      r.u1 = slicing_.u1(sl);
      k_.cells[int(in_.cell)].backward(r);
    }
    barrier.wait(thread);
    // dh_{t-1} (this slice's columns) = dG_t @ w_hh (+ the direct path the
    // separate_hidden kernel left in dh).
    const A beta = separate_ ? A(1) : A(0);
    for (int sl = thread; sl < slicing_.count; sl += threads)
      w_hh_panels_.gemm(k_, sl, rows, dg, GH, beta, dh + slicing_.p0(sl), P_);
    // Without projection each slice reads back only its own columns of dh in
    // the next step; with projection the next step starts with a barrier.
  }

  // Rows of x, of h_{t-1} (the previous step's output or h0) and of m, in
  // the packed row order: the B operands of the weight gradients.
  void make_row_pointers() {
    const S* x = in_.x.template data_ptr<S>();
    const S* m = proj_ ? saved_.proj_in.template data_ptr<S>() : nullptr;
    x_rows_.resize(plan_.N);
    hp_rows_.resize(plan_.N);
    if (proj_) m_rows_.resize(plan_.N);
    for (int64_t s = 0; s < plan_.T; ++s) {
      const int64_t t = plan_.step(s);
      const PrevRows<S> hp = h_prev(s);
      for (int64_t b = 0; b < plan_.bs(t); ++b) {
        const int64_t row = plan_.offset(t) + b;
        x_rows_[row] = x + row * I_;
        hp_rows_[row] = hp.row(b);
        if (proj_) m_rows_[row] = m + row * H_;
      }
    }
  }

  // The time-parallel products of a finished chunk. The weight gradients sum
  // over the chunk's rows: each slice transposes its columns of dG (one gate
  // block at a time, [nu, rows]) and multiplies by the chunk's rows of x and
  // h_prev; it reads only its own columns. dx reads all columns of dG,
  // complete since the barrier inside the chunk's last step. The first chunk
  // processed writes every block of the weight gradients, later ones add.
  void chunk_products(const Chunk& c, bool first, int thread, int threads) {
    const int64_t GH = G_ * H_;
    const S* dg = dg_.data_ptr<S>();
    const A beta_w = first ? A(0) : A(1);
    for (int s = thread; s < slicing_.count; s += threads) {
      if (a_.need_dweights) {
        const int64_t u0 = slicing_.u0(s), nu = slicing_.u1(s) - u0;
        S* at = dg_t_.data_ptr<S>() + s * dg_t_.stride(0);  // [nu or np, rows] scratch
        x_panels_.pack_rows(k_, s, c.rows, x_rows_.data() + c.lo, 0);
        hp_panels_.pack_rows(k_, s, c.rows, hp_rows_.data() + c.lo, 0);
        A* dw_ih = dw_ih_.data_ptr<A>();
        A* dw_hh = dw_hh_.data_ptr<A>();
        for (int64_t g = 0; g < G_; ++g) {
          const int64_t col = g * H_ + u0;  // gate g of the slice's units
          k_.transpose(c.rows, nu, dg + col, GH, at, c.rows);
          hp_panels_.gemm(k_, s, nu, at, c.rows, beta_w, dw_hh + col * P_, P_);
          if (separate_ && g == G_ - 1)  // the input side of the last block has its own gradient
            k_.transpose(c.rows, nu, dgxn_.data_ptr<S>() + u0, H_, at, c.rows);
          x_panels_.gemm(k_, s, nu, at, c.rows, beta_w, dw_ih + col * I_, I_);
          k_.add_column_sums(c.rows, nu, dg + col, GH, db_h_.data_ptr<A>() + col);
        }
        if (separate_)
          k_.add_column_sums(c.rows, nu, dgxn_.data_ptr<S>() + u0, H_, db_xn_.data_ptr<A>() + u0);
        if (proj_) {
          const int64_t p0 = slicing_.p0(s), np = slicing_.p1(s) - p0;
          m_panels_.pack_rows(k_, s, c.rows, m_rows_.data() + c.lo, 0);
          k_.transpose(c.rows, np, dh_total_.data_ptr<S>() + p0, P_, at, c.rows);
          m_panels_.gemm(k_, s, np, at, c.rows, beta_w, dw_hr_.data_ptr<A>() + p0 * H_, H_);
        }
      }
      if (a_.need_dx) {
        const int64_t i0 = input_cut_[s];
        S* dx = g_.dx.template data_ptr<S>() + c.lo * I_ + i0;
        A* dx_acc = kConvert ? dx_chunk_.data_ptr<A>() + i0 : reinterpret_cast<A*>(dx);
        w_ih_panels_.gemm(k_, s, c.rows, dg, GH, A(0), dx_acc, I_);
        if (separate_) w_in_panels_.gemm(k_, s, c.rows, dgxn_.data_ptr<S>(), H_, A(1), dx_acc, I_);
        if (kConvert) k_.to_storage(c.rows, input_cut_[s + 1] - i0, dx_acc, I_, dx, I_);
      }
    }
  }

  // src[n] (storage) -> dst[n] (accumulation type).
  static void to_acc(const S* src, int64_t n, A* dst) {
    for (int64_t i = 0; i < n; ++i) dst[i] = A(src[i]);
  }

  // A contiguous accumulation-typed tensor in the storage type: itself when
  // the types agree, a rounded copy otherwise.
  Tensor in_storage(const Tensor& acc) const {
    if constexpr (!kConvert) {
      return acc;
    } else {
      Tensor out = cpu_empty(acc.sizes(), in_.x.options());
      const int64_t n = acc.numel();
      k_.to_storage(1, n, acc.data_ptr<A>(), n, out.template data_ptr<S>(), n);
      return out;
    }
  }
  Tensor in_storage(const A* src, std::initializer_list<int64_t> sizes) const {
    Tensor out = cpu_empty(sizes, in_.x.options());
    const int64_t n = out.numel();
    k_.to_storage(1, n, src, n, out.template data_ptr<S>(), n);
    return out;
  }

  LayerGrads finish() {
    if (a_.need_dstate) {
      g_.dh0 = in_storage(dh_, {plan_.B, P_});
      if (cell_.cell_state) g_.dc0 = in_storage(dc_, {plan_.B, H_});
    }
    if (a_.need_dweights) {
      g_.dw_ih = in_storage(dw_ih_);
      g_.dw_hh = in_storage(dw_hh_);
      if (proj_) g_.dw_hr = in_storage(dw_hr_);
    }
    if (a_.need_dweights && has(in_.w.b_ih)) {
      g_.db_hh = in_storage(db_h_);
      if (separate_) {
        g_.db_ih = in_storage(at::cat({db_h_.narrow(0, 0, (G_ - 1) * H_), db_xn_}));
      } else {
        // Same values, separate storage for two .grad fields.
        g_.db_ih = kConvert ? in_storage(db_h_) : db_h_.clone();
      }
    }
    return g_;
  }

  const LayerBackwardInputs& a_;
  const LayerInputs& in_;
  const CellInfo& cell_;
  const KernelTable<S>& k_;  // read once per call: set_cpu_capability may swap the table
  const StepPlan plan_;
  const int64_t G_, H_, I_, P_;
  const bool proj_, separate_;
  const ThreadLease lease_;  // held for the whole call
  const Slicing slicing_;
  const std::vector<int64_t> input_cut_;  // [count+1] column slices of x for dx
  const SavedActivations saved_;
  std::vector<Chunk> chunks_;
  LayerGrads g_;
  // Chunk buffers (rows of the current chunk):
  Tensor dg_;        // [rows, G*H] pre-activation gradients (separate_hidden: hidden side)
  Tensor dgxn_;      // [rows, H] separate_hidden: input side of the last block
  Tensor dh_total_;  // [rows, P] proj: dh_t = dy_t + recurrent part (input of dw_hr)
  Tensor dg_t_;      // per slice: [nu or np, rows] a transposed column block of dG (or dh_total)
  Tensor dx_chunk_;  // 16-bit storage: [rows, I] dx of the chunk before conversion (A)
  // Step state (A):
  SmallBuffers small_;
  A* dh_ = nullptr;  // [B, P] recurrent gradient of the current step's h
  A* dc_ = nullptr;  // [B, H] cell_state: gradient of the current step's c
  A* dm_ = nullptr;  // [B, H] proj: gradient of m_t
  // Gradient accumulators (A):
  Tensor dw_ih_, dw_hh_, dw_hr_;  // shapes of w_ih, w_hh, w_hr
  Tensor db_h_;      // [G*H] column sums of dg_
  Tensor db_xn_;     // [H] separate_hidden: column sums of dgxn_
  // Packed operands:
  SlicePanels<S> w_hh_panels_;  // per slice: [G*H, np] columns p0..p1 of w_hh
  SlicePanels<S> w_hr_panels_;  // per slice: [P, nu] columns u0..u1 of w_hr
  SlicePanels<S> w_ih_panels_;  // per slice: [G*H (separate: (G-1)*H), ni] columns i0..i1 of w_ih
  SlicePanels<S> w_in_panels_;  // separate_hidden per slice: [H, ni] last block of w_ih
  SlicePanels<S> x_panels_, hp_panels_, m_panels_;  // per slice: a chunk of x, h_prev, m rows
  std::vector<const S*> x_rows_, hp_rows_, m_rows_;   // [N] row pointers
};

}  // namespace
}  // namespace cpu

LayerGrads layer_backward_cpu(const LayerBackwardInputs& b) {
  const LayerDims d = check_backward_inputs(b);
  TORCH_CHECK(b.in.x.device().is_cpu(), "rnnfast: layer_backward_cpu got a ",
              b.in.x.device().str(), " tensor");
  LayerGrads g;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, b.in.x.scalar_type(),
                                  "rnnfast_layer_backward_cpu",
                                  [&] { g = cpu::BackwardLoop<scalar_t>(b, d).run(); });
  return g;
}

}  // namespace rnnfast
