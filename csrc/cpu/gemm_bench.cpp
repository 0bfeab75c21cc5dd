// Micro-benchmark behind the choice of the bf16 GEMM of the time loops
// (benchmarks/bf16_gemm.py): rnnfast's own packed-panel kernel against ATen's
// exported oneDNN micro-kernel at::native::cpublas::brgemm on prepacked
// (VNNI) weights. Not used by the recurrent kernels.
#include <ATen/ATen.h>
#include <ATen/native/CPUBlas.h>

#include <chrono>
#include <string>

#include "gemm_bench.h"
#include "kernels.h"

namespace rnnfast::cpu {

GemmTiming time_bf16_gemm(const std::string& impl, int64_t M, int64_t N, int64_t K, int64_t reps) {
  TORCH_CHECK(impl == "rnnfast" || impl == "brgemm",
              "rnnfast: time_bf16_gemm impl must be 'rnnfast' or 'brgemm', got '", impl, "'");
  TORCH_CHECK(M > 0 && N > 0 && K > 0 && reps > 0, "rnnfast: time_bf16_gemm sizes must be positive");
  const auto bf16 = at::TensorOptions().dtype(at::kBFloat16);
  at::Tensor a = at::randn({M, K}).to(at::kBFloat16);  // [M, K]
  at::Tensor b = at::randn({K, N}).to(at::kBFloat16);  // [K, N] (w^T, row-major)
  at::Tensor c = at::empty({M, N}, at::kFloat);        // [M, N]
  const auto* A = a.data_ptr<c10::BFloat16>();
  const auto* B = b.data_ptr<c10::BFloat16>();
  float* C = c.data_ptr<float>();
  GemmTiming out;
  std::function<void()> call;
  at::Tensor packed;
  if (impl == "rnnfast") {
    const auto& k = kernels<c10::BFloat16>();
    packed = at::empty({k.packed_b_bytes(K, N) + 64}, at::kByte);
    void* panels = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(packed.data_ptr()) + 63) / 64 * 64);
    k.pack_b(K, N, B, N, ColumnMap{0, N, 0, 1}, panels);
    call = [&k, M, N, K, A, panels, C] { k.gemm_packed(M, N, K, A, K, panels, 0.f, C, N, /*descending=*/false); };
    out.variant = k.isa;
  } else {
    const bool vnni = at::native::cpublas::could_pack(at::kBFloat16);
    const c10::BFloat16* Bp = B;
    if (vnni) {  // the VNNI layout the micro-kernel reads, packed once
      packed = at::empty({K + 1, N}, bf16);
      at::native::cpublas::pack(K, N, N, N, at::kBFloat16, at::kBFloat16, B, packed.data_ptr());
      Bp = packed.data_ptr<c10::BFloat16>();
    }
    call = [M, N, K, A, Bp, C, vnni] { at::native::cpublas::brgemm(M, N, K, K, N, N, false, A, Bp, C, vnni); };
    out.variant = vnni ? "brgemm (VNNI-packed B)" : "brgemm (plain B: no packing on this CPU)";
  }
  call();  // warm-up (and the micro-kernel's generation)
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t r = 0; r < reps; ++r) call();
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
  if (impl == "brgemm") at::native::cpublas::brgemm_release(at::native::cpublas::could_pack(at::kBFloat16));
  // Accuracy against ATen's float matmul of the same bf16 values.
  const at::Tensor want = at::matmul(a.to(at::kFloat), b.to(at::kFloat));
  out.max_error = (c - want).abs().max().item<double>() / want.abs().max().item<double>();
  return out;
}

}  // namespace rnnfast::cpu
