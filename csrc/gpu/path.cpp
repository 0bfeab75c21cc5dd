// The GPU algorithm's settings: its path (gpu/path.h) and the tests' chunk
// size (gpu/layer_loop.h, chunk_rows_override). Each library that runs the
// algorithm (the CPU library's emulation, the CUDA library) has its own copy;
// rnnfast/_extension.py sets both.
#include "path.h"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>

namespace rnnfast::gpu {
namespace {

GpuPath parse(const std::string& name) {
  if (name == "auto") return GpuPath::kAuto;
  if (name == "cublas") return GpuPath::kCublas;
  if (name == "persistent") return GpuPath::kPersistent;
  throw std::invalid_argument("rnnfast: the GPU path must be 'auto', 'cublas' or 'persistent', got '" + name + "'");
}

std::atomic<int>& setting() {
  static std::atomic<int> path{[] {
    const char* env = std::getenv("RNNFAST_GPU_PATH");
    return static_cast<int>(env && *env ? parse(env) : GpuPath::kAuto);
  }()};
  return path;
}

std::atomic<int64_t> g_launches{0};

}  // namespace

GpuPath gpu_path() { return static_cast<GpuPath>(setting().load(std::memory_order_relaxed)); }
void set_gpu_path(const std::string& name) { setting().store(static_cast<int>(parse(name))); }
std::string gpu_path_name() {
  switch (gpu_path()) {
    case GpuPath::kCublas: return "cublas";
    case GpuPath::kPersistent: return "persistent";
    default: return "auto";
  }
}

bool wants_persistent(const CellInfo& /*cell*/, const LayerDims& d) {
  // (The step table holds 32-bit row offsets.)
  return gpu_path() == GpuPath::kPersistent && !d.proj && d.N > 0 && d.N <= INT32_MAX;
}

int64_t persistent_launches() { return g_launches.load(); }
void count_persistent_launch() { ++g_launches; }

int64_t& chunk_rows_override() {
  static int64_t rows = 0;
  return rows;
}
void set_chunk_rows(int64_t rows) { chunk_rows_override() = rows; }

EmulatedDevice& emulated_device() {
  static EmulatedDevice device;
  return device;
}

void set_emulated_device(int sms, int64_t smem_per_block) {
  if (sms <= 0 || smem_per_block <= 0)
    throw std::invalid_argument("rnnfast: the emulated device needs SMs and shared memory");
  emulated_device() = EmulatedDevice{sms, smem_per_block};
}

}  // namespace rnnfast::gpu
