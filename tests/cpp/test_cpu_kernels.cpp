// Unit test of the instruction-set builds of the CPU kernels (csrc/cpu/kernels.h):
// every build this CPU can run is compared with a plain scalar evaluation of
// csrc/cell_math.h and with a naive GEMM, on odd sizes that exercise the
// partial-vector tails and the row-stride handling, for each storage type
// (float, double, BFloat16, Half). Buffers have the type of their role
// (storage S or accumulation A = acc_t<S>, kernels.h); the references compute
// in A from the S values, as the kernels do, and round to S where the kernel
// stores S.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cell_math.h"
#include "cpu/kernels.h"

namespace {

using rnnfast::CellType;
using rnnfast::acc_t;
using rnnfast::cpu::KernelTable;
int g_failures = 0;

// Tolerances (max |got - want| / (1 + |want|)) of one storage type: `gemm`
// and `acc` for results kept in the accumulation type, `storage` for values
// rounded to S (a result a few A-ulp off may round to the neighbouring S).
struct Tolerance {
  double gemm, acc, storage;
};

// 64-byte aligned bytes for packed panels.
struct Panels {
  explicit Panels(int64_t bytes)
      : data(static_cast<uint8_t*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64)), std::free) {
    std::fill_n(data.get(), (bytes + 63) / 64 * 64 + 64, uint8_t(0xff));  // NaN: padding must be written
  }
  void* get() const { return data.get(); }
  std::unique_ptr<uint8_t, void (*)(void*)> data;
};

template <typename T>
void expect_close(const std::vector<T>& got, const std::vector<T>& want, double tol,
                  const char* what, const char* isa) {
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(double(got[i]) - double(want[i])) / (1.0 + std::fabs(double(want[i])));
    worst = std::isnan(err) ? INFINITY : std::max(worst, err);  // NaN is the worst
  }
  if (!(worst <= tol)) {
    std::printf("FAIL [%s] %s: max relative error %.3g > %.3g\n", isa, what, worst, tol);
    ++g_failures;
  }
}

// Bit-for-bit equality (the same sums in another order of independent blocks).
template <typename T>
void expect_identical(const std::vector<T>& got, const std::vector<T>& want, const char* what, const char* isa) {
  if (got.size() != want.size() || std::memcmp(got.data(), want.data(), got.size() * sizeof(T)) != 0) {
    std::printf("FAIL [%s] %s: not bit-identical\n", isa, what);
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

template <typename S>
void test_gemm(const KernelTable<S>& k, std::mt19937& rng, double tol) {
  using A = acc_t<S>;
  // Two ways the loop packs B: from a row-major source (column n at n*3 + 1,
  // rows k at k*src_ld) and from a transposed, gate-blocked one (w^T: column n
  // is row base + (n / block)*block_stride + (n % block) of a [*, K] matrix).
  // A third: row-major with contiguous columns (col_stride 1, the backward's
  // w_hh and w_ih), whose panels are copied row by row.
  int weight_as_a_products = 0;
  for (int layout : {0, 1, 2}) {
    const bool transposed = layout == 1;
    // Every row-tile size and split: up to 12-row tiles (AVX-512), rests merged
    // with the last full tile (13 = 7 + 6, 26 = 12 + 7 + 7, 64 = 4 x 12 + 8 + 8).
    for (int64_t M : {1, 2, 3, 4, 5, 7, 9, 12, 13, 14, 18, 25, 26, 32, 64}) {
      for (int64_t N : {1, 7, 16, 17, 33, 64, 65, 130, 300}) {  // 300: blocks of 150 > kWeightAsABlock
        for (int64_t K : {1, 7, 64, 70}) {
          const int64_t lda = K + 3, ldc = N + 2;
          rnnfast::cpu::ColumnMap map;
          int64_t k_stride, src_size;
          if (layout == 0) {
            k_stride = 3 * N + 2;
            map.base = 1;
            map.block = N;
            map.col_stride = 3;
            src_size = K * k_stride;
          } else if (layout == 2) {
            k_stride = N + 5;
            map.base = 2;
            map.block = N;
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
          auto src = randn<S>(src_size, rng);
          Panels packed(k.packed_b_bytes(K, N));
          k.pack_b(K, N, src.data(), k_stride, map, packed.get());
          for (A beta : {A(0), A(1), A(0.5)}) {
            auto Am = randn<S>(M * lda, rng);
            auto C = randn<A>(M * ldc, rng);
            std::vector<A> want = C;
            for (int64_t i = 0; i < M; ++i)
              for (int64_t j = 0; j < N; ++j) {
                double acc = 0;
                for (int64_t p = 0; p < K; ++p)
                  acc += double(Am[i * lda + p]) * double(src[map.offset(j) + p * k_stride]);
                want[i * ldc + j] = A(acc + double(beta) * double(C[i * ldc + j]));
              }
            std::vector<A> C_descending = C, C_streamed = C;
            k.gemm_packed(M, N, K, Am.data(), lda, packed.get(), beta, C.data(), ldc, /*descending=*/false);
            expect_close(C, want, tol, transposed ? "gemm_packed (transposed source)" : "gemm_packed",
                         k.isa);
            k.gemm_packed(M, N, K, Am.data(), lda, packed.get(), beta, C_descending.data(), ldc,
                          /*descending=*/true);
            expect_identical(C_descending, C, "gemm_packed, panels last to first", k.isa);
            // Packed one panel at a time from the source (panels that start inside a
            // gate block of the transposed source): the same sums bit for bit.
            // beta = 0: C is not read (NaN there must not show).
            if (beta == A(0))
              for (int64_t i = 0; i < M; ++i)
                std::fill_n(C_streamed.begin() + i * ldc, N, std::numeric_limits<A>::quiet_NaN());
            std::vector<A> C_before = C_streamed;
            // The scratch as the loops size it, for a largest product of more
            // rows than this one (M + 20 may be off the weight-as-A path where
            // M is on it), followed by a guard that must stay untouched.
            const int64_t scratch_bytes = k.streamed_scratch_bytes(M + 20, K, k_stride);
            Panels scratch(scratch_bytes + 256);
            uint8_t* guard = static_cast<uint8_t*>(scratch.get()) + scratch_bytes;
            std::fill_n(guard, 256, uint8_t(0x5a));
            k.gemm_streamed(M, N, K, Am.data(), lda, src.data(), k_stride, map, beta, C_streamed.data(), ldc,
                            scratch.get());
            if (std::count(guard, guard + 256, uint8_t(0x5a)) != 256) {
              std::printf("FAIL [%s] gemm_streamed: wrote past its scratch (M=%ld N=%ld K=%ld)\n", k.isa, long(M),
                          long(N), long(K));
              ++g_failures;
            }
            if (!k.streams_weight_as_a(M, k_stride)) {
              expect_identical(C_streamed, C, "gemm_streamed", k.isa);
            } else {
              // The weight read as the A operand: every output summed in k
              // order by fused multiply-adds, then one fmadd of beta * C.
              std::vector<A> in_order = C_before;
              for (int64_t i = 0; i < M; ++i)
                for (int64_t j = 0; j < N; ++j) {
                  float acc = 0.f;
                  for (int64_t p = 0; p < K; ++p)
                    acc = std::fma(float(Am[i * lda + p]), float(src[map.offset(j) + p * k_stride]), acc);
                  A& c = in_order[i * ldc + j];
                  c = beta == A(0) ? acc : std::fma(float(beta), float(c), acc);
                }
              expect_identical(C_streamed, in_order, "gemm_streamed (weight as A)", k.isa);
              expect_close(C_streamed, want, tol, "gemm_streamed (weight as A)", k.isa);
              // AVX-512: 24+ rows in one row block (this test's K) make packed
              // tiles of 6+ rows, one accumulator set each, so the packed
              // path's values too (AVX2's 3-row tiles keep two sets).
              if (std::string(k.isa).rfind("avx512", 0) == 0)
                expect_identical(C_streamed, C, "gemm_streamed (weight as A) vs gemm_packed", k.isa);
              ++weight_as_a_products;
            }
          }
        }
      }
    }
  }
  // The builds with gemm_streamed's weight-as-A path (AVX2, AVX-512 but for
  // the native bf16 panels) ran it above (transposed source; AVX-512 from 24
  // rows, AVX2 at 12-14 and 32 of the sizes above).
  if (k.streams_weight_as_a(32, 1) && weight_as_a_products == 0) {
    std::printf("FAIL [%s] gemm_streamed: the weight-as-A path never ran\n", k.isa);
    ++g_failures;
  }
  // The weight-gradient path: A transposed from a [K, M] block, B packed from
  // row pointers (sizes around the 16x16 transpose blocks).
  for (int64_t M : {1, 3, 16, 17, 35}) {
    for (int64_t N : {5, 64, 70}) {
      for (int64_t K : {7, 16, 37}) {
        const int64_t lda_src = M + 2, ldb = N + 1, ldc = N + 3;
        auto A_src = randn<S>(K * lda_src, rng), B = randn<S>(K * ldb, rng);
        auto C = randn<A>(M * ldc, rng);
        std::vector<S> At(M * K, S(-7));
        k.transpose(K, M, A_src.data(), lda_src, At.data(), K);
        std::vector<const S*> rows(K);
        for (int64_t p = 0; p < K; ++p) rows[p] = B.data() + (K - 1 - p) * ldb;  // reversed order
        Panels packed(k.packed_b_bytes(K, N - 1));
        k.pack_b_rows(K, N - 1, rows.data(), 1, packed.get());
        std::vector<A> want = C;
        for (int64_t i = 0; i < M; ++i)
          for (int64_t j = 0; j < N - 1; ++j) {
            double acc = 0;
            for (int64_t p = 0; p < K; ++p) acc += double(A_src[p * lda_src + i]) * double(rows[p][1 + j]);
            want[i * ldc + j] = A(acc + double(C[i * ldc + j]));
          }
        k.gemm_packed(M, N - 1, K, At.data(), K, packed.get(), A(1), C.data(), ldc, /*descending=*/false);
        expect_close(C, want, tol, "transpose + pack_b_rows + gemm_packed", k.isa);

        // Column sums (the bias gradients) and the conversion to storage.
        std::vector<A> sums = randn<A>(M, rng), sums_want = sums;
        for (int64_t p = 0; p < K; ++p)
          for (int64_t i = 0; i < M; ++i) sums_want[i] = A(double(sums_want[i]) + double(A_src[p * lda_src + i]));
        k.add_column_sums(K, M, A_src.data(), lda_src, sums.data());
        expect_close(sums, sums_want, tol, "add_column_sums", k.isa);
        std::vector<S> stored(K * ldb, S(-7)), stored_want = stored;
        for (int64_t r = 0; r < K; ++r)
          for (int64_t q = 0; q < N - 1; ++q) stored_want[r * ldb + q] = S(C[(r % M) * ldc + q]);
        for (int64_t r = 0; r < K; ++r)  // row by row: the source rows repeat
          k.to_storage(1, N - 1, C.data() + (r % M) * ldc, ldc, stored.data() + r * ldb, ldb);
        expect_close(stored, stored_want, 0.0, "to_storage", k.isa);
      }
    }
  }
}

template <typename S>
void test_lstm(const KernelTable<S>& k, std::mt19937& rng, const Tolerance& tol) {
  using A = acc_t<S>;
  using M = rnnfast::ScalarMath<A>;
  for (int64_t H : {1, 3, 17, 40}) {
    const int64_t rows = 3, u0 = H > 3 ? 2 : 0, u1 = H, nu = u1 - u0;
    const int64_t ld_pre = 4 * nu + 2, ld_gates = 4 * H + 1, ld_c = H + 3, ld_m = H + 4;
    auto pre = randn<A>(rows * ld_pre, rng), bias = randn<A>(4 * H, rng), c = randn<A>(rows * ld_c, rng);
    auto gates_out = randn<S>(rows * ld_gates, rng), m = randn<S>(rows * ld_m, rng);
    auto c_saved = randn<S>(rows * H, rng);
    std::vector<S> gates_want = gates_out, m_want = m, cs_want = c_saved;
    std::vector<A> c_want = c;
    for (int64_t b = 0; b < rows; ++b)
      for (int64_t u = u0; u < u1; ++u) {
        A a[4];
        for (int g = 0; g < 4; ++g) a[g] = pre[b * ld_pre + g * nu + (u - u0)] + bias[g * H + u];
        rnnfast::LstmGates<A> gates;
        A cn, mn;
        rnnfast::lstm_forward<M>(a[0], a[1], a[2], a[3], c[b * ld_c + u], gates, cn, mn);
        const A act[4] = {gates.i, gates.f, gates.g, gates.o};
        for (int g = 0; g < 4; ++g) gates_want[b * ld_gates + g * H + u] = S(act[g]);
        c_want[b * ld_c + u] = cn;
        m_want[b * ld_m + u] = S(mn);
        cs_want[b * H + u] = S(cn);
      }
    rnnfast::cpu::CellForwardRows<S> r;
    r.rows = rows; r.u0 = u0; r.u1 = u1; r.H = H;
    r.gx = pre.data(); r.ld_gx = ld_pre; r.bias = bias.data();
    r.gates = gates_out.data(); r.ld_gates = ld_gates;
    r.c = c.data(); r.ld_c = ld_c; r.saved = c_saved.data(); r.ld_saved = H;
    r.h = m.data(); r.ld_h = ld_m;
    k.cells[int(CellType::kLSTM)].forward_train(r);
    expect_close(gates_out, gates_want, tol.storage, "lstm forward gates", k.isa);
    expect_close(c, c_want, tol.acc, "lstm forward c", k.isa);
    expect_close(m, m_want, tol.storage, "lstm forward m", k.isa);
    expect_close(c_saved, cs_want, tol.storage, "lstm forward saved c", k.isa);

    // Backward, with the two-source previous state (rows >= 1 start from c0)
    // and the step's gradient from dy (S) + dm (A).
    auto gates = randn<S>(rows * 4 * H, rng);
    for (auto& g : gates) g = S(A(1) / (A(1) + std::exp(-A(g))));  // valid activations
    auto cs = randn<S>(rows * H, rng), cprev = randn<S>(rows * H, rng), c0 = randn<S>(rows * H, rng);
    auto dy = randn<S>(rows * H, rng);
    auto dm = randn<A>(rows * H, rng), dc = randn<A>(rows * H, rng);
    auto dg = randn<S>(rows * 4 * H, rng);
    std::vector<S> dg_want = dg, dg_proj = dg;
    std::vector<A> dc_want = dc;
    // The step's gradient is dy + dm, or (with a projection) dm alone.
    auto expect = [&](bool with_dy, std::vector<S>& dg_out) {
      for (int64_t b = 0; b < rows; ++b)
        for (int64_t u = u0; u < u1; ++u) {
          auto at = [&](int q) { return A(gates[b * 4 * H + q * H + u]); };
          const rnnfast::LstmGates<A> g{at(0), at(1), at(2), at(3)};
          const A cp = A(b < 1 ? cprev[b * H + u] : c0[b * H + u]);
          const A grad = (with_dy ? A(dy[b * H + u]) : A(0)) + dm[b * H + u];
          A d[4], dcp;
          rnnfast::lstm_backward<M>(g, A(cs[b * H + u]), cp, grad, dc[b * H + u], d[0], d[1], d[2],
                                    d[3], dcp);
          for (int q = 0; q < 4; ++q) dg_out[b * 4 * H + q * H + u] = S(d[q]);
          dc_want[b * H + u] = dcp;
        }
    };
    expect(true, dg_want);
    rnnfast::cpu::CellBackwardRows<S> rb;
    rb.rows = rows; rb.u0 = u0; rb.u1 = u1; rb.H = H;
    rb.gates = gates.data(); rb.ld_gates = 4 * H; rb.saved = cs.data(); rb.ld_saved = H;
    rb.prev.first = cprev.data(); rb.prev.ld_first = H; rb.prev.n_first = 1;
    rb.prev.initial = c0.data(); rb.prev.ld_initial = H;
    rb.dy = dy.data(); rb.ld_dy = H; rb.dh = dm.data(); rb.ld_dh = H;
    rb.dc = dc.data(); rb.ld_dc = H; rb.dg = dg.data(); rb.ld_dg = 4 * H;
    k.cells[int(CellType::kLSTM)].backward(rb);
    expect_close(dg, dg_want, tol.storage, "lstm backward dgates", k.isa);
    expect_close(dc, dc_want, tol.acc, "lstm backward dc", k.isa);

    // With a projection the whole gradient of m_t comes from dh (dy absent),
    // from the dc the call above left (only dg is compared).
    expect(false, dg_proj);
    rb.dy = nullptr;
    k.cells[int(CellType::kLSTM)].backward(rb);
    expect_close(dg, dg_proj, tol.storage, "lstm backward dgates (dh only)", k.isa);
  }
}

template <typename S>
void test_gru(const KernelTable<S>& k, std::mt19937& rng, const Tolerance& tol) {
  using A = acc_t<S>;
  using M = rnnfast::ScalarMath<A>;
  for (int64_t H : {1, 3, 17, 40}) {
    const int64_t rows = 3, u0 = H > 3 ? 1 : 0, u1 = H, nu = u1 - u0;
    auto gx = randn<A>(rows * 3 * nu, rng), gh = randn<A>(rows * 3 * nu, rng);
    auto bx = randn<A>(3 * H, rng), bhn = randn<A>(H, rng);
    auto hp = randn<S>(rows * H, rng), h0 = randn<S>(rows * H, rng);
    auto gates_out = randn<S>(rows * 3 * H, rng);
    auto hn_saved = randn<S>(rows * H, rng), h = randn<S>(rows * H, rng);
    std::vector<S> gates_want = gates_out, hn_want = hn_saved, h_want = h;
    for (int64_t b = 0; b < rows; ++b)
      for (int64_t u = u0; u < u1; ++u) {
        const int64_t j = u - u0;
        const A ar = gx[b * 3 * nu + j] + gh[b * 3 * nu + j] + bx[u];
        const A az = gx[b * 3 * nu + nu + j] + gh[b * 3 * nu + nu + j] + bx[H + u];
        const A axn = gx[b * 3 * nu + 2 * nu + j] + bx[2 * H + u];
        const A hn = gh[b * 3 * nu + 2 * nu + j] + bhn[u];
        const A prev = A(b < 2 ? hp[b * H + u] : h0[b * H + u]);
        rnnfast::GruGates<A> g;
        A hnew;
        rnnfast::gru_forward<M>(ar, az, axn, hn, prev, g, hnew);
        gates_want[b * 3 * H + u] = S(g.r);
        gates_want[b * 3 * H + H + u] = S(g.z);
        gates_want[b * 3 * H + 2 * H + u] = S(g.n);
        hn_want[b * H + u] = S(hn);
        h_want[b * H + u] = S(hnew);
      }
    rnnfast::cpu::CellForwardRows<S> r;
    r.rows = rows; r.u0 = u0; r.u1 = u1; r.H = H;
    r.gx = gx.data(); r.ld_gx = 3 * nu; r.gh = gh.data(); r.ld_gh = 3 * nu;
    r.bias = bx.data(); r.bias_hn = bhn.data();
    r.h_prev.first = hp.data(); r.h_prev.ld_first = H; r.h_prev.n_first = 2;
    r.h_prev.initial = h0.data(); r.h_prev.ld_initial = H;
    r.gates = gates_out.data(); r.ld_gates = 3 * H;
    r.saved = hn_saved.data(); r.ld_saved = H; r.h = h.data(); r.ld_h = H;
    k.cells[int(CellType::kGRU)].forward_train(r);
    expect_close(gates_out, gates_want, tol.storage, "gru forward gates", k.isa);
    expect_close(hn_saved, hn_want, tol.storage, "gru forward hn", k.isa);
    expect_close(h, h_want, tol.storage, "gru forward h", k.isa);

    auto gates = randn<S>(rows * 3 * H, rng);
    for (auto& g : gates) g = S(A(1) / (A(1) + std::exp(-A(g))));
    auto hn = randn<S>(rows * H, rng), dy = randn<S>(rows * H, rng);
    auto dh = randn<A>(rows * H, rng);
    auto dgh = randn<S>(rows * 3 * H, rng), dgxn = randn<S>(rows * H, rng);
    std::vector<S> dgh_want = dgh, dgxn_want = dgxn;
    std::vector<A> dh_want = dh;
    for (int64_t b = 0; b < rows; ++b)
      for (int64_t u = u0; u < u1; ++u) {
        const rnnfast::GruGates<A> g{A(gates[b * 3 * H + u]), A(gates[b * 3 * H + H + u]),
                                     A(gates[b * 3 * H + 2 * H + u])};
        const A prev = A(b < 2 ? hp[b * H + u] : h0[b * H + u]);
        A dar, daz, daxn, dhn, direct;
        rnnfast::gru_backward<M>(g, A(hn[b * H + u]), prev, A(dy[b * H + u]) + dh[b * H + u], dar,
                                 daz, daxn, dhn, direct);
        dgh_want[b * 3 * H + u] = S(dar);
        dgh_want[b * 3 * H + H + u] = S(daz);
        dgh_want[b * 3 * H + 2 * H + u] = S(dhn);
        dgxn_want[b * H + u] = S(daxn);
        dh_want[b * H + u] = direct;
      }
    rnnfast::cpu::CellBackwardRows<S> rb;
    rb.rows = rows; rb.u0 = u0; rb.u1 = u1; rb.H = H;
    rb.gates = gates.data(); rb.ld_gates = 3 * H; rb.saved = hn.data(); rb.ld_saved = H;
    rb.prev = r.h_prev; rb.dy = dy.data(); rb.ld_dy = H; rb.dh = dh.data(); rb.ld_dh = H;
    rb.dh_direct = dh.data(); rb.ld_dh_direct = H;  // aliased, as in the loop
    rb.dg = dgh.data(); rb.ld_dg = 3 * H; rb.dgxn = dgxn.data(); rb.ld_dgxn = H;
    k.cells[int(CellType::kGRU)].backward(rb);
    expect_close(dgh, dgh_want, tol.storage, "gru backward dgh", k.isa);
    expect_close(dgxn, dgxn_want, tol.storage, "gru backward dgxn", k.isa);
    expect_close(dh, dh_want, tol.acc, "gru backward dh", k.isa);
  }
}

template <typename S>
void test_rnn(const KernelTable<S>& k, std::mt19937& rng, const Tolerance& tol) {
  using A = acc_t<S>;
  using M = rnnfast::ScalarMath<A>;
  for (CellType cell : {CellType::kRNNTanh, CellType::kRNNRelu}) {
    const bool relu = cell == CellType::kRNNRelu;
    for (int64_t H : {1, 3, 17, 40}) {
      const int64_t rows = 3, u0 = H > 3 ? 2 : 0, u1 = H, nu = u1 - u0, ld_h = H + 3;
      auto pre = randn<A>(rows * nu, rng), bias = randn<A>(H, rng);
      auto h = randn<S>(rows * ld_h, rng);
      std::vector<S> h_want = h;
      for (int64_t b = 0; b < rows; ++b)
        for (int64_t u = u0; u < u1; ++u) {
          const A a = pre[b * nu + (u - u0)] + bias[u];
          h_want[b * ld_h + u] = S(relu ? rnnfast::rnn_forward<M, rnnfast::RnnActivation::kRelu>(a)
                                        : rnnfast::rnn_forward<M, rnnfast::RnnActivation::kTanh>(a));
        }
      rnnfast::cpu::CellForwardRows<S> r;
      r.rows = rows; r.u0 = u0; r.u1 = u1; r.H = H;
      r.gx = pre.data(); r.ld_gx = nu; r.bias = bias.data(); r.h = h.data(); r.ld_h = ld_h;
      k.cells[int(cell)].forward_infer(r);
      expect_close(h, h_want, tol.storage, relu ? "rnn relu forward" : "rnn tanh forward", k.isa);

      // Backward from the output (some relu outputs exactly 0: inactive units).
      auto y = randn<S>(rows * H, rng), dy = randn<S>(rows * H, rng);
      auto dh = randn<A>(rows * H, rng);
      for (auto& v : y) v = S(relu ? std::max(A(v), A(0)) : std::tanh(A(v)));
      auto dg = randn<S>(rows * H, rng);
      std::vector<S> dg_want = dg;
      for (int64_t b = 0; b < rows; ++b)
        for (int64_t u = u0; u < u1; ++u) {
          const A d = A(dy[b * H + u]) + dh[b * H + u], yv = A(y[b * H + u]);
          dg_want[b * H + u] = S(relu ? rnnfast::rnn_backward<M, rnnfast::RnnActivation::kRelu>(yv, d)
                                      : rnnfast::rnn_backward<M, rnnfast::RnnActivation::kTanh>(yv, d));
        }
      rnnfast::cpu::CellBackwardRows<S> rb;
      rb.rows = rows; rb.u0 = u0; rb.u1 = u1; rb.H = H;
      rb.h = y.data(); rb.ld_h = H; rb.dy = dy.data(); rb.ld_dy = H;
      rb.dh = dh.data(); rb.ld_dh = H; rb.dg = dg.data(); rb.ld_dg = H;
      k.cells[int(cell)].backward(rb);
      expect_close(dg, dg_want, tol.storage, relu ? "rnn relu backward" : "rnn tanh backward", k.isa);
    }
  }
}

// The unpacked GEMMs of small calls: gemm_direct (B given transposed, W[N, K]),
// gemm_rows (B row-major [K, N] with a row stride) and outer_product_sum
// (A given transposed, [K, M]; B's rows gathered from row pointers).
template <typename S>
void test_unpacked_gemm(const KernelTable<S>& k, std::mt19937& rng, double tol) {
  using T = acc_t<S>;
  for (int64_t M : {1, 2, 3, 5, 9}) {
    for (int64_t N : {1, 7, 16, 17, 65, 130, 300}) {
      for (int64_t K : {1, 7, 64, 70}) {
        for (T beta : {T(0), T(1)}) {
          const int64_t lda = K + 3, ldw = K + 2, ldb = N + 5, ldc = N + 2;
          auto A = randn<S>(M * lda, rng), Wt = randn<S>(N * ldw, rng), Bm = randn<S>(K * ldb, rng);
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

          // outer_product_sum: A^T [K, M] (ldat apart), B's rows in reverse order
          // of a buffer, starting at column col0.
          const int64_t ldat = M + 4, col0 = 3;
          auto At = randn<S>(K * ldat, rng), pool = randn<S>(K * (N + col0 + 2), rng);
          std::vector<const S*> rows(K);
          for (int64_t q = 0; q < K; ++q) rows[q] = pool.data() + (K - 1 - q) * (N + col0 + 2);
          std::vector<T> want_outer = C0;
          for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < N; ++n) {
              double o = 0;
              for (int64_t q = 0; q < K; ++q) o += double(At[q * ldat + m]) * double(rows[q][col0 + n]);
              want_outer[m * ldc + n] = T(o + double(beta) * double(C0[m * ldc + n]));
            }
          C = C0;
          k.outer_product_sum(M, N, K, At.data(), ldat, rows.data(), col0, beta, C.data(), ldc);
          expect_close(C, want_outer, tol, "outer_product_sum", k.isa);
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

template <typename S>
void test_all(std::mt19937& rng, const Tolerance& tol) {
  const KernelTable<S>& k = rnnfast::cpu::kernels<S>();
  test_gemm(k, rng, tol.gemm);
  test_lstm(k, rng, tol);
  test_gru(k, rng, tol);
  test_rnn(k, rng, tol);
  test_unpacked_gemm(k, rng, tol.gemm);
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
    // 16-bit storage: products of 16-bit values are exact in float, so the
    // GEMMs keep float accuracy; a stored value may round to a neighbour
    // (bf16: 8 bits, 2^-8 relative; half: 11 bits, 2^-11).
    test_all<float>(rng, {1e-5, 1e-5, 1e-5});
    test_all<double>(rng, {1e-12, 1e-12, 1e-12});
    test_all<c10::BFloat16>(rng, {1e-5, 1e-5, 8e-3});
    test_all<c10::Half>(rng, {1e-5, 1e-5, 1e-3});
    test_activation_accuracy(rnnfast::cpu::kernels<float>());
    std::printf("cpu kernels [%s]: checked\n", isa);
  }
  if (g_failures) {
    std::printf("%d failure(s)\n", g_failures);
    return 1;
  }
  std::printf("cpu kernels: all checks passed on %d instruction set(s)\n", count);
  return 0;
}
