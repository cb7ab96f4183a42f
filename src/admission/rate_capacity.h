#pragma once
// RateCapacity: the request and token rate one provider deployment accepts (its RPM/TPM tier),
// and the pacing that keeps the gateway's sends within it.
//
// A send of `tokens` may go at time t when every one of these holds:
//  - sliding window: the sends of the last `window + margin` plus this one stay within the limit
//    (requests and tokens). Sends are kept in buckets of `bucket` width and a bucket counts until
//    its END plus the window, so the count over ANY window of that length never exceeds the
//    limit (the margin covers network jitter between our send and the provider's count);
//  - pacer (GCRA): at most `burst_seconds` worth of the limit ahead of the steady rate, so a
//    backlog drains evenly instead of in one burst per minute;
//  - learned from the provider (while fresh): the remaining requests/tokens it reported, refilled
//    linearly up to the limit by its reset time, minus what was sent since; a learned limit
//    replaces the configured one; a 429's Retry-After blocks until it passes.
// The limit in force is the learned one while fresh, else the configured one; 0 = no limit.
//
// Pure and single threaded: every call takes `now`; the AdmissionController guards it.
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "common/clock.h"

namespace bw::admission {

constexpr Nanos kNeverTime = INT64_MAX;

struct RateLimits {
  std::int64_t rpm = 0;  // requests per minute; 0 = none
  std::int64_t tpm = 0;  // tokens per minute; 0 = none
};

struct PacingConfig {
  Nanos window = seconds(60);
  Nanos margin = seconds(1);        // added to the window: our send time vs the provider's count
  Nanos bucket = millis(250);       // precision of the sliding window
  double burst_seconds = 1;         // pacer: sends allowed ahead of the steady rate, in seconds
  Nanos learned_ttl = seconds(60);  // a learned limit/remaining value is used this long at most
};

// Rate-limit state reported by a provider on one response (absent fields are nullopt/-1).
struct ProviderLimits {
  std::optional<std::int64_t> limit_requests, remaining_requests;
  std::optional<std::int64_t> limit_tokens, remaining_tokens;
  Nanos reset_requests = -1;  // time until the request budget is full again
  Nanos reset_tokens = -1;
  Nanos retry_after = -1;  // on a 429: do not send before this
  bool any() const {
    return limit_requests || remaining_requests || limit_tokens || remaining_tokens ||
           retry_after >= 0;
  }
};

// Reads the headers of one provider response (lookup returns "" for a missing header):
// OpenAI/Azure x-ratelimit-{limit,remaining,reset}-{requests,tokens}, Anthropic
// anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}
// (reset as an RFC 3339 time, converted with `unix_ms_now`), and Retry-After / retry-after-ms
// when status is 429 (a 503 is the circuit breaker's business, not a rate).
template <class Lookup>
ProviderLimits parse_provider_limits(Lookup&& header, int status, std::int64_t unix_ms_now);

// "1s", "6m0s", "20ms", "1h2m3.5s", "0.5" (seconds) -> Nanos; -1 when unparsable.
Nanos parse_reset_duration(std::string_view v);
// RFC 3339 "2026-12-04T23:59:01Z" (fraction and offset allowed) -> Unix ms; -1 when unparsable.
std::int64_t parse_rfc3339_ms(std::string_view v);
// Retry-After: delta seconds (fractions accepted) -> Nanos; -1 when absent/unparsable.
Nanos parse_retry_after_value(std::string_view v);

enum class Binding : std::uint8_t { kNone, kRequests, kTokens };

struct CapacityStatus {
  RateLimits configured;
  RateLimits effective;  // in force now (learned while fresh, else configured)
  bool learned_fresh = false;
  std::int64_t remaining_requests = -1;  // in force now; -1 = unlimited
  std::int64_t remaining_tokens = -1;
  std::int64_t learned_remaining_requests = -1;  // provider's model now; -1 = none fresh
  std::int64_t learned_remaining_tokens = -1;
  Nanos blocked_until = 0;           // Retry-After from the provider
  Binding binding = Binding::kNone;  // what blocks a 1-token request now
};

class RateCapacity {
 public:
  explicit RateCapacity(RateLimits configured = {}, PacingConfig cfg = {});

  void reconfigure(RateLimits configured);
  const RateLimits& configured() const { return configured_; }
  bool limited(Nanos now) const;  // any rate limit in force at all

  // Earliest time >= now at which a send of `tokens` fits; `now` when it fits now. A request
  // larger than the whole token limit fits when nothing else was sent in the window.
  Nanos available_at(Nanos now, std::int64_t tokens) const;
  // What makes available_at() later than now (kNone when it fits).
  Binding binding(Nanos now, std::int64_t tokens) const;

  // Records a send. Call only when available_at(now, tokens) <= now (not enforced).
  void reserve(Nanos now, std::int64_t tokens);
  // Replaces a send's token estimate by the real usage once known.
  void correct(Nanos reserved_at, std::int64_t estimated, std::int64_t actual, Nanos now);

  // Takes a provider's report (the response arrived at `now`).
  void learn(Nanos now, const ProviderLimits& p);

  CapacityStatus status(Nanos now) const;
  RateLimits effective(Nanos now) const;  // in force now

 private:
  struct Bucket {
    std::int64_t epoch = -1;
    std::int64_t requests = 0;
    std::int64_t tokens = 0;
  };
  struct Learned {
    Nanos at = -1;  // when reported; -1 = never
    std::int64_t limit = 0;
    std::int64_t remaining = -1;
    Nanos reset = 0;
    std::int64_t sent_since = 0;  // sends (or tokens) reserved after `at`
  };
  struct Pacer {
    double tat = 0;  // theoretical arrival time (ns)
  };

  bool fresh(const Learned& l, Nanos now) const;
  // Earliest time the window sum of `field` fits `need` more under `limit`.
  Nanos window_at(Nanos now, bool tokens, std::int64_t need, std::int64_t limit) const;
  Nanos pacer_at(const Pacer& p, Nanos now, std::int64_t cost, std::int64_t per_minute) const;
  Nanos learned_at(const Learned& l, Nanos now, std::int64_t cost) const;
  std::int64_t learned_remaining(const Learned& l, Nanos now) const;
  Nanos requests_at(Nanos now) const;
  Nanos tokens_at(Nanos now, std::int64_t tokens) const;
  bool live(const Bucket& b, Nanos now) const;
  std::int64_t window_sum(Nanos now, bool tokens) const;

  RateLimits configured_;
  PacingConfig cfg_;
  Nanos eff_window_;
  std::vector<Bucket> ring_;
  Pacer req_pacer_, tok_pacer_;
  Learned learned_req_, learned_tok_;
  Nanos blocked_until_ = 0;
};

// ---- template implementation ----

template <class Lookup>
ProviderLimits parse_provider_limits(Lookup&& header, int status, std::int64_t unix_ms_now) {
  ProviderLimits p;
  auto num = [](std::string_view v) -> std::optional<std::int64_t> {
    if (v.empty()) return std::nullopt;
    std::int64_t n = 0;
    for (char ch : v) {
      if (ch < '0' || ch > '9') return std::nullopt;
      if (n > INT64_MAX / 10 - 10) return std::nullopt;
      n = n * 10 + (ch - '0');
    }
    return n;
  };
  auto set_num = [&](std::optional<std::int64_t>& dst, std::string_view name) {
    if (auto n = num(header(name))) dst = n;
  };
  set_num(p.limit_requests, "x-ratelimit-limit-requests");
  set_num(p.remaining_requests, "x-ratelimit-remaining-requests");
  set_num(p.limit_tokens, "x-ratelimit-limit-tokens");
  set_num(p.remaining_tokens, "x-ratelimit-remaining-tokens");
  if (auto v = header("x-ratelimit-reset-requests"); !v.empty()) {
    p.reset_requests = parse_reset_duration(v);
  }
  if (auto v = header("x-ratelimit-reset-tokens"); !v.empty()) {
    p.reset_tokens = parse_reset_duration(v);
  }
  auto anthropic_reset = [&](std::string_view name) -> Nanos {
    const std::int64_t ms = parse_rfc3339_ms(header(name));
    if (ms < 0) return -1;
    return ms > unix_ms_now ? (ms - unix_ms_now) * kNanosPerMilli : 0;
  };
  if (!p.limit_requests) set_num(p.limit_requests, "anthropic-ratelimit-requests-limit");
  if (!p.remaining_requests) {
    set_num(p.remaining_requests, "anthropic-ratelimit-requests-remaining");
    if (p.remaining_requests)
      p.reset_requests = anthropic_reset("anthropic-ratelimit-requests-reset");
  }
  if (!p.limit_tokens) {
    set_num(p.limit_tokens, "anthropic-ratelimit-tokens-limit");
    if (!p.limit_tokens) set_num(p.limit_tokens, "anthropic-ratelimit-input-tokens-limit");
  }
  if (!p.remaining_tokens) {
    set_num(p.remaining_tokens, "anthropic-ratelimit-tokens-remaining");
    if (p.remaining_tokens) {
      p.reset_tokens = anthropic_reset("anthropic-ratelimit-tokens-reset");
    } else {
      set_num(p.remaining_tokens, "anthropic-ratelimit-input-tokens-remaining");
      if (p.remaining_tokens)
        p.reset_tokens = anthropic_reset("anthropic-ratelimit-input-tokens-reset");
    }
  }
  if (status == 429) {
    if (auto ms = num(header("retry-after-ms"))) {
      p.retry_after = *ms * kNanosPerMilli;
    } else {
      p.retry_after = parse_retry_after_value(header("retry-after"));
    }
  }
  return p;
}

}  // namespace bw::admission
