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
  std::vector<int64_t> bs;      // [T] batch size of step t
  std::vector<int64_t> offset;  // [T+1] first row of step t

  StepPlan() = default;
  // From batch sizes (T of them, validated by the caller).
  StepPlan(const int64_t* batch_sizes, int64_t steps, bool rev) : T(steps), reverse(rev) {
    bs.assign(batch_sizes, batch_sizes + steps);
    init_offsets();
  }
  // T steps of B rows each.
  StepPlan(int64_t steps, int64_t batch, bool rev) : T(steps), reverse(rev) {
    bs.assign(steps, batch);
    init_offsets();
  }

  // The time step processed s-th.
  int64_t step(int64_t s) const { return reverse ? T - 1 - s : s; }
  // Rows of the s-th processed step that continue from the previously
  // processed step; the rest start from the initial state (only in the
  // reverse direction of a packed batch).
  int64_t continuing_rows(int64_t s) const {
    return s == 0 ? 0 : std::min(bs[step(s)], bs[step(s - 1)]);
  }
  // First row of the step processed before the s-th (s >= 1).
  int64_t previous_offset(int64_t s) const { return offset[step(s - 1)]; }

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
      while (s1 < T && (s1 == s0 || rows + bs[step(s1)] <= target_rows)) rows += bs[step(s1++)];
      out.push_back({s0, s1, reverse ? offset[step(s1 - 1)] : offset[s0], rows});
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
    int64_t len = 0;
    while (len < T && bs[len] > b) ++len;
    return len - 1;
  }

 private:
  void init_offsets() {
    offset.assign(T + 1, 0);
    for (int64_t t = 0; t < T; ++t) offset[t + 1] = offset[t] + bs[t];
    N = offset[T];
    B = T > 0 ? bs[0] : 0;
  }
};

}  // namespace rnnfast
