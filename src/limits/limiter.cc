#include "limits/limiter.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <utility>

#include <boost/container/small_vector.hpp>

#include "common/json_util.h"

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

// The scope's endpoint: given, or cut from its target.
std::string_view endpoint_of(const RequestScope& s) {
  if (!s.endpoint.empty() || s.target.empty()) return s.endpoint;
  return s.target.substr(0, s.target.find('?'));
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
      return match_value(spec, endpoint_of(s), id);
    case Scope::kModel:
      return match_value(spec, s.model, id);
  }
  return false;
}

struct Pending {
  const LimitSpec* spec;
  const char* key_base;     // the key's storage: a PreparedLimits' keys, or null for the arena
  const KeyDigest* digest;  // the store's digest of the key, when known ahead
  std::size_t key_begin;
  std::size_t key_len;
};

// Bucket keys of one request, built on the stack (spills to the heap only for unusually long
// keys or many limits).
using KeyArena = boost::container::small_vector<char, 512>;

// Appends "<source>\x1f<name>\x1f<scope>\x1f<id>[\x1f<sub id>]" to the key arena. The name starts
// at kKeyNameOffset (Reservation relies on it).
void append_key(KeyArena& arena, char source, const LimitSpec& spec, std::string_view id,
                std::string_view sub = {}) {
  static_assert(kKeyNameOffset == 2);
  const std::string_view scope = to_string(spec.scope);
  const std::size_t size =
      5 + spec.name.size() + scope.size() + id.size() + sub.size() - (sub.empty() ? 1 : 0);
  const std::size_t begin = arena.size();
  arena.resize(begin + size, boost::container::default_init);
  char* p = arena.data() + begin;
  auto put = [&p](std::string_view s) {
    std::memcpy(p, s.data(), s.size());
    p += s.size();
  };
  *p++ = source;
  *p++ = kSep;
  put(spec.name);
  *p++ = kSep;
  put(scope);
  *p++ = kSep;
  put(id);
  if (!sub.empty()) {
    *p++ = kSep;
    put(sub);
  }
}

// Limit names are short and often share a prefix ("rpm", "rps"): compare from the end, inline.
bool same_name(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = a.size(); i-- > 0;) {
    if (a[i] != b[i]) return false;
  }
  return true;
}

// The plan limits of a key in check order, each once the key's overrides are applied (the last
// override of a name wins; an override of a name the plan lacks comes after the plan's limits):
// f(spec, owner) for each whose owner (the key, or its tenant) is known. `daily` receives the
// plan's daily quota as a limit.
template <class F>
void walk_plan(const Plan& plan, const std::vector<LimitSpec>* overrides, std::string_view key_id,
               std::string_view tenant_id, LimitSpec& daily, F&& f) {
  auto plan_limit = [&](const LimitSpec& base) {
    const LimitSpec* spec = &base;
    if (overrides) {
      for (auto it = overrides->rbegin(); it != overrides->rend(); ++it) {
        if (same_name(it->name, base.name)) {
          spec = &*it;
          break;
        }
      }
    }
    const std::string_view owner = spec->scope == Scope::kTenant ? tenant_id : key_id;
    if (owner.empty()) return;
    f(*spec, owner);
  };
  for (const LimitSpec& l : plan.limits) plan_limit(l);
  if (plan.daily_requests) {
    daily.name = kDailyQuotaName;
    daily.algorithm = Algorithm::kSlidingWindow;
    daily.rate = *plan.daily_requests;
    daily.period = Period::kDay;
    plan_limit(daily);
  }
  if (overrides) {
    for (const LimitSpec& o : *overrides) {
      const bool in_plan =
          same_name(o.name, kDailyQuotaName) ||
          std::any_of(plan.limits.begin(), plan.limits.end(),
                      [&](const LimitSpec& l) { return same_name(l.name, o.name); });
      if (!in_plan) plan_limit(o);
    }
  }
}

// The checks of `pending`, once the arena holds every key it will. Field by field: copying whole
// LimitCheck temporaries stalled on store forwarding here.
void fill_checks(LimitCheck* out, std::span<const Pending> pending, const KeyArena& arena,
                 std::int64_t token_cost) {
  for (std::size_t i = 0; i < pending.size(); ++i) {
    const Pending& p = pending[i];
    LimitCheck& c = out[i];
    c.key = std::string_view((p.key_base ? p.key_base : arena.data()) + p.key_begin, p.key_len);
    c.spec = p.spec;
    c.cost = p.spec->unit == Unit::kTokens ? token_cost : 1;
    c.digest = p.digest;
  }
}

// A default verdict in `out` to build the check's verdict in.
Verdict& fresh_verdict(Lazy<Verdict>& out) {
  return out.used() ? (out.mut() = Verdict{}) : out.mut();
}

bool more_restrictive(const Decision& a, const RateHeaders& b) {
  if (!b.present) return true;
  if (a.remaining != b.remaining) return a.remaining < b.remaining;
  return a.reset_after > b.reset_after;
}

// The parts of a token limit's charge that come from its check, its key at `key_begin` of the
// reservation's key bytes (the amount charged and the bucket are the request's).
void describe_charge(ChargedLimit& c, const LimitCheck& check, std::size_t key_begin) {
  const LimitSpec& spec = *check.spec;
  c.key_begin = static_cast<std::uint32_t>(key_begin);
  c.key_size = static_cast<std::uint32_t>(check.key.size());
  c.name_size = static_cast<std::uint32_t>(spec.name.size());
  c.algorithm = spec.algorithm;
  c.params = spec.params();
  if (check.digest != nullptr) {
    c.has_digest = true;
    c.digest = *check.digest;
  }
}

}  // namespace

Limiter::Limiter(std::shared_ptr<const LimiterConfig> config, std::shared_ptr<LimitStore> store)
    : store_(std::move(store)),
      config_(config ? std::move(config) : std::make_shared<const LimiterConfig>()) {}

void Limiter::reload(std::shared_ptr<const LimiterConfig> config) {
  if (!config) config = std::make_shared<const LimiterConfig>();
  config_.publish(std::move(config));  // the previous config is freed outside the lock
}

std::shared_ptr<const LimiterConfig> Limiter::config() const {
  return config_.load();
}

const std::shared_ptr<const LimiterConfig>& Limiter::snapshot() const {
  return config_.get();
}

PreparedLimits::PreparedLimits(const Plan* plan, const std::vector<LimitSpec>* overrides,
                               std::string_view key_id, std::string_view tenant_id)
    : plan_(plan), overrides_(overrides), key_id_(key_id), tenant_id_(tenant_id) {
  if (plan == nullptr) return;
  KeyArena arena;
  walk_plan(*plan, overrides, key_id, tenant_id, daily_,
            [&](const LimitSpec& spec, std::string_view owner) {
              if (spec.scope == Scope::kEndpoint || spec.scope == Scope::kModel) {
                usable_ = false;
                return;
              }
              Item& it = items_.emplace_back();
              it.spec = &spec;
              it.key_begin = static_cast<std::uint32_t>(arena.size());
              append_key(arena, 'p', spec, owner);
              it.key_size = static_cast<std::uint32_t>(arena.size() - it.key_begin);
            });
  keys_.assign(arena.data(), arena.size());
  if (!usable_) items_.clear();
}

bool PreparedLimits::fits(const RequestScope& s) const {
  return usable_ && plan_ == s.plan && overrides_ == s.key_overrides &&
         key_id_.data() == s.key_id.data() && key_id_.size() == s.key_id.size() &&
         tenant_id_.data() == s.tenant_id.data() && tenant_id_.size() == s.tenant_id.size();
}

bool PreparedLimits::resolved_for(const LimitStore& store) const {
  const LimitStore* owner = resolved_for_.load(std::memory_order_acquire);
  if (owner == nullptr) [[unlikely]] {
    std::call_once(resolve_once_, [&] {
      std::vector<KeyDigest> d(items_.size());
      bool all = true;
      for (std::size_t i = 0; i < items_.size() && all; ++i) {
        const std::string_view key(keys_.data() + items_[i].key_begin, items_[i].key_size);
        all = store.digest(key, d[i]);  // a store without digests: none
      }
      if (all) digests_ = std::move(d);
      checks_.resize(items_.size());
      for (std::size_t i = 0; i < items_.size(); ++i) {
        const Item& it = items_[i];
        checks_[i] = LimitCheck{std::string_view(keys_.data() + it.key_begin, it.key_size), it.spec,
                                0, digests_.empty() ? nullptr : &digests_[i]};
      }
      prepared_ = store.prepare(checks_);
      all_enforced_ = true;
      tokens_.resize(items_.size());
      for (std::size_t i = 0; i < items_.size(); ++i) {
        const LimitSpec& spec = *items_[i].spec;
        all_enforced_ = all_enforced_ && spec.mode == Mode::kEnforce;
        tokens_[i] = spec.unit == Unit::kTokens ? 1 : 0;
        if (spec.unit != Unit::kTokens) continue;
        Charge& c = charges_.emplace_back();
        c.item = static_cast<std::uint32_t>(i);
        describe_charge(c.limit, checks_[i], charge_keys_.size());
        charge_keys_.append(checks_[i].key);
      }
      resolved_for_.store(&store, std::memory_order_release);
    });
    owner = resolved_for_.load(std::memory_order_acquire);
  }
  return owner == &store;
}

const KeyDigest* PreparedLimits::digests(const LimitStore& store) const {
  return resolved_for(store) && !digests_.empty() ? digests_.data() : nullptr;
}

const PreparedChecks* PreparedLimits::prepared(const LimitStore& store) const {
  return resolved_for(store) ? prepared_.get() : nullptr;
}

void Limiter::gather(Gathered& g, const LimiterConfig& cfg, const RequestScope& s,
                     std::int64_t token_cost) const {
  KeyArena& arena = g.arena;
  boost::container::small_vector<Pending, 12> pending;
  auto add = [&](const LimitSpec& spec, char source, std::string_view id,
                 std::string_view sub = {}) {
    Pending& p = pending.emplace_back();  // fields one by one: see the loop at the end
    p.spec = &spec;
    p.key_base = nullptr;
    p.digest = nullptr;
    p.key_begin = arena.size();
    append_key(arena, source, spec, id, sub);
    p.key_len = arena.size() - p.key_begin;
  };

  for (const LimitSpec& spec : cfg.limits) {
    std::string_view id;
    if (global_scope_id(spec, s, id)) add(spec, 'c', id);
  }

  // Plan limits belong to the key (or its tenant); endpoint/model scope narrows them further.
  const PreparedLimits* ready = s.prepared;
  if (ready != nullptr && ready->fits(s)) {
    const KeyDigest* digests = ready->digests(*store_);
    // The config's keys are all in the arena now, which no longer moves: the checks are written
    // straight from the prepared items, after the config's.
    const std::size_t first = pending.size();
    auto& checks = g.checks;
    checks.resize(first + ready->items_.size(), boost::container::default_init);
    fill_checks(checks.data(), pending, arena, token_cost);
    for (std::size_t i = 0; i < ready->items_.size(); ++i) {
      const PreparedLimits::Item& it = ready->items_[i];
      LimitCheck& c = checks[first + i];
      c.key = std::string_view(ready->keys_.data() + it.key_begin, it.key_size);
      c.spec = it.spec;
      c.cost = it.spec->unit == Unit::kTokens ? token_cost : 1;
      c.digest = digests ? digests + i : nullptr;
    }
    return;
  }
  if (s.plan) {
    walk_plan(*s.plan, s.key_overrides, s.key_id, s.tenant_id, g.daily.emplace(),
              [&](const LimitSpec& spec, std::string_view owner) {
                std::string_view sub;
                if (spec.scope == Scope::kEndpoint && !match_value(spec, endpoint_of(s), sub)) {
                  return;
                }
                if (spec.scope == Scope::kModel && !match_value(spec, s.model, sub)) return;
                add(spec, 'p', owner, sub);
              });
  }

  g.checks.resize(pending.size(), boost::container::default_init);
  fill_checks(g.checks.data(), pending, arena, token_cost);
}

Verdict Limiter::check(const RequestScope& s, std::int64_t token_cost, Nanos now) {
  Lazy<Verdict> v;
  check(s, token_cost, now, v);
  return v.used() ? std::move(v.mut()) : Verdict{};
}

bool Limiter::check(const RequestScope& s, std::int64_t token_cost, Nanos now, Lazy<Verdict>& out) {
  token_cost = std::max<std::int64_t>(token_cost, 0);
  const LimiterConfig& cfg = *snapshot();
  // The key's plan limits alone, resolved ahead: the store decides them as it prepared them.
  if (cfg.limits.empty() && s.prepared != nullptr && s.prepared->fits(s)) {
    if (s.prepared->items_.empty()) return false;
    if (const PreparedChecks* ready = s.prepared->prepared(*store_)) {
      const BatchResult r = store_->check_prepared(*ready, token_cost, now);
      Verdict& v = fresh_verdict(out);
      if (!r.allowed || !s.prepared->all_enforced_ ||
          !make_allowed_verdict(v, *s.prepared, r, token_cost)) {
        make_verdict(v, ready->checks(), r, token_cost);
      }
      return true;
    }
  }
  Gathered g;
  gather(g, cfg, s, token_cost);
  if (g.checks.empty()) return false;
  const BatchResult r = store_->check_and_consume(g.checks, now);
  make_verdict(fresh_verdict(out), g.checks, r, token_cost);
  return true;
}

void Limiter::set_async_store(std::shared_ptr<AsyncLimitStore> store) {
  const bool has = store != nullptr;
  async_store_.store(std::move(store), std::memory_order_release);
  has_async_store_.store(has, std::memory_order_release);
}

bool Limiter::degraded() const {
  if (!has_async_store_.load(std::memory_order_acquire)) return false;
  const std::shared_ptr<AsyncLimitStore> async = async_store_.load(std::memory_order_acquire);
  return async && async->degraded();
}

void Limiter::make_verdict(Verdict& v, std::span<const LimitCheck> checks, const BatchResult& r,
                           std::int64_t token_cost) {
  if (checks.empty()) return;
  v.allowed = r.allowed;
  v.overflow = r.overflow;
  v.unavailable = r.unavailable;
  Reservation& res = v.reservation;
  const CheckResult* const results = r.results.data();
  bool all_wait = true;
  for (std::size_t i = 0; i < checks.size(); ++i) {
    const LimitSpec& spec = *checks[i].spec;
    const Decision& d = results[i].decision;
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
    if (v.allowed && results[i].consumed && spec.unit == Unit::kTokens && token_cost > 0) {
      const std::string_view key = checks[i].key;
      // Built where it is kept, and the key copied after one resize.
      ChargedLimit& c = res.token_limits.emplace_back();
      const std::size_t begin = res.key_bytes.size();
      describe_charge(c, checks[i], begin);
      c.charged = token_cost;
      c.bucket = r.bucket_of(i);
      res.key_bytes.resize(begin + key.size(), boost::container::default_init);
      if (!key.empty()) std::memcpy(res.key_bytes.data() + begin, key.data(), key.size());
    }
  }
  if (r.overflow) {
    v.limit_name = "limiter-capacity";
    v.retry_after_ns = r.retry_after;
    all_wait = false;
  }
  if (r.unavailable) all_wait = false;  // waiting does not bring Redis back
  v.wait_ok = !v.allowed && all_wait && v.retry_after_ns != kNever;
  if (v.allowed) res.reserved_tokens = token_cost;
}

bool Limiter::make_allowed_verdict(Verdict& v, const PreparedLimits& ready, const BatchResult& r,
                                   std::int64_t token_cost) {
  const CheckResult* const results = r.results.data();
  const std::size_t n = ready.items_.size();
  if (token_cost > 0) {
    for (const PreparedLimits::Charge& c : ready.charges_) {
      if (!results[c.item].consumed) return false;
    }
  }
  for (std::size_t i = 0; i < n; ++i) {
    const Decision& d = results[i].decision;
    RateHeaders& h = ready.tokens_[i] != 0 ? v.tokens : v.requests;
    if (more_restrictive(d, h)) h = RateHeaders{true, d.limit, d.remaining, d.reset_after};
  }
  Reservation& res = v.reservation;
  if (token_cost > 0 && !ready.charges_.empty()) {
    // The keys after any already there (none in a default verdict), each charge as prepared.
    const std::size_t base = res.key_bytes.size();
    const std::string& keys = ready.charge_keys_;
    res.key_bytes.resize(base + keys.size(), boost::container::default_init);
    std::memcpy(res.key_bytes.data() + base, keys.data(), keys.size());
    for (const PreparedLimits::Charge& p : ready.charges_) {
      ChargedLimit& c = res.token_limits.emplace_back(p.limit);
      c.key_begin += static_cast<std::uint32_t>(base);
      c.charged = token_cost;
      c.bucket = r.bucket_of(p.item);
    }
  }
  res.reserved_tokens = token_cost;
  return true;
}

void Limiter::settle(Reservation& reservation, std::int64_t actual_tokens, Nanos now) {
  if (reservation.settled) return;
  reservation.settled = true;
  actual_tokens = std::max<std::int64_t>(actual_tokens, 0);
  for (const ChargedLimit& c : reservation.token_limits) {
    store_->adjust(reservation.key(c), reservation.adjust_spec(c), actual_tokens - c.charged, now);
  }
}

std::string_view format_reset(Nanos ns, std::span<char, kFormatResetBuffer> buf) {
  char* p = buf.data();
  char* const end = p + buf.size();
  auto number = [&](std::int64_t n) { p = std::to_chars(p, end, n).ptr; };
  if (ns <= 0) {
    *p++ = '0';
    *p++ = 's';
    return {buf.data(), static_cast<std::size_t>(p - buf.data())};
  }
  const std::int64_t ms = ns / kNanosPerMilli + (ns % kNanosPerMilli != 0 ? 1 : 0);
  if (ms < 1000) {
    number(ms);
    *p++ = 'm';
    *p++ = 's';
    return {buf.data(), static_cast<std::size_t>(p - buf.data())};
  }
  const std::int64_t h = ms / 3'600'000, m = ms / 60'000 % 60, sec = ms / 1000 % 60,
                     frac = ms % 1000;
  if (h > 0) {
    number(h);
    *p++ = 'h';
  }
  if (h > 0 || m > 0) {
    number(m);
    *p++ = 'm';
  }
  number(sec);
  if (frac != 0) {  // three digits without the trailing zeros: .5, .05, .005, .125
    *p++ = '.';
    *p++ = static_cast<char>('0' + frac / 100);
    if (frac % 100 != 0) *p++ = static_cast<char>('0' + frac / 10 % 10);
    if (frac % 10 != 0) *p++ = static_cast<char>('0' + frac % 10);
  }
  *p++ = 's';
  return {buf.data(), static_cast<std::size_t>(p - buf.data())};
}

std::string format_reset(Nanos ns) {
  char buf[kFormatResetBuffer];
  return std::string(format_reset(ns, buf));
}

namespace {

// One "name: value\r\n" line per field; the longest name is 30 bytes, a value at most 20.
constexpr std::size_t kRateHeaderLineMax = 30 + 2 + 20 + 2;

// The reset text is written in place: format_reset's buffer is the output itself.
char* put_reset(char* p, Nanos ns) {
  return p + format_reset(ns, std::span<char, kFormatResetBuffer>(p, kFormatResetBuffer)).size();
}

// The lines of the verdict, kept per thread with the values they were written for: a key far
// from its limits gets the same lines request after request (its per-second limit drains between
// requests, its larger limits' remaining counts stay above it), so they are written once and then
// copied while the values stay the same. The reset is compared as the whole milliseconds
// format_reset writes.
struct KeptLines {
  bool written = false;
  bool requests = false;
  bool tokens = false;
  std::int64_t values[6] = {};  // each kind's limit, remaining and reset milliseconds
  std::int64_t exact[6] = {};   // the same with the resets in nanoseconds, as last given
  std::size_t size = 0;
  // Room for format_reset's whole buffer at the last line's value.
  char text[6 * kRateHeaderLineMax + kFormatResetBuffer];
};

// The milliseconds format_reset writes for `ns` (0 for "0s"): the text depends on them alone.
std::int64_t reset_millis(Nanos ns) {
  if (ns <= 0) return 0;
  return ns / kNanosPerMilli + (ns % kNanosPerMilli != 0 ? 1 : 0);
}

// The three lines of one kind (requests or tokens). The names are literals, each one
// fixed-size copy with the separators around it: `limit` is "x-ratelimit-limit-<kind>: ",
// `remaining` and `reset` start with the previous line's "\r\n".
template <std::size_t A, std::size_t B, std::size_t C>
char* put_rate_lines(char* p, const RateHeaders& h, const char (&limit)[A],
                     const char (&remaining)[B], const char (&reset)[C]) {
  p = write_literal(p, limit);
  p = write_int(p, h.limit);
  p = write_literal(p, remaining);
  p = write_int(p, h.remaining);
  p = write_literal(p, reset);
  p = put_reset(p, h.reset_after);
  return write_literal(p, "\r\n");
}

}  // namespace

void append_rate_headers(std::string& out, const Verdict& v) {
  thread_local KeptLines kept;
  const RateHeaders& r = v.requests;
  const RateHeaders& t = v.tokens;
  const std::int64_t exact[6] = {r.present ? r.limit : 0,       r.present ? r.remaining : 0,
                                 r.present ? r.reset_after : 0, t.present ? t.limit : 0,
                                 t.present ? t.remaining : 0,   t.present ? t.reset_after : 0};
  // Compared inline, word by word: a memcmp call costs more than six compares. The same exact
  // figures give the same lines without the resets' milliseconds being worked out.
  std::int64_t differ = 0;
  for (std::size_t i = 0; i < std::size(exact); ++i) differ |= kept.exact[i] ^ exact[i];
  if (kept.written && kept.requests == r.present && kept.tokens == t.present && differ == 0) {
    out.append(kept.text, kept.size);
    return;
  }
  std::memcpy(kept.exact, exact, sizeof exact);
  const std::int64_t values[6] = {exact[0], exact[1], reset_millis(exact[2]),
                                  exact[3], exact[4], reset_millis(exact[5])};
  differ = 0;
  for (std::size_t i = 0; i < std::size(values); ++i) differ |= kept.values[i] ^ values[i];
  if (!kept.written || kept.requests != r.present || kept.tokens != t.present || differ != 0) {
    char* p = kept.text;
    if (r.present) {
      p = put_rate_lines(p, r,
                         "x-ratelimit-limit-requests: ", "\r\nx-ratelimit-remaining-requests: ",
                         "\r\nx-ratelimit-reset-requests: ");
    }
    if (t.present) {
      p = put_rate_lines(p, t, "x-ratelimit-limit-tokens: ", "\r\nx-ratelimit-remaining-tokens: ",
                         "\r\nx-ratelimit-reset-tokens: ");
    }
    kept.written = true;
    kept.requests = r.present;
    kept.tokens = t.present;
    std::memcpy(kept.values, values, sizeof values);
    kept.size = static_cast<std::size_t>(p - kept.text);
  }
  out.append(kept.text, kept.size);
}

}  // namespace bw::limits
