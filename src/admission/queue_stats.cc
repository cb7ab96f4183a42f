#include "admission/queue_stats.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <string_view>

#include "common/json_util.h"

namespace bw::admission {

LatencyWindow::LatencyWindow(Nanos window, int slices)
    : slice_len_(std::max<Nanos>(1, window / std::max(1, slices))),
      slices_(static_cast<std::size_t>(std::max(1, slices))) {}

int LatencyWindow::bucket_of(std::uint64_t us) {
  if (us < 16) return static_cast<int>(us);
  const int e = static_cast<int>(std::bit_width(us)) - 1;  // us in [2^e, 2^(e+1)), e >= 4
  const int sub = static_cast<int>((us >> (e - kSubBits)) & 15);
  return std::min(kBuckets - 1, 16 * (e - 3) + sub);
}

double LatencyWindow::bucket_value_us(int b) {
  if (b < 16) return b;
  const int e = b / 16 + 3;
  const int sub = b % 16;
  const double width = std::ldexp(1.0, e - kSubBits);
  return (16 + sub) * width + width / 2;
}

bool LatencyWindow::live(const Slice& s, Nanos now) const {
  const std::int64_t epoch = now / slice_len_;
  return s.epoch >= 0 && s.epoch > epoch - static_cast<std::int64_t>(slices_.size()) &&
         s.epoch <= epoch;
}

void LatencyWindow::record(Nanos now, Nanos value) {
  const std::int64_t epoch = now / slice_len_;
  Slice& s = slices_[static_cast<std::size_t>(epoch % static_cast<std::int64_t>(slices_.size()))];
  if (s.epoch != epoch) {
    s.epoch = epoch;
    s.total = 0;
    s.counts.fill(0);
  }
  ++s.counts[bucket_of(static_cast<std::uint64_t>(std::max<Nanos>(0, value)) / 1000)];
  ++s.total;
}

std::uint64_t LatencyWindow::count(Nanos now) const {
  std::uint64_t n = 0;
  for (const Slice& s : slices_) {
    if (live(s, now)) n += s.total;
  }
  return n;
}

double LatencyWindow::percentile_ms(Nanos now, double q) const {
  const std::uint64_t n = count(now);
  if (n == 0) return 0;
  const auto rank = static_cast<std::uint64_t>(
      std::clamp<double>(std::ceil(q * static_cast<double>(n)), 1, static_cast<double>(n)));
  std::uint64_t seen = 0;
  for (int b = 0; b < kBuckets; ++b) {
    for (const Slice& s : slices_) {
      if (live(s, now)) seen += s.counts[b];
    }
    if (seen >= rank) return bucket_value_us(b) / 1000.0;
  }
  return bucket_value_us(kBuckets - 1) / 1000.0;
}

void RateWindow::record(Nanos now, std::uint64_t n) {
  const std::int64_t sec = now / kNanosPerSecond;
  Bucket& b = buckets_[static_cast<std::size_t>(sec % static_cast<std::int64_t>(buckets_.size()))];
  if (b.second != sec) {
    b.second = sec;
    b.count = 0;
  }
  b.count += n;
}

std::uint64_t RateWindow::sum(Nanos now) const {
  const std::int64_t sec = now / kNanosPerSecond;
  std::uint64_t n = 0;
  for (const Bucket& b : buckets_) {
    if (b.second >= 0 && b.second > sec - static_cast<std::int64_t>(buckets_.size()) &&
        b.second <= sec) {
      n += b.count;
    }
  }
  return n;
}

AdmissionStats::AdmissionStats(Nanos wait_window)
    : waits_{LatencyWindow(wait_window), LatencyWindow(wait_window), LatencyWindow(wait_window)} {}

void AdmissionStats::record_wait(int priority, Nanos now, Nanos waited) {
  waits_[clamp_priority(priority)].record(now, waited);
}

void AdmissionStats::record_completion(Nanos now) {
  completions_.record(now);
}

double AdmissionStats::completion_rate(Nanos now) const {
  return static_cast<double>(completions_.sum(now)) / to_seconds(completions_.window());
}

void AdmissionStats::fill(Nanos now, QueueSnapshot& s) const {
  s.throughput_rpm =
      static_cast<double>(completions_.sum(now)) * 60.0 / to_seconds(completions_.window());
  for (int p = 0; p < kNumPriorities; ++p) {
    s.wait_ms[p] =
        WaitPercentiles{waits_[p].percentile_ms(now, 0.50), waits_[p].percentile_ms(now, 0.95),
                        waits_[p].percentile_ms(now, 0.99)};
    s.timed_out[p] = timed_out_[p];
    s.evicted[p] = evicted_[p];
    s.refused_full[p] = refused_full_[p];
    s.refused_overload[p] = refused_overload_[p];
    s.cancelled[p] = cancelled_[p];
    s.shed[p] = evicted_[p] + refused_full_[p] + refused_overload_[p];
  }
  const double rate = completion_rate(now);
  const std::size_t depth = s.queue_depth();
  if (depth == 0) {
    s.estimated_drain_seconds = 0.0;
  } else if (rate > 0) {
    s.estimated_drain_seconds = static_cast<double>(depth) / rate;
  } else {
    s.estimated_drain_seconds = std::nullopt;
  }
}

namespace {

// Keeps the body short and stable: 3 decimals are plenty for milliseconds and seconds.
double round3(double v) {
  return std::round(v * 1000.0) / 1000.0;
}

template <class T>
void write_per_priority(JsonWriter& w, std::string_view name, const PerPriority<T>& v) {
  w.key(name).begin_object();
  for (int p = 0; p < kNumPriorities; ++p) {
    w.key(kPriorityLabels[p]).value(static_cast<std::uint64_t>(v[p]));
  }
  w.end_object();
}

}  // namespace

std::string render_queue_metrics_json(const QueueSnapshot& s) {
  JsonWriter w;
  w.begin_object();
  w.key("queue_depth").value(static_cast<std::uint64_t>(s.queue_depth()));
  write_per_priority(w, "depth_by_priority", s.depth);
  w.key("in_flight").value(static_cast<std::uint64_t>(s.in_flight));
  w.key("throughput_rpm").value(round3(s.throughput_rpm));
  w.key("wait_ms").begin_object();
  for (int p = 0; p < kNumPriorities; ++p) {
    w.key(kPriorityLabels[p]).begin_object();
    w.key("p50").value(round3(s.wait_ms[p].p50));
    w.key("p95").value(round3(s.wait_ms[p].p95));
    w.key("p99").value(round3(s.wait_ms[p].p99));
    w.end_object();
  }
  w.end_object();
  write_per_priority(w, "shed", s.shed);
  write_per_priority(w, "timed_out", s.timed_out);
  write_per_priority(w, "cancelled", s.cancelled);
  w.key("estimated_drain_seconds");
  if (s.estimated_drain_seconds) {
    w.value(round3(*s.estimated_drain_seconds));
  } else {
    w.null();
  }
  w.key("concurrency_limits").begin_object();
  for (const auto& [group, limit] : s.concurrency_limits) w.key(group).value(limit);
  w.end_object();
  w.key("waiting_by_reason").begin_object();
  for (int r = 1; r < kNumWaitReasons; ++r) {
    w.key(kWaitReasonNames[r]).value(static_cast<std::uint64_t>(s.waiting_by_reason[r]));
  }
  w.end_object();
  for (const auto* what : {"waits_by_reason", "refusals_by_reason"}) {
    const auto& v =
        std::string_view(what) == "waits_by_reason" ? s.waits_by_reason : s.refusals_by_reason;
    w.key(what).begin_object();
    for (int r = 1; r < kNumWaitReasons; ++r) write_per_priority(w, kWaitReasonNames[r], v[r]);
    w.end_object();
  }
  w.key("deployments").begin_array();
  for (const auto& d : s.deployments) {
    w.begin_object();
    w.key("group").value(d.group);
    w.key("deployment").value(d.deployment);
    w.key("configured").begin_object();
    w.key("rpm").value(d.configured_rpm);
    w.key("tpm").value(d.configured_tpm);
    w.end_object();
    w.key("learned").begin_object();
    w.key("fresh").value(d.learned_fresh);
    w.key("rpm").value(d.learned_fresh ? d.effective_rpm : 0);
    w.key("tpm").value(d.learned_fresh ? d.effective_tpm : 0);
    w.key("remaining_requests").value(d.learned_remaining_requests);
    w.key("remaining_tokens").value(d.learned_remaining_tokens);
    w.end_object();
    w.key("rpm").value(d.effective_rpm);
    w.key("tpm").value(d.effective_tpm);
    w.key("remaining_requests").value(d.remaining_requests);
    w.key("remaining_tokens").value(d.remaining_tokens);
    w.key("blocked_s").value(round3(d.blocked_s));
    w.key("binding").value(wait_reason_name(d.binding));
    w.end_object();
  }
  w.end_array();
  w.end_object();
  return w.take();
}

}  // namespace bw::admission
