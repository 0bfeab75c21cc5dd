// Argument validation of the layer ops, shared by every device. The Python
// modules validate user input first (with torch.nn's messages); these checks
// guard the ops themselves, so that no call can read or write out of bounds.
//
// On the stable ABI (no torch header beyond torch/csrc/stable and
// torch/headeronly): errors are RNNFAST_CHECK's (check.h).
#include <string>

#include "check.h"
#include "layer.h"

namespace rnnfast {
namespace {

std::string num(int64_t v) { return std::to_string(v); }

std::string dtype_str(torch::headeronly::ScalarType t) { return torch::headeronly::toString(t); }

// As torch prints a device: cpu, cuda:0.
std::string device_str(const Tensor& t) {
  if (t.is_cpu()) return "cpu";
  const std::string index = num(t.get_device_index());
  return (t.is_cuda() ? "cuda:" : "device:") + index;
}

std::string shape_str(const Tensor& t) {
  std::string s = "[";
  for (int64_t d = 0; d < t.dim(); ++d) s += (d ? ", " : "") + num(t.size(d));
  return s + "]";
}

void check_same_device_dtype(const Tensor& t, const char* name, const Tensor& x) {
  RNNFAST_CHECK(t.scalar_type() == x.scalar_type(), "rnnfast: ", name, " has dtype ",
              dtype_str(t.scalar_type()), " but the input has dtype ",
              dtype_str(x.scalar_type()));
  RNNFAST_CHECK(t.device() == x.device(), "rnnfast: ", name, " is on ", device_str(t),
              " but the input is on ", device_str(x));
}

void check_matrix(const Tensor& t, const char* name, int64_t rows, int64_t cols, const Tensor& x) {
  RNNFAST_CHECK(t.defined(), "rnnfast: ", name, " is undefined");
  RNNFAST_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, "rnnfast: ", name,
              " must have shape [", num(rows), ", ", num(cols), "], got ", shape_str(t));
  check_same_device_dtype(t, name, x);
}

// Row-major with unit column stride; rows may be further apart than their
// width where allowed (a column slice of a wider buffer).
void check_rows(const Tensor& t, const char* name, bool allow_row_stride) {
  if (!allow_row_stride) {
    RNNFAST_CHECK(t.is_contiguous(), "rnnfast: ", name, " must be contiguous");
    return;
  }
  const bool unit_cols = t.size(1) <= 1 || t.stride(1) == 1;
  const bool rows_ok = t.size(0) <= 1 || t.stride(0) >= t.size(1);
  RNNFAST_CHECK(unit_cols && rows_ok, "rnnfast: ", name,
              " must have unit column stride and a row stride >= its width");
}

void check_vector(const OptTensor& t, const char* name, int64_t n, const Tensor& x) {
  if (!has(t)) return;
  RNNFAST_CHECK(t->dim() == 1 && t->size(0) == n, "rnnfast: ", name, " must have shape [", num(n),
              "], got ", shape_str(*t));
  check_same_device_dtype(*t, name, x);
  RNNFAST_CHECK(t->is_contiguous(), "rnnfast: ", name, " must be contiguous");
}

// Sum of validated batch sizes.
int64_t check_batch_sizes(const Tensor& bs) {
  RNNFAST_CHECK(bs.dim() == 1 && bs.scalar_type() == torch::headeronly::ScalarType::Long && bs.is_cpu() &&
                  bs.is_contiguous(),
              "rnnfast: batch_sizes must be a contiguous 1-D int64 CPU tensor");
  const int64_t T = bs.size(0);
  RNNFAST_CHECK(T >= 1, "rnnfast: the sequence must have at least one time step");
  const int64_t* b = bs.const_data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t t = 0; t < T; ++t) {
    RNNFAST_CHECK(b[t] >= 1, "rnnfast: batch_sizes must be positive, got ", num(b[t]), " at step ",
                num(t));
    RNNFAST_CHECK(t == 0 || b[t] <= b[t - 1], "rnnfast: batch_sizes must be non-increasing, got ",
                num(b[t > 0 ? t - 1 : 0]), " then ", num(b[t]), " at step ", num(t));
    total += b[t];
  }
  return total;
}

}  // namespace

LayerDims check_layer_inputs(const LayerInputs& in) {
  const CellInfo& cell = cell_info(in.cell);
  const Tensor& x = in.x;
  RNNFAST_CHECK(x.defined() && x.dim() == 2, "rnnfast: x must be a 2-D [N, I] tensor");
  using torch::headeronly::ScalarType;
  const auto dtype = x.scalar_type();
  RNNFAST_CHECK(dtype == ScalarType::Float || dtype == ScalarType::Double || dtype == ScalarType::BFloat16 ||
                  dtype == ScalarType::Half,
              "rnnfast: only float32, float64, bfloat16 and float16 are supported, got ",
              dtype_str(dtype));
  check_rows(x, "x", /*allow_row_stride=*/false);

  LayerDims d{};
  d.N = x.size(0);
  d.I = x.size(1);
  d.G = cell.gates;
  RNNFAST_CHECK(in.h0.defined() && in.h0.dim() == 2, "rnnfast: h0 must be a 2-D [B, P] tensor");
  d.B = in.h0.size(0);
  RNNFAST_CHECK(d.B >= 1, "rnnfast: the batch must not be empty");
  if (has(in.batch_sizes)) {
    const int64_t total = check_batch_sizes(*in.batch_sizes);
    d.T = in.batch_sizes->size(0);
    RNNFAST_CHECK(total == d.N, "rnnfast: batch_sizes sum to ", num(total), " but x has ", num(d.N),
                " rows");
    RNNFAST_CHECK(in.batch_sizes->const_data_ptr<int64_t>()[0] == d.B, "rnnfast: h0 has ", num(d.B),
                " rows but the first step has ", num(in.batch_sizes->const_data_ptr<int64_t>()[0]));
  } else {
    RNNFAST_CHECK(d.N >= d.B && d.N % d.B == 0, "rnnfast: x has ", num(d.N),
                " rows, not a positive multiple of the batch size ", num(d.B),
                " (padded input without batch_sizes)");
    d.T = d.N / d.B;
  }

  const Tensor& w_ih = in.w.w_ih;
  RNNFAST_CHECK(w_ih.defined() && w_ih.dim() == 2 && w_ih.size(0) % d.G == 0 && w_ih.size(0) > 0,
              "rnnfast: w_ih must be [", num(d.G), "*H, I] for ", cell.name);
  d.H = w_ih.size(0) / d.G;
  d.proj = has(in.w.w_hr);
  RNNFAST_CHECK(!d.proj || cell.projection, "rnnfast: w_hr is only valid for LSTM");
  d.P = d.proj ? in.w.w_hr->size(0) : d.H;
  check_matrix(w_ih, "w_ih", d.G * d.H, d.I, x);
  check_matrix(in.w.w_hh, "w_hh", d.G * d.H, d.P, x);
  check_rows(w_ih, "w_ih", false);
  check_rows(in.w.w_hh, "w_hh", false);
  if (d.proj) {
    check_matrix(*in.w.w_hr, "w_hr", d.P, d.H, x);
    check_rows(*in.w.w_hr, "w_hr", false);
  }
  RNNFAST_CHECK(has(in.w.b_ih) == has(in.w.b_hh), "rnnfast: give both biases or neither");
  check_vector(in.w.b_ih, "b_ih", d.G * d.H, x);
  check_vector(in.w.b_hh, "b_hh", d.G * d.H, x);

  check_matrix(in.h0, "h0", d.B, d.P, x);
  check_rows(in.h0, "h0", false);
  RNNFAST_CHECK(!cell.cell_state || has(in.c0), "rnnfast: c0 is required for ", cell.name);
  RNNFAST_CHECK(cell.cell_state || !has(in.c0), "rnnfast: ", cell.name,
              " has no cell state: c0 must be None");
  if (cell.cell_state) {
    check_matrix(*in.c0, "c0", d.B, d.H, x);
    check_rows(*in.c0, "c0", false);
  }
  RNNFAST_CHECK(d.N < (int64_t(1) << 31) && d.G * d.H < (int64_t(1) << 31) &&
                  d.I < (int64_t(1) << 31),
              "rnnfast: sizes beyond 2^31 rows or columns are not supported");
  return d;
}

LayerDims check_backward_inputs(const LayerBackwardInputs& b) {
  const LayerDims d = check_layer_inputs(b.in);
  const CellInfo& cell = cell_info(b.in.cell);
  const Tensor& x = b.in.x;
  check_matrix(b.y, "y", d.N, d.P, x);
  check_rows(b.y, "y", /*allow_row_stride=*/true);
  const Tensor& ws = b.workspace;
  RNNFAST_CHECK(ws.defined() && ws.dim() == 1 && ws.numel() == d.N * saved_width(cell, d.H, d.proj),
              "rnnfast: the workspace must be the one a training forward of this layer returned (",
              num(d.N * saved_width(cell, d.H, d.proj)), " elements), got ", shape_str(ws));
  check_same_device_dtype(ws, "workspace", x);
  RNNFAST_CHECK(ws.is_contiguous(), "rnnfast: the workspace must be contiguous");
  check_matrix(b.dy, "dy", d.N, d.P, x);
  check_rows(b.dy, "dy", /*allow_row_stride=*/true);
  check_matrix(b.dh_n, "dh_n", d.B, d.P, x);
  check_rows(b.dh_n, "dh_n", false);
  RNNFAST_CHECK(!cell.cell_state || has(b.dc_n), "rnnfast: dc_n is required for ", cell.name);
  RNNFAST_CHECK(cell.cell_state || !has(b.dc_n), "rnnfast: ", cell.name,
              " has no cell state: dc_n must be None");
  if (cell.cell_state) {
    check_matrix(*b.dc_n, "dc_n", d.B, d.H, x);
    check_rows(*b.dc_n, "dc_n", false);
  }
  return d;
}

}  // namespace rnnfast
