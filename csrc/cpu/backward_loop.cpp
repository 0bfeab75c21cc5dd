// CPU backward of one layer-direction (interface: csrc/layer_view.h; no torch
// header: on the stable ABI's side of issue 16).
//
// Mirrors the forward: one parallel region, one column slice of the hidden
// units per thread. Per step the fused gate backward of each slice's units, a
// barrier, and each slice's columns of dh_{t-1} = dG_t @ w_hh. Per chunk of
// about 512 rows, while the chunk's dG is still in cache, the time-parallel
// products dw_ih += dG^T x, dw_hh += dG^T h_prev, dx = dG w_ih and the bias
// column sums (in a fixed order: deterministic). dG is never stored for the
// whole sequence.
//
// Types by role (kernels.h): dG, dh_total and the transposed blocks (calls of
// more than kMaxOuterProductRows rows) are GEMM operands in the storage type
// S; the running dh, dc, dm and every sum (weight and bias gradients, dx) are
// in the accumulation type A, converted to S once at the end (16-bit storage).
#include "loop_common.h"

namespace rnnfast {
namespace cpu {
namespace {

// Weight gradients of chunks up to this many rows (so of calls of up to this
// many rows in all) are sums of outer products (few_rows_weight_gradients),
// not transposed blocks of dG times packed rows. Zen 3 (family 25 model 1),
// 2 threads, LSTMCell training loops at H=256 against the packed path:
// 12 % less time at B=1, 9 % at B=4, 4 % at B=8, but 7 % more at B=16.
constexpr int64_t kMaxOuterProductRows = 8;

template <typename S>
class BackwardLoop {
 public:
  using A = acc_t<S>;
  static constexpr bool kConvert = !std::is_same_v<S, A>;  // sums need a conversion to S

  BackwardLoop(const LayerBackwardView& a, const LayerGradView& g)
      : a_(a),
        in_(a.in),
        g_(g),
        cell_(cell_info(a.in.cell)),
        k_(kernels<S>()),
        plan_(make_step_plan(a.in)),
        G_(a.in.d.G),
        H_(a.in.d.H),
        I_(a.in.d.I),
        P_(a.in.d.P),
        proj_(a.in.d.proj),
        separate_(cell_.separate_hidden),
        lease_(CallWork{.H = H_, .rows = plan_.B, .steps = plan_.T, .macs_per_step = plan_.B * G_ * H_ * P_,
                        .total_macs = plan_.N * G_ * H_ * (2 * I_ + 3 * P_)}),
        slicing_(H_, P_, lease_.threads()),
        input_cut_(Slicing::split(I_, slicing_.count, 16)),
        workspace_(static_cast<const S*>(a.workspace)),
        saved_(SavedLayout::of(a.in.cell, a.in.d)) {}

  void run() {
    const int64_t B = plan_.B, GH = G_ * H_;
    chunks_ = plan_.chunks(std::max<int64_t>(B, kBackwardChunkRows));
    const int64_t rows_max = StepPlan::max_rows(chunks_);
    few_rows_ = rows_max <= kMaxOuterProductRows;
    dg_ = PooledBytes(rows_max * GH * sizeof(S));
    if (separate_) dgxn_ = PooledBytes(rows_max * H_ * sizeof(S));
    constexpr int64_t a = sizeof(A);
    small_ = SmallBuffers({B * P_ * a, cell_.cell_state ? B * H_ * a : 0, proj_ ? B * H_ * a : 0});
    dh_ = small_.get<A>(0);  // running dh of the current step's h
    dc_ = small_.get<A>(1);
    dm_ = small_.get<A>(2);
    to_acc(static_cast<const S*>(a_.dh_n), B * P_, dh_);
    if (cell_.cell_state) to_acc(static_cast<const S*>(a_.dc_n), B * H_, dc_);
    if (proj_) dh_total_ = PooledBytes(rows_max * P_ * sizeof(S));
    // As in the forward, a call of a few rows reads the weights where they are
    // instead of packing them, a weight multiplied once is streamed, the others
    // go through the panel cache (weight_use). Slice s
    // owns columns p0..p1 of dh_{t-1} = dG_t @ w_hh, with projection units
    // u0..u1 of dm_t = dh_t @ w_hr, and columns i0..i1 of dx = dG @ w_ih.
    const bool direct = plan_.N <= kMaxUnpackedRows;
    // w: K rows of `cols` (contiguous); gemms, gemm_rows: products by it per
    // slice in this call, rows of the largest.
    auto panels = [&](const void* w, const void* owner, int64_t K, int64_t cols, std::vector<int64_t> widths,
                      const std::vector<int64_t>& cut, int64_t gemms, int64_t gemm_rows) {
      // Row-major weights: slice s is columns cut[s] .. cut[s+1] of every row.
      const S* weight = static_cast<const S*>(w);
      std::vector<SliceSource> src(slicing_.count);
      for (int sl = 0; sl < slicing_.count; ++sl) src[sl] = {0, cols, ColumnMap{cut[sl], cols, 0, 1}};
      return SlicePanels<S>::of(k_, weight_use(plan_.N, gemms, gemm_rows, K, sizeof(S)), weight, K * cols, owner, K,
                                gemm_rows, std::move(widths), std::move(src));
    };
    w_hh_panels_ = panels(in_.w_hh, in_.w_hh_owner, GH, P_, slicing_.proj_widths(), slicing_.proj, plan_.T, B);
    if (proj_)
      w_hr_panels_ = panels(in_.w_hr, in_.w_hr_owner, P_, H_, slicing_.unit_widths(1), slicing_.unit, plan_.T, B);
    if (need_dweights_) {
      // Written (not accumulated) by the first chunk's products: no zeroing.
      // With A = S straight into the gradients, else into A scratch.
      const int64_t n_ih = GH * I_, n_hh = GH * P_, n_hr = proj_ ? P_ * H_ : 0;
      if constexpr (kConvert) acc_ = PooledBytes((n_ih + n_hh + n_hr) * sizeof(A));
      dw_ih_ = kConvert ? acc_.as<A>() : static_cast<A*>(g_.dw_ih);
      dw_hh_ = kConvert ? acc_.as<A>() + n_ih : static_cast<A*>(g_.dw_hh);
      dw_hr_ = kConvert ? acc_.as<A>() + n_ih + n_hh : static_cast<A*>(g_.dw_hr);
      bias_sums_ = PooledBytes((GH + H_) * sizeof(A));
      db_h_ = bias_sums_.as<A>();
      db_xn_ = db_h_ + GH;
      std::fill_n(db_h_, GH + H_, A(0));
      if (!few_rows_) {
        x_panels_ = SlicePanels<S>(k_, rows_max, std::vector<int64_t>(slicing_.count, I_));
        hp_panels_ = SlicePanels<S>(k_, rows_max, std::vector<int64_t>(slicing_.count, P_));
        if (proj_)
          m_panels_ = SlicePanels<S>(k_, rows_max, std::vector<int64_t>(slicing_.count, H_));
        int64_t widest = 0;
        for (int s = 0; s < slicing_.count; ++s)
          widest = std::max({widest, slicing_.u1(s) - slicing_.u0(s), slicing_.p1(s) - slicing_.p0(s)});
        dg_t_stride_ = widest * rows_max;
        dg_t_ = PooledBytes(slicing_.count * dg_t_stride_ * sizeof(S));
      }
      make_row_pointers();
    }
    if (need_dx_) {
      if (kConvert) dx_chunk_ = PooledBytes(rows_max * I_ * sizeof(A));
      std::vector<int64_t> widths(slicing_.count);
      for (int s = 0; s < slicing_.count; ++s) widths[s] = input_cut_[s + 1] - input_cut_[s];
      const int64_t shared = separate_ ? GH - H_ : GH;
      const S* w_ih = static_cast<const S*>(in_.w_ih);
      const int64_t chunks = int64_t(chunks_.size());
      w_ih_panels_ = panels(w_ih, in_.w_ih_owner, shared, I_, widths, input_cut_, chunks, rows_max);
      if (separate_)
        w_in_panels_ = panels(w_ih + shared * I_, in_.w_ih_owner, H_, I_, widths, input_cut_, chunks, rows_max);
    }

    last_call_plan() = CallPlan{true, slicing_.count, int64_t(chunks_.size()), rows_max, direct};
    for (const SlicePanels<S>* p : {&w_hh_panels_, &w_hr_panels_, &w_ih_panels_, &w_in_panels_}) {
      last_call_plan().streamed += p->is_streamed();
      last_call_plan().weight_as_a += p->reads_weight_as_a(k_);
    }
    run_parallel(slicing_.count, lease_.watch(), [&](int thread, int threads, SpinBarrier& barrier) {
      pack_weights(thread, threads, barrier);
      for (auto c = chunks_.rbegin(); c != chunks_.rend(); ++c) {
        for (int64_t s = c->s1 - 1; s >= c->s0; --s) step(s, *c, thread, threads, barrier);
        chunk_products(*c, c == chunks_.rbegin(), thread, threads);
        barrier.wait(thread);  // the next chunk reuses the chunk buffers
      }
    });
    for (SlicePanels<S>* p : {&w_hh_panels_, &w_hr_panels_, &w_ih_panels_, &w_in_panels_}) p->commit();
    finish();
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
    return prev(s, static_cast<const S*>(a_.y), a_.ld_y, static_cast<const S*>(in_.h0), P_);
  }

  void step(int64_t s, const Chunk& chunk, int thread, int threads, SpinBarrier& barrier) {
    const int64_t t = plan_.step(s), rows = plan_.bs(t), off = plan_.offset(t);
    const int64_t GH = G_ * H_;
    const int64_t lddy = a_.ld_dy;
    const S* dy = static_cast<const S*>(a_.dy) + off * lddy;
    A* dh = dh_;
    const int64_t r0 = off - chunk.lo;  // first row of the step in the chunk buffers
    S* dg = dg_.as<S>() + r0 * GH;

    if (proj_) {
      // dh_t = dy_t + recurrent part, then dm_t = dh_t @ w_hr.
      S* dht = dh_total_.as<S>() + r0 * P_;
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
    if (const S* gates = SavedLayout::block(workspace_, saved_.gates)) {
      r.gates = gates + off * GH; r.ld_gates = GH;
    }
    if (const S* step_state = SavedLayout::block(workspace_, saved_.step_state(in_.cell))) {
      r.saved = step_state + off * H_; r.ld_saved = H_;
    }
    r.h = static_cast<const S*>(a_.y) + off * a_.ld_y; r.ld_h = a_.ld_y;
    if (cell_.backward_prev == PrevState::kCell) {
      r.prev = prev(s, SavedLayout::block(workspace_, saved_.cell), H_, static_cast<const S*>(in_.c0), H_);
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
      r.dgxn = dgxn_.as<S>() + r0 * H_; r.ld_dgxn = H_;
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
      w_hh_panels_.gemm(k_, sl, rows, dg, GH, beta, dh + slicing_.p0(sl), P_, s);
    // Without projection each slice reads back only its own columns of dh in
    // the next step; with projection the next step starts with a barrier.
  }

  // Rows of x, of h_{t-1} (the previous step's output or h0) and of m, in
  // the packed row order: the B operands of the weight gradients.
  void make_row_pointers() {
    const S* x = static_cast<const S*>(in_.x);
    const S* m = proj_ ? SavedLayout::block(workspace_, saved_.proj_in) : nullptr;
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
  // h_prev, packed (chunks of a few rows: few_rows_weight_gradients); it
  // reads only its own columns. dx reads all columns of dG,
  // complete since the barrier inside the chunk's last step. The first chunk
  // processed writes every block of the weight gradients, later ones add.
  void chunk_products(const Chunk& c, bool first, int thread, int threads) {
    const int64_t GH = G_ * H_;
    const S* dg = dg_.as<S>();
    const A beta_w = first ? A(0) : A(1);
    for (int s = thread; s < slicing_.count; s += threads) {
      if (need_dweights_ && few_rows_) {
        few_rows_weight_gradients(c, beta_w, s);
      } else if (need_dweights_) {
        const int64_t u0 = slicing_.u0(s), nu = slicing_.u1(s) - u0;
        S* at = dg_t_.as<S>() + s * dg_t_stride_;  // [nu or np, rows] scratch
        x_panels_.pack_rows(k_, s, c.rows, x_rows_.data() + c.lo, 0);
        hp_panels_.pack_rows(k_, s, c.rows, hp_rows_.data() + c.lo, 0);
        A* dw_ih = dw_ih_;
        A* dw_hh = dw_hh_;
        for (int64_t g = 0; g < G_; ++g) {
          const int64_t col = g * H_ + u0;  // gate g of the slice's units
          k_.transpose(c.rows, nu, dg + col, GH, at, c.rows);
          hp_panels_.gemm(k_, s, nu, at, c.rows, beta_w, dw_hh + col * P_, P_);
          if (separate_ && g == G_ - 1)  // the input side of the last block has its own gradient
            k_.transpose(c.rows, nu, dgxn_.as<S>() + u0, H_, at, c.rows);
          x_panels_.gemm(k_, s, nu, at, c.rows, beta_w, dw_ih + col * I_, I_);
          k_.add_column_sums(c.rows, nu, dg + col, GH, db_h_ + col);
        }
        if (separate_)
          k_.add_column_sums(c.rows, nu, dgxn_.as<S>() + u0, H_, db_xn_ + u0);
        if (proj_) {
          const int64_t p0 = slicing_.p0(s), np = slicing_.p1(s) - p0;
          m_panels_.pack_rows(k_, s, c.rows, m_rows_.data() + c.lo, 0);
          k_.transpose(c.rows, np, dh_total_.as<S>() + p0, P_, at, c.rows);
          m_panels_.gemm(k_, s, np, at, c.rows, beta_w, dw_hr_ + p0 * H_, H_);
        }
      }
      if (need_dx_) {
        const int64_t i0 = input_cut_[s];
        S* dx = static_cast<S*>(g_.dx) + c.lo * I_ + i0;
        A* dx_acc = kConvert ? dx_chunk_.as<A>() + i0 : reinterpret_cast<A*>(dx);
        w_ih_panels_.gemm(k_, s, c.rows, dg, GH, A(0), dx_acc, I_);
        if (separate_) w_in_panels_.gemm(k_, s, c.rows, dgxn_.as<S>(), H_, A(1), dx_acc, I_);
        if (kConvert) k_.to_storage(c.rows, input_cut_[s + 1] - i0, dx_acc, I_, dx, I_);
      }
    }
  }

  // chunk_products' weight gradients for a chunk of at most
  // kMaxOuterProductRows rows (a call of a few rows: a cell's step at a small
  // batch): sums of outer products read straight from dG and the rows of x,
  // h_prev and m, where transposing dG and packing the rows would cost more
  // than the products.
  void few_rows_weight_gradients(const Chunk& c, A beta_w, int s) {
    const int64_t GH = G_ * H_;
    const S* dg = dg_.as<S>();
    const int64_t u0 = slicing_.u0(s), nu = slicing_.u1(s) - u0;
    for (int64_t g = 0; g < G_; ++g) {
      const int64_t col = g * H_ + u0;  // gate g of the slice's units
      k_.outer_product_sum(nu, P_, c.rows, dg + col, GH, hp_rows_.data() + c.lo, 0, beta_w, dw_hh_ + col * P_, P_);
      // (separate_hidden: the input side of the last block has its own gradient)
      const bool input_side = separate_ && g == G_ - 1;
      const S* dgi = input_side ? dgxn_.as<S>() + u0 : dg + col;
      k_.outer_product_sum(nu, I_, c.rows, dgi, input_side ? H_ : GH, x_rows_.data() + c.lo, 0, beta_w,
                           dw_ih_ + col * I_, I_);
      k_.add_column_sums(c.rows, nu, dg + col, GH, db_h_ + col);
    }
    if (separate_) k_.add_column_sums(c.rows, nu, dgxn_.as<S>() + u0, H_, db_xn_ + u0);
    if (proj_) {
      const int64_t p0 = slicing_.p0(s), np = slicing_.p1(s) - p0;
      k_.outer_product_sum(np, H_, c.rows, dh_total_.as<S>() + p0, P_, m_rows_.data() + c.lo, 0, beta_w,
                           dw_hr_ + p0 * H_, H_);
    }
  }

  // src[n] (storage) -> dst[n] (accumulation type).
  static void to_acc(const S* src, int64_t n, A* dst) {
    for (int64_t i = 0; i < n; ++i) dst[i] = A(src[i]);
  }

  // n accumulated values into a gradient of the storage type.
  void store(const A* src, int64_t n, void* dst) const {
    if (dst && static_cast<const void*>(src) != dst) k_.to_storage(1, n, src, n, static_cast<S*>(dst), n);
  }

  void finish() {
    if (need_dstate_) {
      store(dh_, plan_.B * P_, g_.dh0);
      if (cell_.cell_state) store(dc_, plan_.B * H_, g_.dc0);
    }
    if (need_dweights_) {
      const int64_t GH = G_ * H_;
      store(dw_ih_, GH * I_, g_.dw_ih);  // (no-op where the sums went straight there)
      store(dw_hh_, GH * P_, g_.dw_hh);
      if (proj_) store(dw_hr_, P_ * H_, g_.dw_hr);
      if (in_.b_ih) {
        store(db_h_, GH, g_.db_hh);
        if (separate_) {  // b_ih's last block has its own sums
          store(db_h_, GH - H_, g_.db_ih);
          store(db_xn_, H_, static_cast<S*>(g_.db_ih) + GH - H_);
        } else {
          store(db_h_, GH, g_.db_ih);
        }
      }
    }
  }

  const LayerBackwardView& a_;
  const LayerView& in_;
  const LayerGradView& g_;
  const bool need_dx_ = g_.need_dx, need_dstate_ = g_.need_dstate, need_dweights_ = g_.need_dweights;
  const CellInfo& cell_;
  const KernelTable<S>& k_;  // read once per call: set_cpu_capability may swap the table
  const StepPlan plan_;
  const int64_t G_, H_, I_, P_;
  const bool proj_, separate_;
  const ThreadLease lease_;  // held for the whole call
  const Slicing slicing_;
  const std::vector<int64_t> input_cut_;  // [count+1] column slices of x for dx
  bool few_rows_ = false;  // chunks of at most kMaxOuterProductRows rows: few_rows_weight_gradients
  const S* workspace_;          // the forward's saved activations
  const SavedLayout saved_;      // where each block starts in them
  std::vector<Chunk> chunks_;
  // Chunk buffers (rows of the current chunk):
  PooledBytes dg_;        // [rows, G*H] S: pre-activation gradients (separate_hidden: hidden side)
  PooledBytes dgxn_;      // [rows, H] S, separate_hidden: input side of the last block
  PooledBytes dh_total_;  // [rows, P] S, proj: dh_t = dy_t + recurrent part (input of dw_hr)
  PooledBytes dg_t_;      // per slice: [nu or np, rows] S, a transposed column block of dG (or dh_total);
                          //   not allocated where few_rows_, nor the x, h_prev and m panels below
  int64_t dg_t_stride_ = 0;  // elements from one slice's block of dg_t_ to the next
  PooledBytes dx_chunk_;  // 16-bit storage: [rows, I] A, dx of the chunk before conversion
  // Step state (A):
  SmallBuffers small_;
  A* dh_ = nullptr;  // [B, P] recurrent gradient of the current step's h
  A* dc_ = nullptr;  // [B, H] cell_state: gradient of the current step's c
  A* dm_ = nullptr;  // [B, H] proj: gradient of m_t
  // Gradient accumulators (A):
  PooledBytes acc_;          // 16-bit storage: the weight-gradient sums below
  A* dw_ih_ = nullptr;       // [G*H, I] (the gradient itself where A = S)
  A* dw_hh_ = nullptr;       // [G*H, P]
  A* dw_hr_ = nullptr;       // [P, H], proj
  PooledBytes bias_sums_;
  A* db_h_ = nullptr;        // [G*H] column sums of dg_
  A* db_xn_ = nullptr;       // [H] separate_hidden: column sums of dgxn_
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

void backward_loop_cpu(const LayerBackwardView& b, const LayerGradView& g) {
  switch (b.in.dtype) {
    case StorageType::kFloat: return cpu::BackwardLoop<float>(b, g).run();
    case StorageType::kDouble: return cpu::BackwardLoop<double>(b, g).run();
    case StorageType::kBFloat16: return cpu::BackwardLoop<c10::BFloat16>(b, g).run();
    case StorageType::kHalf: return cpu::BackwardLoop<c10::Half>(b, g).run();
  }
}

}  // namespace rnnfast
