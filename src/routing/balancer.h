#pragma once
// Load-balancing algorithms over the deployments of one model group. They only choose among
// candidates that the Router already found eligible (breaker, cooldown, capacity, exclusions).
//   p2c_peak_ewma        two weighted random samples, lower peak-EWMA latency x (in_flight+1) wins
//   weighted_round_robin smooth WRR (nginx): exact spread by weight, no bursts
//   least_outstanding    fewest in-flight requests per unit of weight, weighted-random ties
// Pure; randomness from the caller's Rng. Thread safety: PeakEwma and SmoothWrr are not
// thread-safe (the Router locks); the free functions are.
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "common/clock.h"
#include "routing/rng.h"

namespace bw::routing {

enum class BalancerKind : std::uint8_t { kP2cPeakEwma, kWeightedRoundRobin, kLeastOutstanding };
const char* to_string(BalancerKind k);
std::optional<BalancerKind> parse_balancer(std::string_view name);

// Peak-sensitive EWMA of latency (Finagle/Linkerd): a sample above the average replaces it at
// once, lower samples are blended in with weight depending on elapsed time, and the value decays
// toward zero while no samples arrive so an idle, once-slow deployment is tried again.
class PeakEwma {
 public:
  explicit PeakEwma(Nanos tau = seconds(10)) : tau_(static_cast<double>(tau)) {}
  void set_tau(Nanos tau) { tau_ = static_cast<double>(tau); }
  void observe(Nanos now, Nanos sample);
  // Current value in nanoseconds (decayed to `now`); 0 before the first sample.
  double value(Nanos now) const;

 private:
  double decay(Nanos now) const;
  double tau_;
  double cost_ = 0;
  Nanos stamp_ = 0;
  bool has_sample_ = false;
};

// No member initialisers: the Router keeps room for 64 of them per pick without filling it.
// Initialise every member (Candidate{index, weight, in_flight, ewma_ns}).
struct Candidate {
  std::uint32_t index;     // position in the group
  std::uint32_t weight;    // >= 1
  std::int64_t in_flight;  // requests sent and not finished
  double ewma_ns;          // PeakEwma::value(now)
};

// Cost used by P2C: latency x (in_flight + 1). A deployment without samples costs 0 while idle
// (so it gets explored) and a large penalty per outstanding request otherwise.
double p2c_cost(const Candidate& c);

// Returns the position in `cands` (not the group index). `cands` must be non-empty.
std::size_t pick_p2c(std::span<const Candidate> cands, Rng& rng);
std::size_t pick_least_outstanding(std::span<const Candidate> cands, Rng& rng);

// Smooth weighted round robin state for one group (one counter per deployment index).
class SmoothWrr {
 public:
  explicit SmoothWrr(std::size_t n = 0) : current_(n, 0) {}
  std::size_t pick(std::span<const Candidate> cands);

 private:
  std::vector<std::int64_t> current_;
};

}  // namespace bw::routing
