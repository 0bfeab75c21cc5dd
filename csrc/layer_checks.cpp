// Argument validation for the layer entry points. The Python modules validate
// user input first (with torch.nn's messages); these checks guard the C++ API
// itself, so that no call can read or write out of bounds.
#include "layer.h"

#include <c10/util/Exception.h>

#include <string>

namespace rnnfast {
namespace {

std::string shape_str(const Tensor& t) {
  std::string s = "[";
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (d) s += ", ";
    s += std::to_string(t.size(d));
  }
  return s + "]";
}

void check_matrix(const Tensor& t, const char* name, int64_t rows, int64_t cols,
                  const Tensor& like) {
  TORCH_CHECK(t.defined(), "rnnfast: ", name, " is undefined");
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, "rnnfast: ", name,
              " must have shape [", rows, ", ", cols, "], got ", shape_str(t));
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "rnnfast: ", name, " has dtype ",
              t.scalar_type(), " but the input has dtype ", like.scalar_type());
  TORCH_CHECK(t.device() == like.device(), "rnnfast: ", name, " is on ", t.device(),
              " but the input is on ", like.device());
}

// Row-major storage. Where allowed (outputs and output gradients), a view into
// a wider buffer: unit column stride and row stride >= width, which is how the
// two directions of a bidirectional layer share one [N, 2P] tensor.
void check_row_major(const Tensor& t, const char* name, bool allow_row_stride) {
  if (!allow_row_stride) {
    TORCH_CHECK(t.is_contiguous(), "rnnfast: ", name, " must be contiguous");
    return;
  }
  const bool unit_cols = t.size(1) <= 1 || t.stride(1) == 1;
  const bool rows_ok = t.size(0) <= 1 || t.stride(0) >= t.size(1);
  TORCH_CHECK(unit_cols && rows_ok, "rnnfast: ", name,
              " must have unit column stride and a row stride >= its width");
}

void check_vector(const OptTensor& t, const char* name, int64_t n, const Tensor& like) {
  if (!t.has_value() || !t->defined()) return;
  TORCH_CHECK(t->dim() == 1 && t->size(0) == n, "rnnfast: ", name, " must have shape [", n,
              "], got ", shape_str(*t));
  TORCH_CHECK(t->scalar_type() == like.scalar_type() && t->device() == like.device(),
              "rnnfast: ", name, " must match the input's dtype and device");
  TORCH_CHECK(t->is_contiguous(), "rnnfast: ", name, " must be contiguous");
}

bool has(const OptTensor& t) { return t.has_value() && t->defined(); }

}  // namespace

void check_forward_args(const LayerForwardArgs& a, bool check_final_states) {
  const Tensor& x = a.x;
  TORCH_CHECK(x.defined() && x.dim() == 2, "rnnfast: x must be a 2-D [N, I] tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "rnnfast: only float32 and float64 are supported, got ", x.scalar_type());
  check_row_major(x, "x", /*allow_row_stride=*/false);

  const Tensor& bs = a.batch_sizes;
  TORCH_CHECK(bs.defined() && bs.dim() == 1 && bs.scalar_type() == at::kLong &&
                  bs.device().is_cpu() && bs.is_contiguous(),
              "rnnfast: batch_sizes must be a contiguous 1-D int64 CPU tensor");
  const int64_t T = bs.size(0);
  TORCH_CHECK(T >= 1, "rnnfast: the sequence must have at least one time step");
  const int64_t* b = bs.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t t = 0; t < T; ++t) {
    TORCH_CHECK(b[t] >= 1, "rnnfast: batch_sizes must be positive, got ", b[t], " at step ", t);
    TORCH_CHECK(t == 0 || b[t] <= b[t - 1],
                "rnnfast: batch_sizes must be non-increasing, got ", b[t > 0 ? t - 1 : 0], " then ",
                b[t], " at step ", t);
    total += b[t];
  }
  TORCH_CHECK(total == x.size(0), "rnnfast: batch_sizes sum to ", total, " but x has ",
              x.size(0), " rows");
  const int64_t B = b[0];

  const int64_t G = gate_count(a.cell);
  const Tensor& w_ih = a.w.w_ih;
  TORCH_CHECK(w_ih.defined() && w_ih.dim() == 2 && w_ih.size(0) % G == 0 && w_ih.size(0) > 0,
              "rnnfast: w_ih must be [", G, "*H, I]");
  const int64_t H = w_ih.size(0) / G;
  const int64_t I = x.size(1);
  const bool proj = has(a.w.w_hr);
  TORCH_CHECK(!proj || a.cell == CellType::kLSTM, "rnnfast: w_hr is only valid for LSTM");
  const int64_t P = proj ? a.w.w_hr->size(0) : H;
  check_matrix(w_ih, "w_ih", G * H, I, x);
  check_matrix(a.w.w_hh, "w_hh", G * H, P, x);
  check_row_major(w_ih, "w_ih", false);
  check_row_major(a.w.w_hh, "w_hh", false);
  if (proj) {
    check_matrix(*a.w.w_hr, "w_hr", P, H, x);
    check_row_major(*a.w.w_hr, "w_hr", false);
  }
  TORCH_CHECK(has(a.w.b_ih) == has(a.w.b_hh), "rnnfast: give both biases or neither");
  check_vector(a.w.b_ih, "b_ih", G * H, x);
  check_vector(a.w.b_hh, "b_hh", G * H, x);

  check_matrix(a.h0, "h0", B, P, x);
  check_row_major(a.h0, "h0", false);
  check_matrix(a.y, "y", x.size(0), P, x);
  check_row_major(a.y, "y", /*allow_row_stride=*/true);
  const bool lstm = a.cell == CellType::kLSTM;
  TORCH_CHECK(lstm == has(a.c0), "rnnfast: c0 is required for LSTM and invalid otherwise");
  if (lstm) {
    check_matrix(*a.c0, "c0", B, H, x);
    check_row_major(*a.c0, "c0", false);
  }
  if (check_final_states) {
    check_matrix(a.h_n, "h_n", B, P, x);
    check_row_major(a.h_n, "h_n", false);
    TORCH_CHECK(lstm == has(a.c_n), "rnnfast: c_n is required for LSTM and invalid otherwise");
    if (lstm) {
      check_matrix(*a.c_n, "c_n", B, H, x);
      check_row_major(*a.c_n, "c_n", false);
    }
  }
  TORCH_CHECK(x.size(0) < (int64_t(1) << 31) && G * H < (int64_t(1) << 31) &&
                  I < (int64_t(1) << 31),
              "rnnfast: sizes beyond 2^31 rows or columns are not supported");
}

void check_backward_args(const LayerBackwardArgs& a) {
  check_forward_args(a.fwd, /*check_final_states=*/false);
  const LayerForwardArgs& f = a.fwd;
  const int64_t N = f.x.size(0);
  const int64_t G = gate_count(f.cell);
  const int64_t H = f.w.w_ih.size(0) / G;
  const int64_t P = f.w.w_hh.size(1);
  const int64_t B = f.h0.size(0);
  const bool proj = has(f.w.w_hr);
  const size_t n_saved = f.cell == CellType::kLSTM ? (proj ? 3 : 2) : 2;
  TORCH_CHECK(a.saved.size() == n_saved, "rnnfast: expected ", n_saved,
              " saved tensors from a training forward, got ", a.saved.size());
  check_matrix(a.saved[0], "saved gates", N, G * H, f.x);
  for (size_t k = 1; k < a.saved.size(); ++k) check_matrix(a.saved[k], "saved state", N, H, f.x);
  for (const Tensor& s : a.saved) check_row_major(s, "saved tensor", false);
  check_matrix(a.dy, "dy", N, P, f.x);
  check_row_major(a.dy, "dy", /*allow_row_stride=*/true);
  check_matrix(a.dh_n, "dh_n", B, P, f.x);
  check_row_major(a.dh_n, "dh_n", false);
  TORCH_CHECK((f.cell == CellType::kLSTM) == has(a.dc_n), "rnnfast: dc_n is required for LSTM only");
  if (has(a.dc_n)) {
    check_matrix(*a.dc_n, "dc_n", B, H, f.x);
    check_row_major(*a.dc_n, "dc_n", false);
  }
  if (has(a.dx)) {
    check_matrix(*a.dx, "dx", N, f.x.size(1), f.x);
    check_row_major(*a.dx, "dx", false);
  }
}

}  // namespace rnnfast
