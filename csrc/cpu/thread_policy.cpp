// The thread policy of the CPU layer calls (see thread_policy.h).
#include "thread_policy.h"

#include "../controls.h"

#include <torch/csrc/stable/ops.h>  // get_num_threads: torch.set_num_threads's setting

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

#include <cstdio>

#include <fcntl.h>
#include <pthread.h>
#include <sys/resource.h>
#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace rnnfast::cpu {

bool built_with_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}
namespace {

// Contention back-off: first period, and the longest one.
// Measured with benchmarks/load.py: a first period of 20 ms made the calls
// that probe again under steady load (each waiting a time slice) several per
// cent of all calls: p99 13-20x the quiet median, against 1.5-2.7x with 250 ms.
constexpr int64_t kMinBackoffNs = 250'000'000;    // 250 ms
constexpr int64_t kMaxBackoffNs = 4'000'000'000;  // 4 s

// Below this many multiply-adds a call runs on one thread. Measured on the
// 2-core Zen 3 VM (benchmarks/parallel_threshold.py: small calls forced onto
// two threads and onto one, timed-only regions): at 3-10 * 10^4 (one-step
// calls at B=1 H=128) two threads took 6-25 % more time for RNNCell and 9-12 %
// more for GRUCell (3 % less in one sweep); they were mostly faster from
// ~5 * 10^5 up. In between the runs disagreed: for LSTMCell at B=1 H=128
// (1.3 * 10^5; its backward 3.3 * 10^5) two threads took 6-7 % less time in
// 21 alternations, and its inference 2-3 % more in two sweeps
// (docs/results/zen3-avx2/parallel_threshold_stop41.txt).
std::atomic<int64_t> g_min_macs{int64_t(1) << 17};
std::atomic<int> g_in_use{0};
std::atomic<bool> g_forked_child{false};
std::atomic<int64_t> g_serial_until_ns{0};
std::atomic<int64_t> g_backoff_ns{kMinBackoffNs};
std::atomic<int64_t> g_contended_calls{0};
std::atomic<int64_t> g_leases_denied{0};
// Preemptions over recent parallel time (report_parallel_region).
constexpr int64_t kMinWindowNs = 10'000'000;
constexpr int64_t kMaxWindowNs = 100'000'000;
constexpr int64_t kMinPreemptions = 6;
constexpr int64_t kContendedRate = 250;  // per second of parallel time
// Time the threads of one parallel call waited for a CPU that marks it contended
// (and at least a quarter of their time). Measured on the 2-core Zen 3 VM
// (benchmarks/load.py's case and an LSTM at T=64, B=32, H=256): quiet, the
// waits of a call are 0-50 us, at most 1.5 ms and 16 % of its thread time in
// thousands of calls (waking a halted vCPU, kernel threads); with one core
// busy, 24 ms (a time slice) in 1 % of small calls, 60 ms in most large ones.
constexpr int64_t kMinWaitNs = 1'000'000;
// One contended call is not load: on the quiet 2-core Xeon VM about one call a
// second (a loop of one-step backward calls at B=64 H=512, ~0.7 ms each) had a
// thread preempted for 1-7 ms (cause not established: perf saw no other
// process of the VM run but kdamond, 0.1 %), and backing off on each sent
// 11-27 % of those calls to one thread (4-12 % more time than with the rule
// below; benchmarks/stray_preemptions.py). A contended call starts the
// back-off when it began within this long of the previous contended call's
// end (a back-off's end counting as one), or when the previous parallel call
// was contended too (calls far apart; and the first call after a back-off,
// which no parallel call reports: the contention outlasted it). With one core
// busy, that loop's contended calls came 7-160 ms apart.
constexpr int64_t kStrikeWindowNs = 250'000'000;
std::mutex g_window_mutex;
int64_t g_window_ns = 0;
int64_t g_window_preemptions = 0;
int64_t g_last_contended_end_ns = 0;  // steady clock; 0: none since the last reset
bool g_previous_contended = false;    // the last parallel call reported was contended
std::atomic<int64_t> g_backoffs{0};

int capacity() {
  static const int cores = [] {
#ifdef _OPENMP
    return std::max(1, omp_get_num_procs());
#else
    return std::max(1, int(std::thread::hardware_concurrency()));
#endif
  }();
  return cores;
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// In a child of fork(), OpenMP's thread pool is gone (libgomp does not
// support fork): a parallel region there can hang forever. The child runs
// every call on one thread, and no lease of the parent is held there.
void on_fork_child() {
  g_forked_child.store(true);
  g_in_use.store(0);
}

[[maybe_unused]] const bool g_atfork_registered = [] {
  pthread_atfork(nullptr, nullptr, &on_fork_child);
  return true;
}();

// Threads a call would like (see ThreadLease).
int wanted_threads(int64_t H, int64_t macs_per_step, int64_t total_macs) {
  if (g_forked_child.load(std::memory_order_relaxed)) return 1;
  const int threads = static_cast<int>(torch::stable::get_num_threads());
  if (threads <= 1 || H < 32 || macs_per_step < 16384 ||
      total_macs < g_min_macs.load(std::memory_order_relaxed))
    return 1;
  return static_cast<int>(std::min<int64_t>(threads, H / 16));
}

}  // namespace

ThreadLease::ThreadLease(const CallWork& w)
    : watch_(w.steps <= kMaxTimedSteps && w.total_macs < std::min(kMaxTimedMacs, kTimedMacsPerRow * w.rows)
                 ? RegionWatch::kDuration
                 : RegionWatch::kSchedulerAccount) {
  // Every call holds at least one core of the budget; a parallel call starts
  // only when the cores it wants are free and no contention back-off runs.
  const int wanted = wanted_threads(w.H, w.macs_per_step, w.total_macs);
  int want = std::max(1, wanted);
  if (want > 1 && now_ns() < g_serial_until_ns.load(std::memory_order_relaxed)) want = 1;
  int in_use = g_in_use.load(std::memory_order_relaxed);
  while (true) {
    const int free = capacity() - in_use;
    const int take = want > 1 && free >= 2 ? std::min(want, free) : 1;
    if (g_in_use.compare_exchange_weak(in_use, in_use + take, std::memory_order_acq_rel)) {
      granted_ = reserved_ = take;
      if (take < wanted) g_leases_denied.fetch_add(1, std::memory_order_relaxed);
      return;
    }
  }
}

ThreadLease::~ThreadLease() {
  if (reserved_) g_in_use.fetch_sub(reserved_, std::memory_order_acq_rel);
}

namespace {

// Whether a contended call (ending at `end`, lasting duration_ns) is more
// than one stray preemption: the pair rule of thread_policy.h, for the calls
// judged one by one (schedstat, or the duration). Every such call reports
// here, contended or clean. Called with g_window_mutex held.
bool paired_with_the_last(bool contended, int64_t end, int64_t duration_ns) {
  bool sustained = false;
  if (contended) {
    const int64_t start = end - duration_ns;
    sustained = g_previous_contended ||
                (g_last_contended_end_ns != 0 && start - g_last_contended_end_ns <= kStrikeWindowNs);
    g_last_contended_end_ns = end;
  }
  g_previous_contended = contended;
  return sustained;
}

// The verdict on a parallel call ending at `end`: a clean call resets the
// back-off's doubling; a sustained contended one starts a back-off. Called
// with g_window_mutex held.
void apply_verdict(bool contended, bool sustained, int64_t end) {
  if (!contended) {
    g_backoff_ns.store(kMinBackoffNs, std::memory_order_relaxed);
    return;
  }
  g_contended_calls.fetch_add(1, std::memory_order_relaxed);
  if (!sustained) return;
  g_backoffs.fetch_add(1, std::memory_order_relaxed);
  const int64_t backoff = g_backoff_ns.load(std::memory_order_relaxed);
  g_serial_until_ns.store(end + backoff, std::memory_order_relaxed);
  // The back-off's end counts as the last contended moment: under steady load
  // the first calls after it may be clean, and one contended call within the
  // window then backs off again at once (as before the pair rule).
  g_last_contended_end_ns = end + backoff;
  g_backoff_ns.store(std::min(backoff * 2, kMaxBackoffNs), std::memory_order_relaxed);
  g_window_ns = 0;  // the next probe starts a fresh window
  g_window_preemptions = 0;
}

}  // namespace

void report_parallel_region(int64_t preemptions, int64_t waited_ns, int threads, int64_t duration_ns) {
  std::lock_guard<std::mutex> lock(g_window_mutex);
  const int64_t end = now_ns();
  if (waited_ns >= 0) {
    // The scheduler's own account: the call's threads waited for a CPU.
    const bool contended = waited_ns >= kMinWaitNs && waited_ns * 4 >= duration_ns * std::max(threads, 1);
    apply_verdict(contended, paired_with_the_last(contended, end, duration_ns), end);
    return;
  }
  // Over a window of recent parallel time (halved when it passes 100 ms): one
  // call can be too short to see a preemption even under load. A contended
  // window is sustained by definition.
  g_window_ns += duration_ns;
  g_window_preemptions += preemptions;
  if (g_window_ns > kMaxWindowNs) {
    g_window_ns /= 2;
    g_window_preemptions /= 2;
  }
  const bool contended = g_window_ns >= kMinWindowNs && g_window_preemptions >= kMinPreemptions &&
                         g_window_preemptions * 1'000'000'000 >= kContendedRate * g_window_ns;
  apply_verdict(contended, true, end);
}

void report_timed_region(int64_t duration_ns) {
  std::lock_guard<std::mutex> lock(g_window_mutex);
  const int64_t end = now_ns();
  // A call small enough to be timed only (RegionWatch::kDuration) that lasted
  // this long had a thread off its core, or the whole VM was: as a call whose
  // threads waited 1 ms.
  const bool contended = duration_ns >= kMinWaitNs;
  apply_verdict(contended, paired_with_the_last(contended, end, duration_ns), end);
}

ThreadSchedule thread_schedule() {
  ThreadSchedule s;
  // "<cpu time ns> <run_delay ns> <timeslices>"; one descriptor per thread, kept.
  thread_local const int fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
  char text[96];
  const ssize_t n = fd >= 0 ? pread(fd, text, sizeof(text) - 1, 0) : -1;
  if (n > 0) {
    text[n] = '\0';
    unsigned long long cpu = 0, delay = 0;
    if (std::sscanf(text, "%llu %llu", &cpu, &delay) == 2) {
      s.waited_ns = int64_t(delay);
      return s;
    }
  }
  s.waited_ns = -1;
  rusage usage;
  s.preemptions = getrusage(RUSAGE_THREAD, &usage) == 0 ? int64_t(usage.ru_nivcsw) : 0;
  return s;
}

void set_min_parallel_macs(int64_t macs) { g_min_macs.store(std::max<int64_t>(0, macs)); }
int64_t min_parallel_macs() { return g_min_macs.load(); }

ThreadPolicyState thread_policy_state() {
  const int64_t until = g_serial_until_ns.load();
  return {capacity(),
          g_in_use.load(),
          g_forked_child.load(),
          until > now_ns() ? until : 0,
          g_contended_calls.load(),
          g_backoffs.load(),
          g_leases_denied.load()};
}

CallPlan& last_call_plan() {
  thread_local CallPlan plan;
  return plan;
}

void reset_thread_policy() {
  {
    std::lock_guard<std::mutex> lock(g_window_mutex);
    g_window_ns = 0;
    g_window_preemptions = 0;
    g_last_contended_end_ns = 0;
    g_previous_contended = false;
  }
  g_serial_until_ns.store(0);
  g_backoff_ns.store(kMinBackoffNs);
  g_contended_calls.store(0);
  g_backoffs.store(0);
  g_leases_denied.store(0);
}

}  // namespace rnnfast::cpu
