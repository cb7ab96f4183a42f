#include "limits/redis_limit_store.h"

#include <algorithm>
#include <utility>

#include "limits/redis_script.h"

namespace bw::limits {

namespace asio = boost::asio;
using store::parse_redis_url;
using store::redis_reply_i64;
using store::RedisCallResult;
using store::RedisEndpoint;
using store::RedisScript;

namespace {

Nanos steady_now() {
  return SteadyClock::instance().now();
}

}  // namespace

Result<std::shared_ptr<RedisLimitStore>> RedisLimitStore::create(RedisLimitStoreOptions options) {
  auto ep = parse_redis_url(options.url);
  if (!ep) return ep.error();
  if (options.replicas < 1) options.replicas = 1;
  if (options.breaker_failures < 1) options.breaker_failures = 1;
  if (options.max_in_flight < 1) options.max_in_flight = 1;
  return std::shared_ptr<RedisLimitStore>(new RedisLimitStore(std::move(options), std::move(*ep)));
}

RedisLimitStore::RedisLimitStore(RedisLimitStoreOptions options, RedisEndpoint endpoint)
    : options_(std::move(options)),
      client_(std::move(endpoint), options_.pool_size, options_.max_in_flight,
              {RedisScript{std::string(redis_limit_script()), redis_limit_script_sha1()}}),
      breaker_(options_.breaker_failures, options_.breaker_cooldown),
      local_(options_.local) {}

RedisLimitStore::~RedisLimitStore() = default;

RedisFailurePolicy RedisLimitStore::policy_for(std::string_view limit_name) const {
  if (!options_.policy_overrides.empty()) {
    auto it = options_.policy_overrides.find(std::string(limit_name));
    if (it != options_.policy_overrides.end()) return it->second;
  }
  return options_.failure_policy;
}

bool RedisLimitStore::degraded() const {
  return breaker_.open();
}

RedisLimitStoreStats RedisLimitStore::stats() const {
  RedisLimitStoreStats s;
  s.calls = client_.calls();
  s.failures = failures_.load(std::memory_order_relaxed);
  s.fallbacks = fallbacks_.load(std::memory_order_relaxed);
  s.script_loads = client_.script_loads();
  s.breaker_open = degraded();
  return s;
}

LimitSpec RedisLimitStore::local_spec(const LimitSpec& spec) const {
  LimitSpec s = spec;
  s.rate = std::max<std::int64_t>(1, spec.rate / options_.replicas);
  s.burst = std::max<std::int64_t>(0, spec.burst / options_.replicas);
  return s;
}

AdjustSpec RedisLimitStore::local_spec(const AdjustSpec& spec) const {
  AdjustSpec s = spec;
  s.params.rate = std::max<std::int64_t>(1, spec.params.rate / options_.replicas);
  s.params.burst = std::max<std::int64_t>(0, spec.params.burst / options_.replicas);
  return s;
}

BatchResult RedisLimitStore::fallback(std::span<const LimitCheck> checks, Nanos now) {
  fallbacks_.fetch_add(1, std::memory_order_relaxed);
  BatchResult out;
  out.results.resize(checks.size());
  bool closed = false;
  for (const LimitCheck& c : checks) {
    if (c.spec->mode == Mode::kEnforce &&
        policy_for(c.spec->name) == RedisFailurePolicy::kFailClosed) {
      closed = true;
    }
  }
  if (closed) {
    out.allowed = false;
    out.unavailable = true;
    out.retry_after = options_.fail_closed_retry_after;
    for (std::size_t i = 0; i < checks.size(); ++i) {
      Decision& d = out.results[i].decision;
      d.limit = checks[i].spec->params().capacity();
      d.remaining = 0;
      if (checks[i].spec->mode == Mode::kEnforce &&
          policy_for(checks[i].spec->name) == RedisFailurePolicy::kFailClosed) {
        d.allowed = false;
        d.retry_after = options_.fail_closed_retry_after;
      }
    }
    return out;
  }
  // Every enforced limit fails open: judge those (and fail-open shadow limits) locally. Shadow
  // limits that fail closed are simply not evaluated.
  std::vector<LimitSpec> specs;
  specs.reserve(checks.size());
  boost::container::small_vector<LimitCheck, 8> local;
  boost::container::small_vector<std::size_t, 8> index;
  for (std::size_t i = 0; i < checks.size(); ++i) {
    if (policy_for(checks[i].spec->name) == RedisFailurePolicy::kFailClosed) {
      out.results[i].decision.limit = checks[i].spec->params().capacity();
      continue;
    }
    specs.push_back(local_spec(*checks[i].spec));
    local.push_back(LimitCheck{checks[i].key, &specs.back(), checks[i].cost});
    index.push_back(i);
  }
  if (local.empty()) return out;
  BatchResult r = local_.check_and_consume(local, now);
  out.allowed = r.allowed;
  out.overflow = r.overflow;
  out.retry_after = r.retry_after;
  for (std::size_t j = 0; j < index.size(); ++j) out.results[index[j]] = r.results[j];
  return out;
}

namespace {

char algorithm_digit(Algorithm a) {
  switch (a) {
    case Algorithm::kGcra:
      return '0';
    case Algorithm::kTokenBucket:
      return '1';
    case Algorithm::kSlidingWindow:
      return '2';
  }
  return '0';
}

void push_spec(std::vector<std::string>& args, Algorithm algorithm, const BucketParams& p) {
  args.emplace_back(1, algorithm_digit(algorithm));
  args.push_back(std::to_string(p.rate));
  args.push_back(std::to_string(p.period));
  args.push_back(std::to_string(p.burst));
}

}  // namespace

asio::awaitable<BatchResult> RedisLimitStore::check_and_consume_async(
    std::span<const LimitCheck> checks, Nanos now) {
  if (checks.empty()) co_return BatchResult{};
  if (!breaker_.allow(now)) co_return fallback(checks, now);

  std::vector<std::string> keys;
  keys.reserve(checks.size());
  for (const LimitCheck& c : checks) keys.push_back(options_.key_prefix + std::string(c.key));
  std::vector<std::string> args;
  args.reserve(3 + 6 * checks.size());
  args.emplace_back("c");
  args.push_back(options_.time_source == RedisTimeSource::kCaller ? std::to_string(now) : "");
  args.push_back(std::to_string(std::max<Nanos>(options_.ttl_margin, 0) / kNanosPerMilli));
  for (const LimitCheck& c : checks) {
    push_spec(args, c.spec->algorithm, c.spec->params());
    args.push_back(std::to_string(std::max<std::int64_t>(c.cost, 0)));
    args.emplace_back(c.spec->mode == Mode::kShadow ? "1" : "0");
  }

  RedisCallResult r = co_await client_.run_script(0, keys, args, steady_now() + options_.timeout);

  BatchResult out;
  std::vector<std::int64_t> v;
  // [allowed, then per check: allowed, consumed, remaining, retry_after, reset_after]
  const bool ok = store::redis_int_array(r.reply.get(), 1 + 5 * checks.size(), v);
  if (ok) {
    out.allowed = v[0] == 1;
    out.results.resize(checks.size());
    for (std::size_t i = 0; i < checks.size(); ++i) {
      const std::int64_t* e = v.data() + 1 + 5 * i;
      Decision& d = out.results[i].decision;
      d.allowed = e[0] == 1;
      out.results[i].consumed = e[1] == 1;
      d.remaining = e[2];
      d.retry_after = e[3];
      d.reset_after = e[4];
      d.limit = checks[i].spec->params().capacity();
    }
  }
  if (ok) {
    breaker_.success();
    co_return out;
  }
  failures_.fetch_add(1, std::memory_order_relaxed);
  breaker_.failure(now);
  co_return fallback(checks, now);
}

asio::awaitable<void> RedisLimitStore::adjust_async(std::string_view key, AdjustSpec spec,
                                                    std::int64_t delta, Nanos now) {
  if (delta == 0) co_return;
  const bool open_local = policy_for(spec.name) == RedisFailurePolicy::kFailOpenLocal;
  if (!breaker_.allow(now)) {
    fallbacks_.fetch_add(1, std::memory_order_relaxed);
    if (open_local) local_.adjust(key, local_spec(spec), delta, now);
    co_return;
  }
  const std::vector<std::string> keys{options_.key_prefix + std::string(key)};
  std::vector<std::string> args;
  args.reserve(8);
  args.emplace_back("a");
  args.push_back(options_.time_source == RedisTimeSource::kCaller ? std::to_string(now) : "");
  args.push_back(std::to_string(std::max<Nanos>(options_.ttl_margin, 0) / kNanosPerMilli));
  push_spec(args, spec.algorithm, spec.params);
  args.push_back(std::to_string(delta));
  RedisCallResult r = co_await client_.run_script(0, keys, args, steady_now() + options_.timeout);
  if (r.reply && r.reply->type == REDIS_REPLY_INTEGER) {
    breaker_.success();
    co_return;
  }
  failures_.fetch_add(1, std::memory_order_relaxed);
  breaker_.failure(now);
  fallbacks_.fetch_add(1, std::memory_order_relaxed);
  if (open_local) local_.adjust(key, local_spec(spec), delta, now);
}

}  // namespace bw::limits
