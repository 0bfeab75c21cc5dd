// CPU forward of one layer-direction (interface: csrc/layer_view.h; no torch
// header: on the stable ABI's side of issue 16).
//
// One parallel region. The hidden units are split into one column slice per
// thread; each thread packs its slice of the weights once (then streamed from
// its own cache every step) and
//   1. per chunk of steps, computes its columns of x @ w_ih^T as one GEMM;
//   2. per step, its columns of h_{t-1} @ w_hh^T and the fused gate math of
//      its units. One barrier per step publishes h_t (two with a projection:
//      m_t, then h_t = m_t @ w_hr^T).
#include "loop_common.h"

namespace rnnfast {
namespace cpu {
namespace {

// Pre-activation chunks up to this size share the call's one small-buffer
// allocation (a one-step call then allocates its scratch once).
constexpr int64_t kSmallGxBytes = 16 * 1024;

// Whether the threads of a forward split its batch rather than its hidden
// units. A slice of the units needs every unit of h_{t-1}: one barrier per
// step, and on a shared VM a thread the host delays stalls the other there
// (measured: 5-10 % of an LSTM inference at B=32, H=256 waiting). Split by
// rows, each thread runs whole steps of its own sequences without waiting,
// but streams all the weights every step instead of its slice. Used for a
// padded batch of at least kMinSplitRows rows per thread whose weights fit
// kMaxSplitWeightBytes (streamed from L3 by every thread); packed batches
// (rows leave as sequences end) and projections keep the slices.
constexpr int64_t kMinSplitRows = 16;
constexpr int64_t kMaxSplitWeightBytes = int64_t(4) << 20;

bool split_batch(const StepPlan& plan, const LayerView& in, int64_t element_size, int threads) {
  static const int64_t max_bytes = bytes_from_env("RNNFAST_SPLIT_WEIGHT_BYTES", kMaxSplitWeightBytes);
  const LayerDims& d = in.d;
  const int64_t weight_bytes = d.G * d.H * (d.I + d.P) * element_size;
  // (A single step has no per-step barriers to save, and its weights are
  // streamed: split, every thread would pack all of them.)
  return threads > 1 && !in.batch_sizes && !d.proj && plan.T > 1 && plan.B >= kMinSplitRows * threads &&
         weight_bytes <= max_bytes;
}

template <typename S>
class ForwardLoop {
 public:
  using A = acc_t<S>;

  ForwardLoop(const LayerView& in, const LayerOutputView& out, bool training)
      : in_(in),
        out_(out),
        cell_(cell_info(in.cell)),
        k_(kernels<S>()),
        plan_(make_step_plan(in)),
        G_(in.d.G),
        H_(in.d.H),
        I_(in.d.I),
        P_(in.d.P),
        proj_(in.d.proj),
        training_(training),
        lease_(CallWork{.H = H_, .rows = plan_.B, .steps = plan_.T, .macs_per_step = plan_.B * G_ * H_ * P_,
                        .total_macs = plan_.N * G_ * H_ * (I_ + P_)}),
        batch_split_(split_batch(plan_, in, sizeof(S), lease_.threads())),
        slicing_(H_, P_, batch_split_ ? 1 : lease_.threads()) {}

  void run() {
    const int64_t B = plan_.B, GH = G_ * H_;
    if (training_) {
      workspace_ = static_cast<S*>(out_.workspace);
      saved_ = SavedLayout::of(in_.cell, in_.d);
    }
    y_ = static_cast<S*>(out_.y);
    // The input projection x @ w_ih^T is computed a chunk of steps at a time,
    // ahead of the chunk's recurrence: one large GEMM per slice, and scratch
    // bounded by the chunk size however long the sequence.
    chunks_ = plan_.chunks(std::max<int64_t>(B, kForwardChunkRows));
    const int64_t gx_size = StepPlan::max_rows(chunks_) * GH;
    constexpr int64_t a = sizeof(A), s = sizeof(S);
    const bool small_gx = gx_size * a <= kSmallGxBytes;
    if (!small_gx) gx_large_ = PooledBytes(gx_size * a);
    // A projection's output h_t = m_t @ w_hr^T is an A-typed GEMM result: a
    // storage type other than A needs it converted from a scratch of its own.
    const bool proj_scratch = proj_ && !std::is_same_v<S, A>;
    small_ = SmallBuffers({small_gx ? gx_size * a : 0,
                           cell_.separate_hidden ? B * GH * a : 0,  // gh
                           proj_ && !training_ ? B * H_ * s : 0,    // m of the current step
                           cell_.cell_state ? B * H_ * a : 0,       // running c
                           FoldedBias<S>::size(cell_, H_) * a,
                           proj_scratch ? B * P_ * a : 0});         // h_t before conversion
    gx_ = small_gx ? small_.get<A>(0) : gx_large_.as<A>();
    gh_ = small_.get<A>(1);
    m_scratch_ = small_.get<S>(2);
    c_ = small_.get<A>(3);
    bias_ = FoldedBias<S>(cell_, static_cast<const S*>(in_.b_ih), static_cast<const S*>(in_.b_hh), H_,
                          small_.get<A>(4));
    hr_ = small_.get<A>(5);
    if (cell_.cell_state) {
      const S* c0 = static_cast<const S*>(in_.c0);
      for (int64_t i = 0; i < B * H_; ++i) c_[i] = A(c0[i]);
    }
    // Packing costs about as much as one pass of GEMMs over the weights: not
    // repaid by a step or two of a small batch (e.g. one step at a time while
    // decoding). Such calls read the weights where they are; a weight
    // multiplied once in the call (w_ih of a single chunk, every weight of a
    // single step) is streamed; the others use panels from the panel cache,
    // packed again only where a weight changed (weight_use, loop_common.h).
    // Slice s multiplies by its columns of w_ih^T and w_hh^T, gate-blocked:
    // column g*nu + j is row g*H + u0 + j of the weight, so one GEMM gives all
    // gates of the slice's units. With projection it also owns columns
    // p0..p1 of w_hr^T.
    const bool direct = plan_.N <= kMaxUnpackedRows;
    const int64_t step_rows = batch_split_ ? (plan_.B + lease_.threads() - 1) / lease_.threads() : plan_.B;
    const int64_t chunk_rows = batch_split_ ? step_rows : StepPlan::max_rows(chunks_);
    const int64_t ih_gemms = batch_split_ ? plan_.T : int64_t(chunks_.size());
    std::vector<SliceSource> ih(slicing_.count), hh(slicing_.count), hr(slicing_.count);
    for (int s = 0; s < slicing_.count; ++s) {
      const int64_t u0 = slicing_.u0(s), nu = slicing_.u1(s) - u0;
      ih[s] = {0, 1, ColumnMap{u0 * I_, nu, H_ * I_, I_}};
      hh[s] = {0, 1, ColumnMap{u0 * P_, nu, H_ * P_, P_}};
      hr[s] = {0, 1, ColumnMap{slicing_.p0(s) * H_, P_, 0, H_}};
    }
    // (w: [rows, K] contiguous)
    // gemms, gemm_rows: products by the weight per slice in this call, rows of the largest.
    auto panels = [&](const void* w, const void* owner, int64_t rows, int64_t K, std::vector<int64_t> widths,
                      std::vector<SliceSource> src, int64_t gemms, int64_t gemm_rows) {
      return SlicePanels<S>::of(k_, weight_use(plan_.N, gemms, gemm_rows, K, sizeof(S)), static_cast<const S*>(w),
                                rows * K, owner, K, gemm_rows, std::move(widths), std::move(src));
    };
    w_ih_panels_ = panels(in_.w_ih, in_.w_ih_owner, GH, I_, slicing_.unit_widths(G_), std::move(ih), ih_gemms,
                          chunk_rows);
    w_hh_panels_ = panels(in_.w_hh, in_.w_hh_owner, GH, P_, slicing_.unit_widths(G_), std::move(hh), plan_.T,
                          step_rows);
    if (proj_)
      w_hr_panels_ = panels(in_.w_hr, in_.w_hr_owner, P_, H_, slicing_.proj_widths(), std::move(hr), plan_.T,
                            step_rows);

    const int team = batch_split_ ? lease_.threads() : slicing_.count;
    last_call_plan() = CallPlan{false, team, int64_t(chunks_.size()), StepPlan::max_rows(chunks_), direct};
    last_call_plan().batch_split = batch_split_;
    for (const SlicePanels<S>* p : {&w_ih_panels_, &w_hh_panels_, &w_hr_panels_}) {
      last_call_plan().streamed += p->is_streamed();
      last_call_plan().weight_as_a += p->reads_weight_as_a(k_);
    }
    run_parallel(team, lease_.watch(), [&](int thread, int threads, SpinBarrier& barrier) {
      pack_weights(thread, threads, barrier);
      if (batch_split_) {
        // Each thread runs whole steps for its own sequences: no barrier per step.
        const int64_t b0 = plan_.B * thread / threads, b1 = plan_.B * (thread + 1) / threads;
        for (const Chunk& c : chunks_) {
          project_input_rows(c, b0, b1);
          for (int64_t s = c.s0; s < c.s1; ++s) step_slice(s, c, 0, b0, b1);
        }
        return;
      }
      for (const Chunk& c : chunks_) {
        project_input(c, thread, threads);
        for (int64_t s = c.s0; s < c.s1; ++s) step(s, c, thread, threads, barrier);
      }
    });
    w_ih_panels_.commit();
    w_hh_panels_.commit();
    w_hr_panels_.commit();
    gather_h_n(static_cast<S*>(out_.h_n));
    // Rows keep c from their last step.
    if (cell_.cell_state) k_.to_storage(B, H_, c_, H_, static_cast<S*>(out_.c_n), H_);
  }

 private:
  using Chunk = StepPlan::Chunk;

  // Each thread packs its slices of the weights (or finds them in the panel
  // cache), then waits for all: every slice's panels are read by its owner
  // only, but the barrier also orders the packing before the first step's
  // reads of the previous state.
  void pack_weights(int thread, int threads, SpinBarrier& barrier) {
    if (proj_) {
      check_and_pack(k_, slicing_, thread, threads, barrier, w_ih_panels_, w_hh_panels_, w_hr_panels_);
    } else {
      check_and_pack(k_, slicing_, thread, threads, barrier, w_ih_panels_, w_hh_panels_);
    }
    barrier.wait(thread);
  }

  // gx rows of the chunk, this thread's slices' columns. Only the owning
  // slice reads them, so no barrier is needed before the chunk's steps.
  void project_input(const Chunk& c, int thread, int threads) {
    const S* x = static_cast<const S*>(in_.x) + c.lo * I_;
    for (int s = thread; s < slicing_.count; s += threads)
      w_ih_panels_.gemm(k_, s, c.rows, x, I_, A(0), gx_ + G_ * slicing_.u0(s), G_ * H_);
  }

  // Batch split: gx rows [b0, b1) of every step of the chunk, all columns
  // (one slice), a GEMM per step (the thread's rows of a chunk are not one
  // strided block).
  void project_input_rows(const Chunk& c, int64_t b0, int64_t b1) {
    const S* x = static_cast<const S*>(in_.x);
    for (int64_t s = c.s0; s < c.s1; ++s) {
      const int64_t off = plan_.offset(plan_.step(s));
      w_ih_panels_.gemm(k_, 0, b1 - b0, x + (off + b0) * I_, I_, A(0), gx_ + (off - c.lo + b0) * G_ * H_,
                        G_ * H_);
    }
  }

  // Previous hidden state of rows [b0, ...) of the s-th processed step: the
  // previous step's output rows, or h0 for rows that start here.
  PrevRows<S> h_prev(int64_t s, int64_t b0 = 0) const {
    PrevRows<S> p;
    p.n_first = std::max<int64_t>(plan_.continuing_rows(s) - b0, 0);
    p.first = s == 0 ? nullptr : y_ + (plan_.previous_offset(s) + b0) * P_;
    p.ld_first = P_;
    p.initial = static_cast<const S*>(in_.h0) + b0 * P_;
    p.ld_initial = P_;
    return p;
  }

  // Output rows of the gate math from row `row` of the step at `off`: h_t
  // itself, or m_t (the input of w_hr).
  S* gate_output(int64_t off, int64_t row) const {
    if (!proj_) return y_ + (off + row) * P_;
    return (training_ ? SavedLayout::block(workspace_, saved_.proj_in) + off * H_ : m_scratch_) + row * H_;
  }

  // Step s for the units of slice sl and the step's rows [b0, b1): the
  // recurrent GEMM and the fused gate math.
  void step_slice(int64_t s, const Chunk& chunk, int sl, int64_t b0, int64_t b1) {
    const int64_t t = plan_.step(s), off = plan_.offset(t), rows = b1 - b0;
    const int64_t GH = G_ * H_;
    const PrevRows<S> prev = h_prev(s, b0);
    A* gx = gx_ + (off - chunk.lo + b0) * GH;  // this step's rows
    const int64_t u0 = slicing_.u0(sl);
    A* gx_slice = gx + G_ * u0;
    // Recurrent GEMM: rows continuing from the previous step, then rows
    // starting from h0 (every row of the first step; later, only in the
    // reverse direction of a packed batch), accumulated into the input part
    // or kept apart (separate_hidden).
    A* rec = cell_.separate_hidden ? gh_ + b0 * GH + G_ * u0 : gx_slice;
    const A beta = cell_.separate_hidden ? A(0) : A(1);
    const int64_t n1 = std::min(prev.n_first, rows);
    // (the rows from h0, where there are both, continue from where the first call ended)
    w_hh_panels_.gemm(k_, sl, n1, prev.first, P_, beta, rec, GH, s);
    w_hh_panels_.gemm(k_, sl, rows - n1, prev.initial + n1 * P_, P_, beta, rec + n1 * GH, GH, s + 1);

    CellForwardRows<S> r;
    r.rows = rows; r.u0 = u0; r.u1 = slicing_.u1(sl); r.H = H_;
    r.gx = gx_slice; r.ld_gx = GH;
    r.gh = rec; r.ld_gh = GH;
    r.bias = bias_.bias();
    r.bias_hn = bias_.bias_hn();
    r.h_prev = prev;
    if (cell_.cell_state) {
      r.c = c_ + b0 * H_; r.ld_c = H_;
    }
    r.h = gate_output(off, b0); r.ld_h = proj_ ? H_ : P_;
    if (training_) {
      // RNN cells save neither block: their pointers stay null (no offset on null).
      S* gates = SavedLayout::block(workspace_, saved_.gates);
      r.gates = gates ? gates + (off + b0) * GH : nullptr; r.ld_gates = GH;
      S* saved = SavedLayout::block(workspace_, saved_.step_state(in_.cell));
      r.saved = saved ? saved + (off + b0) * H_ : nullptr; r.ld_saved = H_;
      k_.cells[int(in_.cell)].forward_train(r);
    } else {
      k_.cells[int(in_.cell)].forward_infer(r);
    }
  }

  void step(int64_t s, const Chunk& chunk, int thread, int threads, SpinBarrier& barrier) {
    const int64_t t = plan_.step(s), rows = plan_.bs(t), off = plan_.offset(t);
    for (int sl = thread; sl < slicing_.count; sl += threads) step_slice(s, chunk, sl, 0, rows);
    barrier.wait(thread);
    if (!proj_) return;
    // h_t = m_t @ w_hr^T, each slice its columns of the projection.
    const S* m = gate_output(off, 0);
    for (int sl = thread; sl < slicing_.count; sl += threads) {
      const int64_t p0 = slicing_.p0(sl);
      if constexpr (std::is_same_v<S, A>) {
        w_hr_panels_.gemm(k_, sl, rows, m, H_, A(0), y_ + off * P_ + p0, P_);
      } else {
        w_hr_panels_.gemm(k_, sl, rows, m, H_, A(0), hr_ + p0, P_);
        k_.to_storage(rows, slicing_.p1(sl) - p0, hr_ + p0, P_, y_ + off * P_ + p0, P_);
      }
    }
    barrier.wait(thread);
  }

  // Each sequence's final hidden state is its output at its last step.
  void gather_h_n(S* hn) {
    for (int64_t b = 0; b < plan_.B; ++b) {
      const int64_t t = plan_.last_step_of_row(b);
      std::copy_n(y_ + (plan_.offset(t) + b) * P_, P_, hn + b * P_);
    }
  }

  const LayerView& in_;
  const LayerOutputView& out_;
  const CellInfo& cell_;
  const KernelTable<S>& k_;  // read once per call: set_cpu_capability may swap the table
  const StepPlan plan_;
  const int64_t G_, H_, I_, P_;
  const bool proj_, training_;
  const ThreadLease lease_;  // held for the whole call
  // Threads split the batch (each runs whole steps for its sequences) instead
  // of the hidden units (slices meeting at a barrier every step).
  const bool batch_split_;
  const Slicing slicing_;
  FoldedBias<S> bias_;
  std::vector<Chunk> chunks_;
  S* y_ = nullptr;             // [N, P] output
  S* workspace_ = nullptr;     // training: the saved activations ([N * saved_width])
  SavedLayout saved_;          // training: where each block starts in it
  PooledBytes gx_large_;       // gx_ when it is too large for small_
  SmallBuffers small_;
  A* gx_ = nullptr;            // [chunk rows, G*H] slice-blocked pre-activations of a chunk
  A* gh_ = nullptr;            // separate_hidden: [B, G*H] slice-blocked h_prev @ w_hh^T
  S* m_scratch_ = nullptr;     // inference with projection: [B, H] m of the current step
  A* c_ = nullptr;             // cell_state: [B, H] running cell state (c0 in, c_n out)
  A* hr_ = nullptr;            // projection, 16-bit storage: [B, P] h_t before conversion
  SlicePanels<S> w_ih_panels_;  // per slice: [I, G*nu] w_ih^T, gate-blocked
  SlicePanels<S> w_hh_panels_;  // per slice: [P, G*nu] w_hh^T, gate-blocked
  SlicePanels<S> w_hr_panels_;  // per slice: [H, np] w_hr^T
};

}  // namespace
}  // namespace cpu

void forward_loop_cpu(const LayerView& in, const LayerOutputView& out, bool training) {
  switch (in.dtype) {
    case StorageType::kFloat: return cpu::ForwardLoop<float>(in, out, training).run();
    case StorageType::kDouble: return cpu::ForwardLoop<double>(in, out, training).run();
    case StorageType::kBFloat16: return cpu::ForwardLoop<c10::BFloat16>(in, out, training).run();
    case StorageType::kHalf: return cpu::ForwardLoop<c10::Half>(in, out, training).run();
  }
}

}  // namespace rnnfast
