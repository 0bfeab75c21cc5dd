// CPU sequence loops of one layer-direction (interface: csrc/layer.h).
//
// Forward: one parallel region. The hidden units are split into one column
// slice per thread; each thread packs its slice of the weights once (then
// streamed from its own cache every step) and
//   1. per chunk of steps, computes its columns of x @ w_ih^T as one GEMM;
//   2. per step, its columns of h_{t-1} @ w_hh^T and the fused gate math of
//      its units. One barrier per step publishes h_t (two with a projection:
//      m_t, then h_t = m_t @ w_hr^T).
// Backward mirrors it: per step the fused gate backward of each slice's units,
// a barrier, and each slice's columns of dh_{t-1} = dG_t @ w_hh. After the
// loop the time-parallel products run as single GEMMs over all steps:
// dw_ih = dG^T x, dx = dG w_ih, dw_hh = dG^T h_prev, bias gradients as column
// sums (deterministic).
//
// No allocation and no exception inside the parallel region: every buffer is
// allocated before it, and the kernels only see raw pointers.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/strides.h>

#include <algorithm>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../layer.h"
#include "barrier.h"
#include "buffer_pool.h"
#include "kernels.h"

namespace rnnfast {
namespace cpu {
namespace {

bool defined(const OptTensor& t) { return t.has_value() && t->defined(); }

// Time steps in processing order and where their rows are.
struct StepPlan {
  int64_t T = 0, B = 0, N = 0;
  bool reverse = false;
  std::vector<int64_t> bs;      // [T] batch size of step t
  std::vector<int64_t> offset;  // [T+1] first row of step t

  StepPlan(const Tensor& batch_sizes, bool rev) : reverse(rev) {
    T = batch_sizes.size(0);
    const int64_t* b = batch_sizes.data_ptr<int64_t>();
    bs.assign(b, b + T);
    offset.resize(T + 1, 0);
    for (int64_t t = 0; t < T; ++t) offset[t + 1] = offset[t] + bs[t];
    N = offset[T];
    B = bs[0];
  }
  // The time step processed s-th.
  int64_t step(int64_t s) const { return reverse ? T - 1 - s : s; }
  // Rows of the s-th processed step that continue from the previously
  // processed step; the rest start from the initial state.
  int64_t continuing_rows(int64_t s) const {
    return s == 0 ? 0 : std::min(bs[step(s)], bs[step(s - 1)]);
  }
  // Previous state of each row of the s-th processed step: rows of `states`
  // ([N, ld] per-step rows, e.g. y) of the previous step, or `initial` [B, ld_initial].
  template <typename T_>
  PrevRows<T_> prev(int64_t s, const T_* states, int64_t ld, const T_* initial,
                    int64_t ld_initial) const {
    PrevRows<T_> p;
    p.n_first = continuing_rows(s);
    p.first = s == 0 ? nullptr : states + offset[step(s - 1)] * ld;
    p.ld_first = ld;
    p.initial = initial;
    p.ld_initial = ld_initial;
    return p;
  }
  // Processed steps [s0, s1), whose rows are [lo, lo + rows).
  struct Chunk {
    int64_t s0, s1, lo, rows;
  };
  // Consecutive processed steps grouped into chunks of about target_rows rows
  // (at least one step each): the unit of the time-parallel GEMMs.
  std::vector<Chunk> chunks(int64_t target_rows) const {
    std::vector<Chunk> out;
    for (int64_t s0 = 0; s0 < T;) {
      int64_t s1 = s0, rows = 0;
      while (s1 < T && (s1 == s0 || rows + bs[step(s1)] <= target_rows)) rows += bs[step(s1++)];
      out.push_back({s0, s1, reverse ? offset[step(s1 - 1)] : offset[s0], rows});
      s0 = s1;
    }
    return out;
  }
  static int64_t max_rows(const std::vector<Chunk>& chunks) {
    int64_t m = 0;
    for (const Chunk& c : chunks) m = std::max(m, c.rows);
    return m;
  }
  // Step at which row b was processed last (where its final state is).
  int64_t last_step_of_row(int64_t b) const {
    if (reverse) return 0;
    int64_t len = 0;
    while (len < T && bs[len] > b) ++len;
    return len - 1;
  }
};

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

  // total_macs: multiply-adds of the whole call, which must pay for starting
  // the threads (~10 us); a step must carry enough work to pay for a barrier.
  Slicing(int64_t H, int64_t P, int64_t B, int64_t G, int64_t total_macs) {
    const int threads = at::get_num_threads();
    const int64_t macs_per_step = B * G * H * P;
    count = (threads > 1 && H >= 32 && macs_per_step >= 16384 && total_macs >= (int64_t(1) << 20))
                ? threads
                : 1;
    count = static_cast<int>(std::min<int64_t>(count, H / 16 > 0 ? H / 16 : 1));
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
// Rows of A below which one GEMM pass over unpacked weights beats packing them
// (calibrated at H=128: packing ~ 2.5 passes of a one-row GEMV).
constexpr int64_t kRowsPerPackedPass = 1;
constexpr int64_t kBackwardChunkRows = 512;

// Runs body(thread, threads, barrier) on `slices` threads (a serial call when
// there is one slice). The OpenMP team may be smaller than asked (nested
// parallelism): each thread then handles slices thread, thread+threads, ...
template <typename Body>
void run_parallel(int slices, const Body& body) {
#ifdef _OPENMP
  if (slices > 1 && !omp_in_parallel()) {
    const int team = std::min(slices, at::get_num_threads());
    SpinBarrier* barrier_ptr = nullptr;
    alignas(64) unsigned char storage[sizeof(SpinBarrier)];
#pragma omp parallel num_threads(team)
    {
      const int threads = omp_get_num_threads();
#pragma omp single
      barrier_ptr = new (storage) SpinBarrier(threads);
      // (implicit barrier after single)
      body(omp_get_thread_num(), threads, *barrier_ptr);
    }
    return;
  }
#endif
  SpinBarrier solo(1);
  body(0, 1, solo);
}

// A matrix packed for gemm_packed separately for each column slice (slice s:
// up to K_max rows, widths[s] columns): the weights of the time loop, or a
// chunk of rows for the weight gradients. Allocated before the parallel
// region; each thread packs its own slices inside it, so the panels are first
// touched by the core that streams them.
template <typename T>
class SlicePanels {
 public:
  SlicePanels() = default;
  SlicePanels(const KernelTable<T>& k, int64_t K_max, std::vector<int64_t> widths,
              const at::TensorOptions& opts)
      : K_(widths.size(), K_max), widths_(std::move(widths)), offsets_(widths_.size() + 1, 0) {
    for (size_t s = 0; s < widths_.size(); ++s)
      offsets_[s + 1] = offsets_[s] + k.packed_b_size(K_max, widths_[s]);
    buffer_ = pooled_empty({std::max<int64_t>(offsets_.back(), 1)}, opts);
  }
  // Unpacked: gemm() reads the weights where they are (gemm_direct), for calls
  // too small to repay packing. Only for transposed weights (k_stride 1).
  static SlicePanels direct(int64_t K, std::vector<int64_t> widths) {
    SlicePanels p;
    p.K_.assign(widths.size(), K);
    p.widths_ = std::move(widths);
    p.direct_.resize(p.widths_.size());
    return p;
  }
  // Packs slice s from column map `columns` of src (rows k at k_stride); in
  // direct mode only remembers where the columns are.
  void pack(const KernelTable<T>& k, int s, const T* src, int64_t k_stride, ColumnMap columns) {
    if (!direct_.empty()) {
      TORCH_INTERNAL_ASSERT(k_stride == 1);
      direct_[s] = {src, columns};
      return;
    }
    k.pack_b(K_[s], widths_[s], src, k_stride, columns, data(s));
  }
  // Packs slice s from K rows given by pointers (their columns col0 ...).
  void pack_rows(const KernelTable<T>& k, int s, int64_t K, const T* const* rows, int64_t col0) {
    K_[s] = K;
    k.pack_b_rows(K, widths_[s], rows, col0, data(s));
  }
  // C[M, widths[s]] = A[M, K] @ (slice s) + beta * C.
  void gemm(const KernelTable<T>& k, int s, int64_t M, const T* A, int64_t lda, T beta, T* C,
            int64_t ldc) const {
    if (M <= 0) return;
    if (direct_.empty()) {
      k.gemm_packed(M, widths_[s], K_[s], A, lda, data(s), beta, C, ldc);
      return;
    }
    // Columns come in blocks of contiguous weight rows (gate blocks).
    const auto& [src, cols] = direct_[s];
    for (int64_t n0 = 0; n0 < widths_[s]; n0 += cols.block) {
      const int64_t n = std::min(cols.block, widths_[s] - n0);
      k.gemm_direct(M, n, K_[s], A, lda, src + cols.offset(n0), cols.col_stride, beta, C + n0, ldc);
    }
  }

 private:
  T* data(int s) const { return buffer_.data_ptr<T>() + offsets_[s]; }
  std::vector<std::pair<const T*, ColumnMap>> direct_;  // direct mode: where each slice's columns are
  std::vector<int64_t> K_;
  std::vector<int64_t> widths_;
  std::vector<int64_t> offsets_;
  Tensor buffer_;
};

template <typename T>
T* ptr(const Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// Small buffers of the step loops (running cell state, recurrent gradients,
// folded biases) are read and written next to the large pooled buffers, whose
// rows all start at the same offsets modulo 4 KB. Where malloc puts a small
// buffer modulo 4 KB is a lottery, and at some offsets its loads alias recent
// stores to a large buffer (4K aliasing: a load waits for an unrelated store):
// measured as 30 % slower LSTM training at B=8 in about a quarter of processes.
// Small buffers therefore start at a fixed offset off the 4 KB grid.
constexpr uintptr_t kSmallBufferOffset = 2048 + 256;

// Elements to skip from p to reach the fixed offset (p 16-byte aligned, as
// malloc and at::empty give, so the skip is a whole number of elements).
template <typename T>
int64_t skew(const void* p) {
  const uintptr_t at = reinterpret_cast<uintptr_t>(p) % 4096;
  return int64_t((kSmallBufferOffset + 4096 - at) % 4096 / sizeof(T));
}

// An uninitialised contiguous tensor starting at the fixed offset.
template <typename T>
Tensor empty_small(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  Tensor raw = at::empty({numel + int64_t(4096 / sizeof(T))}, opts);
  return raw.as_strided(sizes, c10::contiguous_strides(sizes), skew<T>(raw.data_ptr()));
}

// Bias vectors folded for the fused kernels (zeros without bias), in a plain
// vector: tensor ops would cost microseconds of dispatch in a one-step call.
//   LSTM: bias = b_ih + b_hh [4H]
//   GRU:  bias = b_ih + (b_hr, b_hz, 0) [3H], bias_hn = b_hn [H]
template <typename T>
class FoldedBias {
 public:
  FoldedBias() = default;
  FoldedBias(CellType cell, const LayerWeights& w, int64_t H) {
    const int64_t GH = gate_count(cell) * H;
    storage_.assign(GH + H + 4096 / sizeof(T), T(0));
    bias_ = storage_.data() + skew<T>(storage_.data());
    bias_hn_ = bias_ + GH;
    if (!defined(w.b_ih)) return;
    const T* b_ih = w.b_ih->template data_ptr<T>();  // contiguous (checked)
    const T* b_hh = w.b_hh->template data_ptr<T>();
    const int64_t hidden_part = cell == CellType::kGRU ? 2 * H : GH;
    for (int64_t j = 0; j < GH; ++j) bias_[j] = j < hidden_part ? b_ih[j] + b_hh[j] : b_ih[j];
    if (cell == CellType::kGRU) std::copy_n(b_hh + 2 * H, H, bias_hn_);
  }
  const T* bias() const { return bias_; }
  const T* bias_hn() const { return bias_hn_; }

 private:
  std::vector<T> storage_;
  T* bias_ = nullptr;     // [G*H]
  T* bias_hn_ = nullptr;  // [H]
};

// ---------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------
template <typename T>
class ForwardLoop {
 public:
  explicit ForwardLoop(const LayerForwardArgs& a)
      : a_(a),
        cell_(a.cell),
        plan_(a.batch_sizes, a.reverse),
        G_(gate_count(a.cell)),
        H_(a.w.w_ih.size(0) / G_),
        I_(a.x.size(1)),
        P_(a.w.w_hh.size(1)),
        proj_(defined(a.w.w_hr)),
        slicing_(H_, P_, plan_.B, G_, plan_.N * G_ * H_ * (I_ + P_)) {}

  std::vector<Tensor> run() {
    const int64_t N = plan_.N, B = plan_.B, GH = G_ * H_;
    auto opts = a_.x.options();
    std::vector<Tensor> saved;
    if (a_.training) {
      gates_ = pooled_empty({N, GH}, opts);
      saved.push_back(gates_);
      if (cell_ == CellType::kLSTM) {
        cells_ = pooled_empty({N, H_}, opts);
        saved.push_back(cells_);
        if (proj_) {
          m_ = pooled_empty({N, H_}, opts);
          saved.push_back(m_);
        }
      } else {
        hn_ = pooled_empty({N, H_}, opts);
        saved.push_back(hn_);
      }
    } else if (proj_) {
      m_ = empty_small<T>({B, H_}, opts);  // scratch: m of the current step
    }
    // The input projection x @ w_ih^T is computed a chunk of steps at a time,
    // ahead of the chunk's recurrence: one large GEMM per slice, and scratch
    // bounded by the chunk size however long the sequence.
    chunks_ = plan_.chunks(std::max<int64_t>(B, kForwardChunkRows));
    gx_ = pooled_empty({StepPlan::max_rows(chunks_), GH}, opts);
    if (cell_ == CellType::kGRU) gh_ = empty_small<T>({B, GH}, opts);
    const KernelTable<T>& k = kernels<T>();
    // Packing costs about as much as one pass of GEMMs over the weights: not
    // repaid by a step or two of a small batch (e.g. one step at a time while
    // decoding). Such calls read the weights where they are.
    if (plan_.N <= 4 * kRowsPerPackedPass) {
      w_ih_panels_ = SlicePanels<T>::direct(I_, slicing_.unit_widths(G_));
      w_hh_panels_ = SlicePanels<T>::direct(P_, slicing_.unit_widths(G_));
      if (proj_) w_hr_panels_ = SlicePanels<T>::direct(H_, slicing_.proj_widths());
    } else {
      w_ih_panels_ = SlicePanels<T>(k, I_, slicing_.unit_widths(G_), opts);
      w_hh_panels_ = SlicePanels<T>(k, P_, slicing_.unit_widths(G_), opts);
      if (proj_) w_hr_panels_ = SlicePanels<T>(k, H_, slicing_.proj_widths(), opts);
    }
    bias_ = FoldedBias<T>(cell_, a_.w, H_);
    if (cell_ == CellType::kLSTM) c_ = empty_small<T>({B, H_}, opts).copy_(*a_.c0);

    run_parallel(slicing_.count, [&](int thread, int threads, SpinBarrier& barrier) {
      pack_weights(thread, threads, barrier);
      for (const Chunk& c : chunks_) {
        project_input(c, thread, threads);
        for (int64_t s = c.s0; s < c.s1; ++s) step(s, c, thread, threads, barrier);
      }
    });
    gather_h_n();
    if (cell_ == CellType::kLSTM) a_.c_n->copy_(c_);  // rows keep c from their last step
    return saved;
  }

 private:
  using Chunk = StepPlan::Chunk;

  // Slice s multiplies by its columns of w_ih^T and w_hh^T, gate-blocked:
  // column g*nu + j is row g*H + u0 + j of the weight, so one GEMM gives all
  // gates of the slice's units. With projection it also owns columns
  // p0..p1 of w_hr^T.
  void pack_weights(int thread, int threads, SpinBarrier& barrier) {
    const KernelTable<T>& k = kernels<T>();
    for (int s = thread; s < slicing_.count; s += threads) {
      const int64_t u0 = slicing_.u0(s), nu = slicing_.u1(s) - u0;
      w_ih_panels_.pack(k, s, a_.w.w_ih.template data_ptr<T>(), 1,
                        ColumnMap{u0 * I_, nu, H_ * I_, I_});
      w_hh_panels_.pack(k, s, a_.w.w_hh.template data_ptr<T>(), 1,
                        ColumnMap{u0 * P_, nu, H_ * P_, P_});
      if (proj_)
        w_hr_panels_.pack(k, s, a_.w.w_hr->template data_ptr<T>(), 1,
                          ColumnMap{slicing_.p0(s) * H_, P_, 0, H_});
    }
    barrier.wait(thread);
  }

  // gx rows of the chunk, this thread's slices' columns. Only the owning
  // slice reads them, so no barrier is needed before the chunk's steps.
  void project_input(const Chunk& c, int thread, int threads) {
    const KernelTable<T>& k = kernels<T>();
    const T* x = a_.x.template data_ptr<T>() + c.lo * I_;
    for (int s = thread; s < slicing_.count; s += threads)
      w_ih_panels_.gemm(k, s, c.rows, x, I_, T(0), gx_.data_ptr<T>() + G_ * slicing_.u0(s), G_ * H_);
  }

  void step(int64_t s, const Chunk& chunk, int thread, int threads, SpinBarrier& barrier) {
    const int64_t t = plan_.step(s), rows = plan_.bs[t], off = plan_.offset[t];
    const int64_t GH = G_ * H_;
    T* y = a_.y.template data_ptr<T>();
    const int64_t ldy = a_.y.stride(0);
    const T* h0 = a_.h0.template data_ptr<T>();
    const PrevRows<T> h_prev = plan_.prev<T>(s, y, ldy, h0, P_);
    const KernelTable<T>& k = kernels<T>();
    T* gx = gx_.data_ptr<T>() + (off - chunk.lo) * GH;  // this step's rows

    for (int sl = thread; sl < slicing_.count; sl += threads) {
      const int64_t u0 = slicing_.u0(sl), u1 = slicing_.u1(sl);
      T* gx_slice = gx + G_ * u0;
      // Recurrent GEMM: rows continuing from the previous step, then rows
      // starting from h0 (only in the reverse direction of a packed batch).
      // LSTM adds it to the input part; GRU keeps it apart (r scales its n block).
      const bool lstm = cell_ == CellType::kLSTM;
      T* rec = lstm ? gx_slice : gh_.data_ptr<T>() + G_ * u0;
      const T beta = lstm ? T(1) : T(0);
      const int64_t n1 = h_prev.n_first;
      w_hh_panels_.gemm(k, sl, n1, h_prev.first, ldy, beta, rec, GH);
      w_hh_panels_.gemm(k, sl, rows - n1, h0 + n1 * P_, P_, beta, rec + n1 * GH, GH);

      if (lstm) {
        LstmForwardRows<T> r;
        r.rows = rows; r.u0 = u0; r.u1 = u1; r.H = H_;
        r.pre = gx_slice; r.ld_pre = GH;
        r.bias = bias_.bias();
        r.c = c_.template data_ptr<T>(); r.ld_c = H_;
        if (a_.training) {
          r.gates = ptr<T>(gates_) + off * GH; r.ld_gates = GH;
          r.c_saved = ptr<T>(cells_) + off * H_; r.ld_c_saved = H_;
        }
        if (proj_) {
          r.m = ptr<T>(m_) + (a_.training ? off * H_ : 0); r.ld_m = H_;
        } else {
          r.m = y + off * ldy; r.ld_m = ldy;
        }
        (a_.training ? k.lstm_forward_train : k.lstm_forward_infer)(r);
      } else {
        GruForwardRows<T> r;
        r.rows = rows; r.u0 = u0; r.u1 = u1; r.H = H_;
        r.gx = gx_slice; r.ld_gx = GH;
        r.gh = rec; r.ld_gh = GH;
        r.bias_x = bias_.bias();
        r.bias_hn = bias_.bias_hn();
        r.h_prev = h_prev;
        if (a_.training) {
          r.gates = ptr<T>(gates_) + off * GH; r.ld_gates = GH;
          r.hn_saved = ptr<T>(hn_) + off * H_; r.ld_hn_saved = H_;
        }
        r.h = y + off * ldy; r.ld_h = ldy;
        (a_.training ? k.gru_forward_train : k.gru_forward_infer)(r);
      }
    }
    barrier.wait(thread);
    if (!proj_) return;
    // h_t = m_t @ w_hr^T, each slice its columns of the projection.
    const T* m = ptr<T>(m_) + (a_.training ? off * H_ : 0);
    for (int sl = thread; sl < slicing_.count; sl += threads)
      w_hr_panels_.gemm(k, sl, rows, m, H_, T(0), y + off * ldy + slicing_.p0(sl), ldy);
    barrier.wait(thread);
  }

  // Each sequence's final hidden state is its output at its last step.
  void gather_h_n() {
    const T* y = a_.y.template data_ptr<T>();
    const int64_t ldy = a_.y.stride(0);
    T* hn = a_.h_n.template data_ptr<T>();
    for (int64_t b = 0; b < plan_.B; ++b) {
      const int64_t t = plan_.last_step_of_row(b);
      std::copy_n(y + (plan_.offset[t] + b) * ldy, P_, hn + b * P_);
    }
  }

  const LayerForwardArgs& a_;
  const CellType cell_;
  const StepPlan plan_;
  const int64_t G_, H_, I_, P_;
  const bool proj_;
  const Slicing slicing_;
  FoldedBias<T> bias_;
  std::vector<Chunk> chunks_;
  Tensor gates_, cells_, m_, hn_;  // saved for backward (m_: scratch in inference)
  Tensor gx_;                      // [chunk rows, G*H] slice-blocked pre-activations of a chunk
  Tensor gh_;                      // GRU: [B, G*H] slice-blocked h_prev @ w_hh^T of the step
  Tensor c_;                       // LSTM: [B, H] running cell state (c0 in, c_n out)
  SlicePanels<T> w_ih_panels_;     // per slice: [I, G*nu] w_ih^T, gate-blocked
  SlicePanels<T> w_hh_panels_;     // per slice: [P, G*nu] w_hh^T, gate-blocked
  SlicePanels<T> w_hr_panels_;     // per slice: [H, np] w_hr^T
};

// ---------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------
template <typename T>
class BackwardLoop {
 public:
  explicit BackwardLoop(const LayerBackwardArgs& a)
      : a_(a),
        f_(a.fwd),
        cell_(a.fwd.cell),
        plan_(a.fwd.batch_sizes, a.fwd.reverse),
        G_(gate_count(cell_)),
        H_(f_.w.w_ih.size(0) / G_),
        I_(f_.x.size(1)),
        P_(f_.w.w_hh.size(1)),
        proj_(defined(f_.w.w_hr)),
        gru_(cell_ == CellType::kGRU),
        slicing_(H_, P_, plan_.B, G_, plan_.N * G_ * H_ * (2 * I_ + 3 * P_)),
        input_cut_(Slicing::split(I_, slicing_.count, 16)) {}

  LayerGrads run() {
    const int64_t B = plan_.B, GH = G_ * H_;
    auto opts = f_.x.options();
    const KernelTable<T>& k = kernels<T>();
    chunks_ = plan_.chunks(std::max<int64_t>(B, kBackwardChunkRows));
    const int64_t rows_max = StepPlan::max_rows(chunks_);
    dg_ = pooled_empty({rows_max, GH}, opts);
    if (gru_) dgxn_ = pooled_empty({rows_max, H_}, opts);
    dh_ = empty_small<T>(a_.dh_n.sizes(), opts).copy_(a_.dh_n);  // running dh of the current step's h
    if (cell_ == CellType::kLSTM) dc_ = empty_small<T>(a_.dc_n->sizes(), opts).copy_(*a_.dc_n);
    if (proj_) {
      dh_total_ = pooled_empty({rows_max, P_}, opts);
      dm_ = empty_small<T>({B, H_}, opts);
    }
    w_hh_panels_ = SlicePanels<T>(k, GH, slicing_.proj_widths(), opts);
    if (proj_) w_hr_panels_ = SlicePanels<T>(k, P_, slicing_.unit_widths(1), opts);
    if (a_.need_weight_grads) {
      // Written (not accumulated) by the first chunk's products: no zeroing.
      g_.dw_ih = pooled_empty(f_.w.w_ih.sizes(), opts);
      g_.dw_hh = pooled_empty(f_.w.w_hh.sizes(), opts);
      db_h_ = at::zeros({GH}, opts);
      if (gru_) db_xn_ = at::zeros({H_}, opts);
      if (proj_) g_.dw_hr = pooled_empty(f_.w.w_hr->sizes(), opts);
      x_panels_ = SlicePanels<T>(k, rows_max, std::vector<int64_t>(slicing_.count, I_), opts);
      hp_panels_ = SlicePanels<T>(k, rows_max, std::vector<int64_t>(slicing_.count, P_), opts);
      if (proj_) m_panels_ = SlicePanels<T>(k, rows_max, std::vector<int64_t>(slicing_.count, H_), opts);
      int64_t widest = 0;
      for (int s = 0; s < slicing_.count; ++s)
        widest = std::max({widest, slicing_.u1(s) - slicing_.u0(s), slicing_.p1(s) - slicing_.p0(s)});
      dg_t_ = pooled_empty({slicing_.count, widest * rows_max}, opts);
      make_row_pointers();
    }
    if (defined(a_.dx)) {
      std::vector<int64_t> widths(slicing_.count);
      for (int s = 0; s < slicing_.count; ++s) widths[s] = input_cut_[s + 1] - input_cut_[s];
      const int64_t shared = gru_ ? 2 * H_ : GH;
      w_ih_panels_ = SlicePanels<T>(k, shared, widths, opts);
      if (gru_) w_in_panels_ = SlicePanels<T>(k, H_, widths, opts);
    }

    run_parallel(slicing_.count, [&](int thread, int threads, SpinBarrier& barrier) {
      pack_weights(thread, threads, barrier);
      for (auto c = chunks_.rbegin(); c != chunks_.rend(); ++c) {
        for (int64_t s = c->s1 - 1; s >= c->s0; --s) step(s, *c, thread, threads, barrier);
        chunk_products(*c, c == chunks_.rbegin(), thread, threads);
        barrier.wait(thread);  // the next chunk reuses the chunk buffers
      }
    });
    return finish();
  }

 private:
  using Chunk = StepPlan::Chunk;

  // Slice s owns columns p0..p1 of dh_{t-1} = dG_t @ w_hh, with projection
  // units u0..u1 of dm_t = dh_t @ w_hr, and columns i0..i1 of dx = dG @ w_ih.
  void pack_weights(int thread, int threads, SpinBarrier& barrier) {
    const KernelTable<T>& k = kernels<T>();
    for (int s = thread; s < slicing_.count; s += threads) {
      w_hh_panels_.pack(k, s, f_.w.w_hh.template data_ptr<T>(), P_,
                        ColumnMap{slicing_.p0(s), P_, 0, 1});
      if (proj_)
        w_hr_panels_.pack(k, s, f_.w.w_hr->template data_ptr<T>(), H_,
                          ColumnMap{slicing_.u0(s), H_, 0, 1});
      if (defined(a_.dx)) {
        const T* w_ih = f_.w.w_ih.template data_ptr<T>();
        const ColumnMap cols{input_cut_[s], I_, 0, 1};
        w_ih_panels_.pack(k, s, w_ih, I_, cols);
        if (gru_) w_in_panels_.pack(k, s, w_ih + 2 * H_ * I_, I_, cols);
      }
    }
    barrier.wait(thread);
  }

  void step(int64_t s, const Chunk& chunk, int thread, int threads, SpinBarrier& barrier) {
    const int64_t t = plan_.step(s), rows = plan_.bs[t], off = plan_.offset[t];
    const int64_t GH = G_ * H_;
    const T* dy = a_.dy.template data_ptr<T>() + off * a_.dy.stride(0);
    const int64_t lddy = a_.dy.stride(0);
    T* dh = dh_.data_ptr<T>();
    const KernelTable<T>& k = kernels<T>();
    const int64_t r0 = off - chunk.lo;  // first row of the step in the chunk buffers
    T* dg = dg_.data_ptr<T>() + r0 * GH;

    if (proj_) {
      // dh_t = dy_t + recurrent part, then dm_t = dh_t @ w_hr.
      T* dht = dh_total_.data_ptr<T>() + r0 * P_;
      for (int sl = thread; sl < slicing_.count; sl += threads)
        for (int64_t b = 0; b < rows; ++b)
          for (int64_t p = slicing_.p0(sl); p < slicing_.p1(sl); ++p)
            dht[b * P_ + p] = dy[b * lddy + p] + dh[b * P_ + p];
      barrier.wait(thread);
      for (int sl = thread; sl < slicing_.count; sl += threads)
        w_hr_panels_.gemm(k, sl, rows, dht, P_, T(0), dm_.data_ptr<T>() + slicing_.u0(sl), H_);
    }

    for (int sl = thread; sl < slicing_.count; sl += threads) {
      const int64_t u0 = slicing_.u0(sl), u1 = slicing_.u1(sl);
      if (cell_ == CellType::kLSTM) {
        const T* cells = a_.saved[1].template data_ptr<T>();
        LstmBackwardRows<T> r;
        r.rows = rows; r.u0 = u0; r.u1 = u1; r.H = H_;
        r.gates = a_.saved[0].template data_ptr<T>() + off * GH; r.ld_gates = GH;
        r.c = cells + off * H_; r.ld_c = H_;
        r.c_prev = plan_.prev<T>(s, cells, H_, f_.c0->template data_ptr<T>(), H_);
        if (proj_) {
          r.dm_a = dm_.data_ptr<T>(); r.ld_dm_a = H_;
        } else {
          r.dm_a = dy; r.ld_dm_a = lddy;
          r.dm_b = dh; r.ld_dm_b = P_;
        }
        r.dc = dc_.data_ptr<T>(); r.ld_dc = H_;
        r.dgates = dg; r.ld_dgates = GH;
        k.lstm_backward(r);
      } else {
        GruBackwardRows<T> r;
        r.rows = rows; r.u0 = u0; r.u1 = u1; r.H = H_;
        r.gates = a_.saved[0].template data_ptr<T>() + off * GH; r.ld_gates = GH;
        r.hn = a_.saved[1].template data_ptr<T>() + off * H_; r.ld_hn = H_;
        r.h_prev = plan_.prev<T>(s, f_.y.template data_ptr<T>(), f_.y.stride(0),
                                 f_.h0.template data_ptr<T>(), P_);
        r.dy = dy; r.ld_dy = lddy;
        r.dh = dh; r.ld_dh = P_;
        r.dgh = dg; r.ld_dgh = GH;
        r.dgxn = dgxn_.data_ptr<T>() + r0 * H_; r.ld_dgxn = H_;
        k.gru_backward(r);
      }
    }
    barrier.wait(thread);
    // dh_{t-1} (this slice's columns) = dG_t @ w_hh (+ z*dh_t kept by the GRU kernel).
    const T beta = gru_ ? T(1) : T(0);
    for (int sl = thread; sl < slicing_.count; sl += threads)
      w_hh_panels_.gemm(k, sl, rows, dg, GH, beta, dh + slicing_.p0(sl), P_);
    // Without projection each slice reads back only its own columns of dh in
    // the next step; with projection the next step starts with a barrier.
  }

  // Rows of x, of h_{t-1} (the previous step's output or h0) and of m, in
  // the packed row order: the B operands of the weight gradients.
  void make_row_pointers() {
    const T* x = f_.x.template data_ptr<T>();
    const T* y = f_.y.template data_ptr<T>();
    const T* h0 = f_.h0.template data_ptr<T>();
    const T* m = proj_ ? a_.saved[2].template data_ptr<T>() : nullptr;
    x_rows_.resize(plan_.N);
    hp_rows_.resize(plan_.N);
    if (proj_) m_rows_.resize(plan_.N);
    for (int64_t s = 0; s < plan_.T; ++s) {
      const int64_t t = plan_.step(s);
      const PrevRows<T> prev = plan_.prev<T>(s, y, f_.y.stride(0), h0, P_);
      for (int64_t b = 0; b < plan_.bs[t]; ++b) {
        const int64_t row = plan_.offset[t] + b;
        x_rows_[row] = x + row * I_;
        hp_rows_[row] = prev.row(b);
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
    const KernelTable<T>& k = kernels<T>();
    const int64_t GH = G_ * H_;
    const T* dg = dg_.data_ptr<T>();
    const T beta_w = first ? T(0) : T(1);
    for (int s = thread; s < slicing_.count; s += threads) {
      if (a_.need_weight_grads) {
        const int64_t u0 = slicing_.u0(s), nu = slicing_.u1(s) - u0;
        T* at = dg_t_.data_ptr<T>() + s * dg_t_.stride(0);  // [nu or np, rows] scratch
        x_panels_.pack_rows(k, s, c.rows, x_rows_.data() + c.lo, 0);
        hp_panels_.pack_rows(k, s, c.rows, hp_rows_.data() + c.lo, 0);
        T* dw_ih = g_.dw_ih.template data_ptr<T>();
        T* dw_hh = g_.dw_hh.template data_ptr<T>();
        for (int64_t g = 0; g < G_; ++g) {
          const int64_t col = g * H_ + u0;  // gate g of the slice's units
          k.transpose(c.rows, nu, dg + col, GH, at, c.rows);
          hp_panels_.gemm(k, s, nu, at, c.rows, beta_w, dw_hh + col * P_, P_);
          if (gru_ && g == 2)  // the input side of GRU's n gate has its own gradient
            k.transpose(c.rows, nu, dgxn_.data_ptr<T>() + u0, H_, at, c.rows);
          x_panels_.gemm(k, s, nu, at, c.rows, beta_w, dw_ih + col * I_, I_);
          k.add_column_sums(c.rows, nu, dg + col, GH, db_h_.data_ptr<T>() + col);
        }
        if (gru_) k.add_column_sums(c.rows, nu, dgxn_.data_ptr<T>() + u0, H_, db_xn_.data_ptr<T>() + u0);
        if (proj_) {
          const int64_t p0 = slicing_.p0(s), np = slicing_.p1(s) - p0;
          m_panels_.pack_rows(k, s, c.rows, m_rows_.data() + c.lo, 0);
          k.transpose(c.rows, np, dh_total_.data_ptr<T>() + p0, P_, at, c.rows);
          m_panels_.gemm(k, s, np, at, c.rows, beta_w, g_.dw_hr.template data_ptr<T>() + p0 * H_, H_);
        }
      }
      if (defined(a_.dx)) {
        T* dx = a_.dx->template data_ptr<T>() + c.lo * I_ + input_cut_[s];
        const T beta = a_.accumulate_dx ? T(1) : T(0);
        w_ih_panels_.gemm(k, s, c.rows, dg, GH, beta, dx, I_);
        if (gru_) w_in_panels_.gemm(k, s, c.rows, dgxn_.data_ptr<T>(), H_, T(1), dx, I_);
      }
    }
  }

  LayerGrads finish() {
    g_.dh0 = dh_;
    if (cell_ == CellType::kLSTM) g_.dc0 = dc_;
    if (a_.need_weight_grads && defined(f_.w.b_ih)) {
      g_.db_hh = db_h_;
      if (gru_) {
        g_.db_ih = at::cat({db_h_.narrow(0, 0, 2 * H_), db_xn_});
      } else {
        g_.db_ih = db_h_.clone();  // same values, separate storage for two .grad fields
      }
    }
    return g_;
  }

  const LayerBackwardArgs& a_;
  const LayerForwardArgs& f_;
  const CellType cell_;
  const StepPlan plan_;
  const int64_t G_, H_, I_, P_;
  const bool proj_, gru_;
  const Slicing slicing_;
  const std::vector<int64_t> input_cut_;  // [count+1] column slices of x for dx
  std::vector<Chunk> chunks_;
  LayerGrads g_;
  // Chunk buffers (rows of the current chunk):
  Tensor dg_;        // [rows, G*H] pre-activation gradients (GRU: hidden side dr, dz, dhn)
  Tensor dgxn_;      // [rows, H] GRU: input side of dn
  Tensor dh_total_;  // [rows, P] proj: dh_t = dy_t + recurrent part (input of dw_hr)
  Tensor dg_t_;      // per slice: [nu or np, rows] a transposed column block of dG (or dh_total)
  // Step state:
  Tensor dh_;        // [B, P] recurrent gradient of the current step's h
  Tensor dc_;        // [B, H] LSTM: gradient of the current step's c
  Tensor dm_;        // [B, H] proj: gradient of m_t
  // Gradient accumulators:
  Tensor db_h_;      // [G*H] column sums of dg_
  Tensor db_xn_;     // [H] GRU: column sums of dgxn_
  // Packed operands:
  SlicePanels<T> w_hh_panels_;  // per slice: [G*H, np] columns p0..p1 of w_hh
  SlicePanels<T> w_hr_panels_;  // per slice: [P, nu] columns u0..u1 of w_hr
  SlicePanels<T> w_ih_panels_;  // per slice: [G*H (GRU: 2H), ni] columns i0..i1 of w_ih
  SlicePanels<T> w_in_panels_;  // GRU per slice: [H, ni] rows 2H.. of w_ih, columns i0..i1
  SlicePanels<T> x_panels_, hp_panels_, m_panels_;  // per slice: a chunk of x, h_prev, m rows
  std::vector<const T*> x_rows_, hp_rows_, m_rows_;   // [N] row pointers
};

}  // namespace
}  // namespace cpu

std::vector<Tensor> layer_forward_cpu(const LayerForwardArgs& a) {
  check_forward_args(a);
  TORCH_CHECK(a.x.device().is_cpu(), "rnnfast: layer_forward_cpu got a ", a.x.device(), " tensor");
  TORCH_CHECK(a.cell == CellType::kLSTM || a.cell == CellType::kGRU, "rnnfast: ",
              cell_name(a.cell), " is not implemented on the CPU yet");
  std::vector<Tensor> saved;
  AT_DISPATCH_FLOATING_TYPES(a.x.scalar_type(), "rnnfast_layer_forward_cpu",
                             [&] { saved = cpu::ForwardLoop<scalar_t>(a).run(); });
  return saved;
}

LayerGrads layer_backward_cpu(const LayerBackwardArgs& a) {
  check_backward_args(a);
  TORCH_CHECK(a.fwd.x.device().is_cpu(), "rnnfast: layer_backward_cpu got a ", a.fwd.x.device(),
              " tensor");
  LayerGrads g;
  AT_DISPATCH_FLOATING_TYPES(a.fwd.x.scalar_type(), "rnnfast_layer_backward_cpu",
                             [&] { g = cpu::BackwardLoop<scalar_t>(a).run(); });
  return g;
}

}  // namespace rnnfast
