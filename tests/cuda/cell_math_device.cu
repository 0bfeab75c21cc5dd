// Device compile check of csrc/cell_math.h (run by scripts/test.sh where nvcc
// exists): the gate math the CPU kernels and tests use must build unchanged
// as __device__ code for the CUDA path. Each kernel applies one cell function
// per element; nothing runs here (no GPU), the compile is the test.
#include "cell_math.h"

namespace rnnfast_device_check {

template <typename T>
using M = rnnfast::ScalarMath<T>;

template <typename T>
__global__ void lstm_elements(int n, const T* a, T* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  rnnfast::LstmGates<T> g;
  T c, m, d[4], dc_prev;
  rnnfast::lstm_forward<M<T>>(a[5 * i], a[5 * i + 1], a[5 * i + 2], a[5 * i + 3], a[5 * i + 4], g,
                              c, m);
  rnnfast::lstm_backward<M<T>>(g, c, a[5 * i + 4], m, c, d[0], d[1], d[2], d[3], dc_prev);
  out[i] = d[0] + d[1] + d[2] + d[3] + dc_prev;
}

template <typename T>
__global__ void gru_elements(int n, const T* a, T* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  rnnfast::GruGates<T> g;
  T h, dar, daz, daxn, dhn, direct;
  rnnfast::gru_forward<M<T>>(a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3], a[4 * i], g, h);
  rnnfast::gru_backward<M<T>>(g, a[4 * i + 3], a[4 * i], h, dar, daz, daxn, dhn, direct);
  out[i] = dar + daz + daxn + dhn + direct;
}

template <typename T>
__global__ void rnn_elements(int n, const T* a, T* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  using rnnfast::RnnActivation;
  const T ht = rnnfast::rnn_forward<M<T>, RnnActivation::kTanh>(a[i]);
  const T hr = rnnfast::rnn_forward<M<T>, RnnActivation::kRelu>(a[i]);
  out[i] = rnnfast::rnn_backward<M<T>, RnnActivation::kTanh>(ht, a[i]) +
           rnnfast::rnn_backward<M<T>, RnnActivation::kRelu>(hr, a[i]);
}

}  // namespace rnnfast_device_check

namespace rnnfast_device_check {
template __global__ void lstm_elements<float>(int, const float*, float*);
template __global__ void lstm_elements<double>(int, const double*, double*);
template __global__ void gru_elements<float>(int, const float*, float*);
template __global__ void gru_elements<double>(int, const double*, double*);
template __global__ void rnn_elements<float>(int, const float*, float*);
template __global__ void rnn_elements<double>(int, const double*, double*);
}  // namespace rnnfast_device_check
