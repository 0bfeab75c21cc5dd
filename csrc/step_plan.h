// Time steps of one layer-direction on the time-major packed layout, in the
// order they are processed, and where each step's rows are. Device-neutral
// (host data only): the CPU and CUDA loops and the reference share it.
//
// Rows of step t are offset[t] .. offset[t] + bs[t]; bs is non-increasing, so
// the active rows of every step are a prefix of the batch. A padded [T, B, I]
// input is the case bs = [B] * T.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace rnnfast {

struct StepPlan {
  int64_t T = 0, B = 0, N = 0;
  bool reverse = false;

  StepPlan() = default;
  // From batch sizes (T of them, validated by the caller, alive as long as
  // the plan: a layer call's batch_sizes tensor).
  StepPlan(const int64_t* batch_sizes, int64_t steps, bool rev)
      : T(steps), reverse(rev), sizes_(batch_sizes), offsets_(steps + 1, 0) {
    for (int64_t t = 0; t < T; ++t) offsets_[t + 1] = offsets_[t] + sizes_[t];
    N = offsets_[T];
    B = T > 0 ? sizes_[0] : 0;
  }
  // T steps of B rows each (a padded input): nothing to store, so a one-step
  // call allocates nothing here.
  StepPlan(int64_t steps, int64_t batch, bool rev) : T(steps), B(batch), N(steps * batch), reverse(rev) {}

  // Batch size of step t and its first row.
  int64_t bs(int64_t t) const { return sizes_ ? sizes_[t] : B; }
  int64_t offset(int64_t t) const { return sizes_ ? offsets_[t] : t * B; }

  // The time step processed s-th.
  int64_t step(int64_t s) const { return reverse ? T - 1 - s : s; }
  // Rows of the s-th processed step that continue from the previously
  // processed step; the rest start from the initial state (only in the
  // reverse direction of a packed batch).
  int64_t continuing_rows(int64_t s) const {
    return s == 0 ? 0 : std::min(bs(step(s)), bs(step(s - 1)));
  }
  // First row of the step processed before the s-th (s >= 1).
  int64_t previous_offset(int64_t s) const { return offset(step(s - 1)); }

  // Processed steps [s0, s1), whose rows are [lo, lo + rows).
  struct Chunk {
    int64_t s0, s1, lo, rows;
  };
  // Consecutive processed steps grouped into chunks of about target_rows rows
  // (at least one step each): the unit of the time-parallel GEMMs.
  std::vector<Chunk> chunks(int64_t target_rows) const {
    std::vector<Chunk> out;
    for (int64_t s0 = 0; s0 < T;) {
      int64_t s1 = s0, rows = 0;
      while (s1 < T && (s1 == s0 || rows + bs(step(s1)) <= target_rows)) rows += bs(step(s1++));
      out.push_back({s0, s1, reverse ? offset(step(s1 - 1)) : offset(s0), rows});
      s0 = s1;
    }
    return out;
  }
  static int64_t max_rows(const std::vector<Chunk>& chunks) {
    int64_t m = 0;
    for (const Chunk& c : chunks) m = std::max(m, c.rows);
    return m;
  }
  // Step at which row b was processed last (where its final state is).
  int64_t last_step_of_row(int64_t b) const {
    if (reverse) return 0;
    if (!sizes_) return T - 1;
    int64_t len = 0;
    while (len < T && sizes_[len] > b) ++len;
    return len - 1;
  }

 private:
  const int64_t* sizes_ = nullptr;  // [T] batch sizes; null: every step has B rows
  std::vector<int64_t> offsets_;    // [T+1] first row of each step (with sizes_ only)
};

}  // namespace rnnfast
