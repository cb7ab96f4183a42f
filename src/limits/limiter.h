#pragma once
// Limiter: the rate-limit phase of the gateway pipeline (phase 4 in DESIGN.md).
//
// check() gathers every limit that applies to a request (global config limits by scope/match,
// the key's plan limits with its overrides, the plan's daily quota), asks the LimitStore to check
// and consume them in ONE atomic call, and turns the outcome into a Verdict (429 data, OpenAI
// x-ratelimit-* header data, shadow rejections, the tokens reserved). settle() later corrects the
// token reservation to the real usage; call it exactly once for every allowed request, also when
// the request failed or the client went away (actual_tokens = what was really produced, or 0).
//
// Thread safety: check/settle/reload may be called concurrently from any worker. The config is an
// immutable snapshot swapped atomically; a request keeps the snapshot it started with (each thread
// caches the last snapshot it used, so a replaced config is freed once every thread that used it
// has checked again or exited). Bucket state is keyed by limit name + scope id, so it survives
// reloads that keep the name. A Reservation is self-contained: it outlives any config or scope.
//
// Cost: the allowed, in-process path of check + settle does not allocate (bucket keys are built in
// a stack buffer, the Reservation keeps its keys inline); only a new bucket, a rejection (limit
// name, shadow names) or unusually long keys do. With a scope's PreparedLimits the plan's limits,
// their bucket keys and the store's digests of those keys are taken as they are; when they are
// the only limits (no config limits), the store decides them as it prepared them
// (LimitStore::prepare), without a check being built per request.
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/container/small_vector.hpp>

#include "common/lazy.h"
#include "common/published.h"
#include "limits/client_ip.h"
#include "limits/limit_spec.h"
#include "limits/limit_store.h"

namespace bw::limits {

struct LimiterConfig {
  // Limits that apply regardless of the key: scope global, ip, endpoint, model (key and tenant
  // scope here mean "each key / tenant separately, whatever its plan").
  std::vector<LimitSpec> limits;
};

class PreparedLimits;

struct RequestScope {
  std::string_view key_id;  // stable API key id (not the secret); "" = unauthenticated
  std::string_view tenant_id;
  std::string_view client_ip;  // from client_ip()
  std::string_view endpoint;   // route path, e.g. "/v1/chat/completions"
  // Instead of `endpoint` (left empty): the request target, whose part before any '?' is the
  // endpoint ("/v1/chat/completions?x=1"). Cut only for a limit scoped by endpoint: a key's
  // prepared plan limits never need it.
  std::string_view target;
  std::string_view model;      // requested model (after alias resolution)
  const Plan* plan = nullptr;  // nullptr: no plan limits
  const std::vector<LimitSpec>* key_overrides = nullptr;
  // The key's plan limits resolved ahead (optional): see PreparedLimits.
  const PreparedLimits* prepared = nullptr;
};

// Data for x-ratelimit-{limit,remaining,reset}-{requests,tokens}.
struct RateHeaders {
  bool present = false;
  std::int64_t limit = 0;
  std::int64_t remaining = 0;
  Nanos reset_after = 0;  // format with format_reset()
};

// A token limit charged at check time, to be corrected at settle time. Self-contained (its
// bucket parameters are copied, its key lives in the Reservation), so a reload or the end of the
// request's config snapshot cannot affect it.
struct ChargedLimit {
  // Every member is set by its own initialiser: not zeroed whole first when value-initialised
  // (Reservation::token_limits.emplace_back()), so that the stores that make_verdict overwrites
  // can go.
  ChargedLimit() {}  // NOLINT(modernize-use-equals-default): = default would zero it first

  std::uint32_t key_begin = 0;  // bucket key: Reservation::key_bytes[key_begin, +key_size)
  std::uint32_t key_size = 0;
  std::uint32_t name_size = 0;  // the limit's name: the key's bytes from kKeyNameOffset
  Algorithm algorithm = Algorithm::kGcra;
  bool has_digest = false;  // `digest` is the limiter's store's digest of the key
  BucketParams params;
  std::int64_t charged = 0;  // tokens charged at check time
  KeyDigest digest;
  BucketHandle bucket;  // where the store that charged it keeps the bucket (BatchResult::bucket_of)
};

// 96 bytes, a cache line and a half: the flag sits in the padding after the algorithm.
static_assert(sizeof(ChargedLimit) <= 96);

// Bytes of a bucket key before the limit's name ("<source>\x1f<name>\x1f...").
inline constexpr std::uint32_t kKeyNameOffset = 2;

// Inline storage: a request is typically charged on one or two token limits with short keys, so
// neither buffer allocates then (longer ones spill to the heap).
// The members in the order a request with one token limit uses them, so that it touches as few
// cache lines as it can (a request's verdict is written at its check and read again at its end,
// by when a busy worker's other requests have often pushed it out of the cache): the flags, the
// key, then the first charge; the second charge's room last.
struct Reservation {
  std::int64_t reserved_tokens = 0;
  bool settled = false;
  boost::container::small_vector<char, 64> key_bytes;            // the charged limits' keys
  boost::container::small_vector<ChargedLimit, 2> token_limits;  // every token limit charged

  std::string_view key(const ChargedLimit& c) const {
    return {key_bytes.data() + c.key_begin, c.key_size};
  }
  AdjustSpec adjust_spec(const ChargedLimit& c) const {
    AdjustSpec a{key(c).substr(kKeyNameOffset, c.name_size), c.algorithm, c.params};
    if (c.has_digest) a.digest = &c.digest;
    if (c.bucket.maker != 0) a.bucket = &c.bucket;
    return a;
  }
};

struct Verdict {
  // Every member is set by its own initialiser: a user-provided constructor, so that a
  // value-initialised Verdict (Verdict{}, Lazy::mut, optional::emplace) is not first zeroed whole
  // (~480 bytes, with the reservation's inline room).
  Verdict() {}  // NOLINT(modernize-use-equals-default): = default would zero it first

  bool allowed = true;
  std::string limit_name;    // the enforced limit that blocked (longest wait)
  Nanos retry_after_ns = 0;  // until the request passes every limit; kNever if it can't
  RateHeaders requests;      // most restrictive enforced request limit
  RateHeaders tokens;        // most restrictive enforced token limit
  std::vector<std::string> shadow_rejections;  // shadow limits that would have rejected
  bool wait_ok = false;   // every blocking limit is on_exceed: wait (and can pass)
  bool overflow = false;  // store at its entry cap (see OverflowPolicy)
  // The shared store (Redis) is unreachable and a blocking limit fails closed: answer 503 with
  // Retry-After = retry_after_ns (not 429).
  bool unavailable = false;
  Reservation reservation;  // pass to settle() when the request ends
};

// The plan limits of one key resolved ahead of its requests: each limit that applies once the
// key's overrides are taken into account, with its bucket key, in the order check() takes them.
// Build it once per key and config snapshot (it points into `plan` and `overrides`, which must
// outlive it) and pass it in RequestScope::prepared; check() then neither walks the plan nor
// formats a bucket key for it. It is used only for a scope of the same plan, overrides, key id
// and tenant (the same objects); any other scope, and a plan with a limit scoped by endpoint or
// model (its bucket depends on the request), takes the per-request path. On first use it is
// resolved for the limiter's store (digests, LimitStore::prepare), once; what that store keeps in
// it is guarded by the store. Share it across threads as a const object.
class PreparedLimits {
 public:
  PreparedLimits(const Plan* plan, const std::vector<LimitSpec>* overrides, std::string_view key_id,
                 std::string_view tenant_id);
  PreparedLimits(const PreparedLimits&) = delete;  // items_ may point at daily_
  PreparedLimits& operator=(const PreparedLimits&) = delete;

  // False when a plan limit is scoped by endpoint or model.
  bool usable() const { return usable_; }
  std::size_t size() const { return items_.size(); }

 private:
  friend class Limiter;
  // Usable for `scope`: built for its plan, overrides, key id and tenant (the same objects).
  bool fits(const RequestScope& scope) const;
  // The digests of the keys for `store` (LimitStore::digest), taken on first use by the first
  // store asked for; null for a store without digests, or another store.
  const KeyDigest* digests(const LimitStore& store) const;
  // The items as checks for `store` (their costs unset), with its digests, and the store's own
  // resolution of them (LimitStore::prepare); null for a store that has none, or another store.
  const PreparedChecks* prepared(const LimitStore& store) const;
  // Resolves digests_, checks_ and prepared_ for the first store asked for; true for that store.
  bool resolved_for(const LimitStore& store) const;
  struct Item {
    const LimitSpec* spec;
    std::uint32_t key_begin;  // its bucket key: keys_[key_begin, +key_size)
    std::uint32_t key_size;
  };
  const Plan* plan_;
  const std::vector<LimitSpec>* overrides_;
  std::string_view key_id_;
  std::string_view tenant_id_;
  bool usable_ = true;
  LimitSpec daily_;  // the plan's daily quota as a limit
  std::vector<Item> items_;
  std::string keys_;
  // Written once, under resolve_once_, before resolved_for_ is published: a request reads one
  // atomic, not the once_flag.
  mutable std::once_flag resolve_once_;
  mutable std::atomic<const LimitStore*> resolved_for_{nullptr};
  mutable std::vector<KeyDigest> digests_;  // one per item; empty for a store without digests
  mutable std::vector<LimitCheck> checks_;  // one per item
  mutable std::unique_ptr<const PreparedChecks> prepared_;
  // The verdict of an allowed batch of the items (Limiter::make_allowed_verdict), where it does
  // not depend on the request: whether every item is enforced (an allowed batch then charged
  // each), which items count tokens, and the charge of each token item less its cost and bucket,
  // its key at key_begin in charge_keys_.
  struct Charge {
    std::uint32_t item;
    ChargedLimit limit;
  };
  mutable bool all_enforced_ = false;
  mutable std::vector<std::uint8_t> tokens_;  // per item: 1 for a token limit
  mutable std::vector<Charge> charges_;
  mutable std::string charge_keys_;
};

class Limiter {
 public:
  Limiter(std::shared_ptr<const LimiterConfig> config, std::shared_ptr<LimitStore> store);

  void reload(std::shared_ptr<const LimiterConfig> config);
  std::shared_ptr<const LimiterConfig> config() const;

  // token_cost: tokens to reserve on token limits (e.g. prompt estimate + max_tokens).
  Verdict check(const RequestScope& scope, std::int64_t token_cost, Nanos now);
  // The same check, its verdict built in `out` (a default Verdict first) rather than returned and
  // moved. False when no limit applies: `out` is left as it was (unused, for a caller that keeps
  // it so), and the verdict would have been a default one.
  bool check(const RequestScope& scope, std::int64_t token_cost, Nanos now, Lazy<Verdict>& out);
  // Charges actual - reserved to every token limit that was charged (refund when negative).
  // Idempotent: a second call does nothing.
  void settle(Reservation& reservation, std::int64_t actual_tokens, Nanos now);

  // Distributed limits (docs/distributed.md). With an async store set, check_async/settle_async
  // use it (one round trip per request); without one they run the synchronous path above. Call
  // set_async_store before serving; the gateway should always use the *_async forms. The
  // coroutines are defined in limiter_async.cc, part of bw_limits_io (they need Asio).
  void set_async_store(std::shared_ptr<AsyncLimitStore> store);
  boost::asio::awaitable<Verdict> check_async(const RequestScope& scope, std::int64_t token_cost,
                                              Nanos now);
  boost::asio::awaitable<void> settle_async(Reservation& reservation, std::int64_t actual_tokens,
                                            Nanos now);
  // The async store cannot reach its backend and answers by failure policy (for /readyz).
  bool degraded() const;
  // An async (shared) store is set: use check_async/settle_async. Without one, check/settle are
  // the same calls without a coroutine.
  bool remote() const { return has_async_store_.load(std::memory_order_acquire); }

 private:
  // Every limit that applies to the request, as store checks. Not movable: the checks point into
  // `arena` and at `daily`.
  struct Gathered {
    std::shared_ptr<const LimiterConfig> hold;  // keeps the config alive across a suspension
    boost::container::small_vector<char, 512> arena;
    std::optional<LimitSpec> daily;  // the plan's daily quota, when the plan is walked
    boost::container::small_vector<LimitCheck, 12> checks;
  };
  // The current config, from a per-thread cache refreshed when a reload happened (no shared
  // refcount or lock traffic per request). The reference is valid until this thread calls
  // snapshot() again: copy it to keep the config across a suspension.
  const std::shared_ptr<const LimiterConfig>& snapshot() const;
  void gather(Gathered& g, const LimiterConfig& cfg, const RequestScope& scope,
              std::int64_t token_cost) const;
  static void make_verdict(Verdict& v, std::span<const LimitCheck> checks, const BatchResult& r,
                           std::int64_t token_cost);
  // make_verdict of an allowed batch of `ready`'s items, every one enforced, in a default `v`,
  // from the parts prepared for it. False, with `v` unchanged, when a token item was not charged.
  static bool make_allowed_verdict(Verdict& v, const PreparedLimits& ready, const BatchResult& r,
                                   std::int64_t token_cost);
  boost::asio::awaitable<Verdict> check_remote(std::shared_ptr<AsyncLimitStore> async,
                                               const RequestScope& scope, std::int64_t token_cost,
                                               Nanos now);
  boost::asio::awaitable<void> settle_remote(std::shared_ptr<AsyncLimitStore> async,
                                             Reservation& reservation, std::int64_t actual_tokens,
                                             Nanos now);

  // Read by every request and written only by set_async_store: a cache line of their own, apart
  // from the atomic shared_ptr, which the calls that use it write to. config_ keeps its hot and
  // written parts on lines of their own.
  alignas(64) std::atomic<bool> has_async_store_{
      false};  // lets the in-process path skip async_store_
  std::shared_ptr<LimitStore> store_;
  Published<LimiterConfig> config_;
  alignas(64) std::atomic<std::shared_ptr<AsyncLimitStore>> async_store_;
};

// OpenAI-style duration for x-ratelimit-reset-*: rounded UP to whole milliseconds (a client that
// waits that long will pass), Go duration syntax: "20ms", "1s", "1.5s", "6m0s", "1h2m3s".
std::string format_reset(Nanos ns);

// The longest format_reset() text ("2562047h47m16.855s" for kNever) fits this buffer.
inline constexpr std::size_t kFormatResetBuffer = 24;
// format_reset without allocating: writes into `buf` and returns the text (a view of `buf`).
std::string_view format_reset(Nanos ns, std::span<char, kFormatResetBuffer> buf);

// Appends the OpenAI x-ratelimit-{limit,remaining,reset}-{requests,tokens} header lines, each
// "name: value\r\n", for the parts of the verdict that are present (requests first, then tokens;
// reset as format_reset()). Allocates only if `out` lacks the capacity: typically ~220 bytes,
// never more than 298.
void append_rate_headers(std::string& out, const Verdict& v);

}  // namespace bw::limits
