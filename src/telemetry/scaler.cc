#include "telemetry/scaler.h"

#include <algorithm>
#include <cmath>

#include "common/json_util.h"

namespace bw::telemetry {

std::string_view to_string(ScaleMethod m) {
  switch (m) {
    case ScaleMethod::kWma:
      return "wma";
    case ScaleMethod::kHolt:
      return "holt";
    case ScaleMethod::kReactive:
      return "reactive";
  }
  return "holt";
}

std::optional<ScaleMethod> parse_scale_method(std::string_view s) {
  if (s == "wma") return ScaleMethod::kWma;
  if (s == "holt") return ScaleMethod::kHolt;
  if (s == "reactive") return ScaleMethod::kReactive;
  return std::nullopt;
}

std::string to_json(const Recommendation& r) {
  JsonWriter w;
  w.begin_object();
  w.key("recommended_replicas").value(r.recommended_replicas);
  w.key("current_replicas").value(r.current_replicas);
  w.key("forecast_rpm_wma").value(r.forecast_rpm_wma);
  w.key("forecast_rpm_holt").value(r.forecast_rpm_holt);
  w.key("method").value(to_string(r.method));
  w.key("arrival_rpm").value(r.arrival_rpm);
  w.key("capacity_rpm_per_replica").value(r.capacity_rpm_per_replica);
  w.key("queue_depth").value(r.queue_depth);
  w.key("reason").value(r.reason);
  w.end_object();
  return w.take();
}

PredictiveScaler::PredictiveScaler(ScalerConfig config)
    : config_([&] {
        // Repair nonsense instead of dividing by zero later; config/ validates for the user.
        config.sample_interval = std::max<Nanos>(config.sample_interval, millis(1));
        config.history_size = std::max<std::size_t>(config.history_size, 2);
        config.wma_window = std::clamp<std::size_t>(config.wma_window, 1, config.history_size);
        config.holt_alpha = std::clamp(config.holt_alpha, 0.01, 1.0);
        config.holt_beta = std::clamp(config.holt_beta, 0.01, 1.0);
        config.forecast_horizon = std::max<Nanos>(config.forecast_horizon, 0);
        config.min_replicas = std::max(config.min_replicas, 1);
        config.max_replicas = std::max(config.max_replicas, config.min_replicas);
        config.capacity_rps_per_replica = std::max(config.capacity_rps_per_replica, 1e-6);
        config.headroom = std::max(config.headroom, 0.0);
        config.reactive_step_factor = std::max(config.reactive_step_factor, 1.0);
        return config;
      }()),
      capacity_rps_(config_.capacity_rps_per_replica) {
  last_.method = config_.method;
  last_.recommended_replicas = config_.min_replicas;
  last_.current_replicas = config_.min_replicas;
  last_.capacity_rpm_per_replica = capacity_rps_ * 60;
  last_.reason = "warmup";
}

int PredictiveScaler::clamp(double replicas) const {
  if (!(replicas >= config_.min_replicas)) return config_.min_replicas;  // also NaN
  if (replicas >= config_.max_replicas) return config_.max_replicas;
  return static_cast<int>(std::ceil(replicas - 1e-9));
}

void PredictiveScaler::add_sample(const Sample& s, int replicas, std::optional<bool> saturated) {
  history_.push_back(s);
  while (history_.size() > config_.history_size) history_.pop_front();

  if (!holt_init_) {
    level_ = s.arrival_rps;
    trend_ = 0;
    holt_init_ = true;
  } else {
    const double prev_level = level_;
    level_ = config_.holt_alpha * s.arrival_rps + (1 - config_.holt_alpha) * (level_ + trend_);
    trend_ = config_.holt_beta * (level_ - prev_level) + (1 - config_.holt_beta) * trend_;
  }

  // Completions per replica only measure capacity while replicas are busy; an idle replica's
  // throughput is just its arrival rate.
  // When the caller knows what binds, only its word counts: a queue held by something else (a
  // provider's quota, a key's limit) says nothing about this target's capacity.
  const double local_queue = s.queue_depth / replicas;
  const bool busy = saturated ? *saturated : local_queue >= config_.saturation_queue_depth;
  if (config_.learn_capacity && busy && s.completion_rps > 0) {
    const double per_replica = s.completion_rps / replicas;
    capacity_rps_ += config_.capacity_ewma_alpha * (per_replica - capacity_rps_);
    capacity_learned_ = true;
  }
}

double PredictiveScaler::wma_rps() const {
  const std::size_t n = std::min(config_.wma_window, history_.size());
  if (n == 0) return 0;
  double num = 0;
  double den = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double w = static_cast<double>(n - i);  // newest sample has the largest weight
    num += w * history_[history_.size() - 1 - i].arrival_rps;
    den += w;
  }
  return num / den;
}

double PredictiveScaler::level_rps() const {
  // The evidence for scaling down: what arrives now, smoothed, without extrapolation.
  return config_.method == ScaleMethod::kWma ? wma_rps() : std::max(0.0, level_);
}

double PredictiveScaler::holt_rps() const {
  const double steps =
      static_cast<double>(config_.forecast_horizon) / static_cast<double>(config_.sample_interval);
  return std::max(0.0, level_ + steps * trend_);
}

Recommendation PredictiveScaler::observe(Nanos now, const Observation& obs) {
  std::lock_guard lock(mu_);
  const int replicas = std::max(obs.current_replicas, 1);
  const double mult = obs.scale > 0 ? obs.scale : config_.per_replica_observations ? replicas : 1;
  if (!prev_obs_) {
    prev_obs_ = obs;
    prev_at_ = now;
  } else if (now - prev_at_ >= config_.sample_interval) {
    const double dt = to_seconds(now - prev_at_);
    // Counters can reset when a replica restarts; a negative delta means "no information".
    const auto rate = [dt](std::uint64_t cur, std::uint64_t prev) {
      return cur >= prev ? static_cast<double>(cur - prev) / dt : 0.0;
    };
    Sample s{now, rate(obs.arrivals_total, prev_obs_->arrivals_total) * mult,
             rate(obs.completions_total, prev_obs_->completions_total) * mult,
             obs.queue_depth * mult};
    add_sample(s, replicas, obs.saturated);
    prev_obs_ = obs;
    prev_at_ = now;
  }
  decide(now, obs.queue_depth * mult,
         (obs.queue_requests >= 0 ? obs.queue_requests : obs.queue_depth) * mult, replicas);
  return last_;
}

void PredictiveScaler::decide(Nanos now, double queue_depth, double queue_requests, int replicas) {
  if (recommended_ == 0) recommended_ = clamp(replicas);
  Recommendation r;
  r.method = config_.method;
  r.current_replicas = replicas;
  r.queue_depth = queue_depth;
  r.capacity_rpm_per_replica = capacity_rps_ * 60;
  r.forecast_rpm_wma = wma_rps() * 60;
  r.forecast_rpm_holt = holt_rps() * 60;
  r.arrival_rpm = history_.empty() ? 0 : history_.back().arrival_rps * 60;

  if (history_.empty()) {
    r.recommended_replicas = recommended_;
    r.reason = "warmup";
    last_ = r;
    return;
  }

  const double horizon_s = std::max(to_seconds(config_.forecast_horizon), 1.0);
  const double arrival = history_.back().arrival_rps;
  const double backlog_rps = queue_depth / horizon_s;  // drain the queue within the horizon
  const double per_replica = capacity_rps_ / (1 + config_.headroom);  // usable rate per replica
  int up_wanted = 0;           // count the forecast asks for (past the tolerance)
  int desired = recommended_;  // count the evidence supports (for scale-down and the window)
  double load_rps = 0;         // measured load, for the utilization test
  switch (config_.method) {
    case ScaleMethod::kWma:
    case ScaleMethod::kHolt: {
      const double f = config_.method == ScaleMethod::kWma ? wma_rps() : holt_rps();
      const double need = (f + backlog_rps) / per_replica;
      if (need > recommended_ * (1 + config_.scale_up_tolerance)) up_wanted = clamp(need);
      load_rps = level_rps() + backlog_rps;
      desired = clamp(std::max(load_rps, f + backlog_rps) / per_replica);
      break;
    }
    case ScaleMethod::kReactive: {
      load_rps = arrival;
      if (queue_requests > config_.reactive_queue_threshold) {
        up_wanted = clamp(std::max<double>(recommended_ + 1,
                                           std::ceil(recommended_ * config_.reactive_step_factor)));
      }
      desired = queue_requests < config_.saturation_queue_depth ? clamp(arrival / per_replica)
                                                                : recommended_;
      break;
    }
  }
  desired = std::max(desired, up_wanted);

  wanted_.emplace_back(now, desired);
  while (!wanted_.empty() && (wanted_.front().first < now - config_.scale_down_window ||
                              wanted_.size() > config_.history_size)) {
    wanted_.pop_front();
  }

  r.reason = "hold";
  if (up_wanted > recommended_) {
    if (!changed_once_ || now - last_up_ >= config_.scale_up_cooldown) {
      recommended_ = up_wanted;
      last_up_ = last_change_ = now;
      changed_once_ = true;
      r.reason = "scale_up";
    } else {
      r.reason = "cooldown";
    }
  } else if (desired < recommended_) {
    int window_max = desired;
    for (const auto& [at, n] : wanted_) window_max = std::max(window_max, n);
    const double utilization = load_rps / (recommended_ * capacity_rps_);
    if (window_max < recommended_ && utilization < config_.scale_down_utilization) {
      if (!changed_once_ || now - last_change_ >= config_.scale_down_cooldown) {
        recommended_ = window_max;
        last_change_ = now;
        changed_once_ = true;
        r.reason = "scale_down";
      } else {
        r.reason = "cooldown";
      }
    }
  }
  r.recommended_replicas = recommended_;
  last_ = r;
}

void PredictiveScaler::set_capacity_rps(double capacity) {
  std::lock_guard lock(mu_);
  if (capacity > 0 && std::isfinite(capacity)) capacity_rps_ = capacity;
}

bool PredictiveScaler::capacity_learned() const {
  std::lock_guard lock(mu_);
  return capacity_learned_;
}

Recommendation PredictiveScaler::last() const {
  std::lock_guard lock(mu_);
  return last_;
}

std::size_t PredictiveScaler::samples() const {
  std::lock_guard lock(mu_);
  return history_.size();
}

}  // namespace bw::telemetry
