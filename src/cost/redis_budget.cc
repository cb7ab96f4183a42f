#include "cost/redis_budget.h"

#include <algorithm>
#include <charconv>
#include <random>
#include <utility>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "cost/recovery.h"

namespace bw::cost {

namespace asio = boost::asio;
using store::redis_reply_i64;
using store::RedisCallResult;

namespace {

// ARGV[1] in both scripts: the caller's deadline (unix ms, plus stale_after); a call that reaches
// Redis later (a stalled server replaying its socket buffer after SIGCONT) answers {3} and
// changes nothing, so a reservation the caller already gave up on cannot leak headroom.
// Reply: {1, committed_1..n} reserved; {0, i, committed_i} budget i refused; {2, i, j, ...} keys
// i, j unknown to Redis (rebuild them from the ledger, then retry). Nothing is written unless
// every budget fits and every key exists.
constexpr std::string_view kReserveScript = R"lua(
local t = redis.call('TIME')
if tonumber(ARGV[1]) > 0 and tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(ARGV[1]) then
  return {3}
end
local n = #KEYS
local missing = {2}
for i = 1, n do
  if redis.call('EXISTS', KEYS[i]) == 0 then missing[#missing + 1] = i end
end
if #missing > 1 then return missing end
local amount = tonumber(ARGV[2])
local committed = {}
for i = 1, n do
  local v = redis.call('HMGET', KEYS[i], 's', 'r')
  local c = tonumber(v[1] or '0') + tonumber(v[2] or '0')
  if c + amount > tonumber(ARGV[2 + i]) then return {0, i, c} end
  committed[i] = c
end
local out = {1}
for i = 1, n do
  redis.call('HINCRBY', KEYS[i], 'r', ARGV[2])
  out[i + 1] = committed[i] + amount
end
return out
)lua";

// ARGV: deadline, minus the reserved amount to release, actual spend to add. Integers are passed
// through as the caller's strings: Lua would print -0 or 1e+14 back, which HINCRBY refuses. Reply:
// {1, spent_1, committed_1,
// ...} or {2, i, ...} (unknown keys, nothing written). A reservation taken before Redis lost the
// key and not yet in the ledger when it was rebuilt is not part of `r`: clamp instead of going
// negative.
constexpr std::string_view kSettleScript = R"lua(
local t = redis.call('TIME')
if tonumber(ARGV[1]) > 0 and tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(ARGV[1]) then
  return {3}
end
local n = #KEYS
local missing = {2}
for i = 1, n do
  if redis.call('EXISTS', KEYS[i]) == 0 then missing[#missing + 1] = i end
end
if #missing > 1 then return missing end
local out = {1}
for i = 1, n do
  local r = redis.call('HINCRBY', KEYS[i], 'r', ARGV[2])
  if r < 0 then
    redis.call('HSET', KEYS[i], 'r', 0)
    r = 0
  end
  local s = redis.call('HINCRBY', KEYS[i], 's', ARGV[3])
  out[#out + 1] = s
  out[#out + 1] = s + r
end
return out
)lua";

// KEYS: period key, lock key. ARGV: lock token, spent, reserved, expire-at (unix ms, 0 = never).
// Writes only if the key is still missing (a slower rebuilder never overwrites live counters).
constexpr std::string_view kInitScript = R"lua(
local wrote = 0
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 's', ARGV[2], 'r', ARGV[3])
  if tonumber(ARGV[4]) > 0 then redis.call('PEXPIREAT', KEYS[1], ARGV[4]) end
  wrote = 1
end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return wrote
)lua";

enum : std::size_t { kReserve = 0, kSettle = 1, kInit = 2 };

std::chrono::steady_clock::time_point to_time_point(Nanos t) {
  return std::chrono::steady_clock::time_point(std::chrono::nanoseconds(t));
}

Nanos steady_now() {
  return SteadyClock::instance().now();
}

std::string random_token() {
  thread_local std::mt19937_64 rng(std::random_device{}());
  static constexpr char kHex[] = "0123456789abcdef";
  std::string t;
  for (int w = 0; w < 2; ++w) {
    auto v = rng();
    for (int i = 0; i < 16; ++i) t.push_back(kHex[(v >> (i * 4)) & 0xf]);
  }
  return t;
}

// The integer elements of an array reply, or nullopt if it is anything else.
std::optional<std::vector<std::int64_t>> int_array(const RedisCallResult& r) {
  std::vector<std::int64_t> out;
  if (!store::redis_int_array(r.reply.get(), 0, out)) return std::nullopt;
  return out;
}

bool contains(const std::vector<std::string>& ids, const std::string& id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

// Thresholds in ppm crossed by moving spent from `before` to `after` against `cap`.
bool crossed(Micros before, Micros after, Micros cap, std::int64_t ppm) {
  const __int128 line = static_cast<__int128>(cap) * ppm;
  return static_cast<__int128>(before) * 1'000'000 < line &&
         static_cast<__int128>(after) * 1'000'000 >= line;
}

}  // namespace

Result<std::vector<LedgerBudgetTotals>> ledger_budget_totals(
    Ledger& ledger, const BudgetManager& budgets, const std::vector<BudgetPeriodRef>& targets) {
  std::vector<LedgerBudgetTotals> out(targets.size());
  if (targets.empty()) return out;
  std::int64_t since = targets[0].window.start_unix_ms;
  for (const auto& t : targets) since = std::min(since, t.window.start_unix_ms);
  auto settled = ledger.settled_since(since);
  if (!settled.ok()) return settled.error();
  for (const auto& agg : *settled) {
    const auto ids =
        agg.budgets.empty() ? legacy_budget_ids(budgets, agg.key_id, agg.tenant_id) : agg.budgets;
    for (std::size_t i = 0; i < targets.size(); ++i) {
      const auto& w = targets[i].window;
      if (agg.day_start_unix_ms >= w.start_unix_ms && agg.day_start_unix_ms < w.end_unix_ms &&
          contains(ids, targets[i].id)) {
        out[i].spent_micro = sat_add(out[i].spent_micro, agg.actual_micro);
      }
    }
  }
  auto open = ledger.open_reservations();
  if (!open.ok()) return open.error();
  for (const auto& row : *open) {
    const auto ids =
        row.budgets.empty() ? legacy_budget_ids(budgets, row.key_id, row.tenant_id) : row.budgets;
    for (std::size_t i = 0; i < targets.size(); ++i) {
      const auto& w = targets[i].window;
      if (row.created_unix_ms >= w.start_unix_ms && row.created_unix_ms < w.end_unix_ms &&
          contains(ids, targets[i].id)) {
        out[i].reserved_micro = sat_add(out[i].reserved_micro, row.reserved_micro);
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Reservation handle

RedisBudgetReservation::RedisBudgetReservation(RedisBudgetReservation&& o) noexcept
    : store_(std::move(o.store_)),
      executor_(std::move(o.executor_)),
      ids_(std::move(o.ids_)),
      keys_(std::move(o.keys_)),
      caps_(std::move(o.caps_)),
      amount_(o.amount_),
      active_(std::exchange(o.active_, false)),
      local_(std::move(o.local_)) {}

RedisBudgetReservation& RedisBudgetReservation::operator=(RedisBudgetReservation&& o) noexcept {
  if (this != &o) {
    release_detached();
    store_ = std::move(o.store_);
    executor_ = std::move(o.executor_);
    ids_ = std::move(o.ids_);
    keys_ = std::move(o.keys_);
    caps_ = std::move(o.caps_);
    amount_ = o.amount_;
    active_ = std::exchange(o.active_, false);
    local_ = std::move(o.local_);
  }
  return *this;
}

RedisBudgetReservation::~RedisBudgetReservation() {
  release_detached();
}

// A local reservation releases itself (Reservation's destructor); a Redis one needs a round trip,
// which runs detached on the executor the reservation was taken on.
void RedisBudgetReservation::release_detached() {
  if (!active_ || !store_ || local_.active()) return;
  active_ = false;
  // A member coroutine with by-value parameters, not a capturing lambda: a lambda coroutine's
  // captures live in the lambda object, not in the coroutine frame.
  asio::co_spawn(executor_, RedisBudgetStore::release_keys(store_, keys_, ids_, amount_),
                 asio::detached);
}

asio::awaitable<void> RedisBudgetStore::release_keys(std::shared_ptr<RedisBudgetStore> self,
                                                     std::vector<std::string> keys,
                                                     std::vector<std::string> ids, Micros amount) {
  RedisBudgetReservation r;
  r.store_ = self;
  r.keys_ = std::move(keys);
  r.ids_ = std::move(ids);
  r.amount_ = amount;
  r.active_ = true;
  co_await self->release(r, steady_now());
}

// ---------------------------------------------------------------------------------------------
// Store

Result<std::shared_ptr<RedisBudgetStore>> RedisBudgetStore::create(RedisBudgetOptions options,
                                                                   const BudgetManager& budgets,
                                                                   Ledger* ledger,
                                                                   asio::any_io_executor blocking) {
  auto ep = store::parse_redis_url(options.url);
  if (!ep) return ep.error();
  options.replicas = std::max<std::int64_t>(options.replicas, 1);
  options.rebuild_poll = std::max<Nanos>(options.rebuild_poll, kNanosPerMilli);
  return std::shared_ptr<RedisBudgetStore>(new RedisBudgetStore(
      std::move(options), std::move(*ep), budgets, ledger, std::move(blocking)));
}

RedisBudgetStore::RedisBudgetStore(RedisBudgetOptions options, store::RedisEndpoint endpoint,
                                   const BudgetManager& budgets, Ledger* ledger,
                                   asio::any_io_executor blocking)
    : options_(std::move(options)),
      client_(std::move(endpoint), options_.pool_size, options_.max_in_flight,
              {store::make_redis_script(std::string(kReserveScript)),
               store::make_redis_script(std::string(kSettleScript)),
               store::make_redis_script(std::string(kInitScript))}),
      breaker_(options_.breaker_failures, options_.breaker_cooldown),
      budgets_(budgets),
      ledger_(ledger),
      blocking_(std::move(blocking)),
      local_(budgets.options()) {}

RedisBudgetStore::~RedisBudgetStore() = default;

bool RedisBudgetStore::degraded() const {
  return breaker_.open();
}

RedisBudgetStats RedisBudgetStore::stats() const {
  RedisBudgetStats s;
  s.calls = client_.calls();
  s.failures = failures_.load(std::memory_order_relaxed);
  s.local = local_count_.load(std::memory_order_relaxed);
  s.rebuilds = rebuilds_.load(std::memory_order_relaxed);
  s.rebuild_waits = rebuild_waits_.load(std::memory_order_relaxed);
  s.rebuild_failures = rebuild_failures_.load(std::memory_order_relaxed);
  s.backlog_dropped = backlog_dropped_.load(std::memory_order_relaxed);
  {
    std::lock_guard lock(mu_);
    s.backlog = backlog_.size();
  }
  s.degraded = degraded();
  return s;
}

std::optional<RedisBudgetStore::Target> RedisBudgetStore::target_for(
    const std::string& id, std::int64_t now_unix_ms) const {
  auto snap = budgets_.snapshot(id, now_unix_ms);
  if (!snap) return std::nullopt;
  Target t;
  t.id = id;
  t.cap = snap->cap_micro;
  t.period = snap->period;
  t.window = period_window(snap->period, now_unix_ms);
  t.key = options_.key_prefix + id + "|" + std::to_string(t.window.start_unix_ms);
  return t;
}

std::string RedisBudgetStore::not_after() const {
  if (options_.stale_after <= 0) return "0";
  return std::to_string(SteadyClock::instance().unix_millis() +
                        (options_.timeout + options_.stale_after) / kNanosPerMilli);
}

std::int64_t RedisBudgetStore::expire_at(const PeriodWindow& w) const {
  if (w.end_unix_ms >= kForeverUnixMs - options_.key_retention_ms) return 0;
  return w.end_unix_ms + options_.key_retention_ms;
}

void RedisBudgetStore::remember(const Target& t, Micros committed) {
  std::lock_guard lock(mu_);
  known_[t.id] = {t.key, committed};
}

Micros RedisBudgetStore::last_known(const Target& t) const {
  std::lock_guard lock(mu_);
  auto it = known_.find(t.id);
  return it != known_.end() && it->second.first == t.key ? it->second.second : 0;
}

RedisReserveResult RedisBudgetStore::reserve_local(const std::vector<Target>& targets,
                                                   Micros amount, std::int64_t now_unix_ms) {
  local_count_.fetch_add(1, std::memory_order_relaxed);
  std::vector<std::string> ids;
  ids.reserve(targets.size());
  for (const Target& t : targets) {
    // What is left of the cap at the last figure this replica saw, split between the replicas
    // that may all be judging locally at the same time.
    const Micros left = std::max<Micros>(0, sat_sub(t.cap, last_known(t)));
    (void)local_.upsert_budget(BudgetSpec{t.id, left / options_.replicas, t.period});
    ids.push_back(t.id);
  }
  ReserveResult r = local_.reserve(ids, amount, now_unix_ms);
  RedisReserveResult out;
  if (!r.ok()) {
    out.refusal = r.refusal;
    return out;
  }
  RedisBudgetReservation res;
  res.store_ = shared_from_this();
  res.ids_ = std::move(ids);
  for (const Target& t : targets) {
    res.keys_.push_back(t.key);
    res.caps_.push_back(t.cap);
  }
  res.amount_ = amount;
  res.active_ = true;
  res.local_ = std::move(*r.reservation);
  out.reservation = std::move(res);
  return out;
}

asio::awaitable<RedisReserveResult> RedisBudgetStore::reserve(std::vector<std::string> budget_ids,
                                                              Micros amount_micro,
                                                              std::int64_t now_unix_ms, Nanos now) {
  amount_micro = std::max<Micros>(amount_micro, 0);
  std::vector<Target> targets;
  targets.reserve(budget_ids.size());
  for (const auto& id : budget_ids) {
    auto t = target_for(id, now_unix_ms);
    if (!t) {
      RedisReserveResult out;
      out.refusal.reason = BudgetRefusal::Reason::kUnknownBudget;
      out.refusal.budget_id = id;
      co_return out;
    }
    targets.push_back(std::move(*t));
  }
  if (targets.empty()) {
    RedisReserveResult out;
    out.reservation.emplace();
    co_return out;
  }
  if (!breaker_.allow(now)) co_return reserve_local(targets, amount_micro, now_unix_ms);

  std::vector<std::string> keys, args;
  keys.reserve(targets.size());
  args.reserve(targets.size() + 2);
  args.emplace_back();  // deadline, per attempt
  args.push_back(std::to_string(amount_micro));
  for (const Target& t : targets) {
    keys.push_back(t.key);
    args.push_back(std::to_string(t.cap));
  }
  // At most one rebuild round: a key lost again right after being rebuilt goes local.
  for (int attempt = 0; attempt < 2; ++attempt) {
    args[0] = not_after();
    RedisCallResult r =
        co_await client_.run_script(kReserve, keys, args, steady_now() + options_.timeout);
    auto v = int_array(r);
    const bool well_formed = v && (((*v)[0] == 1 && v->size() == 1 + targets.size()) ||
                                   ((*v)[0] == 0 && v->size() == 3 && (*v)[1] >= 1 &&
                                    (*v)[1] <= static_cast<std::int64_t>(targets.size())) ||
                                   ((*v)[0] == 2 && v->size() >= 2));
    if (!well_formed) {
      failures_.fetch_add(1, std::memory_order_relaxed);
      breaker_.failure(now);
      co_return reserve_local(targets, amount_micro, now_unix_ms);
    }
    breaker_.success();
    if ((*v)[0] == 1) {
      for (std::size_t i = 0; i < targets.size(); ++i) remember(targets[i], (*v)[1 + i]);
      RedisReserveResult out;
      RedisBudgetReservation res;
      res.store_ = shared_from_this();
      res.executor_ = co_await asio::this_coro::executor;
      res.ids_ = std::move(budget_ids);
      res.keys_ = std::move(keys);
      for (const Target& t : targets) res.caps_.push_back(t.cap);
      res.amount_ = amount_micro;
      res.active_ = true;
      out.reservation = std::move(res);
      bool flush = false;
      {
        std::lock_guard lock(mu_);
        flush = !backlog_.empty() && !flushing_;
        flushing_ = flushing_ || flush;
      }
      if (flush) {
        auto self = shared_from_this();
        asio::co_spawn(co_await asio::this_coro::executor, flush_backlog(self, now),
                       asio::detached);
      }
      co_return out;
    }
    if ((*v)[0] == 0) {
      const Target& t = targets[static_cast<std::size_t>((*v)[1] - 1)];
      remember(t, (*v)[2]);
      RedisReserveResult out;
      out.refusal.reason = BudgetRefusal::Reason::kOverCap;
      out.refusal.budget_id = t.id;
      out.refusal.cap_micro = t.cap;
      out.refusal.committed_micro = (*v)[2];
      out.refusal.reset_unix_ms = t.window.end_unix_ms;
      co_return out;
    }
    std::vector<Target> missing;
    for (std::size_t i = 1; i < v->size(); ++i) {
      const auto idx = (*v)[i];
      if (idx >= 1 && idx <= static_cast<std::int64_t>(targets.size())) {
        missing.push_back(targets[static_cast<std::size_t>(idx - 1)]);
      }
    }
    if (!co_await rebuild(std::move(missing), steady_now() + options_.rebuild_timeout)) break;
  }
  co_return reserve_local(targets, amount_micro, now_unix_ms);
}

asio::awaitable<bool> RedisBudgetStore::rebuild(std::vector<Target> targets, Nanos deadline) {
  for (const Target& t : targets) {
    if (!co_await rebuild_one(t, deadline)) {
      rebuild_failures_.fetch_add(1, std::memory_order_relaxed);
      co_return false;
    }
  }
  co_return true;
}

// Lock, read the ledger off the event loop, write the key if still missing, unlock. A replica
// that does not get the lock polls for the key; if the holder died, its lock expires and the
// next poll takes it over.
asio::awaitable<bool> RedisBudgetStore::rebuild_one(const Target& t, Nanos deadline) {
  if (!ledger_) co_return false;  // no durable figure: never restart a budget at zero
  const std::string lock_key = t.key + ":lock";
  const std::string token = random_token();
  auto ex = co_await asio::this_coro::executor;
  asio::steady_timer timer(ex);
  for (;;) {
    const Nanos call_deadline = std::min(deadline, steady_now() + options_.timeout);
    std::string set_cmd =
        store::redis_format_command({"SET", lock_key, token, "NX", "PX",
                                     std::to_string(options_.rebuild_lock_ttl / kNanosPerMilli)});
    RedisCallResult got = co_await client_.execute(std::move(set_cmd), call_deadline);
    if (!got.reply || got.reply->type == REDIS_REPLY_ERROR) co_return false;
    if (got.reply->type == REDIS_REPLY_STATUS) {  // "OK": ours
      // Ledger writes that were in flight when Redis lost the key (a reservation Redis had counted
      // whose row is not committed yet, a settlement Redis had applied whose row still says
      // open) must land before we read, or the rebuild would miss or double-count them. Requests
      // that need this key wait meanwhile, so no new reservation can slip in.
      if (options_.rebuild_grace > 0) {
        timer.expires_at(to_time_point(steady_now() + options_.rebuild_grace));
        boost::system::error_code gec;
        co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, gec));
      }
      BudgetPeriodRef ref{t.id, t.window};
      // Hop onto the blocking executor for the ledger queries, then back to this worker.
      co_await asio::post(blocking_, asio::use_awaitable);
      std::vector<BudgetPeriodRef> refs{ref};
      auto totals = ledger_budget_totals(*ledger_, budgets_, refs);
      co_await asio::post(ex, asio::use_awaitable);
      if (!totals.ok() || totals->size() != 1) {
        // Let another replica (or the next request) try at once rather than after the TTL.
        std::string del_cmd = store::redis_format_command({"DEL", lock_key});
        (void)co_await client_.execute(std::move(del_cmd), steady_now() + options_.timeout);
        co_return false;
      }
      const LedgerBudgetTotals& tot = (*totals)[0];
      const std::vector<std::string> init_keys{t.key, lock_key};
      const std::vector<std::string> init_args{token, std::to_string(tot.spent_micro),
                                               std::to_string(tot.reserved_micro),
                                               std::to_string(expire_at(t.window))};
      RedisCallResult w =
          co_await client_.run_script(kInit, init_keys, init_args, steady_now() + options_.timeout);
      std::int64_t wrote = 0;
      if (!w.reply || !redis_reply_i64(w.reply.get(), wrote)) co_return false;
      if (wrote == 1) rebuilds_.fetch_add(1, std::memory_order_relaxed);
      co_return true;
    }
    // Somebody else holds the lock: wait for the key to appear.
    if (steady_now() + options_.rebuild_poll > deadline) co_return false;
    timer.expires_at(to_time_point(steady_now() + options_.rebuild_poll));
    boost::system::error_code ec;
    co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    std::string exists_cmd = store::redis_format_command({"EXISTS", t.key});
    RedisCallResult ex_r = co_await client_.execute(
        std::move(exists_cmd), std::min(deadline, steady_now() + options_.timeout));
    std::int64_t exists = 0;
    if (!ex_r.reply || !redis_reply_i64(ex_r.reply.get(), exists)) co_return false;
    if (exists == 1) {
      rebuild_waits_.fetch_add(1, std::memory_order_relaxed);
      co_return true;
    }
  }
}

asio::awaitable<RedisBudgetStore::SettleStatus> RedisBudgetStore::settle_remote(
    const std::vector<std::string>& keys, const std::vector<std::string>* ids, Micros release,
    Micros spend, std::vector<Micros>* spent_after, std::vector<std::size_t>* missing, Nanos now) {
  if (!breaker_.allow(now)) co_return SettleStatus::kFailed;
  const std::vector<std::string> args{not_after(), std::to_string(-release), std::to_string(spend)};
  RedisCallResult r =
      co_await client_.run_script(kSettle, keys, args, steady_now() + options_.timeout);
  auto v = int_array(r);
  if (!v ||
      !(((*v)[0] == 1 && v->size() == 1 + 2 * keys.size()) || ((*v)[0] == 2 && v->size() >= 2))) {
    failures_.fetch_add(1, std::memory_order_relaxed);
    breaker_.failure(now);
    co_return SettleStatus::kFailed;
  }
  breaker_.success();
  if ((*v)[0] == 2) {
    if (missing) {
      for (std::size_t i = 1; i < v->size(); ++i) {
        if ((*v)[i] >= 1 && (*v)[i] <= static_cast<std::int64_t>(keys.size())) {
          missing->push_back(static_cast<std::size_t>((*v)[i] - 1));
        }
      }
    }
    co_return SettleStatus::kMissing;
  }
  if (spent_after) {
    spent_after->clear();
    for (std::size_t i = 0; i < keys.size(); ++i) spent_after->push_back((*v)[1 + 2 * i]);
  }
  if (ids) {
    std::lock_guard lock(mu_);
    for (std::size_t i = 0; i < keys.size() && i < ids->size(); ++i) {
      auto it = known_.find((*ids)[i]);
      if (it != known_.end() && it->second.first == keys[i]) it->second.second = (*v)[2 + 2 * i];
    }
  }
  co_return SettleStatus::kOk;
}

// Spend (and held reservations) that Redis has not seen yet. Dropping an entry when the backlog
// is full leaves Redis over-counting (the reservation stays held, and a reservation is never
// below its actual cost), so the cap still holds; the next rebuild from the ledger corrects it.
void RedisBudgetStore::add_backlog(const std::vector<std::string>& keys,
                                   const std::vector<std::int64_t>& expiry, Micros release,
                                   Micros spend) {
  std::lock_guard lock(mu_);
  for (std::size_t i = 0; i < keys.size(); ++i) {
    auto it = backlog_.find(keys[i]);
    if (it == backlog_.end()) {
      if (backlog_.size() >= options_.max_backlog) {
        backlog_dropped_.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      it = backlog_.emplace(keys[i], BacklogEntry{}).first;
    }
    it->second.release = sat_add(it->second.release, release);
    it->second.spend = sat_add(it->second.spend, spend);
    it->second.expire_at_ms = i < expiry.size() ? expiry[i] : 0;
  }
}

asio::awaitable<void> RedisBudgetStore::flush_backlog(std::shared_ptr<RedisBudgetStore> self,
                                                      Nanos now) {
  std::unordered_map<std::string, BacklogEntry> work;
  {
    std::lock_guard lock(self->mu_);
    work.swap(self->backlog_);
  }
  for (auto it = work.begin(); it != work.end(); ++it) {
    const std::vector<std::string> keys(1, it->first);
    const BacklogEntry e = it->second;
    std::vector<std::size_t> missing;
    const auto st =
        co_await self->settle_remote(keys, nullptr, e.release, e.spend, nullptr, &missing, now);
    // kMissing: the key is gone and will be rebuilt from the ledger, which has the spend.
    if (st == SettleStatus::kFailed) {
      const std::vector<std::int64_t> expiry(1, e.expire_at_ms);
      self->add_backlog(keys, expiry, e.release, e.spend);
    }
  }
  std::lock_guard lock(self->mu_);
  self->flushing_ = false;
}

asio::awaitable<SettleOutcome> RedisBudgetStore::settle(RedisBudgetReservation& res,
                                                        Micros actual_micro,
                                                        std::int64_t now_unix_ms, Nanos now) {
  SettleOutcome out;
  if (!res.active_) co_return out;
  res.active_ = false;
  actual_micro = std::max<Micros>(actual_micro, 0);
  out.settled = true;
  out.overshoot_micro = std::max<Micros>(0, actual_micro - res.amount_);
  if (res.keys_.empty()) co_return out;
  std::vector<std::int64_t> expiry;
  for (std::size_t i = 0; i < res.ids_.size(); ++i) {
    auto t = target_for(res.ids_[i], now_unix_ms);
    expiry.push_back(t ? expire_at(t->window) : 0);
  }
  if (res.local_.active()) {
    auto local = local_.settle(res.local_, actual_micro, now_unix_ms);
    (void)local;  // alerts come from the shared counters, not the share
    // The fleet must see this spend: push it now, or later from the backlog.
    if (actual_micro > 0 && co_await settle_remote(res.keys_, &res.ids_, 0, actual_micro, nullptr,
                                                   nullptr, now) == SettleStatus::kFailed) {
      add_backlog(res.keys_, expiry, 0, actual_micro);
    }
    co_return out;
  }
  std::vector<Micros> spent_after;
  for (int attempt = 0; attempt < 2; ++attempt) {
    std::vector<std::size_t> missing;
    const auto st = co_await settle_remote(res.keys_, &res.ids_, res.amount_, actual_micro,
                                           &spent_after, &missing, now);
    if (st == SettleStatus::kOk) {
      const auto& ppms = budgets_.options().alert_thresholds;
      for (std::size_t i = 0; i < res.keys_.size() && i < spent_after.size(); ++i) {
        const Micros after = spent_after[i];
        const Micros before = after - actual_micro;
        for (double th : ppms) {
          const auto ppm = static_cast<std::int64_t>(th * 1'000'000 + 0.5);
          if (crossed(before, after, res.caps_[i], ppm)) {
            BudgetAlert a;
            a.budget_id = res.ids_[i];
            a.threshold = th;
            a.spent_micro = after;
            a.cap_micro = res.caps_[i];
            auto t = target_for(res.ids_[i], now_unix_ms);
            a.period_end_unix_ms = t ? t->window.end_unix_ms : kForeverUnixMs;
            out.alerts.push_back(std::move(a));
          }
        }
      }
      co_return out;
    }
    if (st == SettleStatus::kFailed) break;
    // Redis lost the keys since we reserved: the ledger still shows this request open (its
    // settlement is written after this returns), so the rebuild counts it as reserved and the
    // retry moves it to spent.
    std::vector<Target> lost;
    for (std::size_t idx : missing) {
      Target t;
      t.id = res.ids_[idx];
      t.key = res.keys_[idx];
      t.cap = res.caps_[idx];
      auto cur = target_for(t.id, now_unix_ms);
      // The reservation's period (encoded in its key) may be an earlier one than now.
      const auto bar = t.key.rfind('|');
      std::int64_t start = now_unix_ms;
      if (bar != std::string::npos) {
        std::from_chars(t.key.data() + bar + 1, t.key.data() + t.key.size(), start);
      }
      t.period = cur ? cur->period : BudgetPeriod::kTotal;
      t.window = period_window(t.period, start);
      lost.push_back(std::move(t));
    }
    if (!co_await rebuild(std::move(lost), steady_now() + options_.rebuild_timeout)) co_return out;
  }
  add_backlog(res.keys_, expiry, res.amount_, actual_micro);
  co_return out;
}

asio::awaitable<void> RedisBudgetStore::release(RedisBudgetReservation& res, Nanos now) {
  if (!res.active_) co_return;
  if (res.local_.active()) {
    res.active_ = false;
    local_.release(res.local_);
    co_return;
  }
  res.active_ = false;
  if (res.keys_.empty()) co_return;
  const auto st =
      co_await settle_remote(res.keys_, &res.ids_, res.amount_, 0, nullptr, nullptr, now);
  // kMissing: the rebuild from the ledger decides (this row is released there right after).
  if (st == SettleStatus::kFailed) {
    std::vector<std::int64_t> expiry(res.keys_.size(), 0);
    add_backlog(res.keys_, expiry, res.amount_, 0);
  }
}

std::optional<std::string> RedisBudgetStore::should_downgrade(
    const std::vector<std::string>& budget_ids, std::string_view model, bool opt_out,
    std::int64_t now_unix_ms) const {
  const auto& opts = budgets_.options();
  if (opt_out) return std::nullopt;
  auto it = opts.downgrade.find(std::string(model));
  if (it == opts.downgrade.end()) return std::nullopt;
  for (const auto& id : budget_ids) {
    auto t = target_for(id, now_unix_ms);
    if (!t) continue;
    const Micros committed = last_known(*t);
    if (t->cap <= 0 ||
        static_cast<double>(committed) >= opts.soft_threshold * static_cast<double>(t->cap)) {
      return it->second;
    }
  }
  return std::nullopt;
}

std::vector<std::pair<std::string, double>> RedisBudgetStore::utilisation(
    std::int64_t now_unix_ms) const {
  std::vector<std::pair<std::string, double>> out;
  for (const auto& id : budgets_.budget_ids()) {
    auto t = target_for(id, now_unix_ms);
    if (!t) continue;
    const Micros c = last_known(*t);
    out.emplace_back(id, t->cap <= 0 ? 1.0 : static_cast<double>(c) / static_cast<double>(t->cap));
  }
  return out;
}

}  // namespace bw::cost
