#pragma once
// Queue statistics with bounded memory: wait-time percentiles over a sliding window, throughput
// over the last minute, shed/time-out counters, and the JSON body of GET /v1/metrics/queue.
// Pure (takes `now`). AdmissionStats is single threaded (the AdmissionController guards its
// instance) except record_completion() and completion_rate(), which may run from any thread
// without that lock: every request completes, so its count takes no lock.
#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "admission/priority.h"
#include "common/clock.h"
#include "common/window_count.h"

namespace bw::admission {

// Log-linear histogram of durations (16 sub-buckets per power of two of microseconds, so a
// reported percentile is within ~3% of the true value) kept in `slices` rotating slices that
// together cover `window`. Memory is fixed: slices * kBuckets counters.
class LatencyWindow {
 public:
  static constexpr int kSubBits = 4;
  static constexpr int kBuckets = 16 * 38;  // up to 2^41 us (~25 days): anything longer is capped

  explicit LatencyWindow(Nanos window = seconds(60), int slices = 6);

  void record(Nanos now, Nanos value);
  // q in (0, 1]; milliseconds; 0 when the window holds no sample.
  double percentile_ms(Nanos now, double q) const;
  std::uint64_t count(Nanos now) const;

  static int bucket_of(std::uint64_t micros);
  // Representative value (microseconds) reported for a bucket.
  static double bucket_value_us(int bucket);

 private:
  struct Slice {
    std::int64_t epoch = -1;
    std::uint64_t total = 0;
    std::array<std::uint32_t, kBuckets> counts{};
  };
  bool live(const Slice& s, Nanos now) const;
  Nanos slice_len_;
  std::vector<Slice> slices_;
};

// Event count over the last `seconds_kept` whole seconds (one counter per second).
class RateWindow {
 public:
  explicit RateWindow(int seconds_kept = 60) : buckets_(seconds_kept) {}
  void record(Nanos now, std::uint64_t n = 1);
  std::uint64_t sum(Nanos now) const;
  int span_seconds() const { return static_cast<int>(buckets_.size()); }

 private:
  struct Bucket {
    std::int64_t second = -1;
    std::uint64_t count = 0;
  };
  std::vector<Bucket> buckets_;
};

// Why a request waits (or was refused after waiting): the resource that was short.
enum class WaitReason : std::uint8_t {
  kNone,
  kConcurrency,    // the model group's concurrency limit
  kDeploymentRpm,  // every deployment's request rate (configured or learned) is spent
  kDeploymentTpm,  // every deployment's token rate is spent
  kKeyLimit,       // the key's / tenant's own request-rate limit
};
inline constexpr int kNumWaitReasons = 5;
inline constexpr std::array<std::string_view, kNumWaitReasons> kWaitReasonNames = {
    "none", "concurrency", "deployment_rpm", "deployment_tpm", "key_limit"};
inline std::string_view wait_reason_name(WaitReason r) {
  return kWaitReasonNames[static_cast<std::size_t>(r)];
}

// Rate capacity of one deployment as the admission queue sees it.
struct DeploymentCapacityRow {
  std::string group;
  std::string deployment;
  std::int64_t configured_rpm = 0, configured_tpm = 0;  // 0 = none
  std::int64_t effective_rpm = 0, effective_tpm = 0;    // in force (learned while fresh)
  bool learned_fresh = false;
  std::int64_t remaining_requests = -1, remaining_tokens = -1;  // in force; -1 = unlimited
  std::int64_t learned_remaining_requests = -1, learned_remaining_tokens = -1;  // -1 = none
  double blocked_s = 0;                    // provider Retry-After still running
  WaitReason binding = WaitReason::kNone;  // deployment_rpm/_tpm when its rate binds now
};

struct WaitPercentiles {
  double p50 = 0, p95 = 0, p99 = 0;  // milliseconds
};

struct QueueSnapshot {
  PerPriority<std::size_t> depth{};  // waiting for a slot + waiting for a rate limit
  std::size_t in_flight = 0;
  double throughput_rpm = 0;  // completions in the last 60 s
  PerPriority<WaitPercentiles> wait_ms{};
  // Counters since start. shed = evicted + refused_full + refused_overload.
  PerPriority<std::uint64_t> shed{}, timed_out{}, evicted{}, refused_full{}, refused_overload{},
      cancelled{};
  // depth / completion rate; nullopt when requests wait but nothing completed recently.
  std::optional<double> estimated_drain_seconds;
  std::vector<std::pair<std::string, int>> concurrency_limits;  // group -> current limit
  // Waiting now, by the resource each group waits for (key_limit: key-limit turns).
  std::array<std::size_t, kNumWaitReasons> waiting_by_reason{};
  // Since start, by reason and priority: requests that waited and then ran; refusals.
  std::array<PerPriority<std::uint64_t>, kNumWaitReasons> waits_by_reason{}, refusals_by_reason{};
  std::vector<DeploymentCapacityRow> deployments;

  std::size_t queue_depth() const { return depth[0] + depth[1] + depth[2]; }
};

class AdmissionStats {
 public:
  explicit AdmissionStats(Nanos wait_window = seconds(60));

  void record_wait(int priority, Nanos now, Nanos waited);  // a waiter got its slot
  void record_completion(Nanos now);  // a permit was released (thread-safe, lock-free)
  void record_timeout(int priority) { ++timed_out_[priority]; }
  void record_evicted(int priority) { ++evicted_[priority]; }
  void record_refused_full(int priority) { ++refused_full_[priority]; }
  void record_refused_overload(int priority) { ++refused_overload_[priority]; }
  void record_cancelled(int priority) { ++cancelled_[priority]; }

  // Completions per second over the last minute (thread-safe, lock-free).
  double completion_rate(Nanos now) const;
  // Fills everything except depth, in_flight and concurrency_limits, which the caller sets
  // first (the drain estimate uses depth).
  void fill(Nanos now, QueueSnapshot& s) const;

 private:
  PerPriority<LatencyWindow> waits_;
  WindowCount completions_{seconds(60), 60};  // one-second buckets
  PerPriority<std::uint64_t> timed_out_{}, evicted_{}, refused_full_{}, refused_overload_{},
      cancelled_{};
};

// Body of GET /v1/metrics/queue:
// {"queue_depth","depth_by_priority":{p0,p1,p2},"in_flight","throughput_rpm",
//  "wait_ms":{"p0":{"p50","p95","p99"},...},"shed":{..},"timed_out":{..},
//  "estimated_drain_seconds" (number or null),"concurrency_limits":{group:limit}}
std::string render_queue_metrics_json(const QueueSnapshot& s);

}  // namespace bw::admission
