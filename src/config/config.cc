#include "config/config.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>

#include "config/yaml_reader.h"

namespace bw::config {

std::string sha256_hex(std::string_view data) {
  // Fetched once: EVP_sha256() looks the algorithm up (under a lock) on every digest.
  static EVP_MD* const md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  // One context per thread, reused (EVP_Digest allocates and frees one per call).
  struct Ctx {
    EVP_MD_CTX* p = EVP_MD_CTX_new();
    ~Ctx() { EVP_MD_CTX_free(p); }
  };
  thread_local Ctx ctx;
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!ctx.p || !md || EVP_DigestInit_ex(ctx.p, md, nullptr) != 1 ||
      EVP_DigestUpdate(ctx.p, data.data(), data.size()) != 1 ||
      EVP_DigestFinal_ex(ctx.p, digest, &len) != 1) {
    EVP_Digest(data.data(), data.size(), digest, &len, EVP_sha256(), nullptr);
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(len * 2);
  for (unsigned i = 0; i < len; ++i) {
    out.push_back(kHex[digest[i] >> 4]);
    out.push_back(kHex[digest[i] & 0xf]);
  }
  return out;
}

bool parse_listen(const std::string& s, std::string& host, std::uint16_t& port) {
  std::string h, p;
  if (!s.empty() && s.front() == '[') {
    auto close = s.find(']');
    if (close == std::string::npos || close + 1 >= s.size() || s[close + 1] != ':') return false;
    h = s.substr(1, close - 1);
    p = s.substr(close + 2);
  } else {
    auto colon = s.rfind(':');
    if (colon == std::string::npos) return false;
    h = s.substr(0, colon);
    p = s.substr(colon + 1);
  }
  if (h.empty() || p.empty() || p.size() > 5) return false;
  unsigned v = 0;
  for (char c : p) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<unsigned>(c - '0');
  }
  if (v > 65535) return false;
  host = h;
  port = static_cast<std::uint16_t>(v);
  return true;
}

const ProviderConfig* Config::provider(const std::string& name) const {
  for (const auto& p : providers) {
    if (p.name == name) return &p;
  }
  return nullptr;
}

const limits::Plan* Config::plan(const std::string& name) const {
  for (const auto& p : plans) {
    if (p.name == name) return &p;
  }
  return nullptr;
}

const ModelGroupConfig* Config::model_group(const std::string& name) const {
  for (const auto& g : model_groups) {
    if (g.name == name) return &g;
  }
  return nullptr;
}

namespace {

void read_distribution(Reader& r, const char* key, Distribution& d) {
  if (!r.has(key)) {
    r.child(key);  // marks the key as seen
    return;
  }
  auto c = r.child(key);
  c.get("median_ms", d.median_ms, 0, 3'600'000);
  // A median without a p99 means no tail.
  if (!c.has("p99_ms")) d.p99_ms = d.median_ms;
  c.get("p99_ms", d.p99_ms, 0, 3'600'000);
  c.finish();
  if (d.p99_ms > 0 && d.p99_ms < d.median_ms) c.fail_here("p99_ms must be >= median_ms");
}

void read_sim_model(Reader& r, SimModelConfig& m) {
  read_distribution(r, "ttft", m.ttft);
  read_distribution(r, "itl", m.itl);
  r.get("completion_tokens", m.completion_tokens, 1, 1'000'000);
  r.get("max_concurrency", m.max_concurrency, 0, 10'000'000);
  r.get("replicas", m.replicas, 0, 100'000);
  r.get("replica_concurrency", m.replica_concurrency, 0, 10'000'000);
  r.get("rpm", m.rpm, 0, 1'000'000'000);
  r.get("tpm", m.tpm, 0, 1'000'000'000'000);
  r.get("error_rate", m.error_rate, 0, 1);
  r.get("reset_rate", m.reset_rate, 0, 1);
  r.get("stall_rate", m.stall_rate, 0, 1);
  r.get("context_window", m.context_window, 1, 100'000'000);
}

std::optional<limits::RedisFailurePolicy> parse_redis_policy(std::string_view s) {
  if (s == "fail_open_local") return limits::RedisFailurePolicy::kFailOpenLocal;
  if (s == "fail_closed") return limits::RedisFailurePolicy::kFailClosed;
  return std::nullopt;
}

template <class T>
void read_enum(Reader& r, const char* key, T& out, std::optional<T> (*parse)(std::string_view),
               const char* choices) {
  std::string v;
  r.get(key, v);
  if (v.empty()) return;
  auto p = parse(v);
  if (!p) r.fail(key, "unknown value '" + v + "' (expected " + choices + ")");
  out = *p;
}

// Reads one limit on top of `spec` (so an override may name only the fields it changes).
void read_limit(Reader& r, limits::LimitSpec& spec, Config* cfg = nullptr) {
  r.get("name", spec.name);
  read_enum(r, "algorithm", spec.algorithm, &limits::parse_algorithm,
            "gcra, token_bucket, sliding_window");
  read_enum(r, "unit", spec.unit, &limits::parse_unit, "requests, tokens");
  r.get("rate", spec.rate, 1, INT64_MAX / 4);
  read_enum(r, "period", spec.period, &limits::parse_period, "second, minute, hour, day");
  r.get("burst", spec.burst, 0, INT64_MAX / 4);
  read_enum(r, "mode", spec.mode, &limits::parse_mode, "enforce, shadow");
  read_enum(r, "on_exceed", spec.on_exceed, &limits::parse_on_exceed, "reject, wait");
  read_enum(r, "scope", spec.scope, &limits::parse_scope,
            "key, tenant, ip, endpoint, model, global");
  r.get("match", spec.match);
  if (spec.name.empty()) r.fail_here("a limit needs a name");
  std::string on_failure;
  r.get("on_redis_failure", on_failure);
  if (!on_failure.empty()) {
    auto p = parse_redis_policy(on_failure);
    if (!p) r.fail("on_redis_failure", "expected fail_open_local or fail_closed");
    if (cfg) cfg->redis.policy_overrides[spec.name] = *p;
  }
  if (auto v = limits::validate(spec); !v) r.fail_here(v.error().message);
}

void read_concurrency(Reader& r, admission::LimiterConfig& c) {
  std::string mode;
  r.get("mode", mode);
  if (mode == "fixed")
    c.mode = admission::LimitMode::kFixed;
  else if (mode == "aimd")
    c.mode = admission::LimitMode::kAimd;
  else if (mode == "adaptive" || mode == "gradient")
    c.mode = admission::LimitMode::kGradient;
  else if (!mode.empty())
    r.fail("mode", "unknown mode '" + mode + "' (fixed, aimd, adaptive)");
  r.get("initial", c.initial, 1, 1'000'000);
  r.get("min", c.min_limit, 1, 1'000'000);
  r.get("max", c.max_limit, 1, 1'000'000);
  r.get("decrease_factor", c.decrease_factor, 0.05, 0.99);
  r.get_duration("latency_threshold", c.aimd_latency_threshold);
  r.get("tolerance", c.tolerance, 1.0, 100.0);
  if (c.mode == admission::LimitMode::kFixed) {
    c.min_limit = std::min(c.min_limit, c.initial);
    c.max_limit = std::max(c.max_limit, c.initial);
  }
  if (c.min_limit > c.max_limit) r.fail_here("min must be <= max");
  if (c.initial < c.min_limit || c.initial > c.max_limit)
    r.fail("initial", "must be within [min, max]");
}

void read_budget(Reader& r, std::vector<cost::KeyBudget>& out) {
  cost::KeyBudget b;
  double usd = -1;
  r.require("cap_usd");
  r.get("cap_usd", usd, 0, 1e9);
  b.cap_micro = cost::usd_to_micros(usd);
  std::string period = "monthly";
  r.get("period", period);
  auto p = cost::parse_period(period);
  if (!p) r.fail("period", "unknown period '" + period + "' (daily, monthly, total)");
  b.period = *p;
  for (const auto& e : out) {
    if (e.period == b.period) r.fail("period", "two budgets with the same period");
  }
  out.push_back(b);
}

// `budget: {...}` or `budgets: [{...}, ...]` under r.
void read_budgets(Reader& r, std::vector<cost::KeyBudget>& out) {
  if (r.has("budget")) {
    auto b = r.child("budget");
    read_budget(b, out);
    b.finish();
  } else {
    r.child("budget");
  }
  r.each("budgets", [&](Reader& b) { read_budget(b, out); });
}

// The `tracing:` section (telemetry/tracing.h).
void read_tracing(Reader r, telemetry::TracingConfig& t) {
  r.get("endpoint", t.endpoint);
  if (!t.endpoint.empty() && !t.endpoint.starts_with("http://") &&
      !t.endpoint.starts_with("https://")) {
    r.fail("endpoint",
           "must be an http:// or https:// URL (OTLP/HTTP, e.g. "
           "http://127.0.0.1:4318/v1/traces)");
  }
  r.get_string_map("headers", t.headers);
  r.get("ca_file", t.ca_file);
  r.get("service_name", t.service_name);
  if (r.has("sampler")) {
    std::string mode;
    r.get("sampler", mode);
    using M = telemetry::SamplingConfig::Mode;
    if (mode == "always") {
      t.sampling.mode = M::kAlways;
    } else if (mode == "never") {
      t.sampling.mode = M::kNever;
    } else if (mode == "ratio") {
      t.sampling.mode = M::kRatio;
    } else if (mode == "parent_based") {
      t.sampling.mode = M::kParentBased;
    } else {
      r.fail("sampler", "must be always, never, ratio or parent_based");
    }
  }
  r.get("ratio", t.sampling.ratio, 0.0, 1.0);
  r.get("always_sample_errors", t.sampling.always_errors);
  Nanos slow = millis(t.sampling.slow_ms);
  r.get_duration("slow_threshold", slow);
  t.sampling.slow_ms = slow / kNanosPerMilli;
  r.get("capture_content", t.capture_content);
  std::int64_t n = static_cast<std::int64_t>(t.max_content_bytes);
  r.get("max_content_bytes", n, 16, 1 << 20);
  t.max_content_bytes = static_cast<std::size_t>(n);
  n = static_cast<std::int64_t>(t.queue_spans);
  r.get("queue_spans", n, 1, 1 << 22);
  t.queue_spans = static_cast<std::size_t>(n);
  n = static_cast<std::int64_t>(t.batch_spans);
  r.get("batch_spans", n, 1, 1 << 16);
  t.batch_spans = static_cast<std::size_t>(n);
  r.get_duration("flush_interval", t.flush_interval);
  r.get_duration("timeout", t.timeout);
  if (t.flush_interval <= 0) r.fail("flush_interval", "must be positive");
  if (t.timeout <= 0) r.fail("timeout", "must be positive");
  r.get("propagate", t.propagate);
  r.get("accept_b3", t.accept_b3);
  r.finish();
}

void read_listen(Reader& r, const char* key, std::string& host, std::uint16_t& port) {
  std::string s;
  r.get(key, s);
  if (s.empty()) return;
  if (!parse_listen(s, host, port)) r.fail(key, "expected host:port, found '" + s + "'");
}

// `cache:` of a model group or a key; for a key, the `has_` flags say which fields it sets.
void read_cache_mode(Reader& r, CacheModeConfig& c, KeyCacheOverride* o) {
  auto check = [&](const char* key, const std::string& v, std::initializer_list<const char*> ok) {
    for (auto* x : ok) {
      if (v == x) return;
    }
    std::string list;
    for (auto* x : ok) list += (list.empty() ? "" : ", ") + std::string(x);
    r.fail(key, "'" + v + "' is not one of " + list);
  };
  if (o) {
    o->has_mode = r.has("mode");
    o->has_ttl = r.has("ttl");
    o->has_max_entry_bytes = r.has("max_entry_bytes");
    o->has_eligibility = r.has("eligibility");
    o->has_scope = r.has("scope");
  }
  r.get("mode", c.mode);
  check("mode", c.mode, {"off", "exact", "semantic"});
  r.get_duration("ttl", c.ttl);
  if (c.ttl <= 0) r.fail("ttl", "must be > 0");
  r.get_size("max_entry_bytes", c.max_entry_bytes);
  r.get("eligibility", c.eligibility);
  check("eligibility", c.eligibility, {"all", "deterministic"});
  r.get("scope", c.scope);
  check("scope", c.scope, {"tenant", "key", "global"});
  if (!o) {
    r.get("embeddings_model", c.embeddings_model);
    r.get("threshold", c.threshold, 0.0, 1.0);
    if (c.mode == "semantic" && c.embeddings_model.empty()) {
      r.fail("embeddings_model", "semantic mode needs an embeddings model group");
    }
  } else if (c.mode == "semantic") {
    r.fail("mode", "a key can turn the cache off or to exact; semantic is set per model group");
  }
}

// cache: the response cache's storage; needs redis.
void read_cache(Reader& top, Config& cfg) {
  if (!top.has("cache")) {
    top.child("cache");
    return;
  }
  auto cc = top.child("cache");
  auto& cs = cfg.cache;
  cc.get("backend", cs.backend);
  if (cs.backend != "memory" && cs.backend != "redis") {
    cc.fail("backend", "'" + cs.backend + "' is not one of memory, redis");
  }
  if (cs.backend == "redis" && !cfg.redis_enabled) {
    cc.fail("backend", "the redis backend needs the `redis:` section");
  }
  cc.get_size("max_bytes", cs.max_bytes);
  cc.get_duration("redis_timeout", cs.redis_timeout);
  if (cs.redis_timeout <= 0) cc.fail("redis_timeout", "must be > 0");
  cc.get_size("compress_above", cs.compress_above);
  cc.get_duration("single_flight_wait", cs.single_flight_wait);
  cc.get("single_flight_max_waiters", cs.single_flight_max_waiters, 0, 100000);
  cc.get("semantic_max_entries", cs.semantic_max_entries, 1, 10'000'000);
  cc.finish();
}

// listen, workers, server: the HTTP listener.
void read_server(Reader& top, Config& cfg) {
  read_listen(top, "listen", cfg.server.host, cfg.server.port);
  top.get("workers", cfg.server.workers, 0, 256);
  auto s = top.child("server");
  s.get_size("max_header_bytes", cfg.server.max_header_bytes);
  std::int64_t max_headers = static_cast<std::int64_t>(cfg.server.max_headers);
  s.get("max_headers", max_headers, 1, 10'000);
  cfg.server.max_headers = static_cast<std::size_t>(max_headers);
  s.get_size("max_body_bytes", cfg.server.max_body_bytes);
  s.get_duration("header_timeout", cfg.server.header_timeout);
  s.get_duration("body_timeout", cfg.server.body_timeout);
  s.get_duration("idle_timeout", cfg.server.idle_timeout);
  s.get_duration("write_timeout", cfg.server.write_timeout);
  s.get_duration("drain_timeout", cfg.drain_timeout);
  s.get_size("max_upstream_response_bytes", cfg.max_upstream_response_bytes);
  s.get_list("trusted_proxies", cfg.trusted_proxies);
  s.finish();
  if (cfg.server.max_header_bytes < 1024) s.fail("max_header_bytes", "must be at least 1KiB");
  for (const auto& t : cfg.trusted_proxies) {
    auto c = limits::parse_cidr(t);
    if (!c) s.fail("trusted_proxies", "'" + t + "' is not an IP address or CIDR range");
    cfg.trusted_cidrs.push_back(*c);
  }
}

// redis: the shared limit store and budget counters.
void read_redis(Reader& top, Config& cfg) {
  if (top.has("redis")) {
    auto rd = top.child("redis");
    cfg.redis_enabled = true;
    rd.get("enabled", cfg.redis_enabled);
    rd.get("url", cfg.redis.url);
    if (auto ep = store::parse_redis_url(cfg.redis.url); !ep) rd.fail("url", ep.error().message);
    rd.get_duration("timeout", cfg.redis.timeout);
    std::int64_t pool = static_cast<std::int64_t>(cfg.redis.pool_size);
    rd.get("pool_size", pool, 0, 1024);
    cfg.redis.pool_size = static_cast<std::size_t>(pool);
    rd.get("replicas", cfg.redis.replicas, 1, 10'000);
    std::string policy;
    rd.get("failure_policy", policy);
    if (!policy.empty()) {
      auto p = parse_redis_policy(policy);
      if (!p) rd.fail("failure_policy", "expected fail_open_local or fail_closed");
      cfg.redis.failure_policy = *p;
    }
    rd.get("key_prefix", cfg.redis.key_prefix);
    rd.get("budgets", cfg.redis_budgets_enabled);
    rd.get("budget_key_prefix", cfg.redis_budgets.key_prefix);
    rd.get_duration("rebuild_timeout", cfg.redis_budgets.rebuild_timeout);
    if (cfg.redis_budgets.rebuild_timeout <= 0) rd.fail("rebuild_timeout", "must be > 0");
    rd.get_duration("rebuild_grace", cfg.redis_budgets.rebuild_grace);
    cfg.redis_budgets.url = cfg.redis.url;
    cfg.redis_budgets.timeout = cfg.redis.timeout;
    cfg.redis_budgets.pool_size = cfg.redis.pool_size;
    cfg.redis_budgets.replicas = cfg.redis.replicas;
    rd.finish();
  } else {
    top.child("redis");
  }
}

// responses: the store behind previous_response_id; needs the redis section.
void read_responses(Reader& top, Config& cfg) {
  auto& rs = cfg.responses;
  rs.backend = cfg.redis_enabled ? Config::ResponsesStore::Backend::kRedis
                                 : Config::ResponsesStore::Backend::kMemory;
  auto r = top.child("responses");
  std::string backend;
  r.get("store", backend);
  if (backend == "memory") {
    rs.backend = Config::ResponsesStore::Backend::kMemory;
  } else if (backend == "redis") {
    if (!cfg.redis_enabled) r.fail("store", "redis needs the redis section (and redis.enabled)");
    rs.backend = Config::ResponsesStore::Backend::kRedis;
  } else if (backend == "off") {
    rs.backend = Config::ResponsesStore::Backend::kOff;
  } else if (!backend.empty()) {
    r.fail("store", "expected memory, redis or off");
  }
  r.get_duration("ttl", rs.ttl);
  if (rs.ttl < kNanosPerMilli) r.fail("ttl", "must be at least 1ms");
  r.get("max_entries", rs.max_entries, 1, 100'000'000);
  r.get_size("max_entry_bytes", rs.max_entry_bytes);
  if (rs.max_entry_bytes < 1024) r.fail("max_entry_bytes", "must be at least 1KiB");
  r.get("key_prefix", rs.key_prefix);
  r.get_duration("timeout", rs.timeout);
  if (rs.timeout < 0) r.fail("timeout", "must be >= 0");
  r.get("forward_unknown_ids", rs.forward_unknown_ids);
  r.finish();
}

// limits: the global, ip, endpoint and model limits.
void read_limits(Reader& top, Config& cfg) {
  std::set<std::string> limit_names;
  top.each("limits", [&](Reader& r) {
    limits::LimitSpec spec;
    spec.scope = limits::Scope::kGlobal;
    read_limit(r, spec, &cfg);
    if (!limit_names.insert(spec.name).second) r.fail("name", "duplicate limit name");
    cfg.limits.push_back(std::move(spec));
  });
}

// plans: the built-in plans, overridden or extended by name.
void read_plans(Reader& top, Config& cfg) {
  cfg.plans = limits::default_plans();
  top.each_entry("plans", [&](const std::string& name, Reader& r) {
    limits::Plan plan;
    plan.name = name;
    if (auto* builtin = cfg.plan(name)) plan = *builtin;
    if (r.has("daily_requests")) {
      std::int64_t d = 0;
      r.get("daily_requests", d, 0, INT64_MAX / 4);
      plan.daily_requests = d > 0 ? std::optional<std::int64_t>(d) : std::nullopt;
    } else {
      std::int64_t unused = 0;
      r.get("daily_requests", unused, 0, 1);
    }
    r.get_list("allowed_models", plan.allowed_models);
    r.get("default_priority", plan.default_priority, 0, 2);
    r.get("max_priority", plan.max_priority, 0, 2);
    if (r.has("limits")) plan.limits.clear();
    r.each("limits", [&](Reader& l) {
      limits::LimitSpec spec;
      read_limit(l, spec, &cfg);
      plan.limits.push_back(std::move(spec));
    });
    std::erase_if(cfg.plans, [&](const limits::Plan& p) { return p.name == name; });
    cfg.plans.push_back(std::move(plan));
  });
}

// admin: the admin listener and key.
void read_admin(Reader& top, Config& cfg) {
  auto a = top.child("admin");
  a.get("listen", cfg.admin_listen);
  if (!cfg.admin_listen.empty()) {
    std::string h;
    std::uint16_t p;
    if (!parse_listen(cfg.admin_listen, h, p)) a.fail("listen", "expected host:port");
  }
  std::string key;
  a.get("key", key);
  if (!key.empty()) {
    if (key.size() < 16) a.fail("key", "the admin key must be at least 16 characters");
    cfg.admin_key_hash = sha256_hex(key);
  }
  a.get("key_sha256", cfg.admin_key_hash);
  a.get("console", cfg.console_enabled);
  a.get("secure_cookie", cfg.console_secure_cookie);
  a.get_duration("session_lifetime", cfg.console_session_lifetime);
  if (cfg.console_session_lifetime <= 0 || cfg.console_session_lifetime > seconds(7 * 86400)) {
    a.fail("session_lifetime", "must be between 1s and 7d");
  }
  a.finish();
}

// access_log.
void read_access_log(Reader& top, Config& cfg) {
  auto l = top.child("access_log");
  l.get("path", cfg.access_log.path);
  l.finish();
}

// admission: queue, waits, shedding and the default concurrency limit.
void read_admission(Reader& top, Config& cfg) {
  auto a = top.child("admission");
  auto& ad = cfg.admission;
  ad.default_limiter.mode = admission::LimitMode::kFixed;
  ad.default_limiter.initial = 1024;
  ad.default_limiter.min_limit = 1;
  ad.default_limiter.max_limit = 1024;
  std::int64_t max_queue = static_cast<std::int64_t>(ad.queue.max_size);
  a.get("max_queue", max_queue, 1, 10'000'000);
  ad.queue.max_size = static_cast<std::size_t>(max_queue);
  auto w = a.child("max_wait");
  w.get_duration("p0", ad.queue.max_wait[0]);
  w.get_duration("p1", ad.queue.max_wait[1]);
  w.get_duration("p2", ad.queue.max_wait[2]);
  w.finish();
  a.get_duration("aging", ad.queue.aging);
  auto o = a.child("overload");
  auto get_count = [&](const char* k, std::size_t& v) {
    std::int64_t x = static_cast<std::int64_t>(v);
    o.get(k, x, 1, 100'000'000);
    v = static_cast<std::size_t>(x);
  };
  get_count("shed_p2_at", ad.overload.shed_p2_at);
  get_count("shed_p1_at", ad.overload.shed_p1_at);
  get_count("hard_limit", ad.overload.hard_limit);
  o.finish();
  if (!(ad.overload.shed_p2_at <= ad.overload.shed_p1_at &&
        ad.overload.shed_p1_at <= ad.overload.hard_limit)) {
    o.fail_here("needs shed_p2_at <= shed_p1_at <= hard_limit");
  }
  if (a.has("default_concurrency")) {
    auto dc = a.child("default_concurrency");
    read_concurrency(dc, ad.default_limiter);
    dc.finish();
  } else {
    a.child("default_concurrency");
  }
  std::string access = "any_key";
  a.get("metrics_access", access);
  if (access != "any_key" && access != "admin")
    a.fail("metrics_access", "expected any_key or admin");
  cfg.queue_metrics_public = access == "any_key";
  a.finish();
}

// providers.
void read_providers(Reader& top, Config& cfg) {
  top.each_entry("providers", [&](const std::string& name, Reader& r) {
    ProviderConfig p;
    p.name = name;
    r.get("type", p.type);
    if (p.type != "openai" && p.type != "sim" && p.type != "azure" && p.type != "anthropic" &&
        p.type != "gemini") {
      r.fail("type", "unknown provider type '" + p.type +
                         "' (expected openai, azure, anthropic, gemini or sim)");
    }
    r.get("format", p.format);
    if (p.format != "openai" && p.format != "anthropic" && p.format != "gemini") {
      r.fail("format", "unknown format '" + p.format + "' (expected openai, anthropic or gemini)");
    }
    r.get("api_version", p.api_version);
    r.get("anthropic_version", p.anthropic_version);
    if (p.type == "azure") r.require("api_version");
    r.get("base_url", p.base_url);
    r.get("api_key_env", p.api_key_env);
    r.get_duration("connect_timeout", p.timeouts.connect);
    r.get_duration("first_byte_timeout", p.timeouts.first_byte);
    r.get_duration("idle_timeout", p.timeouts.idle);
    std::int64_t maxc = static_cast<std::int64_t>(p.pool.max_connections);
    r.get("max_connections", maxc, 1, 100'000);
    p.pool.max_connections = static_cast<std::size_t>(maxc);
    std::int64_t maxi = static_cast<std::int64_t>(p.pool.max_idle);
    r.get("max_idle_connections", maxi, 0, 100'000);
    p.pool.max_idle = static_cast<std::size_t>(std::min(maxi, maxc));
    r.get_duration("pool_idle_timeout", p.pool.idle_timeout);
    std::int64_t maxp = static_cast<std::int64_t>(p.pool.max_pending);
    r.get("max_pending_requests", maxp, 0, 1'000'000);
    p.pool.max_pending = static_cast<std::size_t>(maxp);
    if (p.type != "sim") {
      r.require("base_url");
      auto ep = http::Endpoint::parse(p.base_url);
      if (!ep) r.fail("base_url", ep.error().message);
    }
    if (!p.api_key_env.empty()) {
      const char* v = std::getenv(p.api_key_env.c_str());
      if (!v || !*v) r.fail("api_key_env", "environment variable " + p.api_key_env + " is not set");
      p.api_key = v;
    }
    cfg.providers.push_back(std::move(p));
  });
}

// deployments[].scale: the deployment's own autoscaling target (capacity_planner.h).
void read_scale_spec(Reader& d, const std::string& deployment_id, Config& cfg) {
  if (d.has("scale")) {
    auto sr = d.child("scale");
    telemetry::UpstreamScaleSpec spec;
    auto tr = sr.child("target");
    tr.require("deployment");
    tr.get("namespace", spec.namespace_name);
    tr.get("deployment", spec.deployment);
    tr.finish();
    sr.get("capacity_tokens_per_s", spec.capacity_tokens_per_s, 0.001, 1e12);
    sr.get("capacity_concurrency", spec.capacity_concurrency, 0.001, 1e9);
    if ((spec.capacity_tokens_per_s > 0) == (spec.capacity_concurrency > 0)) {
      sr.fail_here("give one of capacity_tokens_per_s or capacity_concurrency");
    }
    sr.get("min", spec.min_replicas, 1, 10'000);
    sr.get("max", spec.max_replicas, 1, 10'000);
    if (spec.min_replicas > spec.max_replicas) sr.fail_here("min must be <= max");
    sr.get_duration("forecast_horizon", spec.forecast_horizon);
    sr.get("learn_capacity", spec.learn_capacity);
    sr.finish();
    cfg.scale_specs[deployment_id] = spec;
  } else {
    d.child("scale");
  }
}

// model_groups.<name>.deployments[index]: the provider must be known; the id defaults to
// "<group>/<provider>/<index>".
DeploymentConfig read_deployment(Reader& d, const std::string& group, int index, Config& cfg) {
  DeploymentConfig dep;
  d.require("provider");
  d.get("provider", dep.provider);
  if (!cfg.provider(dep.provider)) d.fail("provider", "unknown provider '" + dep.provider + "'");
  dep.model = group;
  d.get("model", dep.model);
  dep.id = group + "/" + dep.provider + "/" + std::to_string(index);
  d.get("id", dep.id);
  int weight = static_cast<int>(dep.weight);
  d.get("weight", weight, 1, 1000);
  dep.weight = static_cast<std::uint32_t>(weight);
  d.get("rpm", dep.rpm, 0, 1'000'000'000);
  d.get("tpm", dep.tpm, 0, 1'000'000'000'000);
  read_scale_spec(d, dep.id, cfg);
  return dep;
}

// model_groups: needs providers and the admission defaults.
void read_model_groups(Reader& top, Config& cfg) {
  top.each_entry("model_groups", [&](const std::string& name, Reader& r) {
    ModelGroupConfig g;
    g.name = name;
    read_enum(r, "balancer", g.balancer, &routing::parse_balancer,
              "p2c_peak_ewma, weighted_round_robin, least_outstanding");
    r.get_list("fallbacks", g.fallbacks);
    r.get("context_fallback", g.context_fallback);
    if (r.has("capacity_fallbacks")) {
      auto cf = r.child("capacity_fallbacks");
      cf.get_list("p0", g.capacity_fallbacks[0]);
      cf.get_list("p1", g.capacity_fallbacks[1]);
      cf.get_list("p2", g.capacity_fallbacks[2]);
      cf.finish();
    } else {
      r.child("capacity_fallbacks");
    }
    r.get("max_output_tokens", g.max_output_tokens, 1, 10'000'000);
    r.get("context_window", g.context_window, 1, 100'000'000);
    r.get("owned_by", g.owned_by);
    g.concurrency = cfg.admission.default_limiter;
    if (r.has("cache")) {
      auto cc = r.child("cache");
      read_cache_mode(cc, g.cache, nullptr);
      cc.finish();
    } else {
      r.child("cache");
    }
    if (r.has("concurrency")) {
      g.has_concurrency = true;
      auto cc = r.child("concurrency");
      read_concurrency(cc, g.concurrency);
      cc.finish();
    } else {
      r.child("concurrency");
    }
    r.require("deployments");
    int index = 0;
    r.each("deployments",
           [&](Reader& d) { g.deployments.push_back(read_deployment(d, name, index++, cfg)); });
    if (g.deployments.empty()) r.fail("deployments", "needs at least one deployment");
    cfg.model_groups.push_back(std::move(g));
  });
}

// Deployment ids are unique; fallbacks name other known groups.
void check_model_group_links(const YAML::Node& root, const std::string& file, const Config& cfg) {
  // Fallbacks must name known groups; chains are walked for cycles once all groups are known.
  std::set<std::string> ids;
  for (const auto& g : cfg.model_groups) {
    for (const auto& d : g.deployments) {
      if (!ids.insert(d.id).second) {
        throw ConfigError(file + ": model_groups." + g.name + ": duplicate deployment id '" + d.id +
                          "'");
      }
    }
    if (g.cache.mode == "semantic" && !cfg.model_group(g.cache.embeddings_model)) {
      auto n = root["model_groups"][g.name]["cache"]["embeddings_model"];
      throw ConfigError(file + ":" + std::to_string(n.Mark().line + 1) + ": model_groups." +
                        g.name + ".cache.embeddings_model: '" + g.cache.embeddings_model +
                        "' is not a model group");
    }
    for (const auto& f : g.fallbacks) {
      if (!cfg.model_group(f) || f == g.name) {
        auto n = root["model_groups"][g.name]["fallbacks"];
        throw ConfigError(file + ":" + std::to_string(n.Mark().line + 1) + ": model_groups." +
                          g.name + ".fallbacks: '" + f + "' is not another model group");
      }
    }
    for (std::size_t p = 0; p < g.capacity_fallbacks.size(); ++p) {
      for (const auto& f : g.capacity_fallbacks[p]) {
        if (cfg.model_group(f) && f != g.name) continue;
        auto n = root["model_groups"][g.name]["capacity_fallbacks"];
        throw ConfigError(file + ":" + std::to_string(n.Mark().line + 1) + ": model_groups." +
                          g.name + ".capacity_fallbacks.p" + std::to_string(p) + ": '" + f +
                          "' is not another model group");
      }
    }
  }
}

// keys: needs plans and model groups.
void read_keys(Reader& top, Config& cfg) {
  std::set<std::string> key_names, key_hashes;
  top.each("keys", [&](Reader& r) {
    KeyConfig k;
    r.require("name");
    r.get("name", k.name);
    std::string secret;
    r.get("key", secret);
    r.get("key_sha256", k.secret_hash);
    if (secret.empty() && k.secret_hash.empty()) r.fail_here("needs key or key_sha256");
    if (!secret.empty()) {
      if (secret.size() < 8) r.fail("key", "an API key must be at least 8 characters");
      k.secret_hash = sha256_hex(secret);
    }
    r.get("tenant", k.tenant);
    k.plan = "enterprise";
    r.get("plan", k.plan);
    const limits::Plan* plan = cfg.plan(k.plan);
    if (!plan) r.fail("plan", "unknown plan '" + k.plan + "'");
    r.get_list("allowed_models", k.allowed_models);
    r.get("default_priority", k.default_priority, 0, 2);
    r.get("max_priority", k.max_priority, 0, 2);
    read_budgets(r, k.budgets);
    r.get("downgrade_opt_out", k.downgrade_opt_out);
    if (r.has("cache")) {
      auto cc = r.child("cache");
      read_cache_mode(cc, k.cache.value, &k.cache);
      cc.finish();
    } else {
      r.child("cache");
    }
    r.each("limits", [&](Reader& l) {
      // An override starts from the plan's limit of the same name.
      limits::LimitSpec spec;
      std::string name;
      l.get("name", name);
      for (const auto& pl : plan->limits) {
        if (pl.name == name) spec = pl;
      }
      if (name == limits::kDailyQuotaName && plan->daily_requests) {
        spec.name = name;
        spec.algorithm = limits::Algorithm::kSlidingWindow;
        spec.rate = *plan->daily_requests;
        spec.period = limits::Period::kDay;
      }
      read_limit(l, spec, &cfg);
      k.limit_overrides.push_back(std::move(spec));
    });
    if (!key_names.insert(k.name).second) r.fail("name", "duplicate key name '" + k.name + "'");
    if (!key_hashes.insert(k.secret_hash).second) r.fail_here("duplicate key secret");
    for (const auto& m : k.allowed_models) {
      if (!cfg.model_group(m)) r.fail("allowed_models", "unknown model '" + m + "'");
    }
    cfg.keys.push_back(std::move(k));
  });
}

// resilience: breaker, retry and the latency EWMA.
void read_resilience(Reader& top, Config& cfg) {
  auto res = top.child("resilience");
  auto b = res.child("breaker");
  b.get("consecutive_failures", cfg.breaker.consecutive_failures, 0, 1'000'000);
  b.get("failure_rate", cfg.breaker.failure_rate, 0, 1);
  b.get_duration("window", cfg.breaker.window);
  b.get("min_requests", cfg.breaker.min_requests, 0, 1'000'000);
  b.get_duration("open_base", cfg.breaker.open_base);
  b.get_duration("open_max", cfg.breaker.open_max);
  b.get("open_jitter", cfg.breaker.open_jitter, 0, 1);
  b.get("half_open_probes", cfg.breaker.half_open_probes, 1, 1000);
  b.get_duration("cooldown_429", cfg.breaker.cooldown_429);
  b.get_duration("cooldown_max", cfg.breaker.cooldown_max);
  b.finish();
  auto rt = res.child("retry");
  rt.get("max_attempts", cfg.retry.max_attempts, 1, 10);
  rt.get_duration("base", cfg.retry.base);
  rt.get_duration("cap", cfg.retry.cap);
  rt.get_duration("deadline", cfg.retry.deadline);
  rt.get("budget_ratio", cfg.retry.budget_ratio, 0, 10);
  rt.get("budget_min_per_s", cfg.retry.budget_min_per_s, 0, 1e6);
  rt.get_duration("budget_window", cfg.retry.budget_window);
  if (rt.has("retry_statuses")) {
    std::vector<std::string> st;
    rt.get_list("retry_statuses", st);
    cfg.retry.retry_statuses.clear();
    for (const auto& x : st) {
      int v = std::atoi(x.c_str());
      if (v < 500 || v > 599) rt.fail("retry_statuses", "only 5xx statuses can be retried");
      cfg.retry.retry_statuses.push_back(v);
    }
  } else {
    std::vector<std::string> unused;
    rt.get_list("retry_statuses", unused);
  }
  rt.finish();
  res.get_duration("ewma_tau", cfg.ewma_tau);
  res.finish();
}

// dead_letter: the DLQ of failed batch requests.
void read_dead_letter(Reader& top, Config& cfg) {
  if (top.has("dead_letter")) {
    auto d = top.child("dead_letter");
    cfg.dead_letter_enabled = true;
    d.get("enabled", cfg.dead_letter_enabled);
    d.get("path", cfg.dead_letter.path);
    d.get("max_entries", cfg.dead_letter.max_entries, 1, 100'000'000);
    std::size_t max_bytes = static_cast<std::size_t>(cfg.dead_letter.max_bytes);
    d.get_size("max_bytes", max_bytes);
    cfg.dead_letter.max_bytes = static_cast<std::int64_t>(max_bytes);
    d.finish();
  } else {
    top.child("dead_letter");
  }
}

// pricing: the built-in table, extended or overridden per model.
void read_pricing(Reader& top, Config& cfg) {
  top.each_entry("pricing", [&](const std::string& model, Reader& r) {
    cost::ModelPrice price;
    if (auto* existing = cfg.prices.find(model)) price = *existing;
    double v = -1;
    r.get("input", v, 0, 1e6);
    if (v >= 0) price.input_per_mtok = cost::usd_to_micros(v);
    v = -1;
    r.get("output", v, 0, 1e6);
    if (v >= 0) price.output_per_mtok = cost::usd_to_micros(v);
    v = -1;
    r.get("cached_input", v, 0, 1e6);
    if (v >= 0) price.cached_input_per_mtok = cost::usd_to_micros(v);
    v = -1;
    r.get("cache_write", v, 0, 1e6);
    if (v >= 0) price.cache_write_per_mtok = cost::usd_to_micros(v);
    r.get("max_output_tokens", price.max_output_tokens, 0, 100'000'000);
    r.get("image_tokens", price.image_tokens, 0, 100'000'000);
    cfg.prices.set(model, price);
  });
}

// budgets: the global budgets.
void read_global_budgets(Reader& top, Config& cfg) {
  auto b = top.child("budgets");
  if (b.has("global")) {
    auto g = b.child("global");
    read_budget(g, cfg.global_budgets);
    g.finish();
  } else {
    b.child("global");
  }
  b.each("global_budgets", [&](Reader& g) { read_budget(g, cfg.global_budgets); });
  // budgets.lease: budget leases (cost/lease.h; in-process budgets with the SQLite ledger).
  auto lease = b.child("lease");
  lease.get("enabled", cfg.budget_lease.enabled);
  double slice_usd = static_cast<double>(cfg.budget_lease.slice_micro) / 1e6;
  lease.get("slice_usd", slice_usd, 0.000001, 1e6);
  cfg.budget_lease.slice_micro = cost::usd_to_micros(slice_usd);
  lease.get("min_requests", cfg.budget_lease.min_requests, 2, 1'000'000);
  lease.get("idle_ms", cfg.budget_lease.idle_close_ms, 0, 60'000);
  lease.finish();
  b.finish();
}

// tenants: per-tenant budgets.
void read_tenants(Reader& top, Config& cfg) {
  top.each_entry("tenants", [&](const std::string& name, Reader& r) {
    TenantConfig t;
    t.name = name;
    read_budgets(r, t.budgets);
    cfg.tenants.push_back(std::move(t));
  });
}

// cost_guard: soft threshold, downgrades (model groups must be known), alerts.
void read_cost_guard(Reader& top, Config& cfg) {
  auto cg = top.child("cost_guard");
  cg.get("soft_threshold", cfg.cost_guard.soft_threshold, 0, 1);
  std::vector<std::pair<std::string, std::string>> downgrade;
  cg.get_string_map("downgrade", downgrade);
  for (auto& [from, to] : downgrade) {
    if (!cfg.model_group(to)) cg.fail("downgrade", "'" + to + "' is not a model group");
    cfg.cost_guard.downgrade[from] = to;
  }
  auto al = cg.child("alerts");
  if (al.has("thresholds")) {
    std::vector<std::string> th;
    al.get_list("thresholds", th);
    cfg.cost_guard.alert_thresholds.clear();
    for (const auto& t : th) {
      double v = std::atof(t.c_str());
      if (v <= 0 || v > 1) al.fail("thresholds", "thresholds are fractions in (0, 1]");
      cfg.cost_guard.alert_thresholds.push_back(v);
    }
  } else {
    std::vector<std::string> unused;
    al.get_list("thresholds", unused);
  }
  al.get("webhook", cfg.webhook_url);
  std::string secret_env;
  al.get("secret_env", secret_env);
  if (!secret_env.empty()) {
    const char* v = std::getenv(secret_env.c_str());
    if (!v || !*v) al.fail("secret_env", "environment variable " + secret_env + " is not set");
    cfg.webhook_secret = v;
  }
  al.finish();
  cg.get("budget_metrics_per_key", cfg.budget_metrics_per_key);
  cg.finish();
}

// ledger: SQLite or PostgreSQL; needs the budgets and redis sections.
void read_ledger(Reader& top, Config& cfg) {
  auto led = top.child("ledger");
  led.get("path", cfg.ledger_path);
  led.get("postgres", cfg.ledger_postgres);
  std::string durability;
  led.get("durability", durability);
  if (durability == "machine") {
    cfg.ledger_sync_machine = true;
  } else if (!durability.empty() && durability != "process") {
    led.fail("durability", "unknown value '" + durability + "' (expected process, machine)");
  }
  led.finish();
  if (!cfg.ledger_path.empty() && !cfg.ledger_postgres.empty()) {
    led.fail_here("choose one of path (SQLite) and postgres");
  }
  const bool any_budget = !cfg.global_budgets.empty() ||
                          std::any_of(cfg.tenants.begin(), cfg.tenants.end(),
                                      [](const TenantConfig& t) { return !t.budgets.empty(); }) ||
                          std::any_of(cfg.keys.begin(), cfg.keys.end(),
                                      [](const KeyConfig& k) { return !k.budgets.empty(); });
  // A budget counter that Redis loses is rebuilt from the ledger; without one it could only
  // restart at zero, i.e. fail open.
  if (cfg.redis_enabled && cfg.redis_budgets_enabled && any_budget && cfg.ledger_path.empty() &&
      cfg.ledger_postgres.empty()) {
    led.fail_here(
        "budgets in Redis need a ledger to rebuild from: set ledger.postgres (or "
        "redis.budgets: false)");
  }
}

// scaler.gateway: what one gateway replica has, its own capacity (capacity_planner.h).
void read_gateway_capacity(Reader& sc, Config& cfg) {
  auto gc = sc.child("gateway");
  auto& g = cfg.gateway_capacity;
  gc.get("cpu_cores_per_replica", g.cpu_cores_per_replica, 0.01, 1024);
  gc.get("target_cpu_utilization", g.target_cpu_utilization, 0.05, 1);
  gc.get("cpu_seconds_per_request", g.cpu_seconds_per_request, 1e-7, 10);
  gc.get("max_connections_per_replica", g.max_connections_per_replica, 0, 1e9);
  gc.get("target_connection_utilization", g.target_connection_utilization, 0.05, 1);
  gc.get("memory_bytes_per_replica", g.memory_bytes_per_replica, 0, 1e15);
  gc.get("target_memory_utilization", g.target_memory_utilization, 0.05, 1);
  gc.get_duration("event_loop_lag_threshold", g.event_loop_lag_threshold);
  gc.get("quota_threshold", g.quota_threshold, 0.1, 1);
  gc.finish();
}

// scaler.
void read_scaler(Reader& top, Config& cfg) {
  auto sc = top.child("scaler");
  std::string method;
  sc.get("method", method);
  if (!method.empty()) {
    auto m = telemetry::parse_scale_method(method);
    if (!m) sc.fail("method", "unknown method '" + method + "' (wma, holt, reactive)");
    cfg.scaler.method = *m;
  }
  sc.get("min_replicas", cfg.scaler.min_replicas, 1, 10'000);
  sc.get("max_replicas", cfg.scaler.max_replicas, 1, 10'000);
  sc.get("capacity_rps_per_replica", cfg.scaler.capacity_rps_per_replica, 0.001, 1e9);
  sc.get("headroom", cfg.scaler.headroom, 0, 10);
  sc.get("scale_down_utilization", cfg.scaler.scale_down_utilization, 0.05, 1);
  sc.get_duration("sample_interval", cfg.scaler.sample_interval);
  sc.get_duration("forecast_horizon", cfg.scaler.forecast_horizon);
  sc.get_duration("scale_up_cooldown", cfg.scaler.scale_up_cooldown);
  sc.get_duration("scale_down_cooldown", cfg.scaler.scale_down_cooldown);
  sc.get("reactive_queue_threshold", cfg.scaler.reactive_queue_threshold, 0, 1e9);
  sc.get("reactive_step_factor", cfg.scaler.reactive_step_factor, 1, 100);
  sc.get("scale_up_tolerance", cfg.scaler.scale_up_tolerance, 0, 10);
  sc.get_duration("scale_down_window", cfg.scaler.scale_down_window);
  {
    std::int64_t wma = static_cast<std::int64_t>(cfg.scaler.wma_window);
    sc.get("wma_window", wma, 1, 10'000);
    cfg.scaler.wma_window = static_cast<std::size_t>(wma);
  }
  sc.get("holt_alpha", cfg.scaler.holt_alpha, 0.01, 1);
  sc.get("holt_beta", cfg.scaler.holt_beta, 0.01, 1);
  sc.get("current_replicas", cfg.current_replicas, 1, 10'000);
  read_gateway_capacity(sc, cfg);
  sc.finish();
  if (cfg.scaler.min_replicas > cfg.scaler.max_replicas) {
    sc.fail_here("min_replicas must be <= max_replicas");
  }
}

// sim: the in-process simulator.
void read_sim(Reader& top, Config& cfg) {
  auto s = top.child("sim");
  s.get("listen", cfg.sim.listen);
  s.get("zero_latency", cfg.sim.zero_latency);
  if (s.has("max_tokens")) {
    std::string mode;
    s.get("max_tokens", mode);
    if (mode == "limit")
      cfg.sim.max_tokens_is_limit = true;
    else if (mode == "length")
      cfg.sim.max_tokens_is_limit = false;
    else
      s.fail("max_tokens", "must be length or limit");
  }
  s.get("workers", cfg.sim.workers, 1, 64);
  std::int64_t seed = static_cast<std::int64_t>(cfg.sim.seed);
  s.get("seed", seed, 0, INT64_MAX);
  cfg.sim.seed = static_cast<std::uint64_t>(seed);
  if (s.has("defaults")) {
    auto d = s.child("defaults");
    read_sim_model(d, cfg.sim.defaults);
    d.finish();
  } else {
    s.child("defaults");
  }
  s.each_entry("models", [&](const std::string& name, Reader& r) {
    SimModelConfig m = cfg.sim.defaults;
    m.name = name;
    read_sim_model(r, m);
    cfg.sim.models.push_back(std::move(m));
  });
  s.finish();
}

std::shared_ptr<const Config> parse(const YAML::Node& root, const std::string& file,
                                    const std::string& text, bool embedded) {
  auto cfg = std::make_shared<Config>();
  cfg->source = file;
  cfg->text = text;
  cfg->embedded = embedded;
  Reader top(root, file);
  // In dependency order: a section may refer to what an earlier one defined.
  read_server(top, *cfg);
  read_redis(top, *cfg);
  read_cache(top, *cfg);
  read_responses(top, *cfg);
  read_limits(top, *cfg);
  read_plans(top, *cfg);
  read_admin(top, *cfg);
  read_access_log(top, *cfg);
  read_tracing(top.child("tracing"), cfg->tracing);
  read_admission(top, *cfg);
  read_providers(top, *cfg);
  read_model_groups(top, *cfg);
  check_model_group_links(root, file, *cfg);
  read_keys(top, *cfg);
  read_resilience(top, *cfg);
  read_dead_letter(top, *cfg);
  read_pricing(top, *cfg);
  read_global_budgets(top, *cfg);
  read_tenants(top, *cfg);
  read_cost_guard(top, *cfg);
  read_ledger(top, *cfg);
  read_scaler(top, *cfg);
  read_sim(top, *cfg);
  top.finish();
  return cfg;
}

Result<std::shared_ptr<const Config>> load_yaml(const std::string& text, const std::string& name,
                                                bool embedded) {
  try {
    YAML::Node root = YAML::Load(text);
    if (root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
    return parse(root, name, text, embedded);
  } catch (const ConfigError& e) {
    return make_error(500, "config_error", "", e.what());
  } catch (const YAML::Exception& e) {
    return make_error(500, "config_error", "",
                      name + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
}

bool secret_key_name(std::string k) {
  std::transform(k.begin(), k.end(), k.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (k.ends_with("_env") || k.ends_with("_sha256") || k == "key_header") return false;
  // Whole words at the end of the name: "api_key", "secret", "bearer_token"; not "max_tokens".
  for (std::string_view w : {"key", "secret", "password", "passwd", "token", "authorization",
                             "credential", "credentials", "conninfo", "dsn"}) {
    if (k == w) return true;
    if (k.size() > w.size() && k.ends_with(w) &&
        (k[k.size() - w.size() - 1] == '_' || k[k.size() - w.size() - 1] == '-')) {
      return true;
    }
  }
  return false;
}

// user:password@ inside a URL (postgresql://u:p@h/db, redis://:p@h).
std::string redact_url_credentials(const std::string& v) {
  const auto scheme = v.find("://");
  if (scheme == std::string::npos) return v;
  const auto at = v.find('@', scheme + 3);
  const auto slash = v.find('/', scheme + 3);
  if (at == std::string::npos || (slash != std::string::npos && slash < at)) return v;
  return v.substr(0, scheme + 3) + "<redacted>" + v.substr(at);
}

void redact_node(YAML::Node node) {
  if (node.IsMap()) {
    for (auto it = node.begin(); it != node.end(); ++it) {
      const std::string k = it->first.IsScalar() ? it->first.as<std::string>() : std::string();
      if (secret_key_name(k) && it->second.IsScalar()) {
        it->second = "<redacted>";
      } else {
        redact_node(it->second);
      }
    }
  } else if (node.IsSequence()) {
    for (std::size_t i = 0; i < node.size(); ++i) redact_node(node[i]);
  } else if (node.IsScalar()) {
    const std::string v = node.as<std::string>();
    const std::string r = redact_url_credentials(v);
    if (r != v) node = r;
  }
}

}  // namespace

std::string redacted_yaml(const std::string& text) {
  try {
    YAML::Node root = YAML::Load(text);
    redact_node(root);
    YAML::Emitter out;
    out << root;
    return out.c_str();
  } catch (const YAML::Exception&) {
    return "# the configuration could not be shown\n";
  }
}

Result<std::shared_ptr<const Config>> load_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return make_error(500, "config_error", "", path + ": cannot open file");
  std::stringstream ss;
  ss << in.rdbuf();
  return load_yaml(ss.str(), path, false);
}

Result<std::shared_ptr<const Config>> load_string(const std::string& yaml,
                                                  const std::string& name) {
  return load_yaml(yaml, name, name == "<embedded>");
}

}  // namespace bw::config
