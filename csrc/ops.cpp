// The device-neutral argument glue of the rnnfast operators (ops.h), on the
// stable ABI: compiled into the CPU library and into the CUDA library (their
// schemas are op_schemas.cpp's, in the CPU library alone).
#include "ops.h"

#include <torch/csrc/stable/ops.h>

#include <array>
#include <string>

namespace rnnfast {

CellType cell_from_code(int64_t cell) {
  RNNFAST_CHECK(cell >= 0 && cell < kNumCellTypes, "rnnfast: unknown cell code ", std::to_string(cell),
                " (expected 0 LSTM, 1 GRU, 2 RNN_TANH or 3 RNN_RELU)");
  return static_cast<CellType>(cell);
}

Tensor make_contiguous(const Tensor& t) { return t.is_contiguous() ? t : torch::stable::contiguous(t); }

namespace {
OptTensor make_contiguous_opt(const OptTensor& t) {
  return has(t) ? OptTensor(rnnfast::make_contiguous(*t)) : OptTensor();
}
}  // namespace

LayerInputs make_layer_inputs(int64_t cell, const Tensor& x, const OptTensor& batch_sizes,
                              const Tensor& h0, const OptTensor& c0, const Tensor& w_ih,
                              const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                              const OptTensor& w_hr, bool reverse, bool allow_tf32) {
  RNNFAST_CHECK(x.defined() && h0.defined() && w_ih.defined() && w_hh.defined(),
                "rnnfast: x, h0, w_ih and w_hh are required");
  return LayerInputs{cell_from_code(cell),
                     make_contiguous(x),
                     make_contiguous_opt(batch_sizes),
                     make_contiguous(h0),
                     make_contiguous_opt(c0),
                     LayerWeights{make_contiguous(w_ih), make_contiguous(w_hh), make_contiguous_opt(b_ih),
                                  make_contiguous_opt(b_hh), make_contiguous_opt(w_hr)},
                     reverse,
                     allow_tf32};
}

Tensor row_major(const Tensor& t) {
  const bool ok = t.dim() == 2 && (t.size(1) <= 1 || t.stride(1) == 1) &&
                  (t.size(0) <= 1 || t.stride(0) >= t.size(1));
  return ok ? t : torch::stable::contiguous(t);
}

const Tensor& undefined_tensor() {
  // Never destroyed: deleting its handle at exit could follow libtorch's own teardown.
  static const Tensor* none = new Tensor();
  return *none;
}

Tensor empty_like_device(const Tensor& like, torch::headeronly::IntHeaderOnlyArrayRef sizes) {
  return empty_like_device(like, sizes, like.scalar_type());
}

Tensor empty_like_device(const Tensor& like, torch::headeronly::IntHeaderOnlyArrayRef sizes,
                         torch::headeronly::ScalarType dtype) {
  // Contiguous strides of `sizes`.
  std::array<int64_t, 4> strides{};
  RNNFAST_CHECK(sizes.size() <= strides.size(), "rnnfast: empty_like_device takes up to 4 dimensions");
  int64_t stride = 1;
  for (size_t k = sizes.size(); k-- > 0;) {
    strides[k] = stride;
    stride *= sizes[k] > 1 ? sizes[k] : 1;
  }
  int32_t device_type = 0;
  AtenTensorHandle out = nullptr;
  // Our own check, not STABLE_TORCH_ERROR_CODE_CHECK: torch 2.11's headers lack that macro.
  RNNFAST_CHECK(aoti_torch_get_device_type(like.get(), &device_type) == AOTI_TORCH_SUCCESS &&
                    aoti_torch_empty_strided(static_cast<int64_t>(sizes.size()), sizes.data(), strides.data(),
                                             torch::stable::detail::to<int32_t>(torch::stable::detail::from(dtype)),
                                             device_type, like.get_device_index(), &out) == AOTI_TORCH_SUCCESS,
                "rnnfast: could not allocate a tensor");
  return Tensor(out);
}

Tensor or_empty(const Tensor& t, const Tensor& like) { return t.defined() ? t : empty_like_device(like, {0}); }

}  // namespace rnnfast
