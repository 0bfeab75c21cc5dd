// Per-element gate math of every recurrent cell, forward and backward.
//
// This header is the single source of truth for the cell equations. It is
// compiled three ways and must stay free of any library dependency:
//   * by g++ with V = float/double (the GPU path's emulated executor, the C++
//     unit test),
//   * by g++ with V = simd::Vec<T> (cpu/simd.h: the CPU row kernels, whole and
//     partial vectors alike: cpu/vec_math.h has the matching Math policy),
//   * by nvcc with V = float/double inside __global__ kernels (RNNFAST_HD).
//
// Every function is templated on a Math policy that supplies the transcendental
// functions for V (`Math::sigmoid`, `Math::tanh`) and the constant `Math::one()`.
// Backward functions take the *saved activations* (sigmoid/tanh outputs), never
// the pre-activations, so the derivative is the cheap closed form:
//   d sigmoid(a) = s (1 - s),   d tanh(a) = 1 - t^2.
//
// Equations (torch.nn's, gate order as in torch's weight layout):
//   LSTM  rows i,f,g,o:  c' = f*c + i*g,  h' = o*tanh(c')
//   GRU   rows r,z,n:    n = tanh(a_n + r*(W_hn h + b_hn)),  h' = n + z*(h - n)
//                        (= (1-z)*n + z*h, written as torch's ATen cell does)
//   RNN:                 h' = tanh(a) | relu(a)
// where a_* are the summed pre-activations W_i* x + b_i* (+ W_h* h + b_h*).
#pragma once

#if defined(__CUDACC__)
#define RNNFAST_HD __host__ __device__ __forceinline__
#else
#define RNNFAST_HD inline
#endif

#include <math.h>

namespace rnnfast {

// Precision-exact scalar transcendental functions: expf/tanhf for float (no
// silent promotion to double), exp/tanh for double. Global-namespace C
// functions exist both in glibc and in CUDA's device math library.
RNNFAST_HD float scalar_exp(float x) { return expf(x); }
RNNFAST_HD double scalar_exp(double x) { return exp(x); }
RNNFAST_HD float scalar_tanh(float x) { return tanhf(x); }
RNNFAST_HD double scalar_tanh(double x) { return tanh(x); }

// Math policy for plain scalars (float, double): host and device.
template <typename T>
struct ScalarMath {
  using V = T;
  static RNNFAST_HD V one() { return T(1); }
  static RNNFAST_HD V zero() { return T(0); }
  static RNNFAST_HD V sigmoid(V x) { return T(1) / (T(1) + scalar_exp(-x)); }
  static RNNFAST_HD V tanh(V x) { return scalar_tanh(x); }
  // NaN propagates (NaN <= 0 is false), as in torch.relu.
  static RNNFAST_HD V relu(V x) { return x <= T(0) ? T(0) : x; }
  // Gradient through relu from its output y: dh where y > 0, else 0. A select,
  // not dh * mask, as torch's threshold_backward does (an infinite dh stays
  // out of the inactive units instead of becoming inf * 0 = NaN).
  static RNNFAST_HD V relu_backward(V y, V dh) { return y <= T(0) ? T(0) : dh; }
};

// ---------------------------------------------------------------------------
// LSTM
// ---------------------------------------------------------------------------

// Activated gates of one element; also what training saves for backward.
template <typename V>
struct LstmGates {
  V i, f, g, o;
};

// Forward for one element.
//   a*:      summed pre-activations of the four gates
//   c_prev:  previous cell state
// Writes the activated gates, the new cell state c and m = o*tanh(c)
// (m is h' without projection, the input of W_hr with projection).
template <typename Math, typename V>
RNNFAST_HD void lstm_forward(V ai, V af, V ag, V ao, V c_prev,
                             LstmGates<V>& gates, V& c, V& m) {
  gates.i = Math::sigmoid(ai);
  gates.f = Math::sigmoid(af);
  gates.g = Math::tanh(ag);
  gates.o = Math::sigmoid(ao);
  c = gates.f * c_prev + gates.i * gates.g;
  m = gates.o * Math::tanh(c);
}

// Backward for one element.
//   gates:    saved activated gates of this step
//   c:        saved cell state of this step, c_prev the one before
//   dm:       gradient w.r.t. m = o*tanh(c) (dh without projection)
//   dc_next:  gradient w.r.t. c arriving from the following step (or dc_n)
// Outputs the pre-activation gradients d* and dc_prev (gradient to c_prev).
template <typename Math, typename V>
RNNFAST_HD void lstm_backward(const LstmGates<V>& gates, V c, V c_prev, V dm,
                              V dc_next, V& dai, V& daf, V& dag, V& dao,
                              V& dc_prev) {
  const V one = Math::one();
  const V tanh_c = Math::tanh(c);  // recomputed: cheaper than saving [N,H]
  const V dc = dc_next + dm * gates.o * (one - tanh_c * tanh_c);
  dao = dm * tanh_c * gates.o * (one - gates.o);
  dai = dc * gates.g * gates.i * (one - gates.i);
  dag = dc * gates.i * (one - gates.g * gates.g);
  daf = dc * c_prev * gates.f * (one - gates.f);
  dc_prev = dc * gates.f;
}

// ---------------------------------------------------------------------------
// GRU
// ---------------------------------------------------------------------------

template <typename V>
struct GruGates {
  V r, z, n;
};

// Forward for one element.
//   ar, az:  summed pre-activations of r and z (input and hidden parts)
//   axn:     W_in x + b_in
//   hn:      W_hn h + b_hn (kept apart because r multiplies it); saved
//   h_prev:  previous hidden state
template <typename Math, typename V>
RNNFAST_HD void gru_forward(V ar, V az, V axn, V hn, V h_prev,
                            GruGates<V>& gates, V& h) {
  gates.r = Math::sigmoid(ar);
  gates.z = Math::sigmoid(az);
  gates.n = Math::tanh(axn + gates.r * hn);
  h = gates.n + gates.z * (h_prev - gates.n);
}

// Backward for one element.
//   gates, hn, h_prev: saved from forward
//   dh:                gradient w.r.t. h' (output plus recurrent)
// Outputs the pre-activation gradients: dar, daz (shared by the input and
// hidden GEMMs), daxn (input side of n), dhn (hidden side of n: r*daxn) and
// the direct path to the previous hidden state dh_prev_direct = z*dh (the
// recurrent GEMM adds dGh @ W_hh to it).
template <typename Math, typename V>
RNNFAST_HD void gru_backward(const GruGates<V>& gates, V hn, V h_prev, V dh,
                             V& dar, V& daz, V& daxn, V& dhn,
                             V& dh_prev_direct) {
  const V one = Math::one();
  const V dn = dh * (one - gates.z);
  const V dz = dh * (h_prev - gates.n);
  daxn = dn * (one - gates.n * gates.n);
  dhn = daxn * gates.r;
  dar = daxn * hn * gates.r * (one - gates.r);
  daz = dz * gates.z * (one - gates.z);
  dh_prev_direct = dh * gates.z;
}

// ---------------------------------------------------------------------------
// Plain RNN (tanh / relu)
// ---------------------------------------------------------------------------

enum class RnnActivation { kTanh, kRelu };

template <typename Math, RnnActivation Act, typename V>
RNNFAST_HD V rnn_forward(V a) {
  if constexpr (Act == RnnActivation::kTanh) {
    return Math::tanh(a);
  } else {
    return Math::relu(a);
  }
}

// h: saved output of this step, dh: gradient w.r.t. it. Returns da.
template <typename Math, RnnActivation Act, typename V>
RNNFAST_HD V rnn_backward(V h, V dh) {
  if constexpr (Act == RnnActivation::kTanh) {
    return dh * (Math::one() - h * h);
  } else {
    return Math::relu_backward(h, dh);
  }
}

}  // namespace rnnfast
