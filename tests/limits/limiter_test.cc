#include "limits/limiter.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "limits/memory_limit_store.h"

namespace bw::limits {
namespace {

constexpr Nanos kT0 = 1000 * kNanosPerSecond;
constexpr Nanos kMs = kNanosPerMilli;

LimitSpec spec(std::string name, Scope scope, std::int64_t rate, std::string match = {},
               Unit unit = Unit::kRequests, Period period = Period::kSecond) {
  LimitSpec s;
  s.name = std::move(name);
  s.scope = scope;
  s.rate = rate;
  s.match = std::move(match);
  s.unit = unit;
  s.period = period;
  return s;
}

std::shared_ptr<MemoryLimitStore> new_store() {
  MemoryLimitStoreOptions o;
  o.hash_seed = 7;
  return std::make_shared<MemoryLimitStore>(o);
}

std::shared_ptr<const LimiterConfig> cfg(std::vector<LimitSpec> limits) {
  return std::make_shared<const LimiterConfig>(LimiterConfig{std::move(limits)});
}

RequestScope scope(std::string_view key = "k1", std::string_view ip = "10.0.0.1",
                   std::string_view model = "gpt-4o",
                   std::string_view endpoint = "/v1/chat/completions") {
  RequestScope s;
  s.key_id = key;
  s.tenant_id = "t1";
  s.client_ip = ip;
  s.model = model;
  s.endpoint = endpoint;
  return s;
}

// The scope of key `key` of `tenant` on `plan`, its limits prepared ahead in `ready` if given.
RequestScope plan_scope(std::string_view key, std::string_view tenant, const Plan& plan,
                        const PreparedLimits* ready = nullptr) {
  RequestScope s = scope(key);
  s.tenant_id = tenant;
  s.plan = &plan;
  s.prepared = ready;
  return s;
}

int admit(Limiter& l, const RequestScope& s, int n, Nanos now, std::int64_t tokens = 0) {
  int ok = 0;
  for (int i = 0; i < n; ++i) ok += l.check(s, tokens, now).allowed;
  return ok;
}

// A Verdict is built without being zeroed first: every member has its default from its own
// initialiser, also in memory that held something else.
TEST(Limiter, AVerdictBuiltOverOtherBytesHasItsDefaults) {
  alignas(Verdict) unsigned char room[sizeof(Verdict)];
  std::memset(room, 0xab, sizeof room);
  auto* v = new (room) Verdict{};
  EXPECT_TRUE(v->allowed);
  EXPECT_TRUE(v->limit_name.empty());
  EXPECT_EQ(v->retry_after_ns, 0);
  for (const RateHeaders* h : {&v->requests, &v->tokens}) {
    EXPECT_FALSE(h->present);
    EXPECT_EQ(h->limit, 0);
    EXPECT_EQ(h->remaining, 0);
    EXPECT_EQ(h->reset_after, 0);
  }
  EXPECT_TRUE(v->shadow_rejections.empty());
  EXPECT_FALSE(v->wait_ok);
  EXPECT_FALSE(v->overflow);
  EXPECT_FALSE(v->unavailable);
  EXPECT_TRUE(v->reservation.token_limits.empty());
  EXPECT_TRUE(v->reservation.key_bytes.empty());
  EXPECT_EQ(v->reservation.reserved_tokens, 0);
  EXPECT_FALSE(v->reservation.settled);
  // A charged limit made in the reservation's inline room (which held 0xab bytes) has its
  // defaults too.
  const ChargedLimit& c = v->reservation.token_limits.emplace_back();
  const ChargedLimit fresh;
  EXPECT_EQ(c.key_begin, 0u);
  EXPECT_EQ(c.key_size, 0u);
  EXPECT_EQ(c.name_size, 0u);
  EXPECT_EQ(c.algorithm, Algorithm::kGcra);
  EXPECT_EQ(c.params.rate, fresh.params.rate);
  EXPECT_EQ(c.params.period, fresh.params.period);
  EXPECT_EQ(c.params.burst, fresh.params.burst);
  EXPECT_EQ(c.charged, 0);
  EXPECT_FALSE(c.has_digest);
  EXPECT_EQ(c.digest.store, nullptr);
  EXPECT_EQ(c.digest.lo, 0u);
  EXPECT_EQ(c.digest.hi, 0u);
  EXPECT_EQ(c.bucket.maker, 0u);
  EXPECT_EQ(c.bucket.at, nullptr);
  EXPECT_EQ(c.bucket.generation, 0u);
  v->~Verdict();
}

TEST(Limiter, IpScopeIsPerAddress) {
  Limiter l(cfg({spec("ip-rps", Scope::kIp, 2)}), new_store());
  EXPECT_EQ(admit(l, scope("k1", "10.0.0.1"), 5, kT0), 2);
  EXPECT_EQ(admit(l, scope("k2", "10.0.0.1"), 5, kT0), 0);  // same IP, other key
  EXPECT_EQ(admit(l, scope("k1", "10.0.0.2"), 5, kT0), 2);
}

TEST(Limiter, EndpointAndModelMatching) {
  Limiter l(
      cfg({spec("chat", Scope::kEndpoint, 1, "/v1/chat/completions"),
           spec("per-model", Scope::kModel, 3), spec("gpt4-family", Scope::kModel, 4, "gpt-4*")}),
      new_store());
  // Embeddings are not covered by "chat"; "per-model" counts each model separately.
  EXPECT_EQ(admit(l, scope("k", "ip", "text-embed", "/v1/embeddings"), 5, kT0), 3);
  EXPECT_EQ(admit(l, scope("k", "ip", "gpt-4o", "/v1/embeddings"), 2, kT0), 2);
  // gpt-4o-mini shares the gpt-4* bucket (2 used) but has its own per-model bucket.
  EXPECT_EQ(admit(l, scope("k", "ip", "gpt-4o-mini", "/v1/embeddings"), 5, kT0), 2);
  const Verdict v = l.check(scope("k", "ip", "claude", "/v1/chat/completions"), 0, kT0);
  EXPECT_TRUE(v.allowed);
  const Verdict v2 = l.check(scope("k", "ip", "claude", "/v1/chat/completions"), 0, kT0);
  EXPECT_FALSE(v2.allowed);
  EXPECT_EQ(v2.limit_name, "chat");
  EXPECT_EQ(v2.retry_after_ns, kNanosPerSecond);
}

// A scope may give the request target instead of its endpoint: the endpoint is the target's part
// before any '?', for config and plan limits alike.
TEST(Limiter, EndpointIsCutFromTheTarget) {
  Plan plan;
  plan.name = "p";
  plan.limits = {spec("plan-chat", Scope::kEndpoint, 2, "/v1/chat/completions")};
  Limiter l(cfg({spec("chat", Scope::kEndpoint, 3, "/v1/chat/*")}), new_store());
  auto at = [&](std::string_view target) {
    RequestScope s = plan_scope("k", "t", plan);
    s.endpoint = {};
    s.target = target;
    return s;
  };
  EXPECT_EQ(admit(l, at("/v1/embeddings?x=/v1/chat/completions"), 4, kT0), 4);  // neither
  EXPECT_EQ(admit(l, at("/v1/chat/completions?stream=1"), 1, kT0), 1);
  EXPECT_EQ(admit(l, at("/v1/chat/completions"), 2, kT0), 1);  // the plan's 2 used
  const Verdict v = l.check(at("/v1/chat/other?a=b"), 0, kT0);
  EXPECT_TRUE(v.allowed);                                   // the config's third
  EXPECT_FALSE(l.check(at("/v1/chat/x"), 0, kT0).allowed);  // the config's 3 used
  EXPECT_EQ(l.check(at("/v1/chat/x"), 0, kT0).limit_name, "chat");
  // A given endpoint is taken as it is.
  RequestScope both = at("/v1/chat/completions");
  both.endpoint = "/v1/embeddings";
  EXPECT_TRUE(l.check(both, 0, kT0).allowed);
}

TEST(Limiter, PlanDailyQuotaAndKeyOverride) {
  Plan plan;
  plan.name = "tiny";
  plan.daily_requests = 3;
  plan.limits = {spec("rps", Scope::kKey, 100)};
  Limiter l(cfg({}), new_store());
  RequestScope s = scope("k1");
  s.plan = &plan;
  EXPECT_EQ(admit(l, s, 5, kT0), 3);
  const Verdict v = l.check(s, 0, kT0 + kNanosPerSecond);
  EXPECT_FALSE(v.allowed);
  EXPECT_EQ(v.limit_name, "daily-requests");
  // Slots are 72 min wide from the clock origin: the slot [0 s, 4320 s) counts until 21 * 4320 s.
  EXPECT_EQ(v.retry_after_ns, (21 * 4320 - 1001) * kNanosPerSecond);
  // Another key on the same plan has its own quota; an override raises it for one key.
  const std::vector<LimitSpec> overrides = {[] {
                                              LimitSpec o;
                                              o.name = "daily-requests";
                                              o.rate = 5;
                                              o.period = Period::kDay;
                                              o.algorithm = Algorithm::kSlidingWindow;
                                              return o;
                                            }(),
                                            spec("rps", Scope::kKey, 1)};
  RequestScope s2 = scope("k2");
  s2.plan = &plan;
  s2.key_overrides = &overrides;
  EXPECT_EQ(admit(l, s2, 5, kT0), 1);  // the rps override (1/s) binds first
  for (int i = 1; i < 10; ++i) l.check(s2, 0, kT0 + i * kNanosPerSecond);
  EXPECT_EQ(admit(l, s2, 1, kT0 + 20 * kNanosPerSecond), 0);  // 5 per day reached
}

TEST(Limiter, TenantScopedPlanLimitIsShared) {
  Plan plan;
  plan.limits = {spec("tenant-rps", Scope::kTenant, 3)};
  Limiter l(cfg({}), new_store());
  RequestScope a = scope("ka"), b = scope("kb");
  a.plan = b.plan = &plan;
  EXPECT_EQ(admit(l, a, 2, kT0), 2);
  EXPECT_EQ(admit(l, b, 2, kT0), 1);
}

// A key's plan limits resolved ahead give the very verdicts of the per-request path: the same
// limits, in the same order, on the same buckets.
void expect_same(const Verdict& a, const Verdict& b, int step) {
  SCOPED_TRACE(step);
  EXPECT_EQ(a.allowed, b.allowed);
  EXPECT_EQ(a.limit_name, b.limit_name);
  EXPECT_EQ(a.retry_after_ns, b.retry_after_ns);
  EXPECT_EQ(a.requests.present, b.requests.present);
  EXPECT_EQ(a.requests.limit, b.requests.limit);
  EXPECT_EQ(a.requests.remaining, b.requests.remaining);
  EXPECT_EQ(a.requests.reset_after, b.requests.reset_after);
  EXPECT_EQ(a.tokens.present, b.tokens.present);
  EXPECT_EQ(a.tokens.remaining, b.tokens.remaining);
  EXPECT_EQ(a.tokens.reset_after, b.tokens.reset_after);
  EXPECT_EQ(a.shadow_rejections, b.shadow_rejections);
  EXPECT_EQ(a.wait_ok, b.wait_ok);
  ASSERT_EQ(a.reservation.token_limits.size(), b.reservation.token_limits.size());
  for (std::size_t i = 0; i < a.reservation.token_limits.size(); ++i) {
    const auto& x = a.reservation.token_limits[i];
    const auto& y = b.reservation.token_limits[i];
    EXPECT_EQ(a.reservation.key(x), b.reservation.key(y));
    EXPECT_EQ(a.reservation.adjust_spec(x).name, b.reservation.adjust_spec(y).name);
    EXPECT_EQ(x.charged, y.charged);
    EXPECT_EQ(x.algorithm, y.algorithm);
    EXPECT_EQ(x.params.rate, y.params.rate);
    EXPECT_EQ(x.params.period, y.params.period);
    EXPECT_EQ(x.params.burst, y.params.burst);
  }
  EXPECT_EQ(a.reservation.reserved_tokens, b.reservation.reserved_tokens);
}

// `n` requests checked and settled on both limiters (`plain` with scope `s`, `fast` with `p`),
// one every 97 ms: the verdicts must be the same. Returns how many were admitted.
int same_verdicts(Limiter& plain, const RequestScope& s, Limiter& fast, const RequestScope& p,
                  int n) {
  int passed = 0;
  for (int i = 0; i < n; ++i) {
    const Nanos now = kT0 + i * 97 * kMs;
    Verdict a = plain.check(s, 100 + i, now);
    Verdict b = fast.check(p, 100 + i, now);
    expect_same(a, b, i);
    passed += a.allowed;
    plain.settle(a.reservation, 30 + i, now + kMs);
    fast.settle(b.reservation, 30 + i, now + kMs);
  }
  return passed;
}

TEST(Limiter, PreparedPlanLimitsGiveTheSameVerdicts) {
  Plan plan;
  plan.daily_requests = 40;
  LimitSpec shadow = spec("shadow-rps", Scope::kKey, 2);
  shadow.mode = Mode::kShadow;
  plan.limits = {spec("rps", Scope::kKey, 5), spec("tenant-rps", Scope::kTenant, 7),
                 spec("tpm", Scope::kKey, 900, {}, Unit::kTokens, Period::kMinute), shadow};
  const std::vector<LimitSpec> overrides = {spec("rps", Scope::kKey, 4),
                                            spec("extra", Scope::kKey, 6)};
  const std::string key = "k1", tenant = "t1";
  const PreparedLimits ready(&plan, &overrides, key, tenant);
  ASSERT_TRUE(ready.usable());
  EXPECT_EQ(ready.size(), 6u);  // rps (overridden), tenant-rps, tpm, shadow, daily, extra
  Limiter plain(cfg({spec("global", Scope::kGlobal, 50)}), new_store());
  Limiter fast(cfg({spec("global", Scope::kGlobal, 50)}), new_store());
  RequestScope s = scope();
  s.key_id = key;
  s.tenant_id = tenant;
  s.plan = &plan;
  s.key_overrides = &overrides;
  RequestScope p = s;
  p.prepared = &ready;
  const int passed = same_verdicts(plain, s, fast, p, 60);
  EXPECT_GT(passed, 0);
  EXPECT_LT(passed, 60);

  // Used only for the scope it was built for: another key's scope takes the per-request path.
  RequestScope other = s;
  other.key_id = "k2";
  RequestScope other_p = other;
  other_p.prepared = &ready;
  for (int i = 0; i < 8; ++i) {
    expect_same(plain.check(other, 1, kT0 + 10 * kNanosPerSecond),
                fast.check(other_p, 1, kT0 + 10 * kNanosPerSecond), 100 + i);
  }
}

// The check that builds its verdict in the caller's Lazy gives the returned check's verdict, and
// leaves the Lazy unused when no limit applies.
TEST(Limiter, CheckIntoLazyGivesTheSameVerdict) {
  Plan plan;
  plan.daily_requests = 30;
  plan.limits = {spec("rps", Scope::kKey, 5),
                 spec("tpm", Scope::kKey, 900, {}, Unit::kTokens, Period::kMinute)};
  const std::string key = "k1", tenant = "t1";
  const PreparedLimits ready(&plan, nullptr, key, tenant);
  Limiter returned(cfg({spec("global", Scope::kGlobal, 50)}), new_store());
  Limiter built(cfg({spec("global", Scope::kGlobal, 50)}), new_store());
  RequestScope s = scope();
  s.key_id = key;
  s.tenant_id = tenant;
  s.plan = &plan;
  s.prepared = &ready;
  Lazy<Verdict> reused;  // one Lazy for every request: each check starts from a default verdict
  int passed = 0;
  for (int i = 0; i < 40; ++i) {
    const Nanos now = kT0 + i * 61 * kMs;
    Verdict a = returned.check(s, 100 + i, now);
    Lazy<Verdict> fresh;
    ASSERT_TRUE(built.check(s, 100 + i, now, fresh));
    ASSERT_TRUE(fresh.used());
    expect_same(a, fresh.get(), i);
    passed += a.allowed;
    returned.settle(a.reservation, 30 + i, now + kMs);
    built.settle(fresh.mut().reservation, 30 + i, now + kMs);
  }
  EXPECT_GT(passed, 0);
  EXPECT_LT(passed, 40);
  // A refusal's verdict (limit name, retry) in a Lazy, then an admission in the same Lazy: nothing
  // of the refusal is left.
  Limiter one(cfg({spec("tight", Scope::kKey, 1)}), new_store());
  ASSERT_TRUE(one.check(scope(), 0, kT0, reused));
  ASSERT_TRUE(reused.get().allowed);
  ASSERT_TRUE(one.check(scope(), 0, kT0, reused));
  EXPECT_FALSE(reused.get().allowed);
  EXPECT_EQ(reused.get().limit_name, "tight");
  ASSERT_TRUE(one.check(scope(), 0, kT0 + 2 * kNanosPerSecond, reused));
  expect_same(reused.get(), one.check(scope("k9"), 0, kT0 + 2 * kNanosPerSecond), 1000);
  // No limit applies: false, and the Lazy stays unused.
  Limiter none(cfg({}), new_store());
  Lazy<Verdict> untouched;
  EXPECT_FALSE(none.check(scope(), 10, kT0, untouched));
  EXPECT_FALSE(untouched.used());
  expect_same(none.check(scope(), 10, kT0), Verdict{}, 1001);
}

TEST(Limiter, PreparedPlanLimitsLeaveRequestScopedPlansToTheRequest) {
  Plan plan;
  plan.limits = {spec("rps", Scope::kKey, 3), spec("chat", Scope::kEndpoint, 1, "/v1/chat/*")};
  const std::string key = "k1", tenant = "t1";
  const PreparedLimits ready(&plan, nullptr, key, tenant);
  EXPECT_FALSE(ready.usable());
  Limiter l(cfg({}), new_store());
  RequestScope s = scope();
  s.key_id = key;
  s.tenant_id = tenant;
  s.plan = &plan;
  s.prepared = &ready;
  EXPECT_EQ(admit(l, s, 3, kT0), 1);  // "chat" binds on a chat path
  RequestScope e = s;
  e.endpoint = "/v1/embeddings";
  EXPECT_EQ(admit(l, e, 3, kT0), 2);  // only rps here (1 of 3 used above)
}

// A key's plan limits alone (no config limits) on `fast` with the key's limits prepared in `ready`
// and on a limiter without: 80 requests with the same verdicts, some admitted and some refused.
// `key` and `tenant` are those `ready` was built for (the same strings).
void prepared_alone_same_verdicts(const Plan& plan, const PreparedLimits& ready, Limiter& fast,
                                  const std::string& key, const std::string& tenant) {
  Limiter plain(cfg({}), new_store());
  const int passed = same_verdicts(plain, plan_scope(key, tenant, plan), fast,
                                   plan_scope(key, tenant, plan, &ready), 80);
  EXPECT_GT(passed, 0);
  EXPECT_LT(passed, 80);
}

// A key's plan limits alone (no config limits): the store decides them as it prepared them, on
// the same buckets as the per-request path, with the same verdicts.
TEST(Limiter, PreparedPlanLimitsAloneGiveTheSameVerdicts) {
  Plan plan;
  plan.daily_requests = 40;
  LimitSpec shadow = spec("shadow-rps", Scope::kKey, 2);
  shadow.mode = Mode::kShadow;
  LimitSpec tb = spec("tb-rps", Scope::kKey, 9);
  tb.algorithm = Algorithm::kTokenBucket;
  plan.limits = {spec("rps", Scope::kKey, 5), spec("tenant-rps", Scope::kTenant, 7),
                 spec("tpm", Scope::kKey, 900, {}, Unit::kTokens, Period::kMinute), shadow, tb};
  const std::string key = "k1", tenant = "t1";
  const PreparedLimits ready(&plan, nullptr, key, tenant);
  Limiter fast(cfg({}), new_store());
  prepared_alone_same_verdicts(plan, ready, fast, key, tenant);
}

// Plan limits that are all enforced (no shadow limit): an allowed batch's verdict is made from
// what was prepared for the key (headers, and each token limit's charge with its key, the
// store's digest of it and the bucket's handle); a refused one as any other.
TEST(Limiter, PreparedEnforcedPlanLimitsGiveTheSameVerdicts) {
  Plan plan;
  plan.daily_requests = 50;
  LimitSpec tpd = spec("tpd", Scope::kKey, 20000, {}, Unit::kTokens, Period::kDay);
  tpd.algorithm = Algorithm::kSlidingWindow;
  // Every limit of the key's own (a tenant's limit would make a batch of two owners, which the
  // store does not prepare).
  plan.limits = {spec("rps", Scope::kKey, 5),
                 spec("tpm", Scope::kKey, 900, {}, Unit::kTokens, Period::kMinute), tpd};
  const std::string key = "k1", tenant = "t1";
  const PreparedLimits ready(&plan, nullptr, key, tenant);
  Limiter fast(cfg({}), new_store());
  prepared_alone_same_verdicts(plan, ready, fast, key, tenant);

  // The charges of an allowed verdict reach their buckets by handle and digest.
  const Verdict v =
      fast.check(plan_scope(key, tenant, plan, &ready), 10, kT0 + 3600 * kNanosPerSecond);
  ASSERT_TRUE(v.allowed);
  ASSERT_EQ(v.reservation.token_limits.size(), 2u);
  for (const ChargedLimit& c : v.reservation.token_limits) {
    EXPECT_TRUE(c.has_digest);
    EXPECT_NE(c.bucket.maker, 0u);
    EXPECT_NE(c.bucket.at, nullptr);
    EXPECT_EQ(c.charged, 10);
  }
  EXPECT_EQ(v.reservation.adjust_spec(v.reservation.token_limits[0]).name, "tpm");
  EXPECT_EQ(v.reservation.adjust_spec(v.reservation.token_limits[1]).name, "tpd");
  EXPECT_EQ(v.reservation.token_limits[1].algorithm, Algorithm::kSlidingWindow);
  // Without token costs nothing is charged to settle.
  const Verdict free =
      fast.check(plan_scope(key, tenant, plan, &ready), 0, kT0 + 7200 * kNanosPerSecond);
  ASSERT_TRUE(free.allowed);
  EXPECT_TRUE(free.reservation.token_limits.empty());
  EXPECT_TRUE(free.tokens.present);
}

// A reload that changes a key's limits: the runtime prepares the new plan's limits, and the key's
// buckets (by limit name) carry over; a config limit added by a reload is checked with them.
TEST(Limiter, PreparedPlanLimitsFollowAReload) {
  auto store = new_store();
  Limiter l(cfg({}), store);
  const std::string key = "k1", tenant = "t1";
  Plan before;
  before.limits = {spec("rps", Scope::kKey, 5)};
  Plan after;
  after.limits = {spec("rps", Scope::kKey, 4),
                  spec("rpm", Scope::kKey, 6, {}, Unit::kRequests, Period::kMinute)};
  auto with = [&](const Plan& plan, const PreparedLimits& ready) {
    return plan_scope(key, tenant, plan, &ready);
  };
  const PreparedLimits ready_before(&before, nullptr, key, tenant);
  EXPECT_EQ(admit(l, with(before, ready_before), 3, kT0), 3);
  const PreparedLimits ready_after(&after, nullptr, key, tenant);
  // rps keeps its 3 used units under its new rate of 4: one more passes; rpm is new.
  EXPECT_EQ(admit(l, with(after, ready_after), 5, kT0), 1);
  const Verdict v = l.check(with(after, ready_after), 0, kT0 + kNanosPerSecond);
  ASSERT_TRUE(v.allowed);
  EXPECT_EQ(v.requests.limit, 4);  // rps (3 left) before rpm (2 of 6 used, 1.9 drained: 4 left)
  EXPECT_EQ(v.requests.remaining, 3);
  l.reload(cfg({spec("global", Scope::kGlobal, 1)}));
  EXPECT_EQ(admit(l, with(after, ready_after), 3, kT0 + 2 * kNanosPerSecond), 1);
  l.reload(cfg({}));
  // rpm (6 a minute): 3 used, 0.3 of them drained, 3 more fit; rps has room again.
  EXPECT_EQ(admit(l, with(after, ready_after), 5, kT0 + 3 * kNanosPerSecond), 3);
}

// Two keys on one plan (two prepared sets of the same limit names) keep their own buckets.
TEST(Limiter, PreparedPlanLimitsOfTwoKeysKeepTheirOwnBuckets) {
  Limiter l(cfg({}), new_store());
  Plan plan;
  plan.limits = {spec("rps", Scope::kKey, 3)};
  const std::string k1 = "k1", k2 = "k2", tenant = "t1";
  const PreparedLimits r1(&plan, nullptr, k1, tenant), r2(&plan, nullptr, k2, tenant);
  const RequestScope s1 = plan_scope(k1, tenant, plan, &r1), s2 = plan_scope(k2, tenant, plan, &r2);
  EXPECT_EQ(admit(l, s1, 5, kT0), 3);
  EXPECT_EQ(admit(l, s2, 5, kT0), 3);
  EXPECT_EQ(admit(l, s1, 1, kT0), 0);
}

// A bucket the store deleted (idle, a refund that empties it, an eviction) is not used again by
// the prepared checks: a bucket made afresh by another path is the one they see.
TEST(Limiter, PreparedPlanLimitsSeeDeletedAndRecreatedBuckets) {
  auto store = new_store();
  Limiter l(cfg({}), store);
  Plan plan;
  plan.limits = {spec("rps", Scope::kKey, 5),
                 spec("tpm", Scope::kKey, 1000, {}, Unit::kTokens, Period::kMinute)};
  const std::string key = "k1", tenant = "t1";
  const PreparedLimits ready(&plan, nullptr, key, tenant);
  const RequestScope s = plan_scope(key, tenant, plan), p = plan_scope(key, tenant, plan, &ready);
  EXPECT_EQ(admit(l, p, 5, kT0, 10), 5);
  EXPECT_EQ(store->size(), 2u);
  // Both buckets drain and are evicted; the per-request path (same buckets) then uses rps up.
  const Nanos later = kT0 + 100 * kNanosPerSecond;
  EXPECT_EQ(store->evict_idle(later), 2u);
  EXPECT_EQ(admit(l, s, 5, later, 10), 5);
  EXPECT_EQ(admit(l, p, 1, later, 10), 0);  // the new bucket, not the evicted one
  // The TPM refund empties the token bucket, kept as a fresh one; once the sweep deletes it, the
  // prepared checks make it again.
  const Nanos t = later + 10 * kNanosPerSecond;
  Verdict v = l.check(p, 600, t);
  ASSERT_TRUE(v.allowed);
  EXPECT_EQ(v.tokens.remaining, 400);
  l.settle(v.reservation, 0, t);  // all 600 back: the bucket is empty
  EXPECT_EQ(store->size(), 2u);
  v = l.check(p, 600, t);
  ASSERT_TRUE(v.allowed);
  EXPECT_EQ(v.tokens.remaining, 400);
  l.settle(v.reservation, 0, t);
  EXPECT_EQ(store->evict_idle(t), 1u);
  EXPECT_EQ(store->size(), 1u);
  v = l.check(p, 900, t);
  ASSERT_TRUE(v.allowed);
  EXPECT_EQ(v.tokens.remaining, 100);
  EXPECT_EQ(store->size(), 2u);
  l.settle(v.reservation, 300, t);  // 600 back
  v = l.check(p, 700, t);           // 300 used: 700 fits exactly
  ASSERT_TRUE(v.allowed);
  EXPECT_EQ(v.tokens.remaining, 0);
  EXPECT_FALSE(l.check(s, 1, t).allowed);  // the per-request path sees the same bucket
}

// Threads checking and settling one key's prepared limits admit exactly its allowance.
TEST(Limiter, PreparedPlanLimitsUnderConcurrentChecks) {
  Limiter l(cfg({}), new_store());
  Plan plan;
  plan.limits = {spec("rpm", Scope::kKey, 3000, {}, Unit::kRequests, Period::kMinute),
                 spec("tpm", Scope::kKey, 1'000'000, {}, Unit::kTokens, Period::kMinute)};
  const std::string key = "k1", tenant = "t1";
  const PreparedLimits ready(&plan, nullptr, key, tenant);
  const RequestScope s = plan_scope(key, tenant, plan, &ready);
  std::atomic<int> admitted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 2000; ++i) {
        Verdict v = l.check(s, 50, kT0);
        if (v.allowed) {
          ++admitted;
          l.settle(v.reservation, i % 2 ? 0 : 80, kT0);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(admitted.load(), 3000);
}

TEST(Limiter, HeadersShadowWaitAndSettle) {
  LimitSpec rpm = spec("rpm", Scope::kKey, 60, {}, Unit::kRequests, Period::kMinute);
  rpm.on_exceed = OnExceed::kWait;
  LimitSpec tpm = spec("tpm", Scope::kKey, 1000, {}, Unit::kTokens, Period::kMinute);
  LimitSpec shadow = spec("shadow-ip", Scope::kIp, 1);
  shadow.mode = Mode::kShadow;
  Limiter l(cfg({rpm, tpm, shadow}), new_store());
  Verdict v = l.check(scope(), 600, kT0);
  ASSERT_TRUE(v.allowed);
  EXPECT_TRUE(v.shadow_rejections.empty());
  EXPECT_EQ(v.requests.limit, 60);
  EXPECT_EQ(v.requests.remaining, 59);
  EXPECT_EQ(v.requests.reset_after, kNanosPerSecond);
  EXPECT_EQ(v.tokens.limit, 1000);
  EXPECT_EQ(v.tokens.remaining, 400);
  EXPECT_EQ(v.tokens.reset_after, 36 * kNanosPerSecond);
  ASSERT_EQ(v.reservation.token_limits.size(), 1u);
  EXPECT_EQ(v.reservation.reserved_tokens, 600);

  Verdict v2 = l.check(scope(), 600, kT0);  // tokens exhausted; shadow-ip would also reject
  EXPECT_FALSE(v2.allowed);
  EXPECT_EQ(v2.limit_name, "tpm");
  EXPECT_EQ(v2.retry_after_ns, 12 * kNanosPerSecond);
  EXPECT_FALSE(v2.wait_ok);  // tpm rejects, it does not wait
  EXPECT_EQ(v2.shadow_rejections, std::vector<std::string>{"shadow-ip"});
  EXPECT_EQ(v2.requests.remaining, 59);  // the rejected request left no trace
  EXPECT_TRUE(v2.reservation.token_limits.empty());

  l.settle(v.reservation, 100, kT0);  // 500 of the 600 reserved come back
  l.settle(v.reservation, 100, kT0);  // idempotent
  Verdict v3 = l.check(scope(), 600, kT0);
  EXPECT_TRUE(v3.allowed);
  EXPECT_EQ(v3.tokens.remaining, 300);

  // Only the wait-able request limit blocks: the queue may wait.
  LimitSpec rpm1 = rpm;
  rpm1.rate = 1;
  l.reload(cfg({rpm1}));
  Verdict v4 = l.check(scope("other"), 0, kT0);
  ASSERT_TRUE(v4.allowed);
  v4 = l.check(scope("other"), 0, kT0);
  EXPECT_FALSE(v4.allowed);
  EXPECT_TRUE(v4.wait_ok);
  EXPECT_EQ(v4.retry_after_ns, 60 * kNanosPerSecond);
}

// Two workers' requests whose clock readings reach the limiter in the other order (the later
// reading checked first): the older one fits the limit as of the later reading, so it passes at
// once; it is neither held (a limit set to wait) nor refused for the moments between the two
// readings. A request that does not fit waits from its own reading until the limit lets it pass.
TEST(Limiter, AnOlderReadingCheckedAfterALaterOneIsNotHeld) {
  constexpr Nanos kLate = 20 * kNanosPerMicro;
  LimitSpec rps = spec("wait-rps", Scope::kKey, 2);
  rps.on_exceed = OnExceed::kWait;
  Plan plan;
  plan.limits = {rps};
  const std::string key = "k1", tenant = "t1";
  const PreparedLimits ready(&plan, nullptr, key, tenant);
  for (const PreparedLimits* prepared : {&ready, static_cast<const PreparedLimits*>(nullptr)}) {
    Limiter l(cfg({}), new_store());
    const RequestScope s = plan_scope(key, tenant, plan, prepared);
    ASSERT_TRUE(l.check(s, 0, kT0).allowed);
    const Verdict second = l.check(s, 0, kT0 - kLate);
    EXPECT_TRUE(second.allowed) << "held " << second.retry_after_ns << " ns";
    EXPECT_EQ(second.retry_after_ns, 0);
    const Verdict third = l.check(s, 0, kT0 - kLate);
    EXPECT_FALSE(third.allowed);
    EXPECT_TRUE(third.wait_ok);
    EXPECT_EQ(third.retry_after_ns, 500 * kMs + kLate);
  }
}

TEST(Limiter, StateSurvivesReload) {
  Limiter l(cfg({spec("g", Scope::kGlobal, 5)}), new_store());
  EXPECT_EQ(admit(l, scope(), 5, kT0), 5);
  l.reload(cfg({spec("g", Scope::kGlobal, 5)}));
  EXPECT_EQ(admit(l, scope(), 5, kT0), 0);
  l.reload(cfg({spec("g", Scope::kGlobal, 8)}));
  EXPECT_EQ(admit(l, scope(), 5, kT0), 3);
  EXPECT_EQ(admit(l, scope(), 1, kT0 + 125 * kMs), 1);
}

TEST(Limiter, DefaultPlans) {
  const auto plans = default_plans();
  ASSERT_EQ(plans.size(), 4u);
  EXPECT_EQ(plans[0].name, "free");
  EXPECT_EQ(plans[0].daily_requests, 1000);
  EXPECT_EQ(plans[1].daily_requests, 50'000);
  EXPECT_EQ(plans[2].daily_requests, 500'000);
  EXPECT_FALSE(plans[3].daily_requests.has_value());
  for (const Plan& p : plans) {
    ASSERT_EQ(p.limits.size(), 3u) << p.name;
    for (const LimitSpec& s : p.limits) EXPECT_TRUE(validate(s).ok()) << p.name << s.name;
  }
  EXPECT_TRUE(plans[0].allows_model("deepseek-v3.2"));
  EXPECT_FALSE(plans[0].allows_model("gpt-4o"));
  EXPECT_TRUE(plans[3].allows_model("gpt-4o"));
  const std::vector<LimitSpec> ov = {spec("rpm", Scope::kKey, 60), spec("extra", Scope::kKey, 1)};
  const auto merged = merge_limits(plans[0], &ov);
  ASSERT_EQ(merged.size(), 5u);
  EXPECT_EQ(merged[1].name, "rpm");
  EXPECT_EQ(merged[1].rate, 60);
  EXPECT_EQ(merged[3].name, "daily-requests");
  EXPECT_EQ(merged[4].name, "extra");
}

TEST(Limiter, ValidateAndParse) {
  EXPECT_FALSE(validate(spec("", Scope::kKey, 1)).ok());
  EXPECT_FALSE(validate(spec("x", Scope::kKey, 0)).ok());
  EXPECT_FALSE(validate(spec("x", Scope::kIp, 1, "/v1")).ok());
  EXPECT_TRUE(validate(spec("x", Scope::kModel, 1, "gpt-4*")).ok());
  EXPECT_EQ(parse_algorithm("sliding_window"), Algorithm::kSlidingWindow);
  EXPECT_EQ(parse_scope("endpoint"), Scope::kEndpoint);
  EXPECT_EQ(parse_period("day"), Period::kDay);
  EXPECT_FALSE(parse_mode("enforced").has_value());
  EXPECT_EQ(to_string(OnExceed::kWait), "wait");
}

TEST(FormatReset, OpenAiStyle) {
  EXPECT_EQ(format_reset(0), "0s");
  EXPECT_EQ(format_reset(1), "1ms");
  EXPECT_EQ(format_reset(20 * kMs), "20ms");
  EXPECT_EQ(format_reset(20 * kMs + 1), "21ms");
  EXPECT_EQ(format_reset(kNanosPerSecond), "1s");
  EXPECT_EQ(format_reset(1500 * kMs), "1.5s");
  EXPECT_EQ(format_reset(8640 * kMs), "8.64s");
  EXPECT_EQ(format_reset(360 * kNanosPerSecond), "6m0s");
  EXPECT_EQ(format_reset(3723 * kNanosPerSecond + 5 * kMs), "1h2m3.005s");
}

TEST(FormatReset, BufferFormMatchesAndNeverOverflows) {
  for (Nanos ns : {Nanos{-5}, Nanos{0}, Nanos{1}, 999 * kMs, 999 * kMs + 1, 1000 * kMs, 1050 * kMs,
                   1005 * kMs, 1250 * kMs, 59'999 * kMs + 1, 3600 * kNanosPerSecond,
                   86'400 * kNanosPerSecond + 7, kNever, kNever - 1}) {
    char buf[kFormatResetBuffer];
    EXPECT_EQ(format_reset(ns, buf), format_reset(ns)) << ns;
  }
  char buf[kFormatResetBuffer];
  EXPECT_EQ(format_reset(kNever, buf), "2562047h47m16.855s");
  EXPECT_EQ(format_reset(1050 * kMs, buf), "1.05s");
  EXPECT_EQ(format_reset(61'000 * kMs, buf), "1m1s");
}

TEST(RateHeaders, AppendsThePresentParts) {
  Verdict v;
  std::string out = "HTTP/1.1 200 OK\r\n";
  append_rate_headers(out, v);
  EXPECT_EQ(out, "HTTP/1.1 200 OK\r\n");  // nothing present, nothing added

  v.requests = RateHeaders{true, 60, 59, kNanosPerSecond};
  v.tokens = RateHeaders{true, 150'000, -20, 8640 * kMs + 1};
  append_rate_headers(out, v);
  EXPECT_EQ(out,
            "HTTP/1.1 200 OK\r\n"
            "x-ratelimit-limit-requests: 60\r\n"
            "x-ratelimit-remaining-requests: 59\r\n"
            "x-ratelimit-reset-requests: 1s\r\n"
            "x-ratelimit-limit-tokens: 150000\r\n"
            "x-ratelimit-remaining-tokens: -20\r\n"
            "x-ratelimit-reset-tokens: 8.641s\r\n");

  Verdict t;
  t.tokens = RateHeaders{true, 1000, 400, 36 * kNanosPerSecond};
  std::string only_tokens;
  append_rate_headers(only_tokens, t);
  EXPECT_EQ(only_tokens,
            "x-ratelimit-limit-tokens: 1000\r\n"
            "x-ratelimit-remaining-tokens: 400\r\n"
            "x-ratelimit-reset-tokens: 36s\r\n");

  // Extremes: every field at its longest.
  Verdict x;
  x.requests = RateHeaders{true, std::numeric_limits<std::int64_t>::min(),
                           std::numeric_limits<std::int64_t>::min(), kNever};
  x.tokens = x.requests;
  std::string longest;
  append_rate_headers(longest, x);
  // Names (26 + 30 + 26 and 24 + 28 + 24), ": " and "\r\n" on 6 lines, 4 x 20 digits, 2 x 18.
  EXPECT_EQ(longest.size(), 82 + 76 + 6 * 4 + 4 * 20 + 2 * 18);
  EXPECT_NE(longest.find("x-ratelimit-reset-tokens: 2562047h47m16.855s\r\n"), std::string::npos);
}

// The lines are kept per thread for the next verdict: verdicts whose limits repeat, change,
// come back, and start at 0 all get the text of their own values.
TEST(RateHeaders, KeptLimitTextFollowsEveryChange) {
  const std::int64_t values[] = {0,
                                 0,
                                 60,
                                 60,
                                 61,
                                 60,
                                 std::numeric_limits<std::int64_t>::min(),
                                 -1,
                                 -1,
                                 9,
                                 10,
                                 10,
                                 1'000'000'000'000,
                                 999'999'999'999};
  for (std::size_t i = 0; i < std::size(values); ++i) {
    Verdict v;
    v.requests = RateHeaders{true, values[i], 1, kMs};
    v.tokens = RateHeaders{true, values[(i + 3) % std::size(values)], 2, kMs};
    std::string out;
    append_rate_headers(out, v);
    EXPECT_EQ(out, "x-ratelimit-limit-requests: " + std::to_string(v.requests.limit) +
                       "\r\nx-ratelimit-remaining-requests: 1\r\nx-ratelimit-reset-requests: "
                       "1ms\r\nx-ratelimit-limit-tokens: " +
                       std::to_string(v.tokens.limit) +
                       "\r\nx-ratelimit-remaining-tokens: 2\r\nx-ratelimit-reset-tokens: 1ms\r\n")
        << i;
  }
}

// The lines are kept per thread for the next verdict: a run of verdicts whose values repeat and
// change one at a time (a limit, a remaining count, a reset across and within a millisecond, a
// kind present or not) each get the text of their own values.
TEST(RateHeaders, KeptLinesFollowEveryChange) {
  const std::int64_t limits[] = {60, 61, 1'000'000, std::numeric_limits<std::int64_t>::min()};
  const std::int64_t remaining[] = {59, 58, 0, -20, 999'999};
  const Nanos resets[] = {-1, 0, 1, kMs - 1, kMs, kMs + 1, 2 * kMs, 1050 * kMs, kNever};
  auto lines = [](std::string_view kind, const RateHeaders& h) {
    return "x-ratelimit-limit-" + std::string(kind) + ": " + std::to_string(h.limit) +
           "\r\nx-ratelimit-remaining-" + std::string(kind) + ": " + std::to_string(h.remaining) +
           "\r\nx-ratelimit-reset-" + std::string(kind) + ": " + format_reset(h.reset_after) +
           "\r\n";
  };
  std::uint64_t seed = 7;
  auto next = [&](std::size_t n) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<std::size_t>((seed >> 33) % n);
  };
  Verdict v;
  for (int i = 0; i < 4000; ++i) {
    // Mostly one value changed, or none, so that kept lines are both reused and replaced.
    RateHeaders& h = next(2) == 0 ? v.requests : v.tokens;
    switch (next(6)) {
      case 0:
        h.limit = limits[next(std::size(limits))];
        break;
      case 1:
        h.remaining = remaining[next(std::size(remaining))];
        break;
      case 2:
        h.reset_after = resets[next(std::size(resets))];
        break;
      case 3:
        h.present = !h.present;
        break;
      default:
        break;
    }
    std::string want = "HTTP/1.1 200 OK\r\n";
    std::string got = want;
    if (v.requests.present) want += lines("requests", v.requests);
    if (v.tokens.present) want += lines("tokens", v.tokens);
    append_rate_headers(got, v);
    ASSERT_EQ(got, want) << i;
  }
}

// The verdict's headers, as the gateway sent them before append_rate_headers existed.
TEST(RateHeaders, SameTextAsSeparateFormatting) {
  Limiter l(cfg({spec("rpm", Scope::kKey, 60, {}, Unit::kRequests, Period::kMinute),
                 spec("tpm", Scope::kKey, 1000, {}, Unit::kTokens, Period::kMinute)}),
            new_store());
  const Verdict v = l.check(scope(), 333, kT0);
  ASSERT_TRUE(v.requests.present && v.tokens.present);
  std::string want;
  for (const auto& [name, value] : std::vector<std::pair<std::string, std::string>>{
           {"x-ratelimit-limit-requests", std::to_string(v.requests.limit)},
           {"x-ratelimit-remaining-requests", std::to_string(v.requests.remaining)},
           {"x-ratelimit-reset-requests", format_reset(v.requests.reset_after)},
           {"x-ratelimit-limit-tokens", std::to_string(v.tokens.limit)},
           {"x-ratelimit-remaining-tokens", std::to_string(v.tokens.remaining)},
           {"x-ratelimit-reset-tokens", format_reset(v.tokens.reset_after)}}) {
    want += name + ": " + value + "\r\n";
  }
  std::string got;
  append_rate_headers(got, v);
  EXPECT_EQ(got, want);
}

// A reservation carries what settle needs: it works after the request's scope, its key overrides
// and the config it was checked under are gone.
TEST(Limiter, ReservationOutlivesScopeAndConfig) {
  Limiter l(cfg({spec("global-tpm", Scope::kGlobal, 1000, {}, Unit::kTokens, Period::kMinute)}),
            new_store());
  Plan plan;
  plan.limits = {spec("tpm", Scope::kKey, 2000, {}, Unit::kTokens, Period::kMinute)};
  Verdict v;
  {
    const std::string key = "a-long-key-id-" + std::string(120, 'k');  // spills the inline buffer
    auto overrides = std::make_unique<std::vector<LimitSpec>>(std::vector<LimitSpec>{
        spec("tpm", Scope::kKey, 3000, {}, Unit::kTokens, Period::kMinute),
        spec("model-tpm", Scope::kModel, 500, "gpt-4*", Unit::kTokens, Period::kMinute)});
    RequestScope s = scope(key);
    s.plan = &plan;
    s.key_overrides = overrides.get();
    v = l.check(s, 400, kT0);
    ASSERT_TRUE(v.allowed);
    ASSERT_EQ(v.reservation.token_limits.size(), 3u);
    EXPECT_EQ(v.tokens.remaining, 100);  // model-tpm: 500 - 400
    EXPECT_EQ(v.reservation.key(v.reservation.token_limits[1]), "p\x1ftpm\x1fkey\x1f" + key);
    EXPECT_EQ(v.reservation.adjust_spec(v.reservation.token_limits[2]).name, "model-tpm");
    EXPECT_EQ(v.reservation.adjust_spec(v.reservation.token_limits[1]).params.rate, 3000);
  }
  l.reload(cfg({}));
  Verdict moved = std::move(v);
  l.settle(moved.reservation, 100, kT0);  // 300 of each 400 come back
  EXPECT_TRUE(moved.reservation.settled);

  l.reload(cfg({spec("global-tpm", Scope::kGlobal, 1000, {}, Unit::kTokens, Period::kMinute)}));
  const std::string key = "a-long-key-id-" + std::string(120, 'k');
  const std::vector<LimitSpec> overrides = {
      spec("model-tpm", Scope::kModel, 500, "gpt-4*", Unit::kTokens, Period::kMinute)};
  RequestScope s = scope(key);
  s.plan = &plan;
  s.key_overrides = &overrides;
  const Verdict after = l.check(s, 400, kT0);
  ASSERT_TRUE(after.allowed);
  EXPECT_EQ(after.tokens.remaining, 0);  // model-tpm: 100 settled + 400; global: 100 + 400
}

// Each thread caches the config it used last; a reload, or another limiter on the same thread,
// must still be seen at once.
TEST(Limiter, SnapshotCacheFollowsReloadsAndLimiters) {
  Limiter a(cfg({spec("g", Scope::kGlobal, 1)}), new_store());
  Limiter b(cfg({spec("g", Scope::kGlobal, 3)}), new_store());
  EXPECT_EQ(admit(a, scope(), 5, kT0), 1);
  EXPECT_EQ(admit(b, scope(), 5, kT0), 3);
  a.reload(cfg({spec("g", Scope::kGlobal, 2)}));
  EXPECT_EQ(admit(a, scope(), 5, kT0), 1);
  a.reload(nullptr);  // no limits at all
  EXPECT_EQ(admit(a, scope(), 5, kT0), 5);
  EXPECT_EQ(admit(b, scope(), 5, kT0 + kNanosPerSecond), 3);
  // A limiter built where another one was destroyed does not inherit its cached config.
  auto c = std::make_unique<Limiter>(cfg({spec("g", Scope::kGlobal, 1)}), new_store());
  EXPECT_EQ(admit(*c, scope(), 5, kT0), 1);
  c.reset();
  c = std::make_unique<Limiter>(cfg({}), new_store());
  EXPECT_EQ(admit(*c, scope(), 5, kT0), 5);
}

// Reloads while other threads check: every check sees one complete config (a limit of rate 1 or
// one of rate 1'000'000, each on its own bucket) and the last reload is seen everywhere.
TEST(Limiter, ConcurrentReloadsAndChecks) {
  Limiter l(cfg({spec("small", Scope::kKey, 1)}), new_store());
  std::atomic<int> running{2}, bad{0}, reloads{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      const std::string key = "k" + std::to_string(t);
      Nanos now = kT0;
      // Until several reloads happened meanwhile (the reloading thread runs until both stop).
      for (int i = 0; i < 20'000 || reloads.load() < 50; ++i) {
        now += kNanosPerSecond;  // "small" always has room again
        const Verdict v = l.check(scope(key), 0, now);
        if (!v.allowed || !v.requests.present) ++bad;
        if (v.requests.limit != 1 && v.requests.limit != 1'000'000) ++bad;
      }
      --running;
    });
  }
  for (int i = 0; running.load() > 0; ++i, ++reloads) {
    l.reload(cfg({spec(i % 2 ? "big" : "small", Scope::kKey, i % 2 ? 1'000'000 : 1)}));
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
  l.reload(cfg({spec("last", Scope::kKey, 7)}));
  std::thread([&] { EXPECT_EQ(l.check(scope("k0"), 0, kT0).requests.limit, 7); }).join();
  EXPECT_EQ(l.check(scope("k1"), 0, kT0).requests.limit, 7);
}

TEST(ClientIp, TrustedProxies) {
  std::vector<Cidr> trusted;
  for (auto c : {"10.0.0.0/8", "2001:db8::/32", "127.0.0.1"}) {
    auto r = parse_cidr(c);
    ASSERT_TRUE(r.ok()) << c;
    trusted.push_back(*r);
  }
  // Untrusted peer: the header is ignored.
  EXPECT_EQ(client_ip("203.0.113.9", "1.1.1.1", trusted), "203.0.113.9");
  // Trusted peer: walk right to left past trusted hops.
  EXPECT_EQ(client_ip("10.1.2.3", "198.51.100.7, 10.9.9.9", trusted), "198.51.100.7");
  // A spoofed leftmost entry is not believed: the first untrusted from the right wins.
  EXPECT_EQ(client_ip("10.1.2.3", "6.6.6.6, 198.51.100.7, 10.9.9.9", trusted), "198.51.100.7");
  // All hops trusted: the leftmost.
  EXPECT_EQ(client_ip("127.0.0.1", "10.0.0.5,10.0.0.6", trusted), "10.0.0.5");
  // IPv6 peer and hops, brackets and ports, canonical output.
  EXPECT_EQ(client_ip("2001:db8::1", "[2001:0DB8:0:0::9]:443, 2001:db8:1::2", trusted),
            "2001:db8::9");
  EXPECT_EQ(client_ip("2001:db8::1", "2600:1f18::abcd", trusted), "2600:1f18::abcd");
  // IPv4-mapped peer is the same client as the plain IPv4 address.
  EXPECT_EQ(client_ip("::ffff:203.0.113.9", "", trusted), "203.0.113.9");
  EXPECT_EQ(client_ip("::ffff:10.0.0.1", "198.51.100.1:5555", trusted), "198.51.100.1");
  // Garbage stops the walk at the last trusted hop.
  EXPECT_EQ(client_ip("10.1.2.3", "198.51.100.7, garbage", trusted), "10.1.2.3");
  EXPECT_EQ(client_ip("10.1.2.3", "", trusted), "10.1.2.3");
  EXPECT_FALSE(parse_cidr("10.0.0.0/33").ok());
  EXPECT_FALSE(parse_cidr("nonsense").ok());
  EXPECT_TRUE(parse_cidr("0.0.0.0/0")->contains(*parse_ip("8.8.8.8")));
  EXPECT_FALSE(parse_cidr("10.0.0.0/9")->contains(*parse_ip("10.128.0.1")));
}

}  // namespace
}  // namespace bw::limits
