#pragma once
// Sampler: keeps the last 15 minutes of the gateway's figures for the console's Live page. A
// thread of its own reads the state the gateway already keeps (the metrics registry's exposition,
// the admission queue, the router's deployments, the scaler) every interval, turns counters into
// rates and histograms into quantiles over a short window, and stores one compact sample per
// interval in a ring buffer. The data plane does no extra work for the console: reading happens
// here, at the sampler's pace, whether zero or ten browsers are watching.
//
// Thread safety: add() is called by one thread (the sampler's); json() from any thread. One
// mutex guards the ring and the latest state, held for copying only.
#include <array>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"

namespace bw::ui {

struct GroupReading {
  std::string name;
  std::int64_t limit = 0;   // concurrency limit now (adaptive or fixed)
  std::int64_t in_use = 0;  // slots held
  std::array<std::int64_t, 3> queued{};
};

struct DeploymentReading {
  std::string id, group, provider, model;
  std::string state;  // closed | half_open | open
  int consecutive_failures = 0;
  int openings = 0;
  double open_remaining_s = 0;
  double cooldown_remaining_s = 0;
  std::int64_t in_flight = 0;
  double ewma_ms = 0;
  // Rate capacity as the admission queue paces it. The limit in force is the one learned from
  // the provider's rate-limit headers while fresh, else the configured one; 0 = none.
  std::int64_t rpm_limit = 0;  // in force
  std::int64_t tpm_limit = 0;
  std::int64_t rpm_used = 0;
  std::int64_t tpm_used = 0;
  std::int64_t configured_rpm = 0, configured_tpm = 0;
  std::int64_t learned_rpm = 0, learned_tpm = 0;  // 0 = nothing fresh learned
  std::int64_t remaining_requests = -1;           // in force; -1 = unlimited
  std::int64_t remaining_tokens = -1;
  double blocked_s = 0;          // a provider's Retry-After still running
  std::string binding = "none";  // deployment_rpm / deployment_tpm while its rate binds
};

struct RetryBudgetReading {
  std::string group;
  std::int64_t requests = 0;  // in the budget's window
  std::int64_t retries = 0;
  double ratio = 0;  // configured retries per request
};

struct ScalerReading {
  int recommended = 0;
  int current = 0;
  double forecast_rpm_wma = 0;
  double forecast_rpm_holt = 0;
  double arrival_rpm = 0;
  double capacity_rpm_per_replica = 0;
  std::string method;
  std::string reason;
  std::string waiting_on;  // what requests wait for now (the capacity planner's binding constraint)
};

// One look at the gateway, taken off the data plane.
struct Reading {
  std::int64_t unix_ms = 0;
  std::string metrics_text;  // Prometheus text exposition of the registry
  std::array<double, 3> queue_depth{};
  // Waiting requests by what they wait for (concurrency, deployment_rpm, deployment_tpm,
  // key_limit), every reason present even at zero.
  std::map<std::string, double> queue_by_reason;
  double in_flight = 0;
  std::vector<GroupReading> groups;
  std::vector<DeploymentReading> deployments;
  std::vector<RetryBudgetReading> retry_budgets;
  ScalerReading scaler;
};

// A parsed sample line of the text exposition.
struct MetricSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};
// Parses Prometheus text format 0.0.4 (comments skipped, escapes in label values undone).
std::vector<MetricSample> parse_exposition(std::string_view text);

// The q-quantile (0..1) of a histogram given its cumulative bucket counts per upper bound (the
// last bound +Inf), interpolated linearly within the bucket as Prometheus' histogram_quantile.
// Returns -1 when the histogram holds no observation.
double histogram_quantile(double q, const std::vector<std::pair<double, double>>& cumulative);

struct SamplerOptions {
  Nanos interval = seconds(1);
  Nanos window = seconds(15 * 60);      // kept in the ring
  Nanos quantile_window = seconds(10);  // latency quantiles over this much recent traffic
  std::size_t max_transitions = 500;    // breaker state changes kept
};

class Sampler {
 public:
  explicit Sampler(SamplerOptions options = {});
  ~Sampler();
  Sampler(const Sampler&) = delete;
  Sampler& operator=(const Sampler&) = delete;

  // Starts a thread that calls `read` every interval and add()s the result.
  void start(std::function<Reading()> read);
  void stop();

  // Folds one reading into the ring (tests call it directly with made-up readings).
  void add(const Reading& r);
  // {"interval_ms","window_s","now":{...},"samples":[...]} with the samples newer than
  // since_unix_ms (0: all of the window).
  std::string json(std::int64_t since_unix_ms) const;
  std::size_t size() const;

 private:
  struct Cumulative {
    std::int64_t unix_ms = 0;
    std::map<std::string, double> counters;  // series key -> value
    // histogram key -> (upper bound -> cumulative count)
    std::map<std::string, std::vector<std::pair<double, double>>> histograms;
  };
  struct Transition {
    std::int64_t unix_ms;
    std::string deployment, from, to;
  };
  std::string sample_json(const Cumulative& cur, const Cumulative* prev, const Cumulative* old,
                          const Reading& r) const;
  std::string now_json(const Reading& r) const;

  SamplerOptions options_;
  mutable std::mutex mu_;
  std::deque<std::pair<std::int64_t, std::string>> ring_;  // (unix_ms, sample JSON)
  std::deque<Cumulative> history_;  // the last quantile_window of cumulative values
  std::deque<Transition> transitions_;
  std::map<std::string, std::string> last_state_;  // deployment -> breaker state
  std::string now_;                                // JSON of the latest reading's state
  std::size_t max_samples_ = 900;

  std::thread thread_;
  std::mutex thread_mu_;
  std::condition_variable cv_;
  bool stop_ = false;
};

}  // namespace bw::ui
