#include "routing/balancer.h"

#include <cmath>
#include <limits>

namespace bw::routing {

namespace {
// Costs within this ratio are treated as equal: the weighted sampling order decides, so weights
// still shape the spread and noise in latency does not cause flapping.
constexpr double kTieRatio = 1.05;
// Cost of an outstanding request to a deployment that has no latency sample yet (1 hour in ns).
constexpr double kUnknownPenalty = 3.6e12;

std::size_t weighted_sample(std::span<const Candidate> cands, std::uint64_t total_weight,
                            std::size_t skip, Rng& rng) {
  std::uint64_t r = rng.below(total_weight);
  for (std::size_t i = 0; i < cands.size(); ++i) {
    if (i == skip) continue;
    if (r < cands[i].weight) return i;
    r -= cands[i].weight;
  }
  return cands.size() - 1;
}
}  // namespace

const char* to_string(BalancerKind k) {
  switch (k) {
    case BalancerKind::kP2cPeakEwma:
      return "p2c_peak_ewma";
    case BalancerKind::kWeightedRoundRobin:
      return "weighted_round_robin";
    case BalancerKind::kLeastOutstanding:
      return "least_outstanding";
  }
  return "unknown";
}

std::optional<BalancerKind> parse_balancer(std::string_view name) {
  if (name == "p2c_peak_ewma") return BalancerKind::kP2cPeakEwma;
  if (name == "weighted_round_robin") return BalancerKind::kWeightedRoundRobin;
  if (name == "least_outstanding") return BalancerKind::kLeastOutstanding;
  return std::nullopt;
}

double PeakEwma::decay(Nanos now) const {
  const double dt = static_cast<double>(std::max<Nanos>(0, now - stamp_));
  return std::exp(-dt / tau_);
}

void PeakEwma::observe(Nanos now, Nanos sample) {
  const double s = static_cast<double>(std::max<Nanos>(0, sample));
  if (!has_sample_) {
    cost_ = s;
    has_sample_ = true;
  } else {
    const double w = decay(now);
    const double decayed = cost_;  // blend against the last value, as Finagle does
    cost_ = s > decayed ? s : decayed * w + s * (1.0 - w);
  }
  stamp_ = std::max(stamp_, now);
}

double PeakEwma::value(Nanos now) const {
  return has_sample_ ? cost_ * decay(now) : 0.0;
}

double p2c_cost(const Candidate& c) {
  const double pending = static_cast<double>(std::max<std::int64_t>(0, c.in_flight));
  if (c.ewma_ns <= 0) return pending == 0 ? 0.0 : kUnknownPenalty + pending;
  return c.ewma_ns * (pending + 1.0);
}

std::size_t pick_p2c(std::span<const Candidate> cands, Rng& rng) {
  if (cands.size() == 1) return 0;
  std::uint64_t total = 0;
  for (const auto& c : cands) total += c.weight;
  const std::size_t a = weighted_sample(cands, total, cands.size(), rng);
  const std::size_t b = weighted_sample(cands, total - cands[a].weight, a, rng);
  const double ca = p2c_cost(cands[a]);
  const double cb = p2c_cost(cands[b]);
  // `a` was drawn first, so on a tie the first draw (weight-proportional) wins.
  return cb * kTieRatio < ca ? b : a;
}

std::size_t pick_least_outstanding(std::span<const Candidate> cands, Rng& rng) {
  double best = std::numeric_limits<double>::infinity();
  std::uint64_t tie_weight = 0;
  std::size_t chosen = 0;
  for (std::size_t i = 0; i < cands.size(); ++i) {
    const double load =
        static_cast<double>(std::max<std::int64_t>(0, cands[i].in_flight) + 1) / cands[i].weight;
    if (load < best) {
      best = load;
      chosen = i;
      tie_weight = cands[i].weight;
    } else if (load == best) {
      // Weighted reservoir sampling among the tied ones.
      tie_weight += cands[i].weight;
      if (rng.below(tie_weight) < cands[i].weight) chosen = i;
    }
  }
  return chosen;
}

std::size_t SmoothWrr::pick(std::span<const Candidate> cands) {
  std::int64_t total = 0;
  std::size_t best = 0;
  std::int64_t best_value = std::numeric_limits<std::int64_t>::min();
  for (std::size_t i = 0; i < cands.size(); ++i) {
    const std::uint32_t idx = cands[i].index;
    if (idx >= current_.size()) current_.resize(idx + 1, 0);
    current_[idx] += cands[i].weight;
    total += cands[i].weight;
    if (current_[idx] > best_value) {
      best_value = current_[idx];
      best = i;
    }
  }
  current_[cands[best].index] -= total;
  return best;
}

}  // namespace bw::routing
