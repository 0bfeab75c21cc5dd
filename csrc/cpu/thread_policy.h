// How many threads one layer call runs on: decided once, before the call
// slices its work, and held for the whole call.
//
// A parallel time loop meets its threads at a barrier every step, so it is
// only as fast as its slowest thread. It must not start more threads than can
// run at once, and it must stop using several threads while they cannot:
//   * work: below min_parallel_macs multiply-adds per call (default 2^17,
//     thread_policy.cpp) or too little work per step, one thread;
//   * concurrent calls: threads are leased from a process-wide budget of the
//     machine's cores; a call that would oversubscribe them runs on one thread
//     (no barrier to wait at);
//   * contention: when the threads of a parallel call waited for a CPU (the
//     scheduler gave their core to another runnable task: another process, or
//     more threads than cores), the following calls run on one thread for a
//     back-off period, which doubles while contention persists (250 ms up to
//     4 s) and resets after a clean call. The evidence is the kernel's own
//     account of it, run_delay in /proc/thread-self/schedstat: a call whose
//     threads waited at least 1 ms and a quarter of their time is contended.
//     Such a call starts the back-off when it began within 250 ms of the
//     previous one's end (a back-off's end counting as one) or when the
//     previous parallel call was contended too, so the first calls after a
//     core becomes busy are the only ones to pay (a preempted thread stalls
//     its partners at the step barrier for a time slice: milliseconds), and a
//     lone preemption on a quiet machine does not send a quarter second of
//     calls to one thread. Measured on 2-core VMs (thread_policy.cpp,
//     kMinWaitNs, kStrikeWindowNs): quiet, a call's threads wait at most
//     1.5 ms and 16 % of their time (Zen 3), but on the Xeon VM about one call
//     per second waits 1-7 ms; one core busy, 24-60 ms (Zen 3), 4-8 ms (Xeon).
//     Reading it costs: two reads of schedstat and of getrusage per thread
//     added 3.4 us to an empty parallel region (1.17 -> 4.55 us) and 7-15 us
//     to a one-step cell call on the 2-core Zen 3 VM, more than such a call at B=1 spends
//     on its arithmetic. So only calls that may take a millisecond or
//     more read it (RegionWatch below); a smaller call, which takes well
//     under 1 ms on a quiet machine, is timed only, and one that lasted 1 ms
//     or more counts as contended (a preempted thread stalls its partners for
//     a time slice), with the same pairing rule.
//     Where schedstat is missing, the rate of involuntary context switches
//     over the last 10-100 ms of parallel time (at least 6, and 250 per
//     second; quiet: 30-40 per second) decides. Neither sleeping
//     barrier waits nor idle time are a signal: a long phase of unequal work
//     makes them on a quiet machine too.
//   * fork: a child forked after OpenMP started must not enter a parallel
//     region (libgomp's thread pool does not survive fork()): it runs every
//     call on one thread.
#pragma once

#include <cstdint>

namespace rnnfast::cpu {

// How a parallel call learns whether its threads waited for a CPU (see
// "contention" above): each thread reads the scheduler's account before and
// after, or the call's wall time alone is taken. Timed only: calls of at most
// kMaxTimedSteps steps and under kTimedMacsPerRow multiply-adds per row of
// the batch (the call's multiply-adds over its batch; under kMaxTimedMacs in
// all), which on a quiet machine end well within kMinWaitNs (1 ms). What
// bounds them is a B=1 call, memory-bound: the B=1 H=128 LSTMCell backward
// did ~2.6 multiply-adds per ns (126 us for 3.3 * 10^5, one thread), so 2^20
// take ~0.4 ms. With more rows the products run faster (load.py's T=20 B=8
// H=64 LSTM: 5.2 * 10^6 in ~0.18 ms on two threads, ~30 per ns; 2^23 at that
// rate: ~0.3 ms), plus 64 steps of per-step overhead (a barrier, 1-3 us).
enum class RegionWatch { kSchedulerAccount, kDuration };
constexpr int64_t kTimedMacsPerRow = int64_t(1) << 20;
constexpr int64_t kMaxTimedMacs = int64_t(1) << 23;
constexpr int64_t kMaxTimedSteps = 64;

// The work of one layer call, as the thread policy sees it.
struct CallWork {
  int64_t H = 0;              // hidden units (split across threads in slices of 16+)
  int64_t rows = 0;           // rows per step (the batch)
  int64_t steps = 0;          // time steps
  int64_t macs_per_step = 0;  // multiply-adds between two step barriers
  int64_t total_macs = 0;     // multiply-adds of the whole call
};

// Threads granted to one call: those it would like (min(torch's intra-op
// thread count, H / 16) when it carries enough work, else 1) as far as the
// budget allows. Returned to the budget when the call ends.
class ThreadLease {
 public:
  explicit ThreadLease(const CallWork& work);
  ~ThreadLease();
  ThreadLease(const ThreadLease&) = delete;
  ThreadLease& operator=(const ThreadLease&) = delete;
  int threads() const { return granted_; }
  RegionWatch watch() const { return watch_; }

 private:
  int granted_ = 1;
  int reserved_ = 0;
  RegionWatch watch_ = RegionWatch::kSchedulerAccount;
};

// What the scheduler did to the calling thread so far: the time it waited
// runnable for a CPU (run_delay of /proc/thread-self/schedstat, read through a
// descriptor the thread keeps open) or, where the kernel does not provide it
// (waited_ns -1), its involuntary context switches (getrusage; 0 otherwise).
struct ThreadSchedule {
  int64_t preemptions = 0;
  int64_t waited_ns = 0;
};
ThreadSchedule thread_schedule();

// A parallel call reports how often its `threads` threads were preempted, how
// long they waited for a CPU in all (negative: unknown), and its duration.
void report_parallel_region(int64_t preemptions, int64_t waited_ns, int threads, int64_t duration_ns);
// A parallel call watched by its duration alone (RegionWatch::kDuration).
void report_timed_region(int64_t duration_ns);

// Test and tuning hooks (tests/test_reliability.py): the work threshold, and
// the state of the policy.
void set_min_parallel_macs(int64_t macs);
int64_t min_parallel_macs();
struct ThreadPolicyState {
  int capacity;             // cores in the budget
  int in_use;               // threads leased now
  bool forked_child;        // this process is a fork() child of a process that used OpenMP
  int64_t serial_until_ns;  // contention back-off deadline (steady clock), 0 if none
  int64_t contended_calls;  // parallel calls that found contention, since start
  int64_t backoffs;         // back-offs started, since start
  int64_t leases_denied;    // calls run on one thread because the budget was taken
};
ThreadPolicyState thread_policy_state();
// Clears the back-off and the counters (tests).
void reset_thread_policy();

// What the last layer call made on this thread did (tests assert the paths
// they mean to exercise: threads, chunks, unpacked weights).
struct CallPlan {
  bool backward = false;
  int slices = 0;           // threads the call ran on
  int64_t chunks = 0;       // chunks of rows of the time-parallel GEMMs
  int64_t chunk_rows = 0;   // rows of the largest chunk
  bool unpacked = false;    // read the weights in place instead of packing them
  int64_t waited_ns = 0;    // time its threads waited for a CPU (-1: unknown or not read; 0 when serial)
  bool batch_split = false; // forward: the threads split the batch, not the hidden units
  int streamed = 0;         // weights streamed (multiplied once: packed as the GEMM went, no cache)
  int weight_as_a = 0;      // of those, read in place as the A operand in the largest product (gemm_weight_as_a)
};
CallPlan& last_call_plan();

}  // namespace rnnfast::cpu
