#include "gateway/scaling.h"

#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <mutex>

#include "common/name_memo.h"
#include "common/same_text.h"
#include "gateway/shared.h"

namespace bw::gateway {

double process_cpu_seconds() {
  timespec ts{};
  if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) != 0) return 0;
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

double process_rss_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  long size = 0, resident = 0;
  const int n = std::fscanf(f, "%ld %ld", &size, &resident);
  std::fclose(f);
  return n == 2 ? static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) : 0;
}

ScalingState::ScalingState(const config::Config& cfg)
    : planner_(cfg.scaler, cfg.gateway_capacity), memo_owner_(next_memo_owner()) {
  configure(cfg);
}

void ScalingState::configure(const config::Config& cfg) {
  planner_.configure(cfg.scale_specs);
  limits_reset_.store(true);  // apply_config() has just reset the groups' limits
  std::unique_lock lock(mu_);
  // Names come from the config only, so the maps stay bounded; removed names are kept (a
  // request in flight may still count on them) until the process ends.
  for (const auto& g : cfg.model_groups) {
    if (!groups_.count(g.name)) groups_.emplace(g.name, std::make_unique<Counter>());
    for (const auto& d : g.deployments) {
      if (!deployments_.count(d.id)) deployments_.emplace(d.id, std::make_unique<Counter>());
    }
  }
}

namespace {
// The threads' memos of ScalingState's counters, by map.
struct GroupCounters;
struct DeploymentCounters;
}  // namespace

// Counters are never removed: the one found for a name stays that name's, and a worker thread
// remembers it. The memo's hit inline in the note_*() calls; the map's search (with its lock,
// and the registers it saves) in a call of its own.
template <class Tag>
ScalingState::Counter* ScalingState::find(const CounterMap& map, std::string_view name) const {
  using Memo = NameMemo<Tag, Counter*>;
  if (Counter* kept = Memo::find(memo_owner_, name)) [[likely]]
    return kept;
  return find_in_map<Tag>(map, name);
}

template <class Tag>
ScalingState::Counter* ScalingState::find_in_map(const CounterMap& map,
                                                 std::string_view name) const {
  using Memo = NameMemo<Tag, Counter*>;
  std::shared_lock lock(mu_);
  auto it = map.find(name);
  if (it == map.end()) return nullptr;
  Memo::keep(memo_owner_, name, it->second.get());
  return it->second.get();
}

void ScalingState::note_arrival(std::string_view group) {
  if (auto* c = find<GroupCounters>(groups_, group)) {
    c->requests.fetch_add(1, std::memory_order_relaxed);
  }
}

void ScalingState::note_attempt(std::string_view deployment, Nanos latency) {
  Counter* c = find<DeploymentCounters>(deployments_, deployment);
  if (!c) return;
  c->requests.fetch_add(1, std::memory_order_relaxed);
  const auto us = static_cast<std::int64_t>(latency / 1000);
  const auto prev = c->latency_us.load(std::memory_order_relaxed);
  c->latency_us.store(prev == 0 ? us : prev + (us - prev) / 8, std::memory_order_relaxed);
}

void ScalingState::note_tokens(std::string_view deployment, std::int64_t tokens) {
  if (tokens <= 0) return;
  if (auto* c = find<DeploymentCounters>(deployments_, deployment)) {
    c->tokens.fetch_add(static_cast<std::uint64_t>(tokens), std::memory_order_relaxed);
  }
}

void ScalingState::note_observed_replicas(std::string_view header) {
  // name=count pairs separated by commas; anything malformed is skipped.
  while (!header.empty()) {
    const auto comma = header.find(',');
    const std::string_view item = header.substr(0, comma);
    header = comma == std::string_view::npos ? std::string_view{} : header.substr(comma + 1);
    const auto eq = item.rfind('=');
    if (eq == std::string_view::npos || eq == 0) continue;
    const std::string count(item.substr(eq + 1));
    char* end = nullptr;
    const long n = std::strtol(count.c_str(), &end, 10);
    if (end == count.c_str() || *end != '\0' || n < 0 || n > 100000) continue;
    std::string name(item.substr(0, eq));
    while (!name.empty() && name.front() == ' ') name.erase(name.begin());
    {
      std::shared_lock lock(mu_);
      if (name != "gateway" && !deployments_.count(name)) continue;  // bounded by the config
    }
    planner_.set_observed_replicas(name, static_cast<int>(n));
  }
}

telemetry::CapacityPlan ScalingState::tick(Shared& sh, Nanos now, int gateway_replicas,
                                           double connections, double event_loop_lag_s) {
  telemetry::GatewaySignals gw;
  gw.arrivals_total = sh.llm_arrivals.load(std::memory_order_relaxed);
  gw.cpu_seconds_total = process_cpu_seconds();
  gw.connections = connections;
  gw.rss_bytes = process_rss_bytes();
  gw.event_loop_lag_s = event_loop_lag_s;
  gw.current_replicas = gateway_replicas;

  std::vector<telemetry::GroupSignals> groups;
  std::vector<telemetry::DeploymentSignals> deps;
  auto rt = sh.runtime->load();
  const auto status = sh.router.status(now);
  // The admission queue paces each deployment's RPM/TPM (the router no longer counts them), so
  // it is the one that knows the limits in force and whether a provider's tier binds now.
  admission::AdmissionController::BindingState rate;
  if (sh.admission) rate = sh.admission->binding_state();
  {
    std::shared_lock lock(mu_);
    for (const auto& g : rt->config().model_groups) {
      telemetry::GroupSignals gs;
      gs.name = g.name;
      if (auto it = groups_.find(g.name); it != groups_.end()) {
        gs.arrivals_total = it->second->requests.load(std::memory_order_relaxed);
      }
      // Waiters of the group. What they wait for (a provider's RPM/TPM) is set per deployment
      // below from the admission queue's rate state.
      gs.backlog = sh.admission ? static_cast<double>(sh.admission->queued(g.name)) : 0;
      groups.push_back(std::move(gs));
      for (const auto& d : g.deployments) {
        telemetry::DeploymentSignals ds;
        ds.id = d.id;
        ds.group = g.name;
        ds.model = d.model;
        ds.rpm_limit = d.rpm;
        ds.tpm_limit = d.tpm;
        if (auto it = deployments_.find(d.id); it != deployments_.end()) {
          ds.requests_total = it->second->requests.load(std::memory_order_relaxed);
          ds.tokens_total = it->second->tokens.load(std::memory_order_relaxed);
          ds.latency_s =
              static_cast<double>(it->second->latency_us.load(std::memory_order_relaxed)) / 1e6;
        }
        for (const auto& s : status) {
          if (s.id != d.id) continue;
          ds.in_flight = static_cast<double>(s.in_flight);
          ds.rpm_used = s.rpm_used;
          ds.tpm_used = s.tpm_used;
          ds.cooling = s.cooldown_remaining_s > 0;
        }
        for (const auto& r : rate.deployments) {
          if (r.group != g.name || r.deployment != d.id) continue;
          // The limits in force (learned from the provider while fresh) and their use.
          if (r.effective_rpm > 0) {
            ds.rpm_limit = r.effective_rpm;
            if (r.remaining_requests >= 0) {
              ds.rpm_used =
                  std::max<std::int64_t>(ds.rpm_used, r.effective_rpm - r.remaining_requests);
            }
          }
          if (r.effective_tpm > 0) {
            ds.tpm_limit = r.effective_tpm;
            if (r.remaining_tokens >= 0) {
              ds.tpm_used =
                  std::max<std::int64_t>(ds.tpm_used, r.effective_tpm - r.remaining_tokens);
            }
          }
          if (r.blocked_s > 0) ds.cooling = true;
          if (r.binding == admission::WaitReason::kDeploymentRpm ||
              r.binding == admission::WaitReason::kDeploymentTpm) {
            ds.waiting_on = telemetry::Constraint::kProviderQuota;
          }
        }
        deps.push_back(std::move(ds));
      }
    }
  }
  auto plan = planner_.observe(now, gw, groups, deps);
  follow_replicas(sh, rt->config(), plan);
  return plan;
}

void ScalingState::follow_replicas(Shared& sh, const config::Config& cfg,
                                   const telemetry::CapacityPlan& plan) {
  if (!sh.admission) return;
  if (limits_reset_.exchange(false)) applied_limits_.clear();
  for (const auto& g : cfg.model_groups) {
    if (g.deployments.size() != 1) continue;
    const auto it = cfg.scale_specs.find(g.deployments[0].id);
    if (it == cfg.scale_specs.end()) continue;
    const auto& spec = it->second;
    if (spec.capacity_concurrency <= 0) continue;
    for (const auto& t : plan.deployments) {
      if (t.name != g.deployments[0].id || !t.replicas_observed) continue;
      const int limit = std::max(
          1, static_cast<int>(std::lround(spec.capacity_concurrency * t.rec.current_replicas)));
      auto& applied = applied_limits_[g.name];
      if (applied == limit) continue;
      admission::LimiterConfig lc;
      lc.mode = admission::LimitMode::kFixed;
      lc.initial = limit;
      lc.min_limit = 1;
      lc.max_limit = std::max(limit, 1);
      sh.admission->configure_group(g.name, lc);
      applied = limit;
    }
  }
}

void note_deployment_tokens(Shared& sh, const std::string& deployment, std::string_view model,
                            std::int64_t tokens, const Deployment* d) {
  if (sh.scaling) sh.scaling->note_tokens(deployment, tokens);
  if (!sh.metrics) return;
  auto& family = sh.metrics->deployment_tokens;
  auto& child = d && same_text(d->cfg->id, deployment) && same_text(d->metrics->group, model)
                    ? d->metrics->tokens.get(family, 0, deployment, model)
                    : family.with({deployment, model});
  child.add(static_cast<std::uint64_t>(tokens));
}

std::string queue_metrics_body(Shared& sh, std::string_view observed_replicas) {
  std::string body = sh.admission->metrics_json();
  if (!sh.scaling || body.empty() || body.back() != '}') return body;
  if (!observed_replicas.empty()) sh.scaling->note_observed_replicas(observed_replicas);
  const auto plan = sh.scaling->last();
  body.pop_back();
  body += ",\"recommended_replicas\":" + std::to_string(plan.gateway.rec.recommended_replicas) +
          ",\"scaling\":" + telemetry::to_json(plan) + "}";
  return body;
}

void export_scaling_metrics(const telemetry::CapacityPlan& plan, telemetry::GatewayMetrics& m) {
  static constexpr telemetry::Constraint kAll[] = {telemetry::Constraint::kNone,
                                                   telemetry::Constraint::kGatewayCpu,
                                                   telemetry::Constraint::kGatewayConnections,
                                                   telemetry::Constraint::kGatewayMemory,
                                                   telemetry::Constraint::kGatewayEventLoop,
                                                   telemetry::Constraint::kUpstreamCapacity,
                                                   telemetry::Constraint::kProviderQuota,
                                                   telemetry::Constraint::kKeyLimit};
  const auto binding = [&](const telemetry::TargetPlan& t) {
    for (auto c : kAll) {
      m.scaling_binding.with({t.name, telemetry::to_string(c), "now"}).set(t.binding == c ? 1 : 0);
      m.scaling_binding.with({t.name, telemetry::to_string(c), "forecast"})
          .set(t.binding_forecast == c ? 1 : 0);
    }
  };
  m.replicas_recommended.with({"gateway", "", ""}).set(plan.gateway.rec.recommended_replicas);
  m.scaling_forecast.with({"gateway", plan.gateway.unit}).set(plan.gateway.forecast);
  m.scaling_demand.with({"gateway", plan.gateway.unit}).set(plan.gateway.demand);
  m.gateway_cpu_per_request.get().set(plan.gateway.cpu_seconds_per_request);
  m.gateway_cpu_utilization.get().set(plan.gateway.cpu_utilization);
  m.gateway_connections.get().set(plan.gateway.connections);
  binding(plan.gateway);
  for (const auto& d : plan.deployments) {
    binding(d);
    m.scaling_forecast.with({d.name, d.unit}).set(d.forecast);
    m.scaling_demand.with({d.name, d.unit}).set(d.demand);
    m.deployment_backlog.with({d.name}).set(d.backlog);
    if (d.scalable) {
      m.replicas_recommended.with({d.name, d.namespace_name, d.deployment})
          .set(d.rec.recommended_replicas);
      m.capacity_per_replica.with({d.name, d.unit}).set(d.capacity_per_replica);
    }
  }
  for (const auto& d : plan.deployments) {
    double rpm = 0, tpm = 0;
    for (const auto& q : plan.quota) {
      if (q.deployment == d.name) {
        rpm = q.missing_rpm;
        tpm = q.missing_tpm;
      }
    }
    m.provider_quota_missing.with({d.name, "rpm"}).set(rpm);
    m.provider_quota_missing.with({d.name, "tpm"}).set(tpm);
  }
}

}  // namespace bw::gateway
