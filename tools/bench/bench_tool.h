#pragma once
// Open-loop load generator and gateway-vs-direct comparison (`bellwether bench`,
// `bellwether bench compare`). Requests leave at their scheduled times whatever the responses
// do, and latency is measured from the intended send time, so a stalled server cannot hide its
// queueing delay (no coordinated omission).
//
// The schedule math and the report writers are pure and thread-compatible; run_load uses its own
// threads and a bellwether::Client. Entry points parse flags with CLI11 and return an exit code.
#include <array>
#include <cstddef>
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
constexpr int kPriorities = 3;

// What the client finally got for one request (after its own retries, if any).
enum class Outcome {
  kOk,
  kRateLimited,  // HTTP 429
  kUnavailable,  // HTTP 503 (a gateway's shed/overload refusal, or the provider's)
  kServerError,  // any other 5xx
  kOtherError,   // timeout, network, cancelled at the hard stop, other statuses
};
// From the final HTTP status (0 when no response came back) and whether the SDK called it a
// rate limit.
Outcome classify_outcome(bool ok, int status, bool rate_limited_kind);

struct SecondStats {
  std::int64_t sent = 0;  // requests whose intended send time falls in this second
  std::int64_t ok = 0;
  std::int64_t rate_limited = 0;  // HTTP 429
  std::int64_t errors = 0;        // everything else, including client-side drops
  std::int64_t dropped = 0;       // not sent: in-flight bound reached (counted in errors too)
  double p50_ms = 0, p95_ms = 0, p99_ms = 0;  // successful requests of this second
  std::optional<double> queue_depth;          // gateway queue depth polled in this second
  // Per priority: successes, refusals (429 + 503) and the p99 of the successes of this second.
  std::array<std::int64_t, kPriorities> ok_by_priority{};
  std::array<std::int64_t, kPriorities> refused_by_priority{};
  std::array<double, kPriorities> p99_by_priority{};
};

struct PriorityStats {
  std::int64_t sent = 0;
  std::int64_t ok = 0;
  std::int64_t rate_limited = 0;              // final 429
  std::int64_t unavailable = 0;               // final 503
  std::int64_t server_errors = 0;             // final 5xx other than 503
  std::int64_t other_errors = 0;              // no HTTP answer (timeout, cancelled, dropped, ...)
  double p50_ms = 0, p95_ms = 0, p99_ms = 0;  // successful requests of this priority
  std::int64_t refused() const { return rate_limited + unavailable; }
};

struct RunSummary {
  std::string name;
  bool baseline = false;    // the unloaded reference run: the table's P0 p99 ratios use it
  int client_attempts = 1;  // SDK attempts per request (1 = no client retries)
  int targets = 1;          // endpoints the requests were spread over (round robin)
  double duration_s = 0;    // wall time from the first intended send to the last completion
  std::int64_t sent = 0, ok = 0, rate_limited = 0, errors = 0, dropped = 0;
  // Errors other than drops by reason: the SDK's error kind, then the HTTP status and OpenAI
  // error code when a response came back ("server_error 503 queue_full", "timeout").
  std::map<std::string, std::int64_t> errors_by_reason;
  double p50_ms = 0, p95_ms = 0, p99_ms = 0, max_ms = 0;
  std::vector<PriorityStats> by_priority{kPriorities};
  std::int64_t prompt_tokens = 0, completion_tokens = 0;
  double tokens_per_s = 0;  // completion tokens of successful requests per second of run
  double spend_usd = 0;
  std::optional<double> budget_usd;
  // What the simulated providers themselves counted (GET /sim/stats, summed over them).
  std::optional<std::int64_t> provider_requests, provider_429;
  std::vector<SecondStats> series;
};

// Accounts the requests of one run, by second of intended send and by priority. Pure and not
// thread safe (run_load guards it); tests feed it outcomes directly.
class RunTally {
 public:
  explicit RunTally(std::string name);
  void sent(double at_s, int priority);
  // A request the client could not even send (in-flight bound): an error of kind "dropped".
  void dropped(double at_s, int priority);
  // `reason` names an error outcome in errors_by_reason (ignored for kOk and kRateLimited).
  void completed(double at_s, int priority, Outcome outcome, double latency_ms,
                 const std::string& reason = {}, std::int64_t prompt_tokens = 0,
                 std::int64_t completion_tokens = 0);
  void queue_depth(double at_s, double depth);
  // Percentiles and rates; `duration_s` is the run's wall time.
  RunSummary finish(double duration_s) const;

 private:
  SecondStats& at(double at_s);
  RunSummary summary_;
  std::vector<SecondStats> series_;
  std::vector<std::vector<double>> second_latencies_;
  std::vector<std::array<std::vector<double>, kPriorities>> second_priority_latencies_;
  std::vector<double> all_latencies_;
  std::array<std::vector<double>, kPriorities> priority_latencies_;
};

// Nearest-rank percentile (q in [0,100]) of unsorted values; 0 for an empty set.
double percentile(std::vector<double> values, double q);

// Which of `targets` endpoints the request with this plan index goes to: round robin, as an
// application with that many provider accounts spreads its calls.
std::size_t round_robin_target(std::size_t request_index, std::size_t targets);

// Fills a config template. Every `{{KEY}}` of `vars` is replaced. A line that holds a per-sim
// placeholder ({{I}}, {{SIM_URL_I}}, {{SIM_PORT_I}}) is repeated once per simulator, with that
// simulator's values (I = 1, 2, ...), so one template serves any --deployments count.
std::string render_template(const std::string& text, const std::map<std::string, std::string>& vars,
                            const std::vector<std::map<std::string, std::string>>& per_sim);

// P0's p99 over the baseline (unloaded) run's P0 p99; nullopt without a baseline or P0 data.
std::optional<double> p0_p99_ratio(const RunSummary& run, const std::vector<RunSummary>& runs);

std::string comparison_table(const std::vector<RunSummary>& runs);
std::string to_json(const std::vector<RunSummary>& runs, const std::string& profile_text);
std::string to_html(const std::vector<RunSummary>& runs, const std::string& profile_text);

// --- running ---------------------------------------------------------------------------------
struct LoadOptions {
  std::string base_url;
  // When set, requests go round robin over these (base_url is ignored): one SDK client each.
  std::vector<std::string> base_urls;
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

// A loopback port for a server that a child process binds later. The kernel's free port is free
// only while it is bound: released before the child binds it, it may be handed to another
// process. The hold therefore keeps it bound (127.0.0.1, SO_REUSEPORT, not listening) until
// release() or its end: no other process is given it by a bind to port 0 or as a connection's
// local port, and a server that binds it with SO_REUSEPORT under the same user, as the gateway and
// the simulator do, can bind and listen on it meanwhile. Connections reach only that listener.
class PortHold {
 public:
  PortHold();  // port() == 0 when no port could be bound
  PortHold(const PortHold&) = delete;
  PortHold& operator=(const PortHold&) = delete;
  ~PortHold() { release(); }
  int port() const { return port_; }
  void release();  // once the child listens on it

 private:
  int fd_ = -1;
  int port_ = 0;
};

}  // namespace bw::bench
