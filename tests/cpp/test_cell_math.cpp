// Unit test of csrc/cell_math.h, independent of torch: every backward formula
// is checked against central finite differences of its forward formula, and
// the forward formulas against the equations written out by hand.
#include <cmath>
#include <cstdio>
#include <random>

#include <limits>

#include "cell_math.h"

namespace {

using M = rnnfast::ScalarMath<double>;
int g_failures = 0;

void expect_close(double got, double want, double tol, const char* what) {
  if (!(std::fabs(got - want) <= tol * (1.0 + std::fabs(want)))) {
    std::printf("FAIL %s: got %.12g want %.12g\n", what, got, want);
    ++g_failures;
  }
}

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// LSTM: h-part m = o*tanh(c') and c' as functions of the pre-activations.
struct LstmOut {
  double c, m;
};
LstmOut lstm(double ai, double af, double ag, double ao, double c_prev) {
  rnnfast::LstmGates<double> g;
  LstmOut out;
  rnnfast::lstm_forward<M>(ai, af, ag, ao, c_prev, g, out.c, out.m);
  return out;
}

void test_lstm(std::mt19937& rng) {
  std::normal_distribution<double> n(0.0, 1.5);
  const double eps = 1e-6;
  for (int trial = 0; trial < 200; ++trial) {
    double a[4] = {n(rng), n(rng), n(rng), n(rng)};
    const double c_prev = n(rng), dm = n(rng), dc_next = n(rng);
    // Forward against the equations.
    const LstmOut out = lstm(a[0], a[1], a[2], a[3], c_prev);
    const double c_ref = sigmoid(a[1]) * c_prev + sigmoid(a[0]) * std::tanh(a[2]);
    expect_close(out.c, c_ref, 1e-14, "lstm c");
    expect_close(out.m, sigmoid(a[3]) * std::tanh(c_ref), 1e-14, "lstm m");
    // Backward against finite differences of L = dm*m + dc_next*c.
    rnnfast::LstmGates<double> g;
    double c, m;
    rnnfast::lstm_forward<M>(a[0], a[1], a[2], a[3], c_prev, g, c, m);
    double da[4], dc_prev;
    rnnfast::lstm_backward<M>(g, c, c_prev, dm, dc_next, da[0], da[1], da[2], da[3], dc_prev);
    auto loss = [&](const double* x, double cp) {
      const LstmOut o = lstm(x[0], x[1], x[2], x[3], cp);
      return dm * o.m + dc_next * o.c;
    };
    for (int k = 0; k < 4; ++k) {
      double hi[4], lo[4];
      for (int j = 0; j < 4; ++j) hi[j] = lo[j] = a[j];
      hi[k] += eps;
      lo[k] -= eps;
      expect_close(da[k], (loss(hi, c_prev) - loss(lo, c_prev)) / (2 * eps), 1e-7, "lstm da");
    }
    expect_close(dc_prev, (loss(a, c_prev + eps) - loss(a, c_prev - eps)) / (2 * eps), 1e-7,
                 "lstm dc_prev");
  }
}

double gru(double ar, double az, double axn, double hn, double h_prev) {
  rnnfast::GruGates<double> g;
  double h;
  rnnfast::gru_forward<M>(ar, az, axn, hn, h_prev, g, h);
  return h;
}

void test_gru(std::mt19937& rng) {
  std::normal_distribution<double> n(0.0, 1.5);
  const double eps = 1e-6;
  for (int trial = 0; trial < 200; ++trial) {
    const double ar = n(rng), az = n(rng), axn = n(rng), hn = n(rng), h_prev = n(rng), dh = n(rng);
    const double r = sigmoid(ar), z = sigmoid(az), nn = std::tanh(axn + r * hn);
    expect_close(gru(ar, az, axn, hn, h_prev), (1 - z) * nn + z * h_prev, 1e-14, "gru h");
    rnnfast::GruGates<double> g;
    double h;
    rnnfast::gru_forward<M>(ar, az, axn, hn, h_prev, g, h);
    double dar, daz, daxn, dhn, dh_direct;
    rnnfast::gru_backward<M>(g, hn, h_prev, dh, dar, daz, daxn, dhn, dh_direct);
    auto fd = [&](int which) {
      double x[5] = {ar, az, axn, hn, h_prev};
      double hi[5], lo[5];
      for (int j = 0; j < 5; ++j) hi[j] = lo[j] = x[j];
      hi[which] += eps;
      lo[which] -= eps;
      return dh * (gru(hi[0], hi[1], hi[2], hi[3], hi[4]) - gru(lo[0], lo[1], lo[2], lo[3], lo[4])) /
             (2 * eps);
    };
    expect_close(dar, fd(0), 1e-7, "gru dar");
    expect_close(daz, fd(1), 1e-7, "gru daz");
    expect_close(daxn, fd(2), 1e-7, "gru daxn");
    expect_close(dhn, fd(3), 1e-7, "gru dhn (hidden side of n)");
    expect_close(dh_direct, fd(4), 1e-7, "gru dh_prev (direct path)");
  }
}

void test_rnn(std::mt19937& rng) {
  std::normal_distribution<double> n(0.0, 1.5);
  using rnnfast::RnnActivation;
  for (int trial = 0; trial < 200; ++trial) {
    const double a = n(rng), dh = n(rng), eps = 1e-6;
    const double ht = rnnfast::rnn_forward<M, RnnActivation::kTanh>(a);
    expect_close(ht, std::tanh(a), 1e-15, "rnn tanh");
    const double fd_t = dh * (std::tanh(a + eps) - std::tanh(a - eps)) / (2 * eps);
    expect_close(rnnfast::rnn_backward<M, RnnActivation::kTanh>(ht, dh), fd_t, 1e-7, "rnn tanh da");
    const double hr = rnnfast::rnn_forward<M, RnnActivation::kRelu>(a);
    expect_close(hr, a > 0 ? a : 0.0, 0, "rnn relu");
    expect_close(rnnfast::rnn_backward<M, RnnActivation::kRelu>(hr, dh), a > 0 ? dh : 0.0, 0,
                 "rnn relu da");
  }
  // relu's gradient is a select, as torch's threshold_backward: an infinite
  // gradient does not leak into an inactive unit as inf * 0 = NaN.
  const double inf = std::numeric_limits<double>::infinity();
  expect_close(rnnfast::rnn_backward<M, RnnActivation::kRelu>(0.0, inf), 0.0, 0, "relu da(inf) inactive");
}

void test_float_sigmoid_saturates() {
  // Large |x| must give exact 0/1 limits, not NaN (exp overflow in the formula).
  using F = rnnfast::ScalarMath<float>;
  expect_close(F::sigmoid(-200.f), 0.0, 0, "sigmoid(-200)");
  expect_close(F::sigmoid(200.f), 1.0, 0, "sigmoid(200)");
  expect_close(F::tanh(-50.f), -1.0, 0, "tanh(-50)");
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  test_lstm(rng);
  test_gru(rng);
  test_rnn(rng);
  test_float_sigmoid_saturates();
  if (g_failures) {
    std::printf("%d failure(s)\n", g_failures);
    return 1;
  }
  std::printf("cell_math: all checks passed\n");
  return 0;
}
