#include "limits/limiter.h"

#include <algorithm>
#include <utility>

#include <boost/container/small_vector.hpp>

namespace bw::limits {
namespace {

constexpr char kSep = '\x1f';  // cannot appear in names, paths, model ids or addresses

// How a limit's scope selects a bucket for this request. Returns false if it does not apply.
bool match_value(const LimitSpec& spec, std::string_view value, std::string_view& id) {
  if (value.empty()) return false;
  if (spec.match.empty()) {
    id = value;
    return true;
  }
  if (spec.match.back() == '*') {
    const std::string_view prefix(spec.match.data(), spec.match.size() - 1);
    if (!value.starts_with(prefix)) return false;
    id = spec.match;  // every matching value shares the one bucket
    return true;
  }
  if (value != spec.match) return false;
  id = value;
  return true;
}

bool global_scope_id(const LimitSpec& spec, const RequestScope& s, std::string_view& id) {
  switch (spec.scope) {
    case Scope::kGlobal:
      id = "*";
      return true;
    case Scope::kKey:
      id = s.key_id;
      return !id.empty();
    case Scope::kTenant:
      id = s.tenant_id;
      return !id.empty();
    case Scope::kIp:
      id = s.client_ip;
      return !id.empty();
    case Scope::kEndpoint:
      return match_value(spec, s.endpoint, id);
    case Scope::kModel:
      return match_value(spec, s.model, id);
  }
  return false;
}

struct Pending {
  const LimitSpec* spec;
  std::size_t key_begin;
  std::size_t key_len;
};

// Appends "<source>\x1f<name>\x1f<scope>\x1f<id>[\x1f<sub id>]" to the key arena.
void append_key(std::string& arena, char source, const LimitSpec& spec, std::string_view id,
                std::string_view sub = {}) {
  arena.push_back(source);
  arena.push_back(kSep);
  arena.append(spec.name);
  arena.push_back(kSep);
  arena.append(to_string(spec.scope));
  arena.push_back(kSep);
  arena.append(id);
  if (!sub.empty()) {
    arena.push_back(kSep);
    arena.append(sub);
  }
}

bool more_restrictive(const Decision& a, const RateHeaders& b) {
  if (!b.present) return true;
  if (a.remaining != b.remaining) return a.remaining < b.remaining;
  return a.reset_after > b.reset_after;
}

}  // namespace

Limiter::Limiter(std::shared_ptr<const LimiterConfig> config, std::shared_ptr<LimitStore> store)
    : config_(config ? std::move(config) : std::make_shared<const LimiterConfig>()),
      store_(std::move(store)) {}

void Limiter::reload(std::shared_ptr<const LimiterConfig> config) {
  config_.store(config ? std::move(config) : std::make_shared<const LimiterConfig>(),
                std::memory_order_release);
}

std::shared_ptr<const LimiterConfig> Limiter::config() const {
  return config_.load(std::memory_order_acquire);
}

// Every limit that applies to the request, as store checks. Not movable: the checks point into
// `arena` and at `daily`.
struct Limiter::Gathered {
  std::shared_ptr<const LimiterConfig> cfg;
  std::string arena;
  LimitSpec daily;
  boost::container::small_vector<LimitCheck, 12> checks;
};

void Limiter::gather(Gathered& g, const RequestScope& s, std::int64_t token_cost) const {
  g.cfg = config();
  const std::shared_ptr<const LimiterConfig>& cfg = g.cfg;
  std::string& arena = g.arena;
  arena.reserve(512);
  boost::container::small_vector<Pending, 12> pending;
  auto add = [&](const LimitSpec& spec, char source, std::string_view id,
                 std::string_view sub = {}) {
    const std::size_t begin = arena.size();
    append_key(arena, source, spec, id, sub);
    pending.push_back(Pending{&spec, begin, arena.size() - begin});
  };

  for (const LimitSpec& spec : cfg->limits) {
    std::string_view id;
    if (global_scope_id(spec, s, id)) add(spec, 'c', id);
  }

  // Plan limits belong to the key (or its tenant); endpoint/model scope narrows them further.
  LimitSpec& daily = g.daily;
  if (s.plan) {
    auto plan_limit = [&](const LimitSpec& base) {
      const LimitSpec* spec = &base;
      if (s.key_overrides) {
        for (const LimitSpec& o : *s.key_overrides) {
          if (o.name == base.name) spec = &o;
        }
      }
      const bool tenant = spec->scope == Scope::kTenant;
      const std::string_view owner = tenant ? s.tenant_id : s.key_id;
      if (owner.empty()) return;
      std::string_view sub;
      if (spec->scope == Scope::kEndpoint && !match_value(*spec, s.endpoint, sub)) return;
      if (spec->scope == Scope::kModel && !match_value(*spec, s.model, sub)) return;
      add(*spec, 'p', owner, sub);
    };
    for (const LimitSpec& l : s.plan->limits) plan_limit(l);
    if (s.plan->daily_requests) {
      daily.name = kDailyQuotaName;
      daily.algorithm = Algorithm::kSlidingWindow;
      daily.rate = *s.plan->daily_requests;
      daily.period = Period::kDay;
      plan_limit(daily);
    }
    if (s.key_overrides) {
      for (const LimitSpec& o : *s.key_overrides) {
        const bool in_plan = o.name == kDailyQuotaName ||
                             std::any_of(s.plan->limits.begin(), s.plan->limits.end(),
                                         [&](const LimitSpec& l) { return l.name == o.name; });
        if (!in_plan) plan_limit(o);
      }
    }
  }

  auto& checks = g.checks;
  for (const Pending& p : pending) {
    checks.push_back(LimitCheck{std::string_view(arena).substr(p.key_begin, p.key_len), p.spec,
                                p.spec->unit == Unit::kTokens ? token_cost : 1});
  }
}

Verdict Limiter::check(const RequestScope& s, std::int64_t token_cost, Nanos now) {
  token_cost = std::max<std::int64_t>(token_cost, 0);
  Gathered g;
  gather(g, s, token_cost);
  if (g.checks.empty()) return Verdict{};
  return make_verdict(g.checks, store_->check_and_consume(g.checks, now), token_cost);
}

boost::asio::awaitable<Verdict> Limiter::check_async(const RequestScope& s, std::int64_t token_cost,
                                                     Nanos now) {
  const std::shared_ptr<AsyncLimitStore> async = async_store_.load(std::memory_order_acquire);
  if (!async) co_return check(s, token_cost, now);
  token_cost = std::max<std::int64_t>(token_cost, 0);
  Gathered g;
  gather(g, s, token_cost);
  if (g.checks.empty()) co_return Verdict{};
  const BatchResult r = co_await async->check_and_consume_async(g.checks, now);
  co_return make_verdict(g.checks, r, token_cost);
}

boost::asio::awaitable<void> Limiter::settle_async(Reservation& reservation,
                                                   std::int64_t actual_tokens, Nanos now) {
  const std::shared_ptr<AsyncLimitStore> async = async_store_.load(std::memory_order_acquire);
  if (!async) {
    settle(reservation, actual_tokens, now);
    co_return;
  }
  if (reservation.settled) co_return;
  reservation.settled = true;
  actual_tokens = std::max<std::int64_t>(actual_tokens, 0);
  for (const ChargedLimit& c : reservation.token_limits) {
    co_await async->adjust_async(c.key, c.spec, actual_tokens - c.charged, now);
  }
}

void Limiter::set_async_store(std::shared_ptr<AsyncLimitStore> store) {
  async_store_.store(std::move(store), std::memory_order_release);
}

bool Limiter::degraded() const {
  const std::shared_ptr<AsyncLimitStore> async = async_store_.load(std::memory_order_acquire);
  return async && async->degraded();
}

Verdict Limiter::make_verdict(std::span<const LimitCheck> checks, const BatchResult& r,
                              std::int64_t token_cost) {
  Verdict v;
  if (checks.empty()) return v;
  v.allowed = r.allowed;
  v.overflow = r.overflow;
  v.unavailable = r.unavailable;
  bool all_wait = true;
  for (std::size_t i = 0; i < checks.size(); ++i) {
    const LimitSpec& spec = *checks[i].spec;
    const Decision& d = r.results[i].decision;
    if (spec.mode == Mode::kShadow) {
      if (!d.allowed && !r.overflow) v.shadow_rejections.push_back(spec.name);
    } else {
      RateHeaders& h = spec.unit == Unit::kTokens ? v.tokens : v.requests;
      if (more_restrictive(d, h)) h = RateHeaders{true, d.limit, d.remaining, d.reset_after};
      if (!d.allowed && !r.overflow) {
        if (v.limit_name.empty() || d.retry_after > v.retry_after_ns) {
          v.limit_name = spec.name;
          v.retry_after_ns = d.retry_after;
        }
        all_wait = all_wait && spec.on_exceed == OnExceed::kWait;
      }
    }
    if (r.results[i].consumed && spec.unit == Unit::kTokens && token_cost > 0) {
      v.reservation.token_limits.push_back(
          ChargedLimit{std::string(checks[i].key), spec, token_cost});
    }
  }
  if (r.overflow) {
    v.limit_name = "limiter-capacity";
    v.retry_after_ns = r.retry_after;
    all_wait = false;
  }
  if (r.unavailable) all_wait = false;  // waiting does not bring Redis back
  v.wait_ok = !v.allowed && all_wait && v.retry_after_ns != kNever;
  if (v.allowed) {
    v.reservation.reserved_tokens = token_cost;
  } else {
    v.reservation.token_limits.clear();
  }
  return v;
}

void Limiter::settle(Reservation& reservation, std::int64_t actual_tokens, Nanos now) {
  if (reservation.settled) return;
  reservation.settled = true;
  actual_tokens = std::max<std::int64_t>(actual_tokens, 0);
  for (const ChargedLimit& c : reservation.token_limits) {
    store_->adjust(c.key, c.spec, actual_tokens - c.charged, now);
  }
}

std::string format_reset(Nanos ns) {
  if (ns <= 0) return "0s";
  const std::int64_t ms = ns / kNanosPerMilli + (ns % kNanosPerMilli != 0 ? 1 : 0);
  if (ms < 1000) return std::to_string(ms) + "ms";
  const std::int64_t h = ms / 3'600'000, m = ms / 60'000 % 60, sec = ms / 1000 % 60,
                     frac = ms % 1000;
  std::string out;
  if (h > 0) out += std::to_string(h) + "h";
  if (h > 0 || m > 0) out += std::to_string(m) + "m";
  out += std::to_string(sec);
  if (frac != 0) {
    std::string f = std::to_string(frac);
    f.insert(0, 3 - f.size(), '0');
    while (f.back() == '0') f.pop_back();
    out += "." + f;
  }
  out += "s";
  return out;
}

}  // namespace bw::limits
