// The CUDA kernels of the rnnfast operators (schemas: csrc/op_schemas.cpp): the GPU
// algorithm of gpu/layer_loop.h run by CudaExec, which enqueues cuBLAS GEMMs
// on torch's cuBLAS handle and the pointwise kernels of
// cuda/pointwise_kernels.cuh on torch's current stream. Host code only (the
// device code is in the .cu files); compiled when the extension is built with
// CUDA (setup.py, CMakeLists.txt).
//
// On torch's stable ABI alone (compiled with TORCH_TARGET_VERSION, checked by
// scripts/check_torch_symbols.sh): torch's current stream, its cuBLAS handle
// and the device guard come from the stable C shim; whether fp32 GEMMs may use
// TF32 comes in with the call (the ops' allow_tf32, read in Python).
//
// Every shim call, cuBLAS call and launch is checked. Error messages here
// format no integers: on one CUDA machine the project was tested on,
// formatting an integer in a TORCH_CHECK message of an extension crashed the
// process.
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/c/shim.h>
#include <torch/csrc/stable/library.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <memory>
#include <mutex>
#include <vector>

#include "../gpu/layer_loop.h"
#include "../ops.h"
#include "launch.h"

#define RNNFAST_STRINGIFY2(x) #x
#define RNNFAST_STRINGIFY(x) RNNFAST_STRINGIFY2(x)
#define RNNFAST_WHERE __FILE__ ":" RNNFAST_STRINGIFY(__LINE__)

#define RNNFAST_CUDA_CHECK(expr)                                                                     \
  do {                                                                                               \
    const cudaError_t err_ = (expr);                                                                 \
    RNNFAST_CHECK(err_ == cudaSuccess, "rnnfast: CUDA error: ", cudaGetErrorString(err_), " at " RNNFAST_WHERE); \
  } while (0)

#define RNNFAST_CUBLAS_CHECK(expr)                                                                   \
  do {                                                                                               \
    const cublasStatus_t st_ = (expr);                                                               \
    RNNFAST_CHECK(st_ == CUBLAS_STATUS_SUCCESS, "rnnfast: cuBLAS error: ", cublasGetStatusString(st_), \
                " at " RNNFAST_WHERE);                                                               \
  } while (0)

// A call of torch's stable C shim (AOTITorchError 0 is success).
#define RNNFAST_SHIM_CHECK(expr)                                                                     \
  RNNFAST_CHECK((expr) == AOTI_TORCH_SUCCESS, "rnnfast: torch's C shim failed: " #expr " at " RNNFAST_WHERE)

namespace rnnfast {
namespace cuda {
namespace {

template <typename T>
constexpr cudaDataType_t cuda_type() {
  if constexpr (std::is_same_v<T, float>) return CUDA_R_32F;
  if constexpr (std::is_same_v<T, double>) return CUDA_R_64F;
  if constexpr (std::is_same_v<T, c10::BFloat16>) return CUDA_R_16BF;
  return CUDA_R_16F;
}

// torch's current stream on the current device.
cudaStream_t current_stream(int32_t device_index) {
  void* stream = nullptr;
  RNNFAST_SHIM_CHECK(aoti_torch_get_current_cuda_stream(device_index, &stream));
  return static_cast<cudaStream_t>(stream);
}

// torch's cuBLAS handle of the current device, bound to its current stream
// and workspace (the shim's call is at::cuda::getCurrentCUDABlasHandle).
cublasHandle_t current_blas_handle() {
  void* handle = nullptr;
  RNNFAST_SHIM_CHECK(torch_get_current_cuda_blas_handle(&handle));
  return static_cast<cublasHandle_t>(handle);
}

// The properties the persistent kernels' planning reads, per device, fetched
// once (cudaGetDeviceProperties takes milliseconds).
struct DeviceLimits {
  bool cooperative_launch = false;
  int64_t smem_per_block_optin = 0;
  int64_t sms = 0;
};

const DeviceLimits& device_limits(int device) {
  static std::mutex mutex;
  static std::vector<std::unique_ptr<DeviceLimits>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  RNNFAST_CHECK(device >= 0, "rnnfast: no current CUDA device");
  if (size_t(device) >= cache.size()) cache.resize(size_t(device) + 1);
  if (!cache[size_t(device)]) {
    cudaDeviceProp prop{};
    RNNFAST_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    cache[size_t(device)] = std::make_unique<DeviceLimits>(
        DeviceLimits{prop.cooperativeLaunch != 0, int64_t(prop.sharedMemPerBlockOptin), int64_t(prop.multiProcessorCount)});
  }
  return *cache[size_t(device)];
}

class CudaExec {
 public:
  // `tf32`: fp32 GEMMs may use TF32 tensor cores (LayerInputs::allow_tf32: torch's switch for
  // RNNs, torch.backends.cudnn.rnn.fp32_precision, read by the caller), as torch.nn's cuDNN path.
  CudaExec(int32_t device, bool tf32)
      : handle_(current_blas_handle()), stream_(current_stream(device)), device_(device), tf32_(tf32) {
    // torch sets the handle's math mode from torch.backends.cuda.matmul.allow_tf32 on every fetch,
    // and CUBLAS_TF32_TENSOR_OP_MATH would turn CUBLAS_COMPUTE_32F into TF32. RNNs follow the
    // cuDNN switch instead (tf32_), stated by the compute type of each GEMM, so the mode goes back
    // to the default here (torch sets its own again at its next fetch of the handle).
    RNNFAST_CUBLAS_CHECK(cublasSetMathMode(handle_, CUBLAS_DEFAULT_MATH));
  }

  template <typename S, typename Out>
  void gemm_cm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const S* A, int64_t lda,
               const S* B, int64_t ldb, acc_t<S> beta, Out* C, int64_t ldc, bool exact) {
    using Acc = acc_t<S>;
    const Acc alpha = Acc(1);
    cublasComputeType_t compute;
    if constexpr (std::is_same_v<S, double>) {
      compute = CUBLAS_COMPUTE_64F;
    } else if constexpr (std::is_same_v<S, float>) {
      compute = tf32_ && !exact ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    } else {
      compute = CUBLAS_COMPUTE_32F;  // 16-bit inputs, fp32 sums
    }
    RNNFAST_CHECK(m <= INT32_MAX && n <= INT32_MAX && k <= INT32_MAX && lda <= INT32_MAX && ldb <= INT32_MAX &&
                    ldc <= INT32_MAX,
                "rnnfast: a GEMM of this layer exceeds cuBLAS's 32-bit sizes");
    RNNFAST_CUBLAS_CHECK(cublasGemmEx(handle_, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                      int(m), int(n), int(k), &alpha, A, cuda_type<S>(), int(lda), B,
                                      cuda_type<S>(), int(ldb), &beta, C, cuda_type<Out>(), int(ldc), compute,
                                      CUBLAS_GEMM_DEFAULT));
  }

  // Row-major C[rows, cols] (row stride ldc) = 0: the empty products of gemm_rm.
  template <typename Out>
  void zero_rows(int64_t rows, int64_t cols, Out* C, int64_t ldc) {
    RNNFAST_CUDA_CHECK(cudaMemset2DAsync(C, size_t(ldc) * sizeof(Out), 0, size_t(cols) * sizeof(Out),
                                         size_t(rows), stream_));
  }

  template <typename S>
  void step_forward(const gpu::StepForwardArgs<S>& a, bool training) {
    RNNFAST_CUDA_CHECK(launch_step_forward<S>(a, training, stream_));
  }
  template <typename S>
  void step_backward(const gpu::StepBackwardArgs<S>& a) {
    RNNFAST_CUDA_CHECK(launch_step_backward<S>(a, stream_));
  }
  template <typename To, typename From>
  void convert(const gpu::ConvertArgs<To, From>& a) {
    RNNFAST_CUDA_CHECK((launch_convert<To, From>(a, stream_)));
  }
  template <typename S>
  void add_rows(const gpu::AddRowsArgs<S>& a) {
    RNNFAST_CUDA_CHECK(launch_add_rows<S>(a, stream_));
  }

  // The persistent kernels' geometry on the current device: every block resident at once (a
  // cooperative launch requires it), at most the opt-in shared memory per block.
  template <typename S>
  gpu::PersistentGeometry plan_persistent(gpu::PersistentKind kind, int64_t G, int64_t H, int64_t B) {
    const DeviceLimits& limits = device_limits(device_);
    if (!limits.cooperative_launch) return {};
    return gpu::plan_persistent<S>(kind, G, H, B, limits.smem_per_block_optin, [&](size_t smem_bytes) {
      int per_sm = 0;
      RNNFAST_CUDA_CHECK(persistent_blocks_per_sm<S>(kind, smem_bytes, &per_sm));
      return int64_t(per_sm) * limits.sms;
    });
  }
  template <typename S>
  void persistent_forward(const gpu::PersistentForwardArgs<S>& a, bool training) {
    RNNFAST_CUDA_CHECK(launch_persistent_forward<S>(a, training, stream_));
  }
  template <typename S>
  void persistent_backward(const gpu::PersistentBackwardArgs<S>& a) {
    RNNFAST_CUDA_CHECK(launch_persistent_backward<S>(a, stream_));
  }

 private:
  cublasHandle_t handle_;  // torch's, bound to its current stream
  cudaStream_t stream_;    // torch's current stream
  int32_t device_;
  bool tf32_;
};

rnnfast::LayerOutputs layer_forward_cuda(const rnnfast::LayerInputs& in, bool training) {
  const LayerDims d = check_layer_inputs(in);
  RNNFAST_CHECK(in.x.is_cuda(), "rnnfast: layer_forward_cuda got a tensor that is not on a CUDA device");
  const int32_t device = in.x.get_device_index();
  const torch::stable::accelerator::DeviceGuard guard(device);
  CudaExec ex(device, in.allow_tf32);
  return gpu::with_storage_type(in.x.scalar_type(), [&](auto tag) {
    return gpu::GpuForwardLoop<CudaExec, decltype(tag)>(ex, in, d, training).run();
  });
}

rnnfast::LayerGrads layer_backward_cuda(const rnnfast::LayerBackwardInputs& b) {
  const LayerDims d = check_backward_inputs(b);
  RNNFAST_CHECK(b.in.x.is_cuda(), "rnnfast: layer_backward_cuda got a tensor that is not on a CUDA device");
  const int32_t device = b.in.x.get_device_index();
  const torch::stable::accelerator::DeviceGuard guard(device);
  CudaExec ex(device, b.in.allow_tf32);
  return gpu::with_storage_type(b.in.x.scalar_type(), [&](auto tag) {
    return gpu::GpuBackwardLoop<CudaExec, decltype(tag)>(ex, b, d).run();
  });
}

using CudaOps = DeviceOps<&layer_forward_cuda, &layer_backward_cuda>;

}  // namespace
}  // namespace cuda
}  // namespace rnnfast

// Registers the CUDA kernels (what STABLE_TORCH_LIBRARY_IMPL(rnnfast, CUDA, m)
// would do at load time), called by rnnfast/_extension.py once it has checked
// that this library matches the CPU library beside it (library_controls.cpp,
// rnnfast_cuda_build_id): a stale library never registers kernels of another
// schema, and a failure here is an error message, not an exception escaping
// dlopen. 0 on success, else 1 with the message in `error` (NUL-terminated).
extern "C" __attribute__((visibility("default"))) int rnnfast_cuda_register(char* error, size_t size) noexcept {
  try {
    using torch::stable::detail::StableLibrary;
    // Kept for the process's lifetime (its destructor would unregister the kernels).
    static StableLibrary* const library = [] {
      auto* lib = new StableLibrary(StableLibrary::Kind::IMPL, "rnnfast", "CUDA", __FILE__, __LINE__);
      lib->impl("layer_forward", TORCH_BOX(&rnnfast::cuda::CudaOps::forward));
      lib->impl("layer_forward_train", TORCH_BOX(&rnnfast::cuda::CudaOps::forward_train));
      lib->impl("layer_backward", TORCH_BOX(&rnnfast::cuda::CudaOps::backward));
      return lib;
    }();
    (void)library;
    return 0;
  } catch (const std::exception& e) {
    if (size > 0) std::snprintf(error, size, "%s", e.what());
    return 1;
  }
}
