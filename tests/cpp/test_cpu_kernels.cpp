// Unit test of the instruction-set builds of the CPU kernels (csrc/cpu/kernels.h):
// every build this CPU can run is compared with a plain scalar evaluation of
// csrc/cell_math.h and with a naive GEMM, on odd sizes that exercise the
// partial-vector tails and the row-stride handling.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "cell_math.h"
#include "cpu/kernels.h"

namespace {

using rnnfast::CellType;
using rnnfast::cpu::KernelTable;
int g_failures = 0;

template <typename T>
void expect_close(const std::vector<T>& got, const std::vector<T>& want, double tol,
                  const char* what, const char* isa) {
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(double(got[i]) - double(want[i])) / (1.0 + std::fabs(double(want[i])));
    if (!(err <= worst)) worst = err;  // also catches NaN
  }
  if (!(worst <= tol)) {
    std::printf("FAIL [%s] %s: max relative error %.3g > %.3g\n", isa, what, worst, tol);
    ++g_failures;
  }
}

template <typename T>
std::vector<T> randn(size_t n, std::mt19937& rng) {
  std::normal_distribution<double> d(0.0, 1.0);
  std::vector<T> v(n);
  for (auto& x : v) x = T(d(rng));
  return v;
}

template <typename T>
void test_gemm(const KernelTable<T>& k, std::mt19937& rng, double tol) {
  // Two ways the loop packs B: from a row-major source (column n at n*3 + 1,
  // rows k at k*src_ld) and from a transposed, gate-blocked one (w^T: column n
  // is row base + (n / block)*block_stride + (n % block) of a [*, K] matrix).
  for (bool transposed : {false, true}) {
    for (int64_t M : {1, 2, 3, 4, 5, 9}) {
      for (int64_t N : {1, 7, 16, 17, 33, 64, 65, 130}) {
        for (int64_t K : {1, 7, 64, 70}) {
          const int64_t lda = K + 3, ldc = N + 2;
          rnnfast::cpu::ColumnMap map;
          int64_t k_stride, src_size;
          if (!transposed) {
            k_stride = 3 * N + 2;
            map.base = 1;
            map.block = N;
            map.col_stride = 3;
            src_size = K * k_stride;
          } else {
            k_stride = 1;
            const int64_t ld = K + 5, block = std::max<int64_t>(1, (N + 1) / 2);
            map.base = 2 * ld;
            map.block = block;
            map.block_stride = (block + 3) * ld;
            map.col_stride = ld;
            src_size = map.offset(N - 1) + K + 1;
          }
          auto src = randn<T>(src_size, rng);
          std::vector<T> packed(k.packed_b_size(K, N), T(-7));
          k.pack_b(K, N, src.data(), k_stride, map, packed.data());
          for (T beta : {T(0), T(1), T(0.5)}) {
            auto A = randn<T>(M * lda, rng), C = randn<T>(M * ldc, rng);
            std::vector<T> want = C;
            for (int64_t i = 0; i < M; ++i)
              for (int64_t j = 0; j < N; ++j) {
                double acc = 0;
                for (int64_t p = 0; p < K; ++p)
                  acc += double(A[i * lda + p]) * double(src[map.offset(j) + p * k_stride]);
                want[i * ldc + j] = T(acc + double(beta) * double(C[i * ldc + j]));
              }
            k.gemm_packed(M, N, K, A.data(), lda, packed.data(), beta, C.data(), ldc);
            expect_close(C, want, tol, transposed ? "gemm_packed (transposed source)" : "gemm_packed",
                         k.isa);
          }
        }
      }
    }
  }
  // The weight-gradient path: A transposed from a [K, M] block, B packed from
  // row pointers (sizes around the 16x16 transpose blocks).
  for (int64_t M : {1, 3, 16, 17, 35}) {
    for (int64_t N : {5, 64, 70}) {
      for (int64_t K : {7, 16, 37}) {
        const int64_t lda_src = M + 2, ldb = N + 1, ldc = N + 3;
        auto A_src = randn<T>(K * lda_src, rng), B = randn<T>(K * ldb, rng), C = randn<T>(M * ldc, rng);
        std::vector<T> At(M * K, T(-7));
        k.transpose(K, M, A_src.data(), lda_src, At.data(), K);
        std::vector<const T*> rows(K);
        for (int64_t p = 0; p < K; ++p) rows[p] = B.data() + (K - 1 - p) * ldb;  // reversed order
        std::vector<T> packed(k.packed_b_size(K, N - 1));
        k.pack_b_rows(K, N - 1, rows.data(), 1, packed.data());
        std::vector<T> want = C;
        for (int64_t i = 0; i < M; ++i)
          for (int64_t j = 0; j < N - 1; ++j) {
            double acc = 0;
            for (int64_t p = 0; p < K; ++p) acc += double(A_src[p * lda_src + i]) * double(rows[p][1 + j]);
            want[i * ldc + j] = T(acc + double(C[i * ldc + j]));
          }
        k.gemm_packed(M, N - 1, K, At.data(), K, packed.data(), T(1), C.data(), ldc);
        expect_close(C, want, tol, "transpose + pack_b_rows + gemm_packed", k.isa);
      }
    }
  }
}

template <typename T>
void test_lstm(const KernelTable<T>& k, std::mt19937& rng, double tol) {
  using M = rnnfast::ScalarMath<T>;
  for (int64_t H : {1, 3, 17, 40}) {
    const int64_t rows = 3, u0 = H > 3 ? 2 : 0, u1 = H, nu = u1 - u0;
    const int64_t ld_pre = 4 * nu + 2, ld_gates = 4 * H + 1, ld_c = H + 3, ld_m = H + 4;
    auto pre = randn<T>(rows * ld_pre, rng), gates_out = randn<T>(rows * ld_gates, rng);
    auto bias = randn<T>(4 * H, rng), c = randn<T>(rows * ld_c, rng), m = randn<T>(rows * ld_m, rng);
    auto c_saved = randn<T>(rows * H, rng);
    std::vector<T> gates_want = gates_out, c_want = c, m_want = m, cs_want = c_saved;
    for (int64_t b = 0; b < rows; ++b)
      for (int64_t u = u0; u < u1; ++u) {
        T a[4];
        for (int g = 0; g < 4; ++g) a[g] = pre[b * ld_pre + g * nu + (u - u0)] + bias[g * H + u];
        rnnfast::LstmGates<T> gates;
        T cn, mn;
        rnnfast::lstm_forward<M>(a[0], a[1], a[2], a[3], c[b * ld_c + u], gates, cn, mn);
        const T act[4] = {gates.i, gates.f, gates.g, gates.o};
        for (int g = 0; g < 4; ++g) gates_want[b * ld_gates + g * H + u] = act[g];
        c_want[b * ld_c + u] = cn;
        m_want[b * ld_m + u] = mn;
        cs_want[b * H + u] = cn;
      }
    rnnfast::cpu::CellForwardRows<T> r;
    r.rows = rows; r.u0 = u0; r.u1 = u1; r.H = H;
    r.gx = pre.data(); r.ld_gx = ld_pre; r.bias = bias.data();
    r.gates = gates_out.data(); r.ld_gates = ld_gates;
    r.c = c.data(); r.ld_c = ld_c; r.saved = c_saved.data(); r.ld_saved = H;
    r.h = m.data(); r.ld_h = ld_m;
    k.cells[int(CellType::kLSTM)].forward_train(r);
    expect_close(gates_out, gates_want, tol, "lstm forward gates", k.isa);
    expect_close(c, c_want, tol, "lstm forward c", k.isa);
    expect_close(m, m_want, tol, "lstm forward m", k.isa);
    expect_close(c_saved, cs_want, tol, "lstm forward saved c", k.isa);

    // Backward, with the two-source previous state (rows >= 1 start from c0).
    auto gates = randn<T>(rows * 4 * H, rng);
    for (auto& g : gates) g = T(1) / (T(1) + std::exp(-g));  // valid activations
    auto cs = randn<T>(rows * H, rng), cprev = randn<T>(rows * H, rng), c0 = randn<T>(rows * H, rng);
    auto dm_a = randn<T>(rows * H, rng), dm_b = randn<T>(rows * H, rng), dc = randn<T>(rows * H, rng);
    auto dg = randn<T>(rows * 4 * H, rng);
    std::vector<T> dg_want = dg, dc_want = dc;
    for (int64_t b = 0; b < rows; ++b)
      for (int64_t u = u0; u < u1; ++u) {
        const rnnfast::LstmGates<T> g{gates[b * 4 * H + u], gates[b * 4 * H + H + u],
                                      gates[b * 4 * H + 2 * H + u], gates[b * 4 * H + 3 * H + u]};
        const T cp = b < 1 ? cprev[b * H + u] : c0[b * H + u];
        T d[4], dcp;
        rnnfast::lstm_backward<M>(g, cs[b * H + u], cp, dm_a[b * H + u] + dm_b[b * H + u],
                                  dc[b * H + u], d[0], d[1], d[2], d[3], dcp);
        for (int q = 0; q < 4; ++q) dg_want[b * 4 * H + q * H + u] = d[q];
        dc_want[b * H + u] = dcp;
      }
    rnnfast::cpu::CellBackwardRows<T> rb;
    rb.rows = rows; rb.u0 = u0; rb.u1 = u1; rb.H = H;
    rb.gates = gates.data(); rb.ld_gates = 4 * H; rb.saved = cs.data(); rb.ld_saved = H;
    rb.prev.first = cprev.data(); rb.prev.ld_first = H; rb.prev.n_first = 1;
    rb.prev.initial = c0.data(); rb.prev.ld_initial = H;
    rb.dh_a = dm_a.data(); rb.ld_dh_a = H; rb.dh_b = dm_b.data(); rb.ld_dh_b = H;
    rb.dc = dc.data(); rb.ld_dc = H; rb.dg = dg.data(); rb.ld_dg = 4 * H;
    k.cells[int(CellType::kLSTM)].backward(rb);
    expect_close(dg, dg_want, tol, "lstm backward dgates", k.isa);
    expect_close(dc, dc_want, tol, "lstm backward dc", k.isa);
  }
}

template <typename T>
void test_gru(const KernelTable<T>& k, std::mt19937& rng, double tol) {
  using M = rnnfast::ScalarMath<T>;
  for (int64_t H : {1, 3, 17, 40}) {
    const int64_t rows = 3, u0 = H > 3 ? 1 : 0, u1 = H, nu = u1 - u0;
    auto gx = randn<T>(rows * 3 * nu, rng), gh = randn<T>(rows * 3 * nu, rng);
    auto bx = randn<T>(3 * H, rng), bhn = randn<T>(H, rng);
    auto hp = randn<T>(rows * H, rng), h0 = randn<T>(rows * H, rng);
    auto gates_out = randn<T>(rows * 3 * H, rng);
    auto hn_saved = randn<T>(rows * H, rng), h = randn<T>(rows * H, rng);
    std::vector<T> gates_want = gates_out, hn_want = hn_saved, h_want = h;
    for (int64_t b = 0; b < rows; ++b)
      for (int64_t u = u0; u < u1; ++u) {
        const int64_t j = u - u0;
        const T ar = gx[b * 3 * nu + j] + gh[b * 3 * nu + j] + bx[u];
        const T az = gx[b * 3 * nu + nu + j] + gh[b * 3 * nu + nu + j] + bx[H + u];
        const T axn = gx[b * 3 * nu + 2 * nu + j] + bx[2 * H + u];
        const T hn = gh[b * 3 * nu + 2 * nu + j] + bhn[u];
        const T prev = b < 2 ? hp[b * H + u] : h0[b * H + u];
        rnnfast::GruGates<T> g;
        T hnew;
        rnnfast::gru_forward<M>(ar, az, axn, hn, prev, g, hnew);
        gates_want[b * 3 * H + u] = g.r;
        gates_want[b * 3 * H + H + u] = g.z;
        gates_want[b * 3 * H + 2 * H + u] = g.n;
        hn_want[b * H + u] = hn;
        h_want[b * H + u] = hnew;
      }
    rnnfast::cpu::CellForwardRows<T> r;
    r.rows = rows; r.u0 = u0; r.u1 = u1; r.H = H;
    r.gx = gx.data(); r.ld_gx = 3 * nu; r.gh = gh.data(); r.ld_gh = 3 * nu;
    r.bias = bx.data(); r.bias_hn = bhn.data();
    r.h_prev.first = hp.data(); r.h_prev.ld_first = H; r.h_prev.n_first = 2;
    r.h_prev.initial = h0.data(); r.h_prev.ld_initial = H;
    r.gates = gates_out.data(); r.ld_gates = 3 * H;
    r.saved = hn_saved.data(); r.ld_saved = H; r.h = h.data(); r.ld_h = H;
    k.cells[int(CellType::kGRU)].forward_train(r);
    expect_close(gates_out, gates_want, tol, "gru forward gates", k.isa);
    expect_close(hn_saved, hn_want, tol, "gru forward hn", k.isa);
    expect_close(h, h_want, tol, "gru forward h", k.isa);

    auto gates = randn<T>(rows * 3 * H, rng);
    for (auto& g : gates) g = T(1) / (T(1) + std::exp(-g));
    auto hn = randn<T>(rows * H, rng), dy = randn<T>(rows * H, rng), dh = randn<T>(rows * H, rng);
    auto dgh = randn<T>(rows * 3 * H, rng), dgxn = randn<T>(rows * H, rng);
    std::vector<T> dgh_want = dgh, dgxn_want = dgxn, dh_want = dh;
    for (int64_t b = 0; b < rows; ++b)
      for (int64_t u = u0; u < u1; ++u) {
        const rnnfast::GruGates<T> g{gates[b * 3 * H + u], gates[b * 3 * H + H + u],
                                     gates[b * 3 * H + 2 * H + u]};
        const T prev = b < 2 ? hp[b * H + u] : h0[b * H + u];
        T dar, daz, daxn, dhn, direct;
        rnnfast::gru_backward<M>(g, hn[b * H + u], prev, dy[b * H + u] + dh[b * H + u], dar, daz,
                                 daxn, dhn, direct);
        dgh_want[b * 3 * H + u] = dar;
        dgh_want[b * 3 * H + H + u] = daz;
        dgh_want[b * 3 * H + 2 * H + u] = dhn;
        dgxn_want[b * H + u] = daxn;
        dh_want[b * H + u] = direct;
      }
    rnnfast::cpu::CellBackwardRows<T> rb;
    rb.rows = rows; rb.u0 = u0; rb.u1 = u1; rb.H = H;
    rb.gates = gates.data(); rb.ld_gates = 3 * H; rb.saved = hn.data(); rb.ld_saved = H;
    rb.prev = r.h_prev; rb.dh_a = dy.data(); rb.ld_dh_a = H; rb.dh_b = dh.data(); rb.ld_dh_b = H;
    rb.dh_direct = dh.data(); rb.ld_dh_direct = H;
    rb.dg = dgh.data(); rb.ld_dg = 3 * H; rb.dgxn = dgxn.data(); rb.ld_dgxn = H;
    k.cells[int(CellType::kGRU)].backward(rb);
    expect_close(dgh, dgh_want, tol, "gru backward dgh", k.isa);
    expect_close(dgxn, dgxn_want, tol, "gru backward dgxn", k.isa);
    expect_close(dh, dh_want, tol, "gru backward dh", k.isa);
  }
}

template <typename T>
void test_rnn(const KernelTable<T>& k, std::mt19937& rng, double tol) {
  using M = rnnfast::ScalarMath<T>;
  for (CellType cell : {CellType::kRNNTanh, CellType::kRNNRelu}) {
    const bool relu = cell == CellType::kRNNRelu;
    for (int64_t H : {1, 3, 17, 40}) {
      const int64_t rows = 3, u0 = H > 3 ? 2 : 0, u1 = H, nu = u1 - u0, ld_h = H + 3;
      auto pre = randn<T>(rows * nu, rng), bias = randn<T>(H, rng), h = randn<T>(rows * ld_h, rng);
      std::vector<T> h_want = h;
      for (int64_t b = 0; b < rows; ++b)
        for (int64_t u = u0; u < u1; ++u) {
          const T a = pre[b * nu + (u - u0)] + bias[u];
          h_want[b * ld_h + u] = relu ? rnnfast::rnn_forward<M, rnnfast::RnnActivation::kRelu>(a)
                                      : rnnfast::rnn_forward<M, rnnfast::RnnActivation::kTanh>(a);
        }
      rnnfast::cpu::CellForwardRows<T> r;
      r.rows = rows; r.u0 = u0; r.u1 = u1; r.H = H;
      r.gx = pre.data(); r.ld_gx = nu; r.bias = bias.data(); r.h = h.data(); r.ld_h = ld_h;
      k.cells[int(cell)].forward_infer(r);
      expect_close(h, h_want, tol, relu ? "rnn relu forward" : "rnn tanh forward", k.isa);

      // Backward from the output (some relu outputs exactly 0: inactive units).
      auto y = randn<T>(rows * H, rng), dy = randn<T>(rows * H, rng), dh = randn<T>(rows * H, rng);
      for (auto& v : y) v = relu ? std::max(v, T(0)) : std::tanh(v);
      auto dg = randn<T>(rows * H, rng);
      std::vector<T> dg_want = dg;
      for (int64_t b = 0; b < rows; ++b)
        for (int64_t u = u0; u < u1; ++u) {
          const T d = dy[b * H + u] + dh[b * H + u];
          dg_want[b * H + u] = relu ? rnnfast::rnn_backward<M, rnnfast::RnnActivation::kRelu>(y[b * H + u], d)
                                    : rnnfast::rnn_backward<M, rnnfast::RnnActivation::kTanh>(y[b * H + u], d);
        }
      rnnfast::cpu::CellBackwardRows<T> rb;
      rb.rows = rows; rb.u0 = u0; rb.u1 = u1; rb.H = H;
      rb.h = y.data(); rb.ld_h = H; rb.dh_a = dy.data(); rb.ld_dh_a = H;
      rb.dh_b = dh.data(); rb.ld_dh_b = H; rb.dg = dg.data(); rb.ld_dg = H;
      k.cells[int(cell)].backward(rb);
      expect_close(dg, dg_want, tol, relu ? "rnn relu backward" : "rnn tanh backward", k.isa);
    }
  }
}

// The unpacked GEMMs of small calls: gemm_direct (B given transposed, W[N, K])
// and gemm_rows (B row-major [K, N] with a row stride).
template <typename T>
void test_unpacked_gemm(const KernelTable<T>& k, std::mt19937& rng, double tol) {
  for (int64_t M : {1, 2, 3, 5}) {
    for (int64_t N : {1, 7, 16, 17, 65, 130}) {
      for (int64_t K : {1, 7, 64, 70}) {
        for (T beta : {T(0), T(1)}) {
          const int64_t lda = K + 3, ldw = K + 2, ldb = N + 5, ldc = N + 2;
          auto A = randn<T>(M * lda, rng), Wt = randn<T>(N * ldw, rng), Bm = randn<T>(K * ldb, rng);
          auto C0 = randn<T>(M * ldc, rng);
          std::vector<T> want_direct = C0, want_rows = C0;
          for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < N; ++n) {
              double d = 0, r = 0;
              for (int64_t q = 0; q < K; ++q) {
                d += double(A[m * lda + q]) * double(Wt[n * ldw + q]);
                r += double(A[m * lda + q]) * double(Bm[q * ldb + n]);
              }
              want_direct[m * ldc + n] = T(d + double(beta) * double(C0[m * ldc + n]));
              want_rows[m * ldc + n] = T(r + double(beta) * double(C0[m * ldc + n]));
            }
          std::vector<T> C = C0;
          k.gemm_direct(M, N, K, A.data(), lda, Wt.data(), ldw, beta, C.data(), ldc);
          expect_close(C, want_direct, tol, "gemm_direct", k.isa);
          C = C0;
          k.gemm_rows(M, N, K, A.data(), lda, Bm.data(), ldb, beta, C.data(), ldc);
          expect_close(C, want_rows, tol, "gemm_rows", k.isa);
        }
      }
    }
  }
}

// Accuracy of the vectorised sigmoid and tanh against double precision, in
// ulp of the float result, over a sweep of pre-activations (tiny to
// saturating). Read through the LSTM kernel: i = sigmoid(a), g = tanh(a).
void test_activation_accuracy(const KernelTable<float>& k) {
  const int64_t H = 4001;
  std::vector<float> pre(4 * H), bias(4 * H, 0.f), gates(4 * H), c(H, 0.f), m(H), cs(H);
  for (int64_t u = 0; u < H; ++u) {
    const double t = double(u) / (H - 1);  // 0..1
    // Half the points log-spaced from 1e-6 to 30, half linear in [-10, 10], both signs.
    const double v = u % 2 ? std::pow(10.0, -6.0 + 7.5 * t) * (u % 4 == 1 ? 1 : -1) : -10 + 20 * t;
    pre[u] = pre[2 * H + u] = float(v);
    pre[H + u] = pre[3 * H + u] = 0.f;
  }
  rnnfast::cpu::CellForwardRows<float> r;
  r.rows = 1; r.u0 = 0; r.u1 = H; r.H = H;
  r.gx = pre.data(); r.ld_gx = 4 * H; r.bias = bias.data();
  r.gates = gates.data(); r.ld_gates = 4 * H; r.c = c.data(); r.ld_c = H;
  r.saved = cs.data(); r.ld_saved = H; r.h = m.data(); r.ld_h = H;
  auto forward = k.cells[int(CellType::kLSTM)].forward_train;
  forward(r);
  auto ulp_error = [](float got, double want) {
    const double ulp = std::nextafter(std::fabs(float(want)), INFINITY) - std::fabs(float(want));
    return std::fabs(double(got) - want) / ulp;
  };
  double worst_sigmoid = 0, worst_tanh = 0;
  for (int64_t u = 0; u < H; ++u) {
    const double a = pre[u];
    worst_sigmoid = std::max(worst_sigmoid, ulp_error(gates[u], 1.0 / (1.0 + std::exp(-a))));
    worst_tanh = std::max(worst_tanh, ulp_error(gates[2 * H + u], std::tanh(a)));
  }
  std::printf("  [%s] float activations: sigmoid max %.2f ulp, tanh max %.2f ulp\n", k.isa,
              worst_sigmoid, worst_tanh);
  if (!(worst_sigmoid <= 4.0 && worst_tanh <= 4.0)) {
    std::printf("FAIL [%s] activation accuracy above 4 ulp\n", k.isa);
    ++g_failures;
  }
  // NaN propagates; infinities saturate.
  const float special[3] = {NAN, INFINITY, -INFINITY};
  for (int q = 0; q < 3; ++q) pre[q] = pre[2 * H + q] = special[q];
  forward(r);
  const bool ok = std::isnan(gates[0]) && std::isnan(gates[2 * H]) && gates[1] == 1.f &&
                  gates[2] < 1e-30f && gates[2] >= 0.f && gates[2 * H + 1] == 1.f &&
                  gates[2 * H + 2] == -1.f;
  if (!ok) {
    std::printf("FAIL [%s] NaN/Inf handling of the activations\n", k.isa);
    ++g_failures;
  }
}

}  // namespace

int main() {
  std::mt19937 rng(42);
  int count = 0;
  const char* const* names = rnnfast::cpu::available_cpu_capabilities(&count);
  std::vector<const char*> isas(names, names + count);
  for (const char* isa : isas) {
    rnnfast::cpu::set_cpu_capability(isa);
    // Vector transcendental functions (Sleef, 1 ulp) versus libm: a few ulp.
    test_gemm(rnnfast::cpu::kernels_f32(), rng, 1e-5);
    test_gemm(rnnfast::cpu::kernels_f64(), rng, 1e-12);
    test_lstm(rnnfast::cpu::kernels_f32(), rng, 1e-5);
    test_lstm(rnnfast::cpu::kernels_f64(), rng, 1e-12);
    test_gru(rnnfast::cpu::kernels_f32(), rng, 1e-5);
    test_gru(rnnfast::cpu::kernels_f64(), rng, 1e-12);
    test_rnn(rnnfast::cpu::kernels_f32(), rng, 1e-5);
    test_rnn(rnnfast::cpu::kernels_f64(), rng, 1e-12);
    test_unpacked_gemm(rnnfast::cpu::kernels_f32(), rng, 1e-5);
    test_unpacked_gemm(rnnfast::cpu::kernels_f64(), rng, 1e-12);
    test_activation_accuracy(rnnfast::cpu::kernels_f32());
    std::printf("cpu kernels [%s]: checked\n", isa);
  }
  if (g_failures) {
    std::printf("%d failure(s)\n", g_failures);
    return 1;
  }
  std::printf("cpu kernels: all checks passed on %d instruction set(s)\n", count);
  return 0;
}
