// The GPU algorithm of one layer-direction, forward and backward, written once
// over an executor (interface below) and a storage type S:
//   * cuda/ops_cuda.cpp runs it with CudaExec: cuBLAS on torch's handle and
//     current stream, the pointwise kernels of cuda/pointwise_kernels.cuh;
//   * gpu/emulated.cpp runs it with EmulatedExec on the CPU (plain loops for
//     the column-major GEMMs and over the same per-element functions), so the
//     CPU test suite checks this algorithm against torch.nn.
// On the stable ABI: the tensors are torch::stable::Tensor (layer.h), the
// buffers come from the shim's empty_strided (ops.h, empty_like_device), and
// the only dispatcher calls are copies, fills and views, which torch.autocast
// leaves alone (so an enclosing autocast region recasts nothing here).
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
//   gemm_cm<S, Out>(trans_a, trans_b, m, n, k, A, lda, B, ldb, beta, C, ldc, exact)
//       column-major C[m,n] = op(A)[m,k] @ op(B)[k,n] + beta*C, cuBLAS's
//       semantics (C not read when beta == 0), A and B of type S, C of type
//       Out (acc_t<S> or S), sums in acc_t<S>; fp32 operands rounded to TF32
//       where the call allows it (LayerInputs::allow_tf32) unless `exact`
//       (the bias column sums: a sum of rounded addends is no product)
//   step_forward<S>(StepForwardArgs<S>, training), step_backward<S>(StepBackwardArgs<S>)
//   convert<To, From>(ConvertArgs), add_rows<S>(AddRowsArgs)
//   plan_persistent<S>(kind, G, H, B) -> PersistentGeometry (blocks == 0: does not fit)
//   persistent_forward<S>(PersistentForwardArgs<S>, training), persistent_backward<S>(
//       PersistentBackwardArgs<S>): one persistent launch
#pragma once

#include <torch/csrc/stable/ops.h>
#include <torch/headeronly/core/ScalarType.h>

#include <algorithm>
#include <vector>

#include "../check.h"
#include "../ops.h"
#include "path.h"
#include "persistent.h"
#include "persistent_backward.h"
#include "pointwise.h"

namespace rnnfast::gpu {

using torch::headeronly::ScalarType;

template <typename T>
constexpr ScalarType scalar_type_of() {
  return c10::CppTypeToScalarType<T>::value;
}

// f(S{}) for the storage type S of a floating dtype torch.nn's RNNs take
// (what the checks let through); anything else raises.
template <class F>
decltype(auto) with_storage_type(ScalarType t, F&& f) {
  switch (t) {
    case ScalarType::Float: return f(float{});
    case ScalarType::Double: return f(double{});
    case ScalarType::BFloat16: return f(c10::BFloat16{});
    case ScalarType::Half: return f(c10::Half{});
    default: detail::check_failed("rnnfast: the GPU algorithm takes float32, float64, bfloat16 or float16 tensors");
  }
}

// The data of a tensor as T (its dtype checked), or nullptr if it is undefined.
template <typename T>
T* ptr(const Tensor& t) {
  return t.defined() ? t.template mutable_data_ptr<T>() : nullptr;
}

// Device buffers of the loops, on `like`'s device (ops.h's empty_like_device).
inline Tensor device_empty(const Tensor& like, std::initializer_list<int64_t> sizes, ScalarType dtype) {
  return empty_like_device(like, torch::headeronly::IntHeaderOnlyArrayRef(sizes.begin(), sizes.size()), dtype);
}
inline Tensor device_zeros(const Tensor& like, std::initializer_list<int64_t> sizes, ScalarType dtype) {
  Tensor t = device_empty(like, sizes, dtype);
  torch::stable::zero_(t);
  return t;
}
// A new contiguous copy of `t` as `dtype`.
inline Tensor converted_copy(const Tensor& t, ScalarType dtype) {
  Tensor out = empty_like_device(t, t.sizes(), dtype);
  torch::stable::copy_(out, t);
  return out;
}

// The saved activations of a training forward: pointers into its workspace
// at SavedLayout's offsets (layer_view.h), nullptr where the cell saves no
// such block.
template <typename S>
struct SavedRows {
  S* gates = nullptr;     // [N, G*H] activated gates
  S* cell = nullptr;      // [N, H] LSTM c_t
  S* proj_in = nullptr;   // [N, H] LSTM with projection: m_t
  S* step_state = nullptr;  // [N, H] the cell's step state (LSTM c_t, GRU W_hn h + b_hn)

  static SavedRows of(const Tensor& workspace, CellType cell, const LayerDims& d) {
    SavedRows s;
    if (!workspace.defined() || workspace.numel() == 0) return s;
    S* w = ptr<S>(workspace);
    const SavedLayout at = SavedLayout::of(cell, d);
    s.gates = SavedLayout::block(w, at.gates);
    s.cell = SavedLayout::block(w, at.cell);
    s.proj_in = SavedLayout::block(w, at.proj_in);
    s.step_state = SavedLayout::block(w, at.step_state(cell));
    return s;
  }
};

// Rows per chunk of the time-parallel GEMMs: as many as keep the chunk's
// accumulation-typed scratch (gx forward, dx backward) under ~64 MB, or the
// tests' override (set_chunk_rows: small chunks exercise the chunk
// boundaries at test sizes).
int64_t& chunk_rows_override();  // 0: automatic (gpu/path.cpp; set_chunk_rows, controls.h)
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
             int64_t lda, const S* B, int64_t ldb, acc_t<S> beta, Out* C, int64_t ldc, bool exact = false) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    RNNFAST_CHECK(beta == acc_t<S>(0) || beta == acc_t<S>(1),
                  "rnnfast: internal error: an empty product with beta other than 0 or 1");
    if (beta == acc_t<S>(0)) ex.template zero_rows<Out>(M, N, C, ldc);
    return;
  }
  ex.template gemm_cm<S, Out>(trans_b, trans_a, N, M, K, B, std::max<int64_t>(ldb, 1), A,
                              std::max<int64_t>(lda, 1), beta, C, std::max<int64_t>(ldc, 1), exact);
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
    const int64_t N = d_.N, B = plan_.B, G = d_.G, H = d_.H, I = d_.I, P = d_.P, GH = G * H;
    const Tensor& x_t = in_.x;
    const ScalarType st = scalar_type_of<S>(), acc = scalar_type_of<A>();
    LayerOutputs out;
    out.y = device_empty(x_t, {N, P}, st);
    out.h_n = device_empty(x_t, {B, P}, st);
    out.workspace = device_empty(x_t, {training_ ? N * saved_width(cell_, H, d_.proj) : 0}, st);
    const SavedRows<S> saved = training_ ? SavedRows<S>::of(out.workspace, in_.cell, d_) : SavedRows<S>{};
    const auto chunks = plan_.chunks(chunk_rows(B, GH * int64_t(sizeof(A))));
    // Scratch, all allocated before the loop.
    const Tensor gx = device_empty(x_t, {StepPlan::max_rows(chunks), GH}, acc);                 // [chunk rows, G*H]
    const Tensor gh = cell_.separate_hidden ? device_empty(x_t, {B, GH}, acc) : undefined_tensor();  // [B, G*H]
    const Tensor m = d_.proj && !training_ ? device_empty(x_t, {B, H}, st) : undefined_tensor();  // [B, H] m_t
    const Tensor c = cell_.cell_state ? converted_copy(*in_.c0, acc) : undefined_tensor();  // [B, H] running c
    Tensor bias, bias_hn;  // [G*H], [H]
    fold_bias(bias, bias_hn);
    // The persistent kernel where asked for and where the block slices of w_hh fit on the device.
    const PersistentGeometry geom = wants_persistent(cell_, d_)
                                        ? ex_.template plan_persistent<S>(PersistentKind::kForward, G, H, B)
                                        : PersistentGeometry{};

    const S* x = ptr<S>(in_.x);
    const S* w_ih = ptr<S>(in_.w.w_ih);
    const S* w_hh = ptr<S>(in_.w.w_hh);
    const S* w_hr = d_.proj ? ptr<S>(*in_.w.w_hr) : nullptr;
    const S* h0 = ptr<S>(in_.h0);
    S* y = ptr<S>(out.y);
    A* gx_p = ptr<A>(gx);
    A* gh_p = ptr<A>(gh);
    A* c_p = ptr<A>(c);
    S* m_p = ptr<S>(m);
    const A* bias_p = ptr<A>(bias);
    const A* bias_hn_p = ptr<A>(bias_hn);
    for (const StepPlan::Chunk& ch : chunks) {
      // gx = x @ w_ih^T for the chunk's rows.
      gemm_rm(ex_, false, true, ch.rows, GH, I, x + ch.lo * I, I, w_ih, I, A(0), gx_p, GH);
      if (geom.ok()) {
        persistent_chunk(ch, geom, gx_p, gh_p, c_p, bias_p, bias_hn_p, saved, y);
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
        A* rec = cell_.separate_hidden ? gh_p : gxs;
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
        a.gh = gh_p;
        a.ld_gh = GH;
        a.bias = bias_p;
        a.bias_hn = bias_hn_p;
        a.h_prev = PrevRows<S>{prev, P, n_first, h0, P};
        a.c = c_p;
        // The gate math writes h_t, or m_t (the input of w_hr) with a projection.
        S* m_t = !d_.proj ? y + off * P : (training_ ? saved.proj_in + off * H : m_p);
        a.h = m_t;
        a.ld_h = d_.proj ? H : P;
        if (training_) {
          a.gates = saved.gates ? saved.gates + off * GH : nullptr;
          a.saved = saved.step_state ? saved.step_state + off * H : nullptr;
        }
        ex_.step_forward(a, training_);
        if (d_.proj)  // h_t = m_t @ w_hr^T, rounded to storage by the GEMM
          gemm_rm(ex_, false, true, rows, P, H, m_t, H, w_hr, H, A(0), y + off * P, P);
      }
    }
    gather_h_n(out.y, out.h_n);
    out.c_n = cell_.cell_state ? converted_copy(c, st) : device_empty(x_t, {0}, st);
    return out;
  }

 private:
  // The steps of a chunk as persistent launches of up to kPersistentMaxSteps steps each.
  void persistent_chunk(const StepPlan::Chunk& ch, const PersistentGeometry& geom, A* gx, A* gh, A* c,
                        const A* bias, const A* bias_hn, const SavedRows<S>& saved, S* y) {
    PersistentForwardArgs<S> a;  // ~8 KB, by value into the launch
    a.cell = in_.cell;
    a.separate_hidden = cell_.separate_hidden;
    a.G = d_.G;
    a.H = d_.H;
    a.w_hh = ptr<S>(in_.w.w_hh);
    a.bias = bias;
    a.bias_hn = bias_hn;
    a.h0 = ptr<S>(in_.h0);
    a.c = c;
    a.y = y;
    a.gx = gx;
    a.chunk_lo = ch.lo;
    a.gh = gh;
    if (training_) {
      a.gates = saved.gates;
      a.saved = saved.step_state;
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

  // The folded biases (loop_shared.h): bias [G*H] = b_ih, plus b_hh on its
  // first folded_bias_columns columns (summed in A by the executor's
  // add_rows), bias_hn [H] = b_hh's last block for a separate_hidden cell; in
  // the accumulation type, zeros without bias.
  void fold_bias(Tensor& bias, Tensor& bias_hn) const {
    const int64_t GH = d_.G * d_.H, H = d_.H;
    const ScalarType acc = scalar_type_of<A>();
    if (!has(in_.w.b_ih)) {
      bias = device_zeros(in_.x, {GH}, acc);
      bias_hn = device_zeros(in_.x, {H}, acc);
      return;
    }
    bias = converted_copy(*in_.w.b_ih, acc);
    Tensor b_hh = converted_copy(*in_.w.b_hh, acc);
    const int64_t folded = folded_bias_columns(cell_, H);  // (loop_shared.h)
    A* bias_p = ptr<A>(bias);
    if (folded > 0) ex_.add_rows(AddRowsArgs<A>{1, folded, bias_p, folded, ptr<A>(b_hh), folded, bias_p, folded});
    bias_hn = cell_.separate_hidden ? torch::stable::narrow(b_hh, 0, GH - H, H) : device_zeros(in_.x, {H}, acc);
  }

  // h_n[b] = y at row b of its sequence's last step: one copy per run of rows
  // that end at the same step.
  void gather_h_n(Tensor y, Tensor h_n) const {  // (handles: torch::stable::narrow takes Tensor&)
    for (int64_t b0 = 0; b0 < plan_.B;) {
      const int64_t t = plan_.last_step_of_row(b0);
      int64_t b1 = b0 + 1;
      while (b1 < plan_.B && plan_.last_step_of_row(b1) == t) ++b1;
      Tensor dst = torch::stable::narrow(h_n, 0, b0, b1 - b0);
      torch::stable::copy_(dst, torch::stable::narrow(y, 0, plan_.offset(t) + b0, b1 - b0));
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
        saved_(SavedRows<S>::of(b.workspace, b.in.cell, d)), y_(rows_of_width(b.y, d.P)),
        y_p_(ptr<S>(y_)) {}

  LayerGrads run() {
    const int64_t B = plan_.B, G = d_.G, H = d_.H, I = d_.I, P = d_.P, GH = G * H;
    const int64_t shared = cell_.separate_hidden ? GH - H : GH;  // columns of dG that w_ih shares
    const Tensor& x_t = in_.x;
    const ScalarType st = scalar_type_of<S>(), acc = scalar_type_of<A>();
    const auto chunks = plan_.chunks(chunk_rows(B, (GH + I) * int64_t(sizeof(A))));
    const int64_t rows_max = StepPlan::max_rows(chunks);
    const Tensor& none = undefined_tensor();
    // Scratch, all allocated before the loop.
    Buffers k;
    k.dg = device_empty(x_t, {rows_max, GH}, st);                                     // [rows, G*H]
    k.dgxn = cell_.separate_hidden ? device_empty(x_t, {rows_max, H}, st) : none;     // [rows, H]
    k.dht = d_.proj ? device_empty(x_t, {rows_max, P}, st) : none;                    // [rows, P]
    const Tensor dm = d_.proj ? device_empty(x_t, {B, H}, acc) : none;                // [B, H]
    k.hp = b_.need_dweights ? device_empty(x_t, {rows_max, P}, st) : none;            // [rows, P]
    k.dx_acc = b_.need_dx && kConvert ? device_empty(x_t, {rows_max, I}, acc) : none;  // [rows, I]
    const Tensor dh = converted_copy(b_.dh_n, acc);                                    // [B, P]
    const Tensor dc = cell_.cell_state ? converted_copy(*b_.dc_n, acc) : none;         // [B, H]
    if (b_.need_dweights) {  // accumulators (A)
      k.dw_ih = device_zeros(x_t, {GH, I}, acc);
      k.dw_hh = device_zeros(x_t, {GH, P}, acc);
      k.dw_hr = d_.proj ? device_zeros(x_t, {P, H}, acc) : none;
      k.db_h = device_zeros(x_t, {GH}, acc);
      k.db_xn = cell_.separate_hidden ? device_zeros(x_t, {H}, acc) : none;
      k.ones = device_empty(x_t, {rows_max}, st);  // [rows] the bias gradients' GEMM operand
      torch::stable::fill_(k.ones, 1.0);
    }
    LayerGrads g;
    g.dx = b_.need_dx ? device_empty(x_t, {d_.N, I}, st) : none;
    k.set_pointers(g.dx);

    const S* w_hh = ptr<S>(in_.w.w_hh);
    const S* w_hr = d_.proj ? ptr<S>(*in_.w.w_hr) : nullptr;
    const S* y = y_p_;
    const S* dy = ptr<S>(b_.dy);
    const int64_t ld_dy = b_.dy.stride(0);
    S* dg_p = k.dg_p;
    A* dh_p = ptr<A>(dh);
    A* dc_p = ptr<A>(dc);
    A* dm_p = ptr<A>(dm);
    // The persistent kernel where asked for and where the block slices of w_hh fit on the device.
    const PersistentGeometry geom = wants_persistent(cell_, d_)
                                        ? ex_.template plan_persistent<S>(PersistentKind::kBackward, G, H, B)
                                        : PersistentGeometry{};

    for (auto ch = chunks.rbegin(); ch != chunks.rend(); ++ch) {
      if (geom.ok()) {
        persistent_chunk(*ch, geom, k.dg_p, k.dgxn_p, dh_p, dc_p);
        chunk_products(*ch, k, shared);
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
        a.gates = saved_.gates ? saved_.gates + off * GH : nullptr;
        a.saved = saved_.step_state ? saved_.step_state + off * H : nullptr;
        a.h = y + off * P;
        a.ld_h = P;
        a.prev = prev_state(s);
        if (d_.proj) {
          // dh_t = dy_t + recurrent part (storage: an A operand), dm_t = dh_t @ w_hr.
          S* dht_t = k.dht_p + r0 * P;
          AddRowsArgs<S> add{rows, P, dy + off * ld_dy, ld_dy, dh_p, P, dht_t, P};
          ex_.add_rows(add);
          gemm_rm(ex_, false, false, rows, H, P, dht_t, P, w_hr, H, A(0), dm_p, H);
          a.dh = dm_p;
          a.ld_dh = H;
        } else {
          a.dy = dy + off * ld_dy;
          a.ld_dy = ld_dy;
          a.dh = dh_p;
          a.ld_dh = P;
        }
        a.dc = dc_p;
        a.dh_direct = dh_p;
        a.dg = dg_t;
        a.dgxn = cell_.separate_hidden ? k.dgxn_p + r0 * H : nullptr;
        ex_.step_backward(a);
        // dh_{t-1} = dG_t @ w_hh (+ the direct path the GRU kernel left in dh).
        gemm_rm(ex_, false, false, rows, P, GH, dg_t, GH, w_hh, P,
                cell_.separate_hidden ? A(1) : A(0), dh_p, P);
      }
      chunk_products(*ch, k, shared);
    }

    // The sums in storage (a copy each: two .grad fields never share storage).
    g.dh0 = g.dc0 = g.dw_ih = g.dw_hh = g.dw_hr = g.db_ih = g.db_hh = none;
    if (b_.need_dstate) {
      g.dh0 = converted_copy(dh, st);
      if (cell_.cell_state) g.dc0 = converted_copy(dc, st);
    }
    if (b_.need_dweights) {
      g.dw_ih = converted_copy(k.dw_ih, st);
      g.dw_hh = converted_copy(k.dw_hh, st);
      if (d_.proj) g.dw_hr = converted_copy(k.dw_hr, st);
      if (has(in_.w.b_ih)) {
        g.db_hh = converted_copy(k.db_h, st);
        if (cell_.separate_hidden) {  // db_ih = [db_h's shared columns, db_xn]
          g.db_ih = device_empty(x_t, {GH}, st);
          Tensor head = torch::stable::narrow(g.db_ih, 0, 0, GH - H), tail = torch::stable::narrow(g.db_ih, 0, GH - H, H);
          torch::stable::copy_(head, torch::stable::narrow(k.db_h, 0, 0, GH - H));
          torch::stable::copy_(tail, k.db_xn);
        } else {
          g.db_ih = converted_copy(k.db_h, st);
        }
      }
    }
    return g;
  }

 private:
  // The backward's buffers (allocated before the loop; undefined where not
  // needed) and their data pointers (nullptr for undefined ones).
  struct Buffers {
    Tensor dg, dgxn, dht, hp, dx_acc;         // storage S, accumulation A (dx_acc)
    Tensor dw_ih, dw_hh, dw_hr, db_h, db_xn;  // the weight gradient sums (A)
    Tensor ones;                              // [rows] of 1 (S)
    S *dg_p = nullptr, *dgxn_p = nullptr, *dht_p = nullptr, *hp_p = nullptr, *dx_p = nullptr;
    A *dx_acc_p = nullptr, *dw_ih_p = nullptr, *dw_hh_p = nullptr, *dw_hr_p = nullptr, *db_h_p = nullptr,
      *db_xn_p = nullptr;
    const S* ones_p = nullptr;
    void set_pointers(const Tensor& dx) {
      dg_p = ptr<S>(dg), dgxn_p = ptr<S>(dgxn), dht_p = ptr<S>(dht), hp_p = ptr<S>(hp), dx_p = ptr<S>(dx);
      dx_acc_p = ptr<A>(dx_acc), dw_ih_p = ptr<A>(dw_ih), dw_hh_p = ptr<A>(dw_hh), dw_hr_p = ptr<A>(dw_hr);
      db_h_p = ptr<A>(db_h), db_xn_p = ptr<A>(db_xn), ones_p = ptr<S>(ones);
    }
  };

  // The steps of a chunk, latest first, as persistent launches of up to kPersistentMaxSteps each.
  void persistent_chunk(const StepPlan::Chunk& ch, const PersistentGeometry& geom, S* dg, S* dgxn, A* dh,
                        A* dc) {
    PersistentBackwardArgs<S> a;  // ~8 KB, by value into the launch
    a.cell = in_.cell;
    a.separate_hidden = cell_.separate_hidden;
    a.G = d_.G;
    a.H = d_.H;
    a.w_hh = ptr<S>(in_.w.w_hh);
    a.gates = saved_.gates;
    a.saved = saved_.step_state;
    a.y = y_p_;
    const bool prev_cell = cell_.backward_prev == PrevState::kCell;
    a.prev = prev_cell ? saved_.cell : a.y;
    a.prev_initial = prev_cell ? ptr<S>(*in_.c0) : ptr<S>(in_.h0);
    a.dy = ptr<S>(b_.dy);
    a.ld_dy = b_.dy.stride(0);
    a.dh = dh;
    a.dc = dc;
    a.dg = dg;
    a.dgxn = dgxn;
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
    return y.size(0) <= 1 || y.stride(0) == P ? y : torch::stable::contiguous(y);
  }

  // LSTM c_{t-1} or GRU h_{t-1} of each row of the s-th processed step.
  PrevRows<S> prev_state(int64_t s) const {
    PrevRows<S> p;
    p.n_first = plan_.continuing_rows(s);
    if (cell_.backward_prev == PrevState::kCell) {
      p.first = s == 0 ? nullptr : saved_.cell + plan_.previous_offset(s) * d_.H;
      p.initial = ptr<S>(*in_.c0);
      p.ld_first = p.ld_initial = d_.H;
    } else {
      p.first = s == 0 ? nullptr : y_p_ + plan_.previous_offset(s) * d_.P;
      p.initial = ptr<S>(in_.h0);
      p.ld_first = p.ld_initial = d_.P;
    }
    return p;
  }

  // h_{t-1} of the chunk's rows, [rows, P] in row order: for a padded input
  // past the first step a block of y itself; otherwise gathered per step
  // (rows continuing from the previous step, then rows starting from h0).
  const S* chunk_h_prev(const StepPlan::Chunk& ch, S* hp) {
    const int64_t P = d_.P, B = plan_.B;
    const S* y = y_p_;
    if (!has(in_.batch_sizes) && ch.s0 > 0) return y + (plan_.reverse ? ch.lo + B : ch.lo - B) * P;
    S* dst = hp;
    const S* h0 = ptr<S>(in_.h0);
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
  void chunk_products(const StepPlan::Chunk& ch, const Buffers& k, int64_t shared) {
    const int64_t H = d_.H, I = d_.I, P = d_.P, GH = d_.G * H, rows = ch.rows;
    const S* x = ptr<S>(in_.x) + ch.lo * I;
    const S* dg_p = k.dg_p;
    const S* dgxn_p = k.dgxn_p;
    if (b_.need_dweights) {
      A* dw_ih_p = k.dw_ih_p;
      // dw_ih += dG^T x (a separate_hidden cell's last block from its input side).
      gemm_rm(ex_, true, false, shared, I, rows, dg_p, GH, x, I, A(1), dw_ih_p, I);
      if (cell_.separate_hidden)
        gemm_rm(ex_, true, false, H, I, rows, dgxn_p, H, x, I, A(1), dw_ih_p + shared * I, I);
      // dw_hh += dG^T h_prev.
      gemm_rm(ex_, true, false, GH, P, rows, dg_p, GH, chunk_h_prev(ch, k.hp_p), P, A(1), k.dw_hh_p, P);
      // dw_hr += dh_total^T m.
      if (d_.proj)
        gemm_rm(ex_, true, false, P, H, rows, k.dht_p, P, saved_.proj_in + ch.lo * H, H, A(1), k.dw_hr_p, H);
      // db += ones^T dG: the column sums as a [1, rows] x [rows, G*H] GEMM (deterministic, no
      // atomics), never in TF32 (exact: it would round every addend).
      gemm_rm(ex_, false, false, 1, GH, rows, k.ones_p, rows, dg_p, GH, A(1), k.db_h_p, GH, /*exact=*/true);
      if (cell_.separate_hidden)
        gemm_rm(ex_, false, false, 1, H, rows, k.ones_p, rows, dgxn_p, H, A(1), k.db_xn_p, H, /*exact=*/true);
    }
    if (b_.need_dx) {
      // dx = dG @ w_ih (a separate_hidden cell: + dGxn @ its last block).
      S* dx = k.dx_p + ch.lo * I;
      A* acc = kConvert ? k.dx_acc_p : reinterpret_cast<A*>(dx);
      const S* w_ih = ptr<S>(in_.w.w_ih);
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
  const SavedRows<S> saved_;
  // y [N, P] with row stride P: the loops, the persistent kernel and the
  // contiguous h_{t-1} shortcut of chunk_h_prev all index it that way, while the
  // op lets a column slice of a wider buffer through (ops.h's row_major).
  const Tensor y_;
  const S* y_p_;  // y_'s data
};

}  // namespace rnnfast::gpu
