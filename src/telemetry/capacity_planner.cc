#include "telemetry/capacity_planner.h"

#include <algorithm>
#include <cmath>

#include "common/json_util.h"

namespace bw::telemetry {

std::string_view to_string(Constraint c) {
  switch (c) {
    case Constraint::kNone:
      return "none";
    case Constraint::kGatewayCpu:
      return "gateway_cpu";
    case Constraint::kGatewayConnections:
      return "gateway_connections";
    case Constraint::kGatewayMemory:
      return "gateway_memory";
    case Constraint::kGatewayEventLoop:
      return "gateway_event_loop";
    case Constraint::kUpstreamCapacity:
      return "upstream_capacity";
    case Constraint::kProviderQuota:
      return "provider_quota";
    case Constraint::kKeyLimit:
      return "key_limit";
  }
  return "none";
}

bool is_gateway(Constraint c) {
  return c == Constraint::kGatewayCpu || c == Constraint::kGatewayConnections ||
         c == Constraint::kGatewayMemory || c == Constraint::kGatewayEventLoop;
}

namespace {

// A replica counts as short of a resource from this share of it on.
constexpr double kSaturated = 0.9;

double forecast_of(const Recommendation& r) {
  switch (r.method) {
    case ScaleMethod::kWma:
      return r.forecast_rpm_wma / 60;
    case ScaleMethod::kHolt:
      return r.forecast_rpm_holt / 60;
    case ScaleMethod::kReactive:
      return r.arrival_rpm / 60;
  }
  return r.forecast_rpm_holt / 60;
}

void write_target(JsonWriter& w, const TargetPlan& t) {
  w.begin_object();
  w.key("target").value(t.name);
  if (!t.group.empty()) w.key("group").value(t.group);
  if (!t.model.empty()) w.key("model").value(t.model);
  w.key("scalable").value(t.scalable);
  if (!t.deployment.empty()) {
    w.key("k8s").begin_object();
    w.key("namespace").value(t.namespace_name).key("deployment").value(t.deployment);
    w.end_object();
  }
  w.key("unit").value(t.unit);
  w.key("recommended_replicas").value(t.rec.recommended_replicas);
  w.key("current_replicas").value(t.rec.current_replicas);
  w.key("decision").value(t.rec.reason);
  w.key("binding").value(to_string(t.binding));
  w.key("binding_forecast").value(to_string(t.binding_forecast));
  w.key("demand").value(t.demand);
  w.key("forecast").value(t.forecast);
  w.key("served").value(t.served);
  w.key("backlog").value(t.backlog);
  w.key("capacity_per_replica").value(t.capacity_per_replica);
  w.key("capacity_learned").value(t.capacity_learned);
  w.key("method").value(to_string(t.rec.method));
  w.key("forecast_rpm_wma").value(t.rec.forecast_rpm_wma);
  w.key("forecast_rpm_holt").value(t.rec.forecast_rpm_holt);
  if (t.name == "gateway") {
    w.key("cpu_seconds_per_request").value(t.cpu_seconds_per_request);
    w.key("cpu_utilization").value(t.cpu_utilization);
    w.key("connections").value(t.connections);
    w.key("rss_bytes").value(t.rss_bytes);
    w.key("event_loop_lag_ms").value(t.event_loop_lag_s * 1000);
  }
  w.end_object();
}

}  // namespace

std::string to_json(const CapacityPlan& p) {
  JsonWriter w;
  w.begin_object();
  w.key("reason").value(to_string(p.reason));
  w.key("gateway");
  write_target(w, p.gateway);
  w.key("groups").begin_array();
  for (const auto& g : p.groups) {
    w.begin_object();
    w.key("group").value(g.name);
    w.key("binding").value(to_string(g.binding));
    w.key("binding_forecast").value(to_string(g.binding_forecast));
    w.key("demand").value(g.demand).key("backlog").value(g.backlog);
    w.end_object();
  }
  w.end_array();
  w.key("deployments").begin_array();
  for (const auto& d : p.deployments) write_target(w, d);
  w.end_array();
  w.key("provider_quota").begin_array();
  for (const auto& q : p.quota) {
    w.begin_object();
    w.key("deployment").value(q.deployment).key("group").value(q.group);
    w.key("missing_rpm").value(q.missing_rpm).key("missing_tpm").value(q.missing_tpm);
    w.end_object();
  }
  w.end_array();
  w.end_object();
  return w.take();
}

CapacityPlanner::CapacityPlanner(ScalerConfig gateway_scaler, GatewayCapacityConfig gateway)
    : base_(gateway_scaler),
      gw_cfg_([&] {
        gateway.cpu_cores_per_replica = std::max(gateway.cpu_cores_per_replica, 0.01);
        gateway.target_cpu_utilization = std::clamp(gateway.target_cpu_utilization, 0.05, 1.0);
        gateway.cpu_seconds_per_request = std::max(gateway.cpu_seconds_per_request, 1e-7);
        gateway.cost_ewma_alpha = std::clamp(gateway.cost_ewma_alpha, 0.01, 1.0);
        return gateway;
      }()),
      gateway_([&] {
        // Gateway replicas follow arrivals x CPU cost; the cost is measured here, not learned
        // from completions under a queue (which upstream limits would hold).
        ScalerConfig c = gateway_scaler;
        c.learn_capacity = false;
        return c;
      }()),
      cpu_per_request_(gw_cfg_.cpu_seconds_per_request) {
  last_.gateway.name = "gateway";
  last_.gateway.scalable = true;
  last_.gateway.unit = "requests_per_s";
  last_.gateway.rec = gateway_.last();
  last_.gateway.cpu_seconds_per_request = cpu_per_request_;
}

ScalerConfig CapacityPlanner::upstream_scaler_config(const UpstreamScaleSpec& s) const {
  ScalerConfig c = base_;
  c.per_replica_observations = false;  // the planner passes cluster totals (scale)
  c.min_replicas = std::max(1, s.min_replicas);
  c.max_replicas = std::max(c.min_replicas, s.max_replicas);
  c.forecast_horizon = s.forecast_horizon;
  c.learn_capacity = s.learn_capacity;
  c.capacity_rps_per_replica = s.capacity_tokens_per_s > 0 ? s.capacity_tokens_per_s
                               : s.capacity_concurrency > 0
                                   ? s.capacity_concurrency  // requests/s at 1 s each; see below
                                   : base_.capacity_rps_per_replica;
  return c;
}

void CapacityPlanner::configure(
    const std::map<std::string, UpstreamScaleSpec, std::less<>>& specs) {
  std::lock_guard lock(mu_);
  for (auto it = upstreams_.begin(); it != upstreams_.end();) {
    it = specs.count(it->first) ? std::next(it) : upstreams_.erase(it);
  }
  for (const auto& [id, spec] : specs) {
    auto& u = upstreams_[id];
    const bool same = u.scaler && u.spec.capacity_tokens_per_s == spec.capacity_tokens_per_s &&
                      u.spec.capacity_concurrency == spec.capacity_concurrency &&
                      u.spec.min_replicas == spec.min_replicas &&
                      u.spec.max_replicas == spec.max_replicas &&
                      u.spec.forecast_horizon == spec.forecast_horizon &&
                      u.spec.learn_capacity == spec.learn_capacity;
    u.spec = spec;
    if (!same) u.scaler = std::make_unique<PredictiveScaler>(upstream_scaler_config(spec));
  }
}

void CapacityPlanner::set_observed_replicas(const std::string& id, int replicas) {
  std::lock_guard lock(mu_);
  if (replicas >= 0) observed_replicas_[id] = replicas;
}

CapacityPlan CapacityPlanner::last() const {
  std::lock_guard lock(mu_);
  return last_;
}

CapacityPlan CapacityPlanner::observe(Nanos now, const GatewaySignals& gw,
                                      const std::vector<GroupSignals>& groups,
                                      const std::vector<DeploymentSignals>& deployments) {
  std::lock_guard lock(mu_);
  CapacityPlan plan;
  const int gw_replicas = [&] {
    if (auto it = observed_replicas_.find("gateway"); it != observed_replicas_.end() && it->second)
      return it->second;
    return std::max(gw.current_replicas, 1);
  }();
  const double g_mult = gw_replicas;
  const double dt = last_observe_ > 0 ? to_seconds(now - last_observe_) : 0;
  last_observe_ = now;

  // ---- 1. the gateway's own capacity -------------------------------------------------------
  if (!prev_gw_) {
    prev_gw_ = gw;
    prev_gw_at_ = now;
  } else if (now - prev_gw_at_ >= base_.sample_interval) {
    const double span = to_seconds(now - prev_gw_at_);
    const double dcpu = std::max(0.0, gw.cpu_seconds_total - prev_gw_->cpu_seconds_total);
    const double darr = gw.arrivals_total >= prev_gw_->arrivals_total
                            ? static_cast<double>(gw.arrivals_total - prev_gw_->arrivals_total)
                            : 0.0;
    cpu_util_ = dcpu / span / gw_cfg_.cpu_cores_per_replica;
    // A few requests over an idle process would charge them the timers' and scrapes' CPU.
    if (darr >= span) {
      cpu_per_request_ += gw_cfg_.cost_ewma_alpha * (dcpu / darr - cpu_per_request_);
    }
    prev_gw_ = gw;
    prev_gw_at_ = now;
  }
  const double gw_capacity_rps =
      gw_cfg_.target_cpu_utilization * gw_cfg_.cpu_cores_per_replica / cpu_per_request_;
  gateway_.set_capacity_rps(gw_capacity_rps);
  Observation go;
  go.arrivals_total = gw.arrivals_total;
  go.completions_total = gw.arrivals_total;
  go.queue_depth = 0;  // never the admission queue: upstream limits hold it
  go.current_replicas = gw_replicas;
  go.saturated = false;
  auto& G = plan.gateway;
  G.name = "gateway";
  G.scalable = true;
  G.unit = "requests_per_s";
  G.rec = gateway_.observe(now, go);
  G.demand = G.rec.arrival_rpm / 60;
  G.served = G.demand;  // a gateway replica passes on what arrives
  G.forecast = forecast_of(G.rec);
  G.capacity_per_replica = gw_capacity_rps;
  G.capacity_learned = cpu_per_request_ != gw_cfg_.cpu_seconds_per_request;
  G.cpu_seconds_per_request = cpu_per_request_;
  G.cpu_utilization = cpu_util_;
  G.connections = gw.connections;
  G.rss_bytes = gw.rss_bytes;
  lag_s_ += 0.3 * (gw.event_loop_lag_s - lag_s_);
  G.event_loop_lag_s = lag_s_;
  {
    int extra = 0;  // connections and memory are sized without a forecast: they follow load
    if (gw_cfg_.max_connections_per_replica > 0) {
      extra = std::max<int>(extra,
                            static_cast<int>(std::ceil(gw.connections * g_mult /
                                                       (gw_cfg_.max_connections_per_replica *
                                                        gw_cfg_.target_connection_utilization))));
    }
    if (gw_cfg_.memory_bytes_per_replica > 0) {
      extra =
          std::max<int>(extra, static_cast<int>(std::ceil(gw.rss_bytes * g_mult /
                                                          (gw_cfg_.memory_bytes_per_replica *
                                                           gw_cfg_.target_memory_utilization))));
    }
    extra = std::min(extra, gateway_.config().max_replicas);
    if (extra > G.rec.recommended_replicas) G.rec.recommended_replicas = extra;
  }
  // Now: what runs out on this replica. Forecast: the forecast load at today's replica count.
  if (cpu_util_ >= kSaturated) {
    G.binding = Constraint::kGatewayCpu;
  } else if (gw_cfg_.max_connections_per_replica > 0 &&
             gw.connections >= kSaturated * gw_cfg_.max_connections_per_replica) {
    G.binding = Constraint::kGatewayConnections;
  } else if (gw_cfg_.memory_bytes_per_replica > 0 &&
             gw.rss_bytes >= kSaturated * gw_cfg_.memory_bytes_per_replica) {
    G.binding = Constraint::kGatewayMemory;
  } else if (gw_cfg_.event_loop_lag_threshold > 0 &&
             lag_s_ >= to_seconds(gw_cfg_.event_loop_lag_threshold)) {
    G.binding = Constraint::kGatewayEventLoop;
  }
  const double forecast_util =
      G.forecast * cpu_per_request_ / (g_mult * gw_cfg_.cpu_cores_per_replica);
  G.binding_forecast = forecast_util >= kSaturated ? Constraint::kGatewayCpu : G.binding;
  const bool gateway_binds = is_gateway(G.binding);

  // ---- groups: arrivals (cluster) since the last observation --------------------------------
  struct GroupNow {
    double arrivals = 0;  // requests since the last observation, cluster
    double backlog = 0;   // requests waiting, cluster
    Constraint waiting_on = Constraint::kNone;
    double served = 0;  // attempts of its deployments since the last observation
    std::size_t deployments = 0;
  };
  std::map<std::string, GroupNow, std::less<>> gnow;
  for (const auto& g : groups) {
    auto& p = prev_group_[g.name];
    auto& n = gnow[g.name];
    if (p.at != 0 && g.arrivals_total >= p.arrivals) {
      n.arrivals = static_cast<double>(g.arrivals_total - p.arrivals) * g_mult;
    }
    p.arrivals = g.arrivals_total;
    p.at = now;
    n.backlog = g.backlog * g_mult;
    n.waiting_on = g.waiting_on;
  }
  // Deltas per deployment first: shares within a group need all of them.
  struct DepNow {
    double requests = 0, tokens = 0;
  };
  std::vector<DepNow> dnow(deployments.size());
  for (std::size_t i = 0; i < deployments.size(); ++i) {
    const auto& d = deployments[i];
    auto& p = prev_dep_[d.id];
    if (p.at != 0 && d.requests_total >= p.requests && d.tokens_total >= p.tokens) {
      dnow[i].requests = static_cast<double>(d.requests_total - p.requests) * g_mult;
      dnow[i].tokens = static_cast<double>(d.tokens_total - p.tokens) * g_mult;
      if (d.requests_total > p.requests && d.tokens_total > p.tokens) {
        auto& tpr = tokens_per_request_[d.id];
        const double m = static_cast<double>(d.tokens_total - p.tokens) /
                         static_cast<double>(d.requests_total - p.requests);
        tpr = tpr == 0 ? m : tpr + 0.2 * (m - tpr);
      }
    }
    p.requests = d.requests_total;
    p.tokens = d.tokens_total;
    p.at = now;
    auto& n = gnow[d.group];
    n.served += dnow[i].requests;
    ++n.deployments;
  }

  // ---- 2 and 3. each deployment -------------------------------------------------------------
  for (std::size_t i = 0; i < deployments.size(); ++i) {
    const auto& d = deployments[i];
    const auto& gn = gnow[d.group];
    const double share = gn.served > 0
                             ? dnow[i].requests / gn.served
                             : 1.0 / static_cast<double>(std::max<std::size_t>(gn.deployments, 1));
    const double tpr = tokens_per_request_.count(d.id) ? tokens_per_request_[d.id] : 0;
    auto it = upstreams_.find(d.id);
    const bool scalable = it != upstreams_.end();
    if (!scalable) {
      // Unscalable deployments get a forecaster of their own (requests/s), for the quota.
      auto& u = upstreams_[d.id];
      u.scaler = std::make_unique<PredictiveScaler>([&] {
        ScalerConfig c = base_;
        c.per_replica_observations = false;
        c.learn_capacity = false;
        return c;
      }());
      it = upstreams_.find(d.id);
      it->second.spec.max_replicas = 0;  // marks "not scalable" (configure() never sets 0)
    }
    auto& u = it->second;
    const bool is_scalable = u.spec.max_replicas > 0;
    const bool tokens_unit = is_scalable && u.spec.capacity_tokens_per_s > 0;
    const bool concurrency_unit = is_scalable && !tokens_unit && u.spec.capacity_concurrency > 0;

    TargetPlan t;
    t.name = d.id;
    t.group = d.group;
    t.model = d.model;
    t.scalable = is_scalable;
    t.namespace_name = u.spec.namespace_name;
    t.deployment = u.spec.deployment;
    t.unit = tokens_unit ? "tokens_per_s" : "requests_per_s";
    t.backlog = gn.backlog * share;

    const double demand_req = gn.arrivals * share;  // requests routed to it (cluster)
    const double unit_per_req = tokens_unit ? std::max(tpr, 1.0) : 1.0;
    u.demand_units_total += demand_req * unit_per_req;
    u.served_units_total += tokens_unit ? dnow[i].tokens : dnow[i].requests;

    const bool at_quota =
        d.cooling || (d.rpm_limit > 0 && d.rpm_used >= gw_cfg_.quota_threshold * d.rpm_limit) ||
        (d.tpm_limit > 0 && d.tpm_used >= gw_cfg_.quota_threshold * d.tpm_limit);
    if (d.waiting_on != Constraint::kNone) {
      t.binding = d.waiting_on;
    } else if (at_quota) {
      t.binding = Constraint::kProviderQuota;
    } else if (gn.waiting_on != Constraint::kNone && gn.backlog > 0) {
      t.binding = gn.waiting_on;
    } else if (gn.backlog > 0) {
      t.binding = gateway_binds ? G.binding : Constraint::kUpstreamCapacity;
    }

    int replicas = d.current_replicas;
    if (replicas <= 0) {
      auto o = observed_replicas_.find(d.id);
      replicas = o != observed_replicas_.end() ? o->second : -1;
    }
    t.replicas_observed = replicas >= 0;
    // Unknown: assume the last recommendation was applied.
    if (replicas < 0) replicas = std::max(1, u.scaler->last().recommended_replicas);
    replicas = std::max(replicas, 1);  // none running yet: the capacity of one is the unit
    if (concurrency_unit && !u.scaler->capacity_learned()) {
      // Little's law: a replica serving C requests at once, each taking `latency`, serves C /
      // latency requests per second.
      u.scaler->set_capacity_rps(u.spec.capacity_concurrency / std::max(d.latency_s, 0.05));
    }
    Observation o;
    o.arrivals_total = static_cast<std::uint64_t>(std::llround(u.demand_units_total));
    o.completions_total = static_cast<std::uint64_t>(std::llround(u.served_units_total));
    o.queue_depth = t.backlog * unit_per_req;
    o.queue_requests = t.backlog;  // the reactive baseline's threshold counts requests
    o.current_replicas = is_scalable ? replicas : 1;
    o.scale = 1;  // already cluster totals
    // The one rule that keeps the learned capacity honest: throughput counts as capacity only
    // while this target itself is what requests wait for.
    o.saturated = t.binding == Constraint::kUpstreamCapacity;
    t.rec = u.scaler->observe(now, o);
    t.demand = t.rec.arrival_rpm / 60;
    t.forecast = forecast_of(t.rec);
    t.served = dt > 0 ? (tokens_unit ? dnow[i].tokens : dnow[i].requests) / dt : 0;
    t.capacity_per_replica = t.rec.capacity_rpm_per_replica / 60;
    t.capacity_learned = u.scaler->capacity_learned();
    if (!is_scalable) {
      t.rec.recommended_replicas = 0;
      t.rec.current_replicas = 0;
      t.capacity_per_replica = 0;
    }

    // Forecast binding: the quota against the forecast demand, else this target's capacity at
    // its current count, else the gateway's.
    const double req_forecast_per_min = (tokens_unit ? t.forecast / unit_per_req : t.forecast) * 60;
    const double req_demand_per_min = (tokens_unit ? t.demand / unit_per_req : t.demand) * 60;
    const double want_rpm = std::max(req_forecast_per_min, req_demand_per_min);
    const double want_tpm = want_rpm * std::max(tpr, 1.0);
    const bool quota_forecast = (d.rpm_limit > 0 && want_rpm > d.rpm_limit) ||
                                (d.tpm_limit > 0 && tpr > 0 && want_tpm > d.tpm_limit);
    if (quota_forecast || t.binding == Constraint::kProviderQuota) {
      t.binding_forecast = Constraint::kProviderQuota;
    } else if (is_scalable && t.forecast > t.capacity_per_replica * replicas) {
      t.binding_forecast = Constraint::kUpstreamCapacity;
    } else if (is_gateway(G.binding_forecast)) {
      t.binding_forecast = G.binding_forecast;
    } else {
      t.binding_forecast = t.binding;
    }
    if (t.binding == Constraint::kProviderQuota ||
        t.binding_forecast == Constraint::kProviderQuota) {
      QuotaShortfall q;
      q.deployment = d.id;
      q.group = d.group;
      // Backlog counts as demand too: it has to be served within the horizon.
      const double backlog_rpm = t.backlog * 60 / std::max(to_seconds(base_.forecast_horizon), 1.0);
      if (d.rpm_limit > 0) q.missing_rpm = std::max(0.0, want_rpm + backlog_rpm - d.rpm_limit);
      if (d.tpm_limit > 0 && tpr > 0) {
        q.missing_tpm = std::max(0.0, (want_rpm + backlog_rpm) * tpr - d.tpm_limit);
      }
      plan.quota.push_back(std::move(q));
    }
    plan.deployments.push_back(std::move(t));
  }

  // Each group: what binds all of its deployments, or the most specific that binds one.
  for (const auto& g : groups) {
    GroupPlan gp;
    gp.name = g.name;
    const auto& gn = gnow[g.name];
    gp.demand = dt > 0 ? gn.arrivals / dt : 0;
    gp.backlog = gn.backlog;
    for (bool forecast : {false, true}) {
      std::size_t n = 0, quota = 0;
      bool upstream = false, key = false;
      for (const auto& t : plan.deployments) {
        if (t.group != g.name) continue;
        const Constraint c = forecast ? t.binding_forecast : t.binding;
        ++n;
        quota += c == Constraint::kProviderQuota;
        upstream = upstream || c == Constraint::kUpstreamCapacity;
        key = key || c == Constraint::kKeyLimit;
      }
      const Constraint gw = forecast ? G.binding_forecast : G.binding;
      Constraint c = Constraint::kNone;
      if (is_gateway(gw)) {
        c = gw;
      } else if (n > 0 && quota == n) {
        c = Constraint::kProviderQuota;
      } else if (upstream) {
        c = Constraint::kUpstreamCapacity;
      } else if (key || (!forecast && g.waiting_on != Constraint::kNone && gn.backlog > 0)) {
        c = key ? Constraint::kKeyLimit : g.waiting_on;
      }
      (forecast ? gp.binding_forecast : gp.binding) = c;
    }
    plan.groups.push_back(std::move(gp));
  }

  // What requests wait for now (else at the forecast), most specific first.
  // Per group: one deployment at its tier while another has room does not hold requests.
  const auto any = [&](Constraint c, bool forecast) {
    return std::any_of(plan.groups.begin(), plan.groups.end(), [&](const GroupPlan& g) {
      return (forecast ? g.binding_forecast : g.binding) == c;
    });
  };
  if (gateway_binds) {
    plan.reason = G.binding;
  } else {
    for (bool forecast : {false, true}) {
      for (Constraint c :
           {Constraint::kProviderQuota, Constraint::kUpstreamCapacity, Constraint::kKeyLimit}) {
        if (plan.reason == Constraint::kNone && any(c, forecast)) plan.reason = c;
      }
    }
    if (plan.reason == Constraint::kNone && is_gateway(G.binding_forecast)) {
      plan.reason = G.binding_forecast;
    }
  }
  last_ = plan;
  return plan;
}

}  // namespace bw::telemetry
