#pragma once
// Open-loop load generator and gateway-vs-direct comparison (`bellwether bench`,
// `bellwether bench compare`). Requests leave at their scheduled times whatever the responses
// do, and latency is measured from the intended send time, so a stalled server cannot hide its
// queueing delay (no coordinated omission).
//
// The schedule math and the report writers are pure and thread-compatible; run_load uses its own
// threads and a bellwether::Client. Entry points parse flags with CLI11 and return an exit code.
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace bw::bench {

int run_bench(int argc, char** argv);
int run_bench_compare(int argc, char** argv);

// --- schedule ------------------------------------------------------------------------------
struct RatePoint {
  double time_s = 0;        // offset from the start of the run
  double rate_per_min = 0;  // offered load at that instant; linear in between points
};

// Piecewise-linear offered load. Points are sorted by time; the run ends at the last point.
struct Profile {
  std::vector<RatePoint> points;
  double duration_s() const { return points.empty() ? 0 : points.back().time_s; }
  double rate_per_min_at(double t) const;
};

// 500/min baseline for 30 s, ramp to 15,000/min over 90 s, hold 60 s, back to 500/min over
// 10 s, 50 s tail to watch recovery: 240 s in total.
Profile spike_profile();
Profile constant_profile(double rate_per_min, double duration_s);
Profile ramp_profile(double from_per_min, double to_per_min, double duration_s);
// "0:500,30:500,120:15000" (time_s:rate_per_min). nullopt + message on error.
std::optional<Profile> parse_points(const std::string& text, std::string* error);
// Divides every time by `factor` and keeps the rates: the same shape runs `factor` times faster
// with `factor` times fewer requests.
Profile compress(const Profile& profile, double factor);
// Multiplies every rate by `factor`.
Profile scale_rates(const Profile& profile, double factor);

// Intended send offsets (s): the k-th request leaves when the integral of the rate reaches k
// (k = 0, 1, ...), i.e. exact inversion of the cumulative arrival curve, segment by segment.
std::vector<double> intended_send_times(const Profile& profile);

struct Weighted {
  std::string name;
  double weight = 0;
};
// "gpt-4o-mini:0.7,gpt-4o:0.3" (weights need not sum to 1); a bare name has weight 1.
std::optional<std::vector<Weighted>> parse_mix(const std::string& text, std::string* error);
// "10/60/30" -> weights for priorities 0,1,2.
std::optional<std::vector<double>> parse_priority_mix(const std::string& text, std::string* error);

struct PlannedRequest {
  double at_s = 0;
  std::string model;
  int priority = 1;
  int prompt_bytes = 0;
};

struct PlanOptions {
  std::vector<Weighted> models{{"gpt-4o-mini", 1}};
  std::vector<double> priority_weights{10, 60, 30};
  std::vector<int> prompt_bytes{512};  // picked uniformly per request
  std::uint64_t seed = 42;
};
// Deterministic for a given seed, so the direct and gateway runs offer the same requests.
std::vector<PlannedRequest> build_plan(const std::vector<double>& times,
                                       const PlanOptions& options);

// --- results --------------------------------------------------------------------------------
struct SecondStats {
  std::int64_t sent = 0;  // requests whose intended send time falls in this second
  std::int64_t ok = 0;
  std::int64_t rate_limited = 0;  // HTTP 429
  std::int64_t errors = 0;        // everything else, including client-side drops
  std::int64_t dropped = 0;       // not sent: in-flight bound reached (counted in errors too)
  double p50_ms = 0, p95_ms = 0, p99_ms = 0;  // successful requests of this second
  std::optional<double> queue_depth;          // gateway queue depth polled in this second
};

struct PriorityStats {
  std::int64_t sent = 0;
  std::int64_t ok = 0;
  double p50_ms = 0, p95_ms = 0, p99_ms = 0;  // successful requests of this priority
};

struct RunSummary {
  std::string name;
  double duration_s = 0;  // wall time from the first intended send to the last completion
  std::int64_t sent = 0, ok = 0, rate_limited = 0, errors = 0, dropped = 0;
  // Errors other than drops by reason: the SDK's error kind, then the HTTP status and OpenAI
  // error code when a response came back ("server_error 503 queue_full", "timeout").
  std::map<std::string, std::int64_t> errors_by_reason;
  double p50_ms = 0, p95_ms = 0, p99_ms = 0, max_ms = 0;
  std::vector<PriorityStats> by_priority{3};
  std::int64_t prompt_tokens = 0, completion_tokens = 0;
  double tokens_per_s = 0;  // completion tokens of successful requests per second of run
  double spend_usd = 0;
  std::optional<double> budget_usd;
  std::vector<SecondStats> series;
};

// Nearest-rank percentile (q in [0,100]) of unsorted values; 0 for an empty set.
double percentile(std::vector<double> values, double q);

std::string comparison_table(const std::vector<RunSummary>& runs);
std::string to_json(const std::vector<RunSummary>& runs, const std::string& profile_text);
std::string to_html(const std::vector<RunSummary>& runs, const std::string& profile_text);

// --- running ---------------------------------------------------------------------------------
struct LoadOptions {
  std::string base_url;
  std::string api_key;
  std::string queue_url;  // gateway base URL to poll GET /v1/metrics/queue; empty = no polling
  std::string queue_path = "/v1/metrics/queue";
  int max_in_flight = 2000;   // more would be dropped (counted as errors), never delayed
  double max_duration_s = 0;  // hard stop including drain; 0 = profile + drain_s
  double drain_s = 30;        // wait for in-flight requests after the last send
  double timeout_s = 60;      // per request
  int max_tokens = 64;
  bool stream = false;
  int client_attempts = 1;  // >1 lets the SDK retry (measures client+system, not system)
  std::vector<std::pair<std::string, std::pair<double, double>>>
      prices;  // model -> in/out per Mtok
  std::optional<double> budget_usd;
};

RunSummary run_load(const std::string& name, const LoadOptions& options,
                    const std::vector<PlannedRequest>& plan);

}  // namespace bw::bench
