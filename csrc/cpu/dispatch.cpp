// Run-time choice of the instruction-set build of the CPU kernels, in the way
// ATen picks its own kernels: the best set this CPU supports, lowered by the
// environment (RNNFAST_CPU_CAPABILITY, else ATEN_CPU_CAPABILITY) or by
// set_cpu_capability() (tests run every build this machine can execute).
#include "kernels.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <strings.h>
#include <mutex>
#include <stdexcept>
#include <string>

namespace rnnfast::cpu {

#define RNNFAST_DECLARE_TABLES(ns)                      \
  namespace ns {                                        \
  const KernelTable<float>* table_f32();               \
  const KernelTable<double>* table_f64();              \
  const KernelTable<c10::BFloat16>* table_bf16();      \
  const KernelTable<c10::Half>* table_f16();           \
  }
RNNFAST_DECLARE_TABLES(DEFAULT)
#ifdef RNNFAST_HAVE_AVX2
RNNFAST_DECLARE_TABLES(AVX2)
#endif
#ifdef RNNFAST_HAVE_AVX512
RNNFAST_DECLARE_TABLES(AVX512)
#endif
#ifdef RNNFAST_HAVE_AVX512_BF16
RNNFAST_DECLARE_TABLES(AVX512_BF16)
#endif
#undef RNNFAST_DECLARE_TABLES

namespace {

struct Build {
  const char* name;
  const KernelTable<float>* (*f32)();
  const KernelTable<double>* (*f64)();
  const KernelTable<c10::BFloat16>* (*bf16)();
  const KernelTable<c10::Half>* (*f16)();
  bool (*supported)();
};

bool always() { return true; }
#if defined(__x86_64__) || defined(_M_X64)
bool cpu_has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
bool cpu_has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         cpu_has_avx2();
}
bool cpu_has_avx512_bf16() { return cpu_has_avx512() && __builtin_cpu_supports("avx512bf16"); }
#endif

// Best first.
#define RNNFAST_BUILD(name, ns, supported) \
  {name, &ns::table_f32, &ns::table_f64, &ns::table_bf16, &ns::table_f16, supported}
const Build kBuilds[] = {
#ifdef RNNFAST_HAVE_AVX512_BF16
    RNNFAST_BUILD("avx512_bf16", AVX512_BF16, &cpu_has_avx512_bf16),
#endif
#ifdef RNNFAST_HAVE_AVX512
    RNNFAST_BUILD("avx512", AVX512, &cpu_has_avx512),
#endif
#ifdef RNNFAST_HAVE_AVX2
    RNNFAST_BUILD("avx2", AVX2, &cpu_has_avx2),
#endif
    RNNFAST_BUILD("default", DEFAULT, &always),
};
#undef RNNFAST_BUILD
constexpr int kNumBuilds = sizeof(kBuilds) / sizeof(kBuilds[0]);

const char* lowercase_name(const char* env) {
  // Accept ATen's spellings (AVX512, AVX2, DEFAULT) as well as ours.
  if (!env) return nullptr;
  if (!strcasecmp(env, "avx512_bf16")) return "avx512_bf16";
  if (!strcasecmp(env, "avx512")) return "avx512";
  if (!strcasecmp(env, "avx2")) return "avx2";
  if (!strcasecmp(env, "default")) return "default";
  return nullptr;
}

// Index of the best supported build at or below `cap` (nullptr: no cap).
int pick(const char* cap) {
  bool below_cap = cap == nullptr;
  for (int i = 0; i < kNumBuilds; ++i) {
    if (!below_cap && strcmp(kBuilds[i].name, cap) == 0) below_cap = true;
    if (below_cap && kBuilds[i].supported()) return i;
  }
  return kNumBuilds - 1;
}

std::atomic<int> g_choice{-1};
std::mutex g_mutex;

int choice() {
  int c = g_choice.load(std::memory_order_acquire);
  if (c >= 0) return c;
  std::lock_guard<std::mutex> lock(g_mutex);
  c = g_choice.load();
  if (c < 0) {
    const char* env = std::getenv("RNNFAST_CPU_CAPABILITY");
    if (!env) env = std::getenv("ATEN_CPU_CAPABILITY");
    c = pick(lowercase_name(env));
    g_choice.store(c, std::memory_order_release);
  }
  return c;
}

}  // namespace

template <>
const KernelTable<float>& kernels<float>() { return *kBuilds[choice()].f32(); }
template <>
const KernelTable<double>& kernels<double>() { return *kBuilds[choice()].f64(); }
template <>
const KernelTable<c10::BFloat16>& kernels<c10::BFloat16>() { return *kBuilds[choice()].bf16(); }
template <>
const KernelTable<c10::Half>& kernels<c10::Half>() { return *kBuilds[choice()].f16(); }

const char* cpu_capability() { return kBuilds[choice()].name; }

void set_cpu_capability(const char* name) {
  const char* canonical = lowercase_name(name);
  if (!canonical)
    throw std::runtime_error(std::string("rnnfast: unknown CPU capability '") + (name ? name : "") +
                             "' (expected avx512_bf16, avx512, avx2 or default)");
  for (int i = 0; i < kNumBuilds; ++i) {
    if (strcmp(kBuilds[i].name, canonical) != 0) continue;
    if (!kBuilds[i].supported())
      throw std::runtime_error(std::string("rnnfast: this CPU does not support ") + canonical);
    std::lock_guard<std::mutex> lock(g_mutex);
    g_choice.store(i, std::memory_order_release);
    return;
  }
  throw std::runtime_error(std::string("rnnfast: the ") + canonical + " kernels are not compiled into this build");
}

const char* const* available_cpu_capabilities(int* count) {
  static const char* names[kNumBuilds];
  int n = 0;
  for (int i = 0; i < kNumBuilds; ++i)
    if (kBuilds[i].supported()) names[n++] = kBuilds[i].name;
  *count = n;
  return names;
}

}  // namespace rnnfast::cpu
