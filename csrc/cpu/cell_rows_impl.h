// Fused pointwise row kernels of every cell (included by kernels_impl.h, inside
// namespace rnnfast::cpu::CPU_CAPABILITY): vector loops over a slice's units
// around the per-element math of cell_math.h, in the accumulation type, with
// storage-typed buffers converted on load and store (see CellForwardRows and
// CellBackwardRows in kernels.h for the buffers).
#pragma once

// The gradient w.r.t. the step's output, dy + dh (either may be absent).
template <typename S>
inline simd::Vec<acc_t<S>> step_gradient(const CellBackwardRows<S>& a, int64_t b, int64_t u,
                                          int64_t n) {
  using V = simd::Vec<acc_t<S>>;
  V d = a.dy ? Storage<S>::load(a.dy + b * a.ld_dy + u, n) : V::zero();
  if (a.dh) d = d + load(a.dh + b * a.ld_dh + u, n);
  return d;
}

// LSTM
template <typename S, bool Training>
void lstm_forward_rows(const CellForwardRows<S>& a) {
  using T = acc_t<S>;
  using V = simd::Vec<T>;
  using IO = Storage<S>;
  const int64_t H = a.H;
  const int64_t nu = a.u1 - a.u0;
  for (int64_t b = 0; b < a.rows; ++b) {
    const T* pre = a.gx + b * a.ld_gx;
    T* c = a.c + b * a.ld_c;
    S* m = a.h + b * a.ld_h;
    for_each_vector<T>(a.u0, a.u1, [&](int64_t u, int64_t n) {
      const int64_t j = u - a.u0;
      const V ai = load(pre + j, n) + load(a.bias + u, n);
      const V af = load(pre + nu + j, n) + load(a.bias + H + u, n);
      const V ag = load(pre + 2 * nu + j, n) + load(a.bias + 2 * H + u, n);
      const V ao = load(pre + 3 * nu + j, n) + load(a.bias + 3 * H + u, n);
      LstmGates<V> g;
      V c_new, m_new;
      lstm_forward<VecMath<T>>(ai, af, ag, ao, load(c + u, n), g, c_new, m_new);
      store(c + u, c_new, n);
      IO::store(m + u, m_new, n);
      if constexpr (Training) {
        S* gates = a.gates + b * a.ld_gates;
        IO::store(gates + u, g.i, n);
        IO::store(gates + H + u, g.f, n);
        IO::store(gates + 2 * H + u, g.g, n);
        IO::store(gates + 3 * H + u, g.o, n);
        IO::store(a.saved + b * a.ld_saved + u, c_new, n);
      }
    });
  }
}

template <typename S>
void lstm_backward_rows(const CellBackwardRows<S>& a) {
  using T = acc_t<S>;
  using V = simd::Vec<T>;
  using IO = Storage<S>;
  const int64_t H = a.H;
  for (int64_t b = 0; b < a.rows; ++b) {
    const S* gates = a.gates + b * a.ld_gates;
    const S* c = a.saved + b * a.ld_saved;
    const S* c_prev = a.prev.row(b);
    T* dc = a.dc + b * a.ld_dc;
    S* dg = a.dg + b * a.ld_dg;
    for_each_vector<T>(a.u0, a.u1, [&](int64_t u, int64_t n) {
      const LstmGates<V> g{IO::load(gates + u, n), IO::load(gates + H + u, n),
                           IO::load(gates + 2 * H + u, n), IO::load(gates + 3 * H + u, n)};
      V dai, daf, dag, dao, dc_prev;
      lstm_backward<VecMath<T>>(g, IO::load(c + u, n), IO::load(c_prev + u, n),
                                step_gradient(a, b, u, n), load(dc + u, n), dai, daf, dag, dao,
                                dc_prev);
      IO::store(dg + u, dai, n);
      IO::store(dg + H + u, daf, n);
      IO::store(dg + 2 * H + u, dag, n);
      IO::store(dg + 3 * H + u, dao, n);
      store(dc + u, dc_prev, n);
    });
  }
}

// GRU
template <typename S, bool Training>
void gru_forward_rows(const CellForwardRows<S>& a) {
  using T = acc_t<S>;
  using V = simd::Vec<T>;
  using IO = Storage<S>;
  const int64_t H = a.H;
  const int64_t nu = a.u1 - a.u0;
  for (int64_t b = 0; b < a.rows; ++b) {
    const T* gx = a.gx + b * a.ld_gx;
    const T* gh = a.gh + b * a.ld_gh;
    const S* h_prev = a.h_prev.row(b);
    S* h = a.h + b * a.ld_h;
    for_each_vector<T>(a.u0, a.u1, [&](int64_t u, int64_t n) {
      const int64_t j = u - a.u0;
      const V ar = load(gx + j, n) + load(gh + j, n) + load(a.bias + u, n);
      const V az = load(gx + nu + j, n) + load(gh + nu + j, n) + load(a.bias + H + u, n);
      const V axn = load(gx + 2 * nu + j, n) + load(a.bias + 2 * H + u, n);
      const V hn = load(gh + 2 * nu + j, n) + load(a.bias_hn + u, n);
      GruGates<V> g;
      V h_new;
      gru_forward<VecMath<T>>(ar, az, axn, hn, IO::load(h_prev + u, n), g, h_new);
      IO::store(h + u, h_new, n);
      if constexpr (Training) {
        S* gates = a.gates + b * a.ld_gates;
        IO::store(gates + u, g.r, n);
        IO::store(gates + H + u, g.z, n);
        IO::store(gates + 2 * H + u, g.n, n);
        IO::store(a.saved + b * a.ld_saved + u, hn, n);
      }
    });
  }
}

template <typename S>
void gru_backward_rows(const CellBackwardRows<S>& a) {
  using T = acc_t<S>;
  using V = simd::Vec<T>;
  using IO = Storage<S>;
  const int64_t H = a.H;
  for (int64_t b = 0; b < a.rows; ++b) {
    const S* gates = a.gates + b * a.ld_gates;
    const S* hn = a.saved + b * a.ld_saved;
    const S* h_prev = a.prev.row(b);
    T* dh_direct = a.dh_direct + b * a.ld_dh_direct;
    S* dgh = a.dg + b * a.ld_dg;
    S* dgxn = a.dgxn + b * a.ld_dgxn;
    for_each_vector<T>(a.u0, a.u1, [&](int64_t u, int64_t n) {
      const GruGates<V> g{IO::load(gates + u, n), IO::load(gates + H + u, n),
                          IO::load(gates + 2 * H + u, n)};
      V dar, daz, daxn, dhn, dh_prev_direct;
      gru_backward<VecMath<T>>(g, IO::load(hn + u, n), IO::load(h_prev + u, n),
                               step_gradient(a, b, u, n), dar, daz, daxn, dhn, dh_prev_direct);
      IO::store(dgh + u, dar, n);
      IO::store(dgh + H + u, daz, n);
      IO::store(dgh + 2 * H + u, dhn, n);
      IO::store(dgxn + u, daxn, n);
      store(dh_direct + u, dh_prev_direct, n);
    });
  }
}

// Plain RNN (tanh or relu): one gate, nothing saved but the output itself.
template <typename S, RnnActivation Act>
void rnn_forward_rows(const CellForwardRows<S>& a) {
  using T = acc_t<S>;
  for (int64_t b = 0; b < a.rows; ++b) {
    const T* pre = a.gx + b * a.ld_gx;
    S* h = a.h + b * a.ld_h;
    for_each_vector<T>(a.u0, a.u1, [&](int64_t u, int64_t n) {
      const auto v = load(pre + (u - a.u0), n) + load(a.bias + u, n);
      Storage<S>::store(h + u, rnn_forward<VecMath<T>, Act>(v), n);
    });
  }
}

template <typename S, RnnActivation Act>
void rnn_backward_rows(const CellBackwardRows<S>& a) {
  using T = acc_t<S>;
  for (int64_t b = 0; b < a.rows; ++b) {
    const S* h = a.h + b * a.ld_h;
    S* dg = a.dg + b * a.ld_dg;
    for_each_vector<T>(a.u0, a.u1, [&](int64_t u, int64_t n) {
      Storage<S>::store(dg + u,
                        rnn_backward<VecMath<T>, Act>(Storage<S>::load(h + u, n),
                                                      step_gradient(a, b, u, n)),
                        n);
    });
  }
}
